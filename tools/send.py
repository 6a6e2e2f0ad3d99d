#!/usr/bin/env python3
"""Send numbered, timestamped UDP datagrams to a unicast or multicast destination.

Every datagram starts with a 24-byte header (magic "UCT1", sequence number u64, send time u64 in
nanoseconds of CLOCK_MONOTONIC, total length u32; see tools/_common.py) and is padded to --size.
tools/recv.py and tools/bench.py read the header back to count gaps, reorders and duplicates
and, when sender and receiver run on the same host, the one-way latency.  (CLOCK_MONOTONIC is
machine-wide on Linux, also across network namespaces; latencies between two hosts are
meaningless.)

Pacing: --rate (datagrams/s) or --mbps (UDP payload megabits/s).  Low rates sleep until each
datagram is due (no busy loop); high rates send in batches of about one millisecond's worth and
sleep between batches.  Without a rate, send as fast as possible (about 200,000 datagrams/s of
32 B on loopback: the Python sendto() loop is the limit; the achieved rate is reported).
--end-marker sends a few end markers after the last datagram (see tools/bench.py).  --size
above the path MTU is allowed: the kernel then fragments each datagram.

IPv6 destinations go in brackets, ``[::1]:14000``, a link-local one with its scope,
``[fe80::1%eth0]:14000``; they are sent from an AF_INET6 socket (--ttl is then the hop
limit, --interface for multicast an interface name or index).

Examples:
    python3 tools/send.py 127.0.0.1:14000 --rate 1000 --count 5000
    python3 tools/send.py 239.0.0.1:14000 --size 60000 --mbps 100 --duration 10 --ttl 1
    python3 tools/send.py [fd00::1]:14000 --rate 1000 --count 5000
    python3 tools/send.py [ff15::4242]:14000 --interface eth0 --count 100
"""

import argparse
import errno
import json
import socket
import sys
import time

import _common  # tools/ is on sys.path: run as a script, or by pytest's pythonpath

BATCH_SECONDS = 0.001      # at high rates: sleep between batches of ~1 ms of datagrams
MAX_BURST = 4096           # never send more than this many back to back before looking up
END_MARKERS = 3            # --end-marker: datagrams with sequence number END_SEQ ...
END_MARKER_PAUSE = 0.2     # ... sent this long after the last datagram ...
END_MARKER_GAP = 0.05      # ... and this far apart


def rate_from_mbps(mbps, size):
    """Datagrams per second that carry *mbps* megabits/s of UDP payload of *size* bytes."""
    return mbps * 1e6 / (8.0 * size)


def open_sender(dest, ttl=None, interface=None, loop=True):
    """A UDP socket to send to *dest* (its family: AF_INET6 for an IPv6 address).

    *interface*: IPv4, the local address to send from (IP_MULTICAST_IF for multicast); IPv6
    unicast, the local address to bind to; IPv6 multicast, the interface (name, index or
    ``addr%scope``) for IPV6_MULTICAST_IF.  *ttl*: TTL, IPv6 hop limit (multicast default 1).
    """
    ipv6 = _common.family_of(dest) == socket.AF_INET6
    level = socket.IPPROTO_IPV6 if ipv6 else socket.IPPROTO_IP
    sock = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        # a large send buffer lets bursts of big datagrams leave without ENOBUFS
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        except OSError:
            pass
        if _common.is_multicast(dest):
            sock.setsockopt(level, socket.IPV6_MULTICAST_HOPS if ipv6 else socket.IP_MULTICAST_TTL,
                            1 if ttl is None else ttl)
            sock.setsockopt(level, socket.IPV6_MULTICAST_LOOP if ipv6 else socket.IP_MULTICAST_LOOP,
                            1 if loop else 0)
            if interface:
                sock.setsockopt(level, socket.IPV6_MULTICAST_IF if ipv6 else socket.IP_MULTICAST_IF,
                                _common.interface_index(interface) if ipv6
                                else socket.inet_aton(interface))
        else:
            if ttl is not None:
                sock.setsockopt(level, socket.IPV6_UNICAST_HOPS if ipv6 else socket.IP_TTL, ttl)
            if interface:
                sock.bind(_common.sockaddr(interface, 0) if ipv6 else (interface, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def _send_retrying(sendto, buf, addr):
    """sendto() that waits out a full send queue; False if it stayed full (~10 ms)."""
    for _ in range(50):
        try:
            sendto(buf, addr)
            return True
        except OSError as exc:
            if exc.errno not in (errno.ENOBUFS, errno.EAGAIN, errno.ENOMEM):
                raise
            time.sleep(0.0002)
    return False


def send_end_markers(sock, addr, buf, markers=END_MARKERS, pause=END_MARKER_PAUSE):
    """After *pause* s, *markers* datagrams with sequence number END_SEQ, END_MARKER_GAP apart.

    A receiver that knows how many datagrams to expect (tools/bench.py stream mode) stops at
    the first one instead of waiting out a timeout; several are sent in case one is lost.
    """
    time.sleep(pause)
    for i in range(markers):
        if i:
            time.sleep(END_MARKER_GAP)
        _common.stamp(buf, _common.END_SEQ)
        _send_retrying(sock.sendto, buf, addr)


def send(dest, port, size=64, rate=None, mbps=None, count=None, duration=None, ttl=None,
         interface=None, loop=True, progress=False, start_seq=0, stream=None, end_marker=False):
    """Send datagrams to ``(dest, port)`` (an IPv4 or IPv6 address, link-local with its
    ``%scope``); returns a summary dict.

    *rate* is datagrams/s, *mbps* UDP payload megabits/s (one of them, or neither for "as fast
    as possible").  Stops after *count* datagrams or *duration* seconds, whichever is first, or
    on KeyboardInterrupt when neither is given.  *progress* shows a live line (only on a TTY).
    *end_marker* then sends end markers (:func:`send_end_markers`, not counted in "sent").

    Pacing: the datagrams due so far are sent back to back (at most MAX_BURST per clock
    reading), then the sender sleeps until the next batch of about BATCH_SECONDS' worth is due:
    one sleep per datagram at low rates, a clock reading per ~1 ms batch at high ones.  The
    reachable rate is bounded by the sendto() loop itself (about 200,000 datagrams/s of 32 B on
    loopback for one CPU); "rate" in the result is what was achieved.
    """
    if rate is not None and mbps is not None:
        raise ValueError("give either rate (datagrams/s) or mbps, not both")
    if mbps is not None:
        rate = rate_from_mbps(mbps, size)
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive, got %r" % rate)
    if count is not None and count < 0:
        raise ValueError("count must be >= 0, got %r" % count)
    buf = _common.make_payload(size, _common.family_of(dest))
    stream = stream or sys.stdout
    live = _common.LiveLine(stream, enabled=None if progress else False)
    addr = _common.sockaddr(dest, port)
    sock = open_sender(dest, ttl, interface, loop)
    batch = max(1, int(rate * BATCH_SECONDS)) if rate else MAX_BURST
    seq = start_seq
    errors = 0
    clock = time.perf_counter
    start = clock()
    deadline = start + duration if duration is not None else None
    next_show = start + 0.2
    sendto = sock.sendto
    # the hot loop: sequence number and send time written in place, one sendto per datagram
    pack_seq_time, offset = _common.SEQ_TIME.pack_into, _common.SEQ_TIME_OFFSET
    now_ns = _common.monotonic_ns
    try:
        try:
            while count is None or seq - start_seq < count:
                now = clock()
                if deadline is not None and now >= deadline:
                    break
                sent = seq - start_seq
                if rate:
                    due = int((now - start) * rate) + 1
                    if count is not None:
                        due = min(due, count)
                    todo = due - sent
                    if todo <= 0:
                        wake = start + (sent + batch - 1) / rate
                        if deadline is not None:
                            wake = min(wake, deadline)
                        time.sleep(max(0.0, wake - now))
                        continue
                    todo = min(todo, MAX_BURST)
                else:
                    todo = MAX_BURST if count is None else min(MAX_BURST, count - sent)
                for number in range(seq, seq + todo):
                    pack_seq_time(buf, offset, number, now_ns())
                    try:
                        sendto(buf, addr)
                    except OSError as exc:
                        if exc.errno not in (errno.ENOBUFS, errno.EAGAIN, errno.ENOMEM):
                            raise
                        if not _send_retrying(sendto, buf, addr):
                            errors += 1
                seq += todo
                if live.enabled and now >= next_show:
                    done, elapsed = seq - start_seq, now - start
                    live.show("sent %d  %s" % (done, _common.format_rate(
                        done / elapsed, done * size / elapsed)))
                    next_show = now + 0.2
        except KeyboardInterrupt:
            end_marker = False
        finally:
            elapsed = clock() - start
            live.finish()
        if end_marker:
            send_end_markers(sock, addr, buf)
    finally:
        sock.close()
    sent = seq - start_seq
    elapsed = max(elapsed, 1e-9)
    return {
        "dest": dest, "port": port, "size": size, "sent": sent, "send_errors": errors,
        "first_seq": start_seq, "seconds": elapsed, "rate": sent / elapsed,
        "mbps": sent * size * 8 / elapsed / 1e6, "clock": _common.clock_name(),
    }


def summary_line(result):
    return ("sent %(sent)d datagrams of %(size)d bytes to %(to)s in %(seconds).3f s: "
            "%(rate).0f dgram/s, %(mbps).2f Mbit/s payload, %(send_errors)d send errors"
            % dict(result, to=_common.format_hostport(result["dest"], result["port"])))


def build_parser():
    p = argparse.ArgumentParser(
        description="Send numbered, timestamped UDP datagrams (unicast or multicast).",
        epilog="The embedded send time is CLOCK_MONOTONIC: one-way latency needs the receiver "
               "on the same host.")
    p.add_argument("destination", help="HOST:PORT, unicast or multicast (e.g. 127.0.0.1:14000); "
                                        "IPv6 as [HOST]:PORT (e.g. [::1]:14000, "
                                        "[fe80::1%%eth0]:14000)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, help="datagrams per second (default: unpaced)")
    pace.add_argument("--mbps", type=float, help="UDP payload megabits per second")
    p.add_argument("--size", type=int, default=64,
                   help="datagram (UDP payload) size in bytes, %d..%d (IPv6: ..%d); above "
                        "the MTU the kernel fragments (default 64)"
                        % (_common.HEADER_SIZE, _common.MAX_UDP_PAYLOAD,
                           _common.MAX_UDP_PAYLOAD6))
    p.add_argument("--count", type=int, help="stop after this many datagrams")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--ttl", type=int, help="IP TTL, IPv6 hop limit (multicast default 1)")
    p.add_argument("--interface", metavar="ADDR",
                   help="local IPv4 address to send from (IP_MULTICAST_IF for multicast); "
                        "IPv6: the local address to send from, for multicast the interface "
                        "name or index (IPV6_MULTICAST_IF)")
    loop = p.add_mutually_exclusive_group()
    loop.add_argument("--loop", dest="loop", action="store_true", default=True,
                      help="multicast loopback on: this host's receivers get a copy (default)")
    loop.add_argument("--no-loop", dest="loop", action="store_false",
                      help="multicast loopback off")
    p.add_argument("--start-seq", type=int, default=0, help="first sequence number (default 0)")
    p.add_argument("--end-marker", action="store_true",
                   help="after the last datagram, send %d end markers (sequence number 2**64-1, "
                        "not counted) so that a receiver expecting --count datagrams can stop "
                        "at once (tools/bench.py stream mode)" % END_MARKERS)
    p.add_argument("--cpu", type=int, help="pin the sender to this CPU (Linux)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no live progress line")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        host, port = _common.parse_hostport(args.destination, default_host="127.0.0.1")
        if _common.family_of(host) == socket.AF_INET6:
            _common.sockaddr(host, port)
        else:
            socket.inet_aton(host)
    except (ValueError, OSError) as exc:
        parser.error("destination %r: %s (expected HOST:PORT, IPv6 as [HOST]:PORT)"
                     % (args.destination, exc))
    if port == 0:
        parser.error("destination port must not be 0")
    if args.count is None and args.duration is None:
        print("no --count or --duration: sending until Ctrl-C", file=sys.stderr)
    if args.cpu is not None:
        _common.pin_to_cpu(args.cpu)
    try:
        result = send(host, port, size=args.size, rate=args.rate, mbps=args.mbps,
                      count=args.count, duration=args.duration, ttl=args.ttl,
                      interface=args.interface, loop=args.loop, progress=not args.quiet,
                      start_seq=args.start_seq, end_marker=args.end_marker)
    except (ValueError, OSError) as exc:
        print("send.py: %s" % exc, file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else summary_line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
