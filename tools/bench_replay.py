#!/usr/bin/env python3
"""CPU per datagram of the receive path on recorded traffic: no network, no wake-ups, no sender.

Writes a savefile of ``--count`` UDP datagrams per size -- Ethernet frames as a Linux loopback
capture has them -- and reads it back ``--repeat`` times with each receiver, all from the same
file:

* ``UdpcapSocket.recvfrom_into`` and ``UdpcapSocket.recvfrom``: the real receive path (the
  receiver, the batch reader's ``pcap_dispatch`` + ``pcap_dump``, the batch parser, the
  delivery rules and the socket's fast path) over ``pcap_open_offline`` instead of a device;
* ``pypcap+dpkt`` when both are installed: ``pcap.pcap(savefile).dispatch`` and dpkt, as the
  live pypcap receiver of ``tools/bench.py`` parses.

``--mtu 1500`` fragments every datagram that does not fit as a 1500-byte link would (in order,
1480-byte pieces), to measure reassembly; pypcap+dpkt does not reassemble and sits those out.

It prints the median process CPU time per datagram and the ratio to
``UdpcapSocket.recvfrom_into``.  ``tools/bench.py`` measures the live figures, which add what
replay leaves out: waiting, wake-ups and the capture ring.  On a noisy machine the replay
figures are the steadier ones, and under ``valgrind --tool=callgrind`` (``--repeat 1``, two
counts, subtract) they give instructions per datagram, which do not depend on the machine's
load at all.

    python3 tools/bench_replay.py
    python3 tools/bench_replay.py --sizes 1400 --count 50000 --json
"""

import argparse
import json
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time

import _common

_common.ensure_package_importable()

PORT = 5000
SOURCE = ("127.0.0.1", 40000)
DESTINATION = ("127.0.0.1", PORT)
RECEIVERS = ("UdpcapSocket.recvfrom_into", "UdpcapSocket.recvfrom", "pypcap+dpkt")
BASELINE = RECEIVERS[0]


def write_savefile(path, count, size, mtu=None):
    """*count* datagrams of *size* bytes; fragmented to fit *mtu* when given; frames written."""
    payload = _common.make_payload(size)
    frames = 0
    with _common.PcapWriter(path, ethernet=True) as writer:
        for seq in range(count):
            _common.stamp(payload, seq)
            packet = _common.synthesize_ipv4_udp(payload, SOURCE, DESTINATION, ident=seq)
            for piece in _fragments(packet, mtu):
                writer.write_packet(piece, timestamp=0.0)
                frames += 1
    return frames


def _fragments(packet, mtu):
    """*packet* (IPv4, 20-byte header) as the fragments a link of *mtu* bytes carries."""
    if mtu is None or len(packet) <= mtu:
        return [packet]
    header, body = bytearray(packet[:20]), packet[20:]
    step = (mtu - 20) // 8 * 8
    pieces = []
    for offset in range(0, len(body), step):
        chunk = body[offset:offset + step]
        more = offset + step < len(body)
        struct.pack_into("!H", header, 2, 20 + len(chunk))                      # total length
        struct.pack_into("!H", header, 6, (0x2000 if more else 0) | offset >> 3)  # MF, offset
        struct.pack_into("!H", header, 10, 0)
        struct.pack_into("!H", header, 10, _common.ipv4_checksum(bytes(header)))
        pieces.append(bytes(header) + chunk)
    return pieces


class _OfflineCapture:
    """What a Receiver needs of a capture, over a savefile instead of a device."""

    def __init__(self, platform, path):
        import ctypes

        from udpcap_ctypes import _capture
        self._fns = platform.fns
        errbuf = ctypes.create_string_buffer(512)
        self.handle = self._fns.pcap_open_offline(os.fsencode(path), errbuf)
        self.linktype = self._fns.pcap_datalink(self.handle)
        self.reader = _capture.DumpBatchReader(self._fns, platform.libc, self.handle,
                                               self._fns.pcap_snapshot(self.handle))

    def drops(self):
        return 0                          # a savefile drops nothing

    def close(self):
        self.reader.close()
        self._fns.pcap_close(self.handle)


def open_offline_socket(path):
    """A non-blocking UdpcapSocket "bound" to 127.0.0.1:PORT whose only capture is *path*.

    Reaches into the socket's private state on purpose: replay is a benchmark of the receive
    path, not a feature of the public API.
    """
    from udpcap_ctypes import UdpcapSocket
    from udpcap_ctypes._capture import Device
    from udpcap_ctypes._platform import NO_OWN_FRAMES
    from udpcap_ctypes._receiver import Receiver, Subscription
    from udpcap_ctypes._shared_capture import SharedCapture
    sock = UdpcapSocket(coalesce=0)
    platform = sock._platform
    if platform.libc is None:
        raise SystemExit("bench_replay.py needs the POSIX batch reader (fmemopen in the C library)")
    receiver = Receiver(platform, sock._stats, sock._options)
    device = Device(path, None, 0, [], loopback=True)
    receiver.configure([device], 0x7F000001, PORT)
    shared = SharedCapture(_OfflineCapture(platform, path), device, NO_OWN_FRAMES,
                           platform.own_multicast_seen_on == "egress")
    subscription = Subscription(receiver, shared)
    shared.add(subscription)
    receiver.captures.append(subscription)
    sock._receiver = receiver
    sock._ready = receiver.ready
    sock._sockname = DESTINATION
    sock.setblocking(False)
    return sock


def replay_udpcap(path, method):
    """Datagrams delivered and CPU seconds for one pass over *path*."""
    sock = open_offline_socket(path)
    buffer = bytearray(65536)
    received = 0
    started = time.process_time()
    try:
        if method == "recvfrom_into":
            receive = sock.recvfrom_into
            while True:
                receive(buffer)
                received += 1
        else:
            receive = sock.recvfrom
            while True:
                receive(65536)
                received += 1
    except BlockingIOError:
        pass
    finally:
        elapsed = time.process_time() - started
        sock.close()
    return received, elapsed


def replay_pypcap(path):
    import collections

    import dpkt
    import pcap
    handle = pcap.pcap(name=path)
    frames = collections.deque()
    keep = frames.append
    received = 0
    started = time.process_time()
    while handle.dispatch(-1, lambda _ts, frame: keep(frame)) > 0 or frames:
        while frames:
            _ = dpkt.ethernet.Ethernet(frames.popleft()).data.data.data   # parse to UDP
            received += 1
    elapsed = time.process_time() - started
    handle.close()
    return received, elapsed


def available(name):
    if name == "pypcap+dpkt":
        try:
            import dpkt  # noqa: F401
            import pcap  # noqa: F401
        except ImportError:
            return False
    return True


def run(sizes, count, repeat, receivers, workdir, mtu=None):
    rows = []
    for size in sizes:
        path = os.path.join(workdir, "replay_%d.pcap" % size)
        frames = write_savefile(path, count, size, mtu)
        for name in receivers:
            if frames != count and name == "pypcap+dpkt":
                continue                        # fragments: dpkt does not reassemble
            samples = []
            for _ in range(repeat):
                if name == "pypcap+dpkt":
                    received, seconds = replay_pypcap(path)
                else:
                    received, seconds = replay_udpcap(path, name.split(".", 1)[1])
                if received != count:
                    raise SystemExit("%s delivered %d of the %d datagrams of %s"
                                     % (name, received, count, path))
                samples.append(seconds * 1e6 / count)
            rows.append({"size": size, "receiver": name, "datagrams": count,
                         "frames": frames, "cpu_us_per_datagram": statistics.median(samples),
                         "samples": samples})
    for row in rows:
        base = [r for r in rows if r["size"] == row["size"] and r["receiver"] == BASELINE]
        row["ratio"] = (row["cpu_us_per_datagram"] / base[0]["cpu_us_per_datagram"]
                        if base else None)
    return rows


def print_table(rows, repeat):
    print("replay of a savefile, CPU per datagram (median of %d)" % repeat)
    print("%6s  %-28s %12s %12s  %s" % ("size B", "receiver", "frames/dgram", "CPU us/dgram",
                                        "x " + BASELINE))
    for row in rows:
        ratio = "%.2f" % row["ratio"] if row["ratio"] is not None else "-"
        print("%6d  %-28s %12.1f %12.2f  %s" % (row["size"], row["receiver"],
                                               row["frames"] / row["datagrams"],
                                               row["cpu_us_per_datagram"], ratio))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="datagrams in each savefile")
    parser.add_argument("--sizes", default="32,1400",
                        help="payload sizes in bytes, comma-separated (default 32,1400)")
    parser.add_argument("--repeat", type=int, default=5, help="passes per figure, median")
    parser.add_argument("--receivers", default=",".join(RECEIVERS),
                        help="comma-separated subset of: %s" % ", ".join(RECEIVERS))
    parser.add_argument("--mtu", type=int, default=None,
                        help="fragment datagrams that do not fit a link of this MTU "
                             "(e.g. 1500); default: no fragments")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    for size in sizes:
        if not _common.HEADER_SIZE <= size <= 65000:
            parser.error("sizes must be between %d and 65000 bytes" % _common.HEADER_SIZE)
    if args.count < 1 or args.repeat < 1:
        parser.error("--count and --repeat must be at least 1")
    if args.mtu is not None and not 576 <= args.mtu <= 65535:
        parser.error("--mtu must be between 576 and 65535")
    receivers = [r for r in args.receivers.split(",") if r]
    unknown = [r for r in receivers if r not in RECEIVERS]
    if unknown:
        parser.error("unknown receiver(s) %s; choose from %s"
                     % (", ".join(unknown), ", ".join(RECEIVERS)))
    skipped = [r for r in receivers if not available(r)]
    receivers = [r for r in receivers if r not in skipped]
    workdir = tempfile.mkdtemp(prefix="udpcap-replay-")
    try:
        rows = run(sizes, args.count, args.repeat, receivers, workdir, args.mtu)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        json.dump({"rows": rows, "skipped": skipped, "count": args.count,
                   "repeat": args.repeat, "mtu": args.mtu}, sys.stdout, indent=1)
        print()
    else:
        print_table(rows, args.repeat)
        for name in skipped:
            print("(%s skipped: not installed)" % name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
