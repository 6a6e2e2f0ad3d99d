#!/usr/bin/env python3
"""Micro-benchmark of the pure packet path: parser cost per frame, reassembly throughput.

No capture, no native code, no network: frames are built in memory (stdlib only) and fed to
``udpcap_ctypes._packet`` and ``udpcap_ctypes._reassembly`` exactly as the receiver does.

* parse -- link layer + IPv4 + UDP of one frame, in ns per frame, for Ethernet, Linux cooked v2
  (SLL2) and DLT_NULL with 32- and 1400-byte payloads, with UDP checksum verification off and
  on; the difference of the two 1400-byte runs gives the checksum cost in ns per byte.  Each
  figure includes the Python loop around the calls (``loop`` shows that overhead alone).
* parse6 -- the same for IPv6 (``make_link_parser(linktype, ipv6=True)`` + ``parse_ipv6``): the
  common frame (UDP right after the 40-byte header), with 32- and 1400-byte payloads, checksum
  off and on; a frame with extension headers (hop-by-hop, destination options, routing) and a
  middle fragment (1232 bytes), checksum off.
* walk -- the batch walker (``make_batch_parser``) over a batch of 1000 identical savefile
  records, in ns per frame, per link type: IPv4 (the fast path), IPv6 (its fast path), IPv6
  with extension headers (the general path) and IPv6 fragments (the fast path); what the
  receiver really pays per frame, the loop included.
* reassembly -- 64 KiB datagrams (65507-byte UDP payload = 45 fragments of 1480 bytes) fed to a
  :class:`Reassembler`, fragments in order and shuffled: MB/s of datagram payload delivered
  (1 MB = 10**6 bytes), and microseconds per fragment.
* foreign -- the same datagrams for a port nobody receives (another port of a joined group):
  microseconds per fragment, bytes held and datagrams evicted at the end, when the first
  fragment reaches the reassembler (the filter passes every fragment, so it lets the rest go
  at once) and when the filter keeps it out (the later fragments are held until evicted).

Every figure is the median of --repeat timed runs.  Time is this process's CPU time
(``time.process_time_ns``), so time spent waiting for a CPU on a busy machine is not counted;
``--wall`` uses ``time.perf_counter_ns`` instead.

    python3 tools/bench_packet_path.py            # table
    python3 tools/bench_packet_path.py --json     # machine-readable
    python3 tools/bench_packet_path.py --quick    # fewer iterations
"""

import argparse
import json
import platform
import random
import statistics
import struct
import sys
import time

import _common

_common.ensure_package_importable()
from udpcap_ctypes import _packet, _pcap  # noqa: E402
from udpcap_ctypes._reassembly import Reassembler  # noqa: E402
from udpcap_ctypes._stats import Statistics  # noqa: E402

SRC = bytes([198, 18, 0, 1])
DST = bytes([198, 18, 0, 2])
SRC6 = bytes.fromhex("20010db8000000000000000000000001")
DST6 = bytes.fromhex("20010db8000000000000000000000002")
FRAGMENT_SIZE = 1480
FRAGMENT_SIZE6 = 1232
BIG_PAYLOAD = 65507
PORT = 5000
WALK_BATCH = 1000


# -- frame crafting (independent of the parser) -------------------------------------------------

def _checksum(data):
    if len(data) & 1:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4(payload, ident=1, offset=0, more=False):
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident,
                                   (0x2000 if more else 0) | (offset >> 3), 64, 17, 0, SRC, DST))
    struct.pack_into("!H", header, 10, _checksum(bytes(header)))
    return bytes(header) + payload


def _udp(payload, sport=40000, dport=5000):
    segment = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    pseudo = SRC + DST + struct.pack("!BBH", 0, 17, len(segment))
    value = _checksum(pseudo + segment) or 0xFFFF
    return segment[:6] + struct.pack("!H", value) + segment[8:]


LINKS = {
    "ethernet": (_pcap.DLT_EN10MB,
                 lambda ip: bytes.fromhex("020000000002020000000001") + b"\x08\x00" + ip),
    "sll2": (_pcap.DLT_LINUX_SLL2,
             lambda ip: struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, b"\x02" * 6) + ip),
    "null": (_pcap.DLT_NULL, lambda ip: (2).to_bytes(4, sys.byteorder) + ip),
}

# IPv6 (RFC 8200) frames: Ethernet type 0x86DD, SLL2 protocol 0x86DD, DLT_NULL family 24
# (Npcap's loopback, host order).
LINKS6 = {
    "ethernet": lambda ip: bytes.fromhex("020000000002020000000001") + b"\x86\xdd" + ip,
    "sll2": lambda ip: struct.pack("!HHIHBB8s", 0x86DD, 0, 2, 1, 0, 6, b"\x02" * 6) + ip,
    "null": lambda ip: (24).to_bytes(4, sys.byteorder) + ip,
}


def _ipv6(payload, next_header=17):
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 64, SRC6,
                       DST6) + payload


def _udp6(payload, sport=40000, dport=PORT):
    segment = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    pseudo = SRC6 + DST6 + struct.pack("!I3xB", len(segment), 17)
    value = _checksum(pseudo + segment) or 0xFFFF
    return segment[:6] + struct.pack("!H", value) + segment[8:]


def _extensions6(upper):
    """Hop-by-hop (8 bytes, PadN), destination options (16), routing (24, type 4, no segment
    left) in front of *upper* (UDP): (first next header, bytes)."""
    hop = struct.pack("!BBBB4x", 60, 0, 1, 4)
    dst = struct.pack("!BBBB12x", 43, 1, 1, 12)
    routing = struct.pack("!BBBB4x16x", 17, 2, 4, 0)
    return 0, hop + dst + routing + upper


def _fragment6(data, offset, more, ident=7):
    return _ipv6(struct.pack("!BBHI", 17, 0, offset | (1 if more else 0), ident) + data, 44)


# kind -> f(payload size) -> an IPv6 packet
KINDS6 = {
    "udp": lambda size: _ipv6(_udp6(_payload(size))),
    "extensions": lambda size: _ipv6(*reversed(_extensions6(_udp6(_payload(size))))),
    "fragment": lambda size: _fragment6(_payload(FRAGMENT_SIZE6), FRAGMENT_SIZE6, True),
}


def _payload(size):
    return bytes(random.Random(size).getrandbits(8) for _ in range(size))


# -- measurements -------------------------------------------------------------------------------

clock_ns = time.process_time_ns


def _median_ns(run, repeat, count):
    samples = []
    for _ in range(repeat):
        t0 = clock_ns()
        run(count)
        samples.append((clock_ns() - t0) / count)
    return statistics.median(samples)


def bench_parse(link, size, verify, repeat, count):
    linktype, wrap = LINKS[link]
    payload = bytes(random.Random(size).getrandbits(8) for _ in range(size))
    frame = wrap(_ipv4(_udp(payload)))
    # One frame inside a batch-like buffer, as the batch reader hands them out.
    buf = memoryview(bytearray(16) + frame + bytearray(64))
    start, end = 16, 16 + len(frame)
    stats = Statistics()
    parse_link = _packet.make_link_parser(linktype)
    parse_ipv4 = _packet.parse_ipv4
    result = parse_ipv4(buf, parse_link(buf, start, end, stats), end, stats, verify)
    if result is None or result[0] != _packet.UDP or result[6] - result[5] != size:
        raise SystemExit("bench frame did not parse (%s, %d bytes): %r" % (link, size, stats))

    def run(n):
        for _ in range(n):
            parse_ipv4(buf, parse_link(buf, start, end, stats), end, stats, verify)
    return _median_ns(run, repeat, count)


def bench_parse6(link, kind, size, verify, repeat, count):
    """link (ipv6=True) + parse_ipv6 of one IPv6 frame of *kind* (see KINDS6)."""
    linktype = LINKS[link][0]
    frame = LINKS6[link](KINDS6[kind](size))
    buf = memoryview(bytearray(16) + frame + bytearray(64))
    start, end = 16, 16 + len(frame)
    stats = Statistics()
    parse_link = _packet.make_link_parser(linktype, ipv6=True)
    parse_ipv6 = _packet.parse_ipv6
    result = parse_ipv6(buf, parse_link(buf, start, end, stats), end, stats, verify)
    expected = _packet.FRAGMENT6 if kind == "fragment" else _packet.UDP
    if result is None or result[0] != expected:
        raise SystemExit("bench IPv6 frame did not parse (%s, %s): %r" % (link, kind, stats))

    def run(n):
        for _ in range(n):
            parse_ipv6(buf, parse_link(buf, start, end, stats), end, stats, verify)
    return _median_ns(run, repeat, count)


def walk_frame(link, kind):
    """One frame of *kind* for the walker rows: ``"ipv4"`` (a 32-byte datagram) or an IPv6
    kind of KINDS6."""
    if kind == "ipv4":
        return LINKS[link][1](_ipv4(_udp(_payload(32))))
    return LINKS6[link](KINDS6[kind](32))


def bench_walk(link, kind, repeat, count):
    """The batch walker over WALK_BATCH savefile records of one frame: ns per frame."""
    linktype = LINKS[link][0]
    frame = walk_frame(link, kind)
    record = struct.pack("=IIII", 1700000000, 0, len(frame), len(frame)) + frame
    view = memoryview(bytearray(record * WALK_BATCH))
    end = len(view)
    parse = _packet.make_batch_parser(linktype)
    ports = frozenset({PORT, PORT | getattr(_packet, "PORT6", 0)})
    stats = Statistics()
    datagrams = []
    parse(view, 0, end, ports, stats, False, datagrams)
    if len(datagrams) != WALK_BATCH:
        raise SystemExit("bench batch did not walk (%s, %s): %r" % (link, kind, stats))
    batches = max(1, count // WALK_BATCH)

    def run(n):
        for _ in range(batches):
            datagrams.clear()
            parse(view, 0, end, ports, stats, False, datagrams)
    return _median_ns(run, repeat, batches) / WALK_BATCH


def bench_loop(repeat, count):
    def nothing(buf, start, end, stats, verify=False):
        return start
    buf, stats = memoryview(bytearray(100)), Statistics()

    def run(n):
        for _ in range(n):
            nothing(buf, nothing(buf, 0, 100, stats), 100, stats, False)
    return _median_ns(run, repeat, count)


def _fragments(ident, segment):
    out = []
    view = memoryview(segment)
    for offset in range(0, len(segment), FRAGMENT_SIZE):
        out.append((ident, offset, offset + FRAGMENT_SIZE < len(segment),
                    view[offset:offset + FRAGMENT_SIZE]))
    return out


def bench_reassembly(shuffled, repeat, datagrams):
    rng = random.Random(64)
    payload = bytes(rng.getrandbits(8) for _ in range(256)) * (BIG_PAYLOAD // 256 + 1)
    segment = _udp(payload[:BIG_PAYLOAD])
    src = int.from_bytes(SRC, "big")
    dst = int.from_bytes(DST, "big")
    feed = []
    for ident in range(datagrams):
        frags = _fragments(ident & 0xFFFF, segment)
        if shuffled:
            rng.shuffle(frags)
        feed.extend(frags)
    rates, per_fragment = [], []
    for _ in range(repeat):
        stats = Statistics()
        reassembler = Reassembler(stats)
        add = reassembler.add
        done = 0
        t0 = clock_ns()
        for ident, offset, more, data in feed:
            if add(src, dst, ident, offset, more, data, 0.0) is not None:
                done += 1
        elapsed = clock_ns() - t0
        if done != datagrams:
            raise SystemExit("reassembly delivered %d of %d datagrams: %r"
                             % (done, datagrams, stats))
        rates.append(datagrams * BIG_PAYLOAD / (elapsed / 1e9) / 1e6)
        per_fragment.append(elapsed / len(feed) / 1000.0)
    return statistics.median(rates), statistics.median(per_fragment), len(feed) // datagrams


def bench_foreign(first_seen, repeat, datagrams):
    """Fragments of 64 KiB datagrams for a port nobody receives (another port of a joined
    group, as eCAL's payload port beside its registration port).  *first_seen*: the first
    fragment, which names the port, reaches the reassembler (the filter passes every
    fragment), so it lets the rest go at once; otherwise (a filter that passes first fragments
    of our ports only) the later fragments are held until the caps evict them.  Returns
    ``(us per fragment, bytes held at the end, datagrams evicted)``."""
    segment = _udp(b"\x00" * BIG_PAYLOAD, dport=6000)
    src = int.from_bytes(SRC, "big")
    dst = int.from_bytes(DST, "big")
    feed = []
    for ident in range(datagrams):
        frags = _fragments(ident & 0xFFFF, segment)
        feed.extend(frags if first_seen else frags[1:])
    per_fragment = []
    for _ in range(repeat):
        stats = Statistics()
        reassembler = Reassembler(stats, wanted=lambda header: header[2:4] == b"\x13\x88")
        add = reassembler.add
        t0 = clock_ns()
        for ident, offset, more, data in feed:
            add(src, dst, ident, offset, more, data, 0.0)
        per_fragment.append((clock_ns() - t0) / len(feed) / 1000.0)
    return statistics.median(per_fragment), reassembler.pending_bytes, stats.reassembly_evictions


# (kind, payload size, verify) of the parse6 rows
PARSE6_ROWS = [("udp", 32, False), ("udp", 32, True), ("udp", 1400, False),
               ("udp", 1400, True), ("extensions", 32, False), ("fragment", 0, False)]
WALK_KINDS = ("ipv4", "udp", "extensions", "fragment")


def run_all(repeat, count, datagrams):
    results = {"python": platform.python_version(), "implementation":
               platform.python_implementation(), "machine": platform.machine(),
               "repeat": repeat, "frames_per_run": count, "parse_ns": {}, "reassembly": {},
               "clock": "wall" if clock_ns is time.perf_counter_ns else "process CPU"}
    results["loop_ns"] = round(bench_loop(repeat, count), 1)
    for link in LINKS:
        for size in (32, 1400):
            for verify in (False, True):
                key = "%s/%d/%s" % (link, size, "verify" if verify else "no-verify")
                results["parse_ns"][key] = round(bench_parse(link, size, verify, repeat, count),
                                                 1)
    per_byte = {}
    for link in LINKS:
        on = results["parse_ns"]["%s/1400/verify" % link]
        off = results["parse_ns"]["%s/1400/no-verify" % link]
        per_byte[link] = round((on - off) / (1400 + 8), 3)
    results["udp_checksum_ns_per_byte"] = per_byte
    results["parse6_ns"] = {}
    for link in LINKS:
        for kind, size, verify in PARSE6_ROWS:
            key = "%s/%s/%d/%s" % (link, kind, size, "verify" if verify else "no-verify")
            results["parse6_ns"][key] = round(bench_parse6(link, kind, size, verify, repeat,
                                                           count), 1)
    results["walk_ns"] = {}
    for link in LINKS:
        for kind in WALK_KINDS:
            results["walk_ns"]["%s/%s" % (link, kind)] = round(
                bench_walk(link, kind, repeat, count), 1)
    for shuffled in (False, True):
        rate, us, frags = bench_reassembly(shuffled, repeat, datagrams)
        results["reassembly"]["shuffled" if shuffled else "in-order"] = {
            "MB_per_s": round(rate, 1), "us_per_fragment": round(us, 2),
            "fragments_per_datagram": frags, "datagram_bytes": BIG_PAYLOAD}
    results["foreign"] = {}
    for first_seen in (True, False):
        us, held, evicted = bench_foreign(first_seen, repeat, datagrams)
        results["foreign"]["first fragment seen" if first_seen else "first filtered out"] = {
            "us_per_fragment": round(us, 2), "bytes_held": held, "evicted": evicted}
    return results


def print_table(results):
    print("packet path micro-benchmark (Python %s %s, %s), median of %d runs, %s time"
          % (results["python"], results["implementation"], results["machine"],
             results["repeat"], results["clock"]))
    print("\nparse: link + IPv4 + UDP, ns per frame (loop overhead alone: %.0f ns)"
          % results["loop_ns"])
    print("  %-10s %8s %12s %12s" % ("link", "payload", "no verify", "verify"))
    for link in LINKS:
        for size in (32, 1400):
            print("  %-10s %7dB %12.0f %12.0f" % (
                link, size, results["parse_ns"]["%s/%d/no-verify" % (link, size)],
                results["parse_ns"]["%s/%d/verify" % (link, size)]))
    print("  UDP checksum verification: %s ns per byte" % ", ".join(
        "%s %.3f" % item for item in results["udp_checksum_ns_per_byte"].items()))
    print("\nparse6: link + IPv6 + UDP, ns per frame (extensions: hop-by-hop, destination "
          "options, routing; fragment: a %d-byte middle fragment)" % FRAGMENT_SIZE6)
    print("  %-10s %-11s %8s %12s %12s" % ("link", "frame", "payload", "no verify", "verify"))
    for link in LINKS:
        for kind, size in (("udp", 32), ("udp", 1400), ("extensions", 32), ("fragment", 0)):
            row = results["parse6_ns"]
            verify = row.get("%s/%s/%d/verify" % (link, kind, size))
            print("  %-10s %-11s %7s %12.0f %12s" % (
                link, kind, "%dB" % size if size else "-",
                row["%s/%s/%d/no-verify" % (link, kind, size)],
                "%.0f" % verify if verify is not None else "-"))
    print("\nwalk: the batch walker over %d identical records, ns per frame (32-byte payloads)"
          % WALK_BATCH)
    print("  %-10s %10s %10s %12s %10s" % ("link", "IPv4", "IPv6", "IPv6 ext", "IPv6 frag"))
    for link in LINKS:
        print("  %-10s %10.0f %10.0f %12.0f %10.0f" % ((link,) + tuple(
            results["walk_ns"]["%s/%s" % (link, kind)] for kind in WALK_KINDS)))
    print("\nreassembly: %d-byte datagrams, %d-byte fragments"
          % (BIG_PAYLOAD, FRAGMENT_SIZE))
    for name, row in results["reassembly"].items():
        print("  %-9s %8.1f MB/s  %6.2f us/fragment  (%d fragments/datagram)"
              % (name, row["MB_per_s"], row["us_per_fragment"], row["fragments_per_datagram"]))
    print("\nforeign fragments: the same datagrams for a port nobody receives")
    for name, row in results["foreign"].items():
        print("  %-20s %6.2f us/fragment  %9d bytes held  %5d datagrams evicted"
              % (name, row["us_per_fragment"], row["bytes_held"], row["evicted"]))


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Measure the pure-Python packet path: parse cost per frame, IPv4 and "
                    "IPv6 (Ethernet, SLL2, DLT_NULL; 32/1400-byte payloads; UDP checksum "
                    "off/on; IPv6 extension headers and fragments), the batch walker's cost "
                    "per frame, IPv4 reassembly throughput for 64 KiB datagrams (in order "
                    "and shuffled), and the cost of fragments for a port nobody receives.")
    parser.add_argument("--repeat", type=int, default=5,
                        help="timed runs per figure; the median is reported (default 5)")
    parser.add_argument("--frames", type=int, default=100000,
                        help="frames parsed per timed run (default 100000)")
    parser.add_argument("--datagrams", type=int, default=200,
                        help="64 KiB datagrams reassembled per timed run (default 200)")
    parser.add_argument("--quick", action="store_true",
                        help="small counts (3 runs, 20000 frames, 40 datagrams)")
    parser.add_argument("--wall", action="store_true",
                        help="time with the wall clock instead of this process's CPU time")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    global clock_ns
    clock_ns = time.perf_counter_ns if args.wall else time.process_time_ns
    if args.quick:
        args.repeat, args.frames, args.datagrams = 3, 20000, 40
    if args.repeat < 1 or args.frames < 1 or args.datagrams < 1:
        parser.error("--repeat, --frames and --datagrams must be at least 1")
    results = run_all(args.repeat, args.frames, args.datagrams)
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
