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
    python3 tools/bench.py --sockets       # many sockets: tools/bench_sockets.py (root)

The receivers run in bench_worker.py, bench_run.py runs the phases, bench_report.py makes the
rows and tables.  With --sockets, bench.py runs tools/bench_sockets.py instead, with all the
arguments (see its --help): memory, open and close time of N sockets bound to 0.0.0.0, and the
CPU of K sockets of one process reading one multicast stream, against kernel sockets.
"""

import argparse
import json
import sys
import time

import _common
import bench_sockets
from bench_report import report_text, summarize, summarize_stream, svg_chart
from bench_run import FRAGMENTED_SIZE, STREAM_FRAG_LADDER, STREAM_LADDER, STREAM_MAX_LAG, Bench
from bench_worker import DEFAULT_RECEIVERS, RECEIVERS, available_receivers, worker_main


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
    p.add_argument("--receivers", default=",".join(DEFAULT_RECEIVERS),
                   help="comma-separated subset of: %s" % ", ".join(RECEIVERS))
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
    p.add_argument("--rcvbuf", type=int, default=256 << 20,
                   help="receive buffer of every receiver in bytes (default 256 MiB)")
    p.add_argument("--port", type=int, default=15500, help="first UDP port used (default 15500)")
    p.add_argument("--quick", action="store_true",
                   help="small counts and one repeat (for tests; about half a minute)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--svg", metavar="FILE", help="write the drain rates as an SVG bar chart")
    p.add_argument("--verbose", action="store_true", help="progress on stderr also with --json")
    p.add_argument("--sockets", metavar="N,N,...", nargs="?", const="1,10,100",
                   help="run tools/bench_sockets.py instead, with every argument given (as "
                        "root): memory, open and close time of N UdpcapSockets bound to "
                        "0.0.0.0 and CPU of K sockets on one multicast stream, against "
                        "kernel sockets (see bench_sockets.py --help)")
    # workers run tools/bench_worker.py; bench.py --worker SPEC does the same
    p.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    return p


def wants_sockets(argv):
    """Does *argv* ask for the many-sockets benchmark (--sockets, spelt out)?"""
    return any(arg == "--sockets" or arg.startswith("--sockets=") for arg in argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if wants_sockets(argv):
        return bench_sockets.main(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(json.loads(args.worker))
    if args.sockets is not None:        # an abbreviation: the options are bench_sockets'
        parser.error("spell out --sockets: bench.py then hands every argument to "
                     "tools/bench_sockets.py")
    if args.quick:
        args.count = min(args.count, 5000)
        args.frag_count = min(args.frag_count, 300)
        args.repeat = 1
        args.latency_seconds = min(args.latency_seconds, 0.5)
        args.idle_seconds = min(args.idle_seconds, 1.0)
        args.stream_seconds = min(args.stream_seconds, 0.5)
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
    wanted = [r for r in args.receivers.split(",") if r]
    unknown = [r for r in wanted if r not in RECEIVERS]
    if unknown:
        parser.error("unknown receiver(s) %s; choose from %s" % (", ".join(unknown),
                                                                 ", ".join(RECEIVERS)))
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
    bench = Bench(args)
    for name, why in skipped.items():
        bench.log("skipping %s (%s)" % (name, why))
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


if __name__ == "__main__":
    sys.exit(main())
