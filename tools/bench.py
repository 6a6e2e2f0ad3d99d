#!/usr/bin/env python3
"""Benchmark UdpcapSocket against a plain UDP socket (and pypcap+dpkt / scapy if installed).

Sends the same traffic to every receiver -- over loopback, and as root also fragmented between
two network namespaces that it creates and deletes -- and prints, side by side with ratios to
socket.recvfrom_into: drain rate and CPU per datagram, one-way latency, idle CPU, and CPU per
datagram while streaming at the socket's sustainable rate.  README.md says what each figure
measures ("Tools") and shows a run ("Performance").

    python3 tools/bench.py                 # full run, table
    python3 tools/bench.py --quick --json  # small counts, one repeat, stream at 20k/s 0.5 s
    python3 tools/bench.py --stream-rate 100000 --no-fragmented  # stream at a given rate
    python3 tools/bench.py --svg rates.svg # also draw the drain rates as a bar chart
    python3 tools/bench.py --sweep --svg sweep.svg  # rate sweep only: CPU, loss, latency
    python3 tools/bench.py --sockets       # many sockets: tools/bench_sockets.py (root)
    python3 tools/bench.py --readers       # the capture readers: tools/bench_readers.py (root)

The receivers run in bench_worker.py, bench_run.py runs the phases, bench_report.py makes the
rows and tables.  With --sweep, bench.py runs only the rate sweep: at each of --sweep-rates
(1k, 10k, 30k, 100k/s and "max", the sender's ceiling) and each size, every receiver of
SWEEP_RECEIVERS (or --receivers) streams in a process of its own; the report gives per rate its
CPU per datagram and ratio to socket.recvfrom_into, losses and one-way latency p50/p99, and
--svg draws CPU and p99 against the rate.  Nothing is pinned there unless --pin is given.
With --sockets, bench.py runs tools/bench_sockets.py instead, with all the
arguments (see its --help): memory, open and close time of N sockets bound to 0.0.0.0, and the
CPU of K sockets of one process reading one multicast stream, against kernel sockets.
With --readers, bench.py runs tools/bench_readers.py instead, with all the arguments: the
receiving thread's CPU per datagram (and with --callgrind the instructions per datagram) of
socket.recvfrom_into, UdpcapSocket's Linux batch and next_ex readers and its Npcap batch and
next_ex readers on the emulated Windows of tests/winemu, on the same paced stream (with --ipv6
over IPv6: ``python3 tools/bench.py --readers --ipv6``).
"""

import argparse
import json
import sys
import time

import _common
import bench_readers
import bench_sockets
from bench_report import (
    report_text,
    summarize,
    summarize_stream,
    summarize_sweep,
    svg_chart,
    svg_sweep,
    sweep_report_text,
)
from bench_run import (
    FRAGMENTED_SIZE,
    STREAM_FRAG_LADDER,
    STREAM_LADDER,
    STREAM_MAX_LAG,
    SWEEP_RATES,
    Bench,
    parse_rates,
    rate_key,
)
from bench_worker import (
    COUNTERPARTS,
    DEFAULT_RECEIVERS,
    RECEIVERS,
    STREAM_ONLY,
    SWEEP_RECEIVERS,
    available_receivers,
    worker_main,
)


def build_parser():
    p = argparse.ArgumentParser(
        description="Benchmark UdpcapSocket against a plain UDP socket (and pypcap+dpkt / "
                    "scapy when installed): drain rate, CPU per datagram, latency, idle CPU.")
    p.add_argument("--count", type=int, default=100000,
                   help="datagrams queued per drain run, 32/1400 B (default 100000)")
    p.add_argument("--frag-count", type=int, default=2000,
                   help="datagrams queued per drain run, %d B fragmented (default 2000)"
                        % FRAGMENTED_SIZE)
    p.add_argument("--repeat", type=int, default=3, help="runs per figure, median (default 3)")
    p.add_argument("--sizes", default="32,1400",
                   help="loopback datagram sizes, comma-separated (default 32,1400)")
    frag = p.add_mutually_exclusive_group()
    frag.add_argument("--fragmented", dest="fragmented", action="store_true", default=None,
                      help="also %d B fragmented datagrams between two network namespaces "
                           "(needs root; default when root, except with --quick)"
                           % FRAGMENTED_SIZE)
    frag.add_argument("--no-fragmented", dest="fragmented", action="store_false")
    p.add_argument("--receivers",
                   help="comma-separated subset of: %s (default: %s; with --sweep: %s, those "
                        "that this udpcap_ctypes has)"
                        % (", ".join(RECEIVERS), ", ".join(DEFAULT_RECEIVERS),
                           ", ".join(SWEEP_RECEIVERS)))
    p.add_argument("--latency-rate", type=float, default=1000.0,
                   help="datagrams/s of the latency run (default 1000)")
    p.add_argument("--latency-seconds", type=float, default=2.0,
                   help="length of the latency run (default 2)")
    p.add_argument("--idle-seconds", type=float, default=2.0,
                   help="length of the idle CPU run (default 2)")
    stream = p.add_mutually_exclusive_group()
    stream.add_argument("--stream", dest="stream", action="store_true", default=True,
                        help="stream runs: the receiver reads while the sender sends at the "
                             "rate socket.recvfrom_into sustains (default)")
    stream.add_argument("--no-stream", dest="stream", action="store_false",
                        help="no stream runs (drain, latency and idle CPU only)")
    guard = p.add_mutually_exclusive_group()
    guard.add_argument("--stream-guard", dest="stream_guard", action="store_true", default=True,
                       help="in stream runs, bind an unread plain socket on the port of capture "
                            "receivers, so that the kernel does not answer each datagram with "
                            "ICMP port-unreachable on the sender's CPU (default)")
    guard.add_argument("--no-stream-guard", dest="stream_guard", action="store_false",
                       help="no such socket: capture receivers get ICMP-answered traffic")
    p.add_argument("--stream-rate", type=float,
                   help="datagrams/s of the stream runs of the loopback sizes; skips the "
                        "search for the socket's sustainable rate")
    p.add_argument("--stream-frag-rate", type=float,
                   help="the same for the %d B fragmented case" % FRAGMENTED_SIZE)
    p.add_argument("--stream-seconds", type=float, default=3.0,
                   help="length of each stream run (default 3)")
    p.add_argument("--stream-search-seconds", type=float, default=90.0,
                   help="time limit of the sustainable-rate search per size (default 90)")
    p.add_argument("--stream-bisect", type=int, default=1,
                   help="bisection steps after the ladder %s (fragmented %s) found the first "
                        "failing rate (default 1)"
                        % ("/".join("%dk" % (r // 1000) for r in STREAM_LADDER),
                           "/".join(str(r) for r in STREAM_FRAG_LADDER)))
    p.add_argument("--sweep", action="store_true",
                   help="run only the rate sweep: every receiver streams at each rate of "
                        "--sweep-rates; CPU per datagram and its ratio to the socket's, loss "
                        "and one-way latency p50/p99 per rate (sizes --sizes, --repeat runs)")
    p.add_argument("--sweep-rates", default=",".join(rate_key(r) for r in SWEEP_RATES),
                   help="datagrams/s of the sweep, comma-separated; 'max': as fast as send.py "
                        "can (default %(default)s)")
    p.add_argument("--sweep-seconds", type=float, default=3.0,
                   help="length of each sweep run (default 3; --quick: at most 0.5)")
    p.add_argument("--pin", action="store_true",
                   help="sweep: pin each receiver to the first usable CPU and each sender to "
                        "the second (default: nothing pinned; the other phases always pin "
                        "where there are two CPUs)")
    p.add_argument("--rcvbuf", type=int, default=256 << 20,
                   help="receive buffer of every receiver in bytes (default 256 MiB)")
    p.add_argument("--port", type=int, default=15500, help="first UDP port used (default 15500)")
    p.add_argument("--quick", action="store_true",
                   help="small counts and one repeat (for tests; about half a minute)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--svg", metavar="FILE",
                   help="write the drain rates as an SVG bar chart; with --sweep, CPU per "
                        "datagram and p99 latency against the rate, a line per receiver")
    p.add_argument("--verbose", action="store_true", help="progress on stderr also with --json")
    p.add_argument("--sockets", metavar="N,N,...", nargs="?", const="1,10,100",
                   help="run tools/bench_sockets.py instead, with every argument given (as "
                        "root): memory, open and close time of N UdpcapSockets bound to "
                        "0.0.0.0 and CPU of K sockets on one multicast stream, against "
                        "kernel sockets (see bench_sockets.py --help)")
    p.add_argument("--readers", metavar="R,R,...", nargs="?", const="",
                   help="run tools/bench_readers.py instead, with every argument given (as "
                        "root): the receiving thread's CPU per datagram and losses of "
                        "socket.recvfrom_into and of UdpcapSocket's Linux and emulated Npcap "
                        "batch and next_ex readers on the same paced stream, and with "
                        "--callgrind their instructions per datagram; --ipv6 over IPv6 (see "
                        "bench_readers.py --help)")
    # workers run tools/bench_worker.py; bench.py --worker SPEC does the same
    p.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    return p


def wants_sockets(argv):
    """Does *argv* ask for the many-sockets benchmark (--sockets, spelt out)?"""
    return any(arg == "--sockets" or arg.startswith("--sockets=") for arg in argv)


def wants_readers(argv):
    """Does *argv* ask for the capture readers' benchmark (--readers, spelt out)?"""
    return any(arg == "--readers" or arg.startswith("--readers=") for arg in argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if wants_sockets(argv):
        return bench_sockets.main(argv)
    if wants_readers(argv):
        return bench_readers.main(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(json.loads(args.worker))
    if args.sockets is not None:        # an abbreviation: the options are bench_sockets'
        parser.error("spell out --sockets: bench.py then hands every argument to "
                     "tools/bench_sockets.py")
    if args.readers is not None:        # an abbreviation: the options are bench_readers'
        parser.error("spell out --readers: bench.py then hands every argument to "
                     "tools/bench_readers.py")
    if args.quick:
        args.count = min(args.count, 5000)
        args.frag_count = min(args.frag_count, 300)
        args.repeat = 1
        args.latency_seconds = min(args.latency_seconds, 0.5)
        args.idle_seconds = min(args.idle_seconds, 1.0)
        args.stream_seconds = min(args.stream_seconds, 0.5)
        args.sweep_seconds = min(args.sweep_seconds, 0.5)
        if args.fragmented is None:
            args.fragmented = False
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
        for size in sizes:
            _common.make_payload(size)
            if size > 1472:
                raise ValueError("loopback size %d would not be fragmented on lo (MTU 65536); "
                                 "fragmented traffic is --fragmented" % size)
    except ValueError as exc:
        parser.error("--sizes: %s" % exc)
    wanted = [r for r in (args.receivers or "").split(",") if r]
    unknown = [r for r in wanted if r not in RECEIVERS]
    if unknown:
        parser.error("unknown receiver(s) %s; choose from %s" % (", ".join(unknown),
                                                                 ", ".join(RECEIVERS)))
    if args.sweep:
        return sweep_main(args, parser, sizes, wanted)
    stream_only = [r for r in wanted if r in STREAM_ONLY]
    if stream_only:
        parser.error("%s: only with --sweep" % ", ".join(stream_only))
    wanted = wanted or list(DEFAULT_RECEIVERS)
    if args.repeat < 1 or args.count < 1:
        parser.error("--repeat and --count must be at least 1")
    if args.stream_seconds <= 0 or any(r is not None and r <= 0 for r in
                                       (args.stream_rate, args.stream_frag_rate)):
        parser.error("--stream-seconds, --stream-rate and --stream-frag-rate must be positive")
    if args.fragmented is None:
        args.fragmented = _common.is_root()
    if args.fragmented and not _common.is_root():
        parser.error("--fragmented creates network namespaces and needs root")
    receivers, skipped = available_receivers(wanted)
    bench = start_bench(args, skipped)
    started = time.monotonic()
    runs = bench.run(receivers, sizes, args.fragmented)
    rows = summarize(runs)
    stream_rows = summarize_stream(runs, bench.stream_info)
    report = {"rows": rows, "stream_rows": stream_rows, "stream": bench.stream_info,
              "runs": runs, "skipped": skipped, "seconds":
              time.monotonic() - started, "settings": {
                  "count": args.count, "frag_count": args.frag_count, "repeat": args.repeat,
                  "sizes": sizes, "fragmented": args.fragmented,
                  "latency_rate": args.latency_rate, "latency_seconds": args.latency_seconds,
                  "idle_seconds": args.idle_seconds, "rcvbuf": args.rcvbuf,
                  "stream_seconds": args.stream_seconds if args.stream else None,
                  "stream_guard": args.stream_guard,
                  "stream_max_lag_ms": STREAM_MAX_LAG * 1e3,
                  "cpus": {"receiver": bench.rx_cpu, "sender": bench.tx_cpu},
                  "clock": _common.clock_name()}}
    if args.svg:
        with open(args.svg, "w") as f:
            f.write(svg_chart(rows))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(report_text(report))
    return 0


def start_bench(args, skipped):
    """A Bench for *args*, once it has said which receivers it skips ({name: why})."""
    bench = Bench(args)
    for name, why in skipped.items():
        bench.log("skipping %s (%s)" % (name, why))
    return bench


def sweep_receivers(wanted):
    """``(receivers, skipped)`` of the sweep: *wanted*, or SWEEP_RECEIVERS that can run here,
    where a counterpart (asyncio on a socket) runs only with the receiver it is there for."""
    chosen, skipped = available_receivers(wanted or SWEEP_RECEIVERS)
    if not wanted:
        for receiver, counterpart in COUNTERPARTS.items():
            if receiver not in chosen and counterpart in chosen:
                chosen.remove(counterpart)
                skipped[counterpart] = "only beside %s" % receiver
    return chosen, skipped


def sweep_main(args, parser, sizes, wanted):
    """bench.py --sweep: the rate sweep (bench_run.Bench.sweep), its report and chart."""
    try:
        rates = parse_rates(args.sweep_rates)
    except ValueError as exc:
        parser.error("--sweep-rates: %s" % exc)
    if args.sweep_seconds <= 0 or args.repeat < 1:
        parser.error("--sweep-seconds and --repeat must be positive")
    receivers, skipped = sweep_receivers(wanted)
    bench = start_bench(args, skipped)
    started = time.monotonic()
    runs = bench.sweep(receivers, sizes, rates)
    report = {"machine": bench_sockets.machine(), "sweep_rows": summarize_sweep(runs),
              "runs": runs, "skipped": skipped, "seconds": time.monotonic() - started,
              "settings": {"sweep_rates": [rate_key(r) for r in rates], "sizes": sizes,
                           "sweep_seconds": args.sweep_seconds, "repeat": args.repeat,
                           "receivers": receivers, "rcvbuf": args.rcvbuf,
                           "stream_guard": args.stream_guard,
                           "pinned": list(bench.sweep_cpus) if args.pin and
                           bench.sweep_cpus[0] is not None else None,
                           "clock": _common.clock_name()}}
    if args.svg:
        with open(args.svg, "w") as f:
            f.write(svg_sweep(report["sweep_rows"]))
    print(json.dumps(report, indent=1) if args.json else sweep_report_text(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
