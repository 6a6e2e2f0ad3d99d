#!/usr/bin/env python3
"""Receive UDP datagrams with udpcap_ctypes.UdpcapSocket (or, with --socket, a plain socket).

The socket-style receiver of eclipse-ecal/udpcap's samples, for Python: bind, optionally join
multicast groups, then print every datagram (source, length, first bytes) or, with --stats, one
line per second with the rate, sequence gaps/reorders/duplicates and one-way latency read from
the header that tools/send.py embeds, plus the UdpcapSocket's own counters.

--socket runs the very same loop on ``socket.socket(AF_INET, SOCK_DGRAM)`` for comparison.
--pcap FILE stores what was received as a classic pcap savefile (LINKTYPE_RAW, IPv4/UDP headers
synthesized from the source address and the bound address/group; UDP checksum 0), which
Wireshark and tcpdump open.

IPv6: a bind address in brackets (``[::]:14000``, ``[::1]:14000``, ``[fd00::1]:14000``, a
link-local one with its scope, ``[fe80::1%eth0]:14000``) receives IPv6 with
``UdpcapSocket(socket.AF_INET6)``, or with --socket an AF_INET6 socket with IPV6_V6ONLY; the
groups to --join are then IPv6 groups, ``GROUP%IFACE`` to join one on a given interface (name or
index).  Without --bind and with only IPv6 groups to join, the bind address is ``[::]:14000``.
--pcap writes IPv6/UDP packets for them (UDP checksum computed).

Examples:
    python3 tools/recv.py --bind 127.0.0.1:14000 --stats
    python3 tools/recv.py --bind 0.0.0.0:14000 --join 239.0.0.1 --no-loopback
    python3 tools/recv.py --bind 127.0.0.1:14000 --socket --count 100 --timeout 5 --pcap out.pcap
    python3 tools/recv.py --bind [::1]:14000 --stats
    python3 tools/recv.py --bind [::]:14000 --join ff15::4242%eth0
"""

import argparse
import json
import socket
import sys
import time

import _common  # tools/ is on sys.path: run as a script, or by pytest's pythonpath

SHOWN_COUNTERS = ("delivered", "malformed_total", "not_for_us", "fragments", "reassembled",
                  "reassembly_timeouts", "capture_drops", "coalesced_waits")
LATENCY_SAMPLE_CAP = 2000000
TICK = 0.25                      # internal receive timeout: keeps the live line and Ctrl-C alive


class Receiver:
    """The receive loop and its bookkeeping, separated from argument parsing for reuse."""

    def __init__(self, sock, out=None, stats=False, count=None, timeout=None, pcap=None,
                 pcap_dst=None, show_bytes=16, bufsize=65536, quiet=False):
        self.sock = sock
        self.out = out or sys.stdout
        self.stats = stats
        self.count = count
        self.timeout = timeout
        self.pcap = pcap
        self.pcap_dst = pcap_dst
        self.show_bytes = show_bytes
        self.quiet = quiet
        self.buf = bytearray(bufsize)
        self.tracker = _common.SequenceTracker()
        self.received = 0
        self.bytes = 0
        self.foreign = 0             # datagrams without our header
        self.latencies = []          # ns, all of the run (capped)
        self.start = None
        self.first_rx = self.last_rx = None
        self.timed_out = False
        self.live = _common.LiveLine(self.out)

    def run(self):
        sock, buf = self.sock, self.buf
        view = memoryview(buf)
        clock = time.monotonic
        self.start = last_activity = clock()
        next_tick = self.start + 1.0
        tick_rx, tick_bytes, tick_lat = 0, 0, []
        tick_start = self.start
        sock.settimeout(TICK if self.timeout is None else min(TICK, self.timeout))
        try:
            while self.count is None or self.received < self.count:
                try:
                    n, src = sock.recvfrom_into(buf)
                except OSError as exc:
                    if not _common.is_timeout(exc):
                        raise
                    n = None
                now = clock()
                if n is not None:
                    rx_ns = _common.monotonic_ns()
                    last_activity = now
                    if self.first_rx is None:
                        self.first_rx = now
                    self.last_rx = now
                    self.received += 1
                    self.bytes += n
                    tick_rx += 1
                    tick_bytes += n
                    header = _common.parse_header(buf, n)
                    if header is None:
                        self.foreign += 1
                    else:
                        self.tracker.add(header[0])
                        latency = rx_ns - header[1]
                        if latency >= 0:
                            tick_lat.append(latency)
                            if len(self.latencies) < LATENCY_SAMPLE_CAP:
                                self.latencies.append(latency)
                    if self.pcap is not None:
                        self.pcap.write(view[:n], src, self.pcap_dst)
                    if not self.stats and not self.quiet:
                        self.print_datagram(n, src, header)
                elif self.timeout is not None and now - last_activity >= self.timeout:
                    self.timed_out = True
                    break
                if self.stats and now >= next_tick:
                    self.print_tick(now - tick_start, tick_rx, tick_bytes, tick_lat)
                    tick_rx, tick_bytes, tick_lat = 0, 0, []
                    tick_start = now
                    next_tick = now + 1.0
        except KeyboardInterrupt:
            pass
        finally:
            self.live.finish()
        return self.result()

    def print_datagram(self, n, src, header):
        head = bytes(self.buf[:min(n, self.show_bytes)]).hex()
        seq = " seq=%d" % header[0] if header else ""
        self.out.write("%s len=%d%s %s%s\n" % (_common.format_hostport(src[0], src[1]), n, seq,
                                                head, "..." if n > self.show_bytes else ""))

    def print_tick(self, seconds, rx, nbytes, lat):
        seconds = max(seconds, 1e-9)
        lat.sort()
        t = self.tracker
        text = "%s  lost %d gaps %d reord %d dup %d  lat p50 %s p99 %s" % (
            _common.format_rate(rx / seconds, nbytes / seconds), t.lost, t.gaps, t.reorders,
            t.duplicates, fmt_us(_common.percentile(lat, 0.5)),
            fmt_us(_common.percentile(lat, 0.99)))
        counters = _common.receiver_statistics(self.sock)
        if counters:
            text += "  | " + " ".join("%s=%s" % (k, counters[k]) for k in SHOWN_COUNTERS
                                      if k in counters)
        if self.live.enabled:
            self.live.show(text)
        else:
            self.out.write(text + "\n")
            self.out.flush()

    def result(self):
        lat = sorted(self.latencies)
        t = self.tracker
        span = (self.last_rx - self.first_rx) if self.first_rx is not None else 0.0
        return {
            "received": self.received, "bytes": self.bytes, "seconds": span,
            "rate": self.received / span if span > 0 else None,
            "unique": t.unique, "lost": t.lost, "gaps": t.gaps, "reorders": t.reorders,
            "duplicates": t.duplicates, "foreign": self.foreign, "highest_seq": t.highest,
            "latency_p50_us": us(_common.percentile(lat, 0.5)),
            "latency_p99_us": us(_common.percentile(lat, 0.99)),
            "timed_out": self.timed_out,
            "pcap_records": self.pcap.records if self.pcap is not None else None,
            "counters": _common.receiver_statistics(self.sock),
        }


def us(ns):
    return None if ns is None else ns / 1000.0


def fmt_us(ns):
    return "-" if ns is None else "%.0fus" % (ns / 1000.0)


def summary_line(r, kind):
    text = ("%s: received %d datagrams, %d bytes in %.3f s; lost %d, gaps %d, reorders %d, "
            "duplicates %d" % (kind, r["received"], r["bytes"], r["seconds"], r["lost"], r["gaps"],
                               r["reorders"], r["duplicates"]))
    if r["latency_p50_us"] is not None:
        text += "; latency p50 %.0f us, p99 %.0f us" % (r["latency_p50_us"], r["latency_p99_us"])
    if r["foreign"]:
        text += "; %d without a send.py header" % r["foreign"]
    if r["counters"]:
        text += "; counters: " + ", ".join("%s=%s" % (k, r["counters"][k]) for k in SHOWN_COUNTERS
                                           if k in r["counters"])
    return text


def scoped(address):
    """The host of a socket address, an IPv6 one with its ``%scope`` where it has one."""
    host = address[0]
    if len(address) == 4 and address[3] and "%" not in host:
        try:
            return "%s%%%s" % (host, socket.if_indextoname(address[3]))
        except OSError:
            return "%s%%%d" % (host, address[3])
    return host


def build_parser():
    p = argparse.ArgumentParser(
        description="Receive UDP datagrams with udpcap_ctypes.UdpcapSocket (no socket opened) "
                    "or, with --socket, a plain UDP socket.")
    p.add_argument("--bind", metavar="ADDR:PORT",
                   help="address and port to receive on (default 0.0.0.0:14000; [::]:14000 when "
                        "every --join group is IPv6); IPv6 as [ADDR]:PORT, e.g. [::1]:14000, "
                        "[fe80::1%%eth0]:14000")
    p.add_argument("--join", action="append", default=[], metavar="GROUP",
                   help="join this multicast group (repeatable); IPv6: GROUP or GROUP%%IFACE "
                        "(an interface name or index)")
    p.add_argument("--no-loopback", action="store_true",
                   help="do not receive this host's own multicast (IP_MULTICAST_LOOP 0)")
    p.add_argument("--timeout", type=float,
                   help="stop when nothing arrives for this many seconds")
    p.add_argument("--count", type=int, help="stop after this many datagrams")
    p.add_argument("--stats", action="store_true",
                   help="one line per second (rate, gaps, latency, counters) instead of one line "
                        "per datagram")
    p.add_argument("--socket", action="store_true",
                   help="use a plain socket.socket instead of UdpcapSocket, for comparison")
    p.add_argument("--pcap", metavar="FILE", help="also write what was received to a pcap file")
    p.add_argument("--rcvbuf", type=int, default=16 << 20,
                   help="receive buffer size in bytes (default 16 MiB)")
    p.add_argument("--bytes", type=int, default=16, dest="show_bytes",
                   help="how many leading bytes to print per datagram (default 16)")
    p.add_argument("--quiet", action="store_true",
                   help="no line per datagram (only the summary, and --stats lines)")
    p.add_argument("--json", action="store_true", help="final summary as one JSON object")
    p.add_argument("--coalesce", type=float, metavar="SECONDS",
                   help="UdpcapSocket's interrupt moderation pause (default: the platform's, "
                        "100e-6 on Linux; 0 turns it off)")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.bind is None:
        ipv6_groups = args.join and all(":" in group for group in args.join)
        args.bind = "[::]:14000" if ipv6_groups else "0.0.0.0:14000"
    try:
        bind = _common.parse_hostport(args.bind)
        ipv6 = _common.family_of(bind[0]) == socket.AF_INET6
        if ipv6:
            _common.sockaddr(*bind)
        else:
            socket.inet_aton(bind[0])
        for group in args.join:
            if ipv6:
                if _common.family_of(group) != socket.AF_INET6 or not _common.is_multicast(group):
                    raise ValueError("--join %s: not an IPv6 multicast address (ff00::/8; the "
                                     "bind address %s is IPv6)" % (group, args.bind))
                name, scope = _common.split_scope(group)
                socket.inet_pton(socket.AF_INET6, name)
                if scope is not None:
                    _common.interface_index(scope)
                continue
            if _common.family_of(group) == socket.AF_INET6 and _common.is_multicast(group):
                raise ValueError("--join %s: an IPv6 group needs an IPv6 bind address, e.g. "
                                 "--bind [::]:PORT" % group)
            if not _common.is_multicast(group):
                raise ValueError("--join %s: not a multicast address (224.0.0.0/4)" % group)
            socket.inet_aton(group)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    kind = "socket" if args.socket else "UdpcapSocket"
    try:
        options = None if args.coalesce is None else {"coalesce": args.coalesce}
        sock = _common.open_receiver(args.socket, bind, args.join, not args.no_loopback,
                                     args.rcvbuf, options=options)
    except ImportError as exc:
        print("recv.py: %s. Fix: run from a checkout of udpcap_ctypes, or use --socket" % exc,
              file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print("recv.py: cannot open the %s receiver on %s: %s" % (kind, args.bind, exc),
              file=sys.stderr)
        return 2
    pcap = None
    try:
        if args.pcap:
            pcap = _common.PcapWriter(args.pcap)
        local = sock.getsockname()
        dst_host = (_common.split_scope(args.join[0])[0] if len(args.join) == 1
                    else local[0])
        receiver = Receiver(sock, stats=args.stats, count=args.count, timeout=args.timeout,
                            pcap=pcap, pcap_dst=(dst_host, local[1]),
                            show_bytes=args.show_bytes, quiet=args.quiet)
        # on stderr, so that stdout stays data only (and tests can wait for this line)
        print("%s receiving on %s%s" % (kind, _common.format_hostport(scoped(local), local[1]),
                                        " groups " + ",".join(args.join) if args.join else ""),
              file=sys.stderr, flush=True)
        result = receiver.run()
    finally:
        sock.close()
        if pcap is not None:
            pcap.close()
    result["receiver"] = kind
    print(json.dumps(result) if args.json else summary_line(result, kind), flush=True)
    if args.count is not None and result["received"] < args.count:
        print("recv.py: only %d of %d datagrams arrived before the %.1f s timeout"
              % (result["received"], args.count, args.timeout or 0), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
