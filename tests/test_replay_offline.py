"""Captures replayed through the REAL libpcap and the real frame readers.

* Offline: pcap savefiles written here (classic format; Ethernet with normal, out-of-order
  fragmented, 802.1Q / QinQ-tagged datagrams and garbage frames; both byte orders and the
  nanosecond variant; plus the other link types the parser supports) are opened with
  ``pcap_open_offline`` and read with both ``NextExReader`` and ``DumpBatchReader``.  Both readers
  must hand out exactly the frames that were written, and the parsed / reassembled payloads must
  be exactly the datagrams that were written, with garbage counted by reason.
* Live (``live`` marker, runs in CI): ``tcpdump -w`` inside a test namespace records normal and
  fragmented datagrams (5000 bytes over a 1500-byte veth) sent with plain sockets between two
  namespaces; the file is replayed the same way and compared with what was sent.
"""

import collections
import ctypes
import inspect
import os
import random
import re
import select
import socket
import struct
import time

import pytest

import netns
import packets as P
from udpcap_ctypes import _capture, _loader, _platform
from udpcap_ctypes._packet import FRAGMENT, make_link_parser, parse_ipv4, parse_udp
from udpcap_ctypes._reassembly import Reassembler
from udpcap_ctypes._stats import Statistics

PORT = 5000
SRC = "198.18.0.1"
DST = "198.18.0.2"


# -- reading with the real libpcap --------------------------------------------------------------

def library():
    from conftest import libpcap_unavailable_reason
    reason = libpcap_unavailable_reason()
    if reason:
        pytest.skip(reason)
    return _loader.get_library()


def open_offline(path):
    fns = library().fns
    errbuf = ctypes.create_string_buffer(512)
    handle = fns.pcap_open_offline(os.fsencode(path), errbuf)
    return fns, handle


def _construct(cls, *args, snaplen):
    """Build a reader whatever its constructor takes (``snaplen`` only where it is a parameter)."""
    params = inspect.signature(cls.__init__).parameters
    if "snaplen" in params:
        return cls(*args, snaplen=snaplen)
    return cls(*args)


def _drain(reader):
    """Every frame a reader hands out, as bytes, until the savefile is exhausted."""
    frames = []
    if hasattr(reader, "refill"):                 # batch readers: records in one buffer
        while True:
            spans = P.batch_frames(reader)
            if not spans:
                break
            frames.extend(bytes(reader.view[a:b]) for a, b in spans)
    else:                                         # per-frame readers: (buf, start, end)
        while True:
            frame = reader.read()
            if frame is None:
                break
            buf, start, end = frame
            frames.append(bytes(buf[start:end]))
    return frames


def read_with_libpcap(path, which):
    """``(dlt, [frames])`` of a savefile through libpcap and the reader *which*."""
    fns, handle = open_offline(path)
    try:
        dlt = fns.pcap_datalink(handle)
        snaplen = fns.pcap_snapshot(handle)
        if which == "next_ex":
            reader = _construct(_capture.NextExReader, fns, handle, snaplen=snaplen)
        else:
            libc = _platform._load_libc()
            assert libc is not None, "fmemopen not found in the C library"
            reader = _construct(_capture.DumpBatchReader, fns, libc, handle, snaplen=snaplen)
        try:
            return dlt, _drain(reader)
        finally:
            reader.close()
    finally:
        fns.pcap_close(handle)


def read_both(path):
    dlt1, frames1 = read_with_libpcap(path, "next_ex")
    dlt2, frames2 = read_with_libpcap(path, "dump")
    assert dlt1 == dlt2
    assert len(frames1) == len(frames2)
    assert frames1 == frames2, "NextExReader and DumpBatchReader disagree"
    return dlt1, frames1


# -- the packet path --------------------------------------------------------------------------

def run_packet_path(dlt, frames, port=PORT, verify=False):
    """Parse and reassemble *frames*; ``(payloads [(src, sport, payload)], stats)`` in order."""
    stats = Statistics()
    parse_link = make_link_parser(dlt)
    reassembler = Reassembler(stats)
    out = []
    for frame in frames:
        buf = memoryview(frame)
        ip = parse_link(buf, 0, len(frame), stats)
        if ip < 0:
            continue
        parsed = parse_ipv4(buf, ip, len(frame), stats, verify)
        if parsed is None:
            continue
        if parsed[0] == FRAGMENT:
            _, src, dst, ident, offset, more, first, last = parsed
            segment = reassembler.add(src, dst, ident, offset, more, buf[first:last], 0.0)
            if segment is None:
                continue
            parsed = parse_udp(segment, src, dst, stats, verify)
            if parsed is None:
                continue
            buf = memoryview(segment)
        _, src, dst, sport, dport, first, last = parsed
        if dport != port:
            stats.not_for_us += 1
            continue
        out.append((src, sport, bytes(buf[first:last])))
    return out, stats


# -- offline savefiles ------------------------------------------------------------------------

def datagram(rng, index, size):
    body = struct.pack("!I", index) + bytes(rng.getrandbits(8) for _ in range(251)) * (
        size // 251 + 1)
    return body[:max(size, 4)]


def build_capture(seed=5):
    """Ethernet frames + what the packet path must find in them.

    Returns ``(frames, expected [(src, sport, payload)] in delivery order, garbage counts)``.
    """
    rng = random.Random(seed)
    frames = []
    expected = []
    counts = collections.Counter()
    src_i = P.addr(SRC)

    def normal(index, size, vlans=()):
        payload = datagram(rng, index, size)
        seg = P.udp(payload, 1000 + index, PORT, SRC, DST)
        frames.append(P.ethernet(P.ipv4(seg, SRC, DST, ident=index), vlans=vlans))
        expected.append((src_i, 1000 + index, payload))

    def fragmented(index, size, vlans=(), interleave=()):
        payload = datagram(rng, index, size)
        seg = P.udp(payload, 1000 + index, PORT, SRC, DST)
        packets = [pkt for _, _, pkt in P.fragment_ip(seg, SRC, DST, ident=index)]
        order = list(range(len(packets)))
        while order == sorted(order) and len(order) > 1:
            rng.shuffle(order)                       # out of order, never by chance in order
        for n, k in enumerate(order):
            frames.append(P.ethernet(packets[k], vlans=vlans))
            if n < len(interleave):
                interleave[n]()
        expected.append((src_i, 1000 + index, payload))

    def garbage(kind):
        counts[kind] += 1
        if kind == "link_truncated":
            frames.append(P.MAC_B + P.MAC_A[:rng.randint(0, 5)])
        elif kind == "link_not_ipv4":
            frames.append(P.ethernet(bytes(28), ethertype=rng.choice([P.ETH_ARP, P.ETH_IPV6])))
        elif kind == "ip_checksum":
            frames.append(P.ethernet(P.ipv4(P.udp(b"bad", src=SRC, dst=DST), SRC, DST,
                                            checksum=0x1234)))
        elif kind == "ip_truncated":
            pkt = P.ipv4(P.udp(b"x" * 300, src=SRC, dst=DST), SRC, DST)
            frames.append(P.ethernet(pkt[:rng.randint(21, 200)]))
        elif kind == "ip_version":
            frames.append(P.ethernet(P.ipv4(P.udp(b"v6?", src=SRC, dst=DST), SRC, DST,
                                            version=6)))
        elif kind == "udp_length":
            frames.append(P.ethernet(P.ipv4(P.udp(b"abc", src=SRC, dst=DST, length=200,
                                                  checksum=0), SRC, DST)))
        elif kind == "not_for_us":
            if rng.random() < 0.5:
                frames.append(P.ethernet(P.ipv4(bytes(20), SRC, DST, proto=6)))
            else:
                frames.append(P.ethernet(P.ipv4(P.udp(b"other port", 1, PORT + 1, SRC, DST),
                                                SRC, DST)))

    kinds = ["link_truncated", "link_not_ipv4", "ip_checksum", "ip_truncated", "ip_version",
             "udp_length", "not_for_us"]
    index = 0
    for round_ in range(6):
        for size in (0, 1, 32, 1400, 1472):
            normal(index, size)
            index += 1
            garbage(kinds[index % len(kinds)])
        normal(index, 512, vlans=(100,))
        index += 1
        normal(index, 1472, vlans=((P.ETH_8021AD, 10), (P.ETH_8021Q, 20)))
        index += 1
        fragmented(index, 5000, interleave=[lambda: garbage("ip_checksum"),
                                            lambda: garbage("link_not_ipv4")])
        index += 1
        fragmented(index, 1473 + 300 * round_, vlans=(7,))
        index += 1
        fragmented(index, 20000, vlans=((P.ETH_8021AD, 1), (P.ETH_8021Q, 2)))
        index += 1
    fragmented(index, 65507)
    return frames, expected, counts


def check_results(payloads, stats, expected, counts):
    assert payloads == expected
    moved = {k: v for k, v in stats.malformed.items() if v}
    want = {k: v for k, v in counts.items() if k != "not_for_us"}
    assert moved == want
    assert stats.not_for_us == counts["not_for_us"]
    assert stats.pending_datagrams == 0


@pytest.mark.parametrize("byteorder,nanosecond", [("<", False), (">", False), ("<", True)])
def test_offline_ethernet_savefile_through_both_readers(tmp_path, byteorder, nanosecond):
    frames, expected, counts = build_capture()
    path = P.write_pcap(str(tmp_path / "mixed.pcap"), frames, byteorder=byteorder,
                        nanosecond=nanosecond, snaplen=262144)
    dlt, got = read_both(path)
    assert dlt == P.DLT_EN10MB
    assert got == frames                         # byte-identical, none lost, none added
    payloads, stats = run_packet_path(dlt, got)
    check_results(payloads, stats, expected, counts)
    assert stats.reassembled == 19 and stats.fragments > 19 * 2


def test_offline_snaplen_truncated_frames(tmp_path):
    """Frames cut by the snapshot length (caplen < len): only captured bytes are parsed."""
    rng = random.Random(3)
    whole = [P.ethernet(P.ipv4(P.udp(datagram(rng, i, 1400), 1, PORT, SRC, DST), SRC, DST))
             for i in range(5)]
    small = P.ethernet(P.ipv4(P.udp(b"fits", 2, PORT, SRC, DST), SRC, DST))
    records = [(f[:200], len(f)) for f in whole] + [small]
    path = P.write_pcap(str(tmp_path / "cut.pcap"), records, snaplen=200)
    dlt, got = read_both(path)
    assert got == [f[:200] for f in whole] + [small]
    payloads, stats = run_packet_path(dlt, got)
    assert payloads == [(P.addr(SRC), 2, b"fits")]
    assert stats.malformed["ip_truncated"] == 5 and stats.malformed_total == 5


@pytest.mark.parametrize("linktype", [P.DLT_LINUX_SLL, P.DLT_LINUX_SLL2, P.DLT_NULL,
                                      P.DLT_LOOP, P.LINKTYPE_RAW])
def test_offline_other_link_types(tmp_path, linktype):
    rng = random.Random(linktype)
    expected = []
    frames = []
    for index, size in enumerate((0, 100, 1472, 3000, 9000)):
        payload = datagram(rng, index, size)
        seg = P.udp(payload, 2000 + index, PORT, SRC, DST)
        packets = [pkt for _, _, pkt in P.fragment_ip(seg, SRC, DST, ident=index)]
        rng.shuffle(packets)
        frames.extend(P.wrap(linktype, pkt) for pkt in packets)
        expected.append((P.addr(SRC), 2000 + index, payload))
    ipv6 = b"\x60" + bytes(47)
    other_protocol = {P.DLT_LINUX_SLL: P.sll(ipv6, protocol=P.ETH_IPV6),
                      P.DLT_LINUX_SLL2: P.sll2(ipv6, protocol=P.ETH_IPV6),
                      P.DLT_NULL: P.null(ipv6, family=24),
                      P.DLT_LOOP: P.loop(ipv6, family=30),
                      P.LINKTYPE_RAW: ipv6}[linktype]
    frames.insert(3, other_protocol)
    if linktype != P.LINKTYPE_RAW:
        frames.insert(1, P.wrap(linktype, ipv6))         # says IPv4, carries IPv6
    path = P.write_pcap(str(tmp_path / "lt.pcap"), frames, linktype=linktype)
    dlt, got = read_both(path)
    assert got == frames
    # libpcap maps the file's LINKTYPE_ to this platform's DLT_ (LINKTYPE_RAW 101 -> DLT_RAW).
    payloads, stats = run_packet_path(dlt, got)
    assert payloads == expected
    assert stats.malformed["link_not_ipv4"] == 1
    if linktype != P.LINKTYPE_RAW:
        assert stats.malformed["ip_version"] == 1
    assert stats.malformed_total == (1 if linktype == P.LINKTYPE_RAW else 2)


def test_offline_random_garbage_never_breaks_the_path(tmp_path):
    """Random bytes and mutated frames in a savefile: read identically, parsed without error."""
    rng = random.Random(99)
    frames, expected, _ = build_capture(seed=11)
    noisy = []
    for frame in frames:
        noisy.append(frame)
        for _ in range(rng.randint(0, 2)):
            junk = bytearray(rng.choice(frames))
            for _ in range(rng.randint(1, 6)):
                junk[rng.randrange(len(junk))] ^= 1 << rng.randrange(8)
            if rng.random() < 0.3:
                del junk[rng.randint(0, len(junk)):]
            if rng.random() < 0.2:
                junk = bytearray(rng.getrandbits(8) for _ in range(rng.randint(1, 120)))
            noisy.append(bytes(junk))
    path = P.write_pcap(str(tmp_path / "noisy.pcap"), noisy)
    dlt, got = read_both(path)
    assert got == noisy
    payloads, stats = run_packet_path(dlt, got, verify=True)
    # Mutated copies may duplicate a datagram (a flipped MAC bit) or break a fragmented one
    # (overlap with different bytes), but with checksums verified nothing corrupted comes out.
    wanted = set(expected)
    assert set(payloads) <= wanted
    assert len(set(payloads)) >= len(expected) // 2
    assert stats.malformed["ip_checksum"] > 10 and stats.malformed["udp_checksum"] > 0


# -- live: tcpdump -w inside a namespace, then replay -------------------------------------------

def start_tcpdump(ns, ifname, path):
    # --immediate-mode: without it TPACKET_V3 hands frames over per 1 s block timeout, and
    # frames still in the ring when tcpdump is stopped never reach the file.  In immediate mode
    # every ring slot is snaplen-sized: an MTU-sized snaplen (1500 + link header) and an 8 MiB
    # buffer keep the 45-fragment bursts of a 65507-byte datagram from overflowing it.
    proc = ns.popen(["tcpdump", "-i", ifname, "-n", "-U", "--immediate-mode", "-Z", "root",
                     "-s", "1600", "-B", "8192", "-w", path])
    deadline = time.monotonic() + 15
    text = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.5)
        if ready:
            line = proc.stderr.readline()
            text += line
            if "listening on" in line:
                return proc
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("tcpdump did not start in %s: %s" % (ns.name, text.strip()))


def stop_tcpdump(proc):
    proc.terminate()
    try:
        _out, err = proc.communicate(timeout=15)
    except Exception:
        proc.kill()
        raise
    return err


@pytest.mark.live
def test_live_tcpdump_capture_replayed(netpair, tmp_path):
    path = str(tmp_path / "live.pcap")
    pcap = start_tcpdump(netpair.b, netpair.if_b, path)
    rng = random.Random(2024)
    sent = []
    with netns.in_namespace(netpair.a):
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with netns.in_namespace(netpair.b):
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # no ICMP unreachables
    try:
        sink.bind((netpair.addr_b, PORT))
        sender.bind((netpair.addr_a, 0))
        # Resolve the neighbour first so that no fragment waits (or is lost) behind ARP.
        sender.sendto(b"warm-up", (netpair.addr_b, PORT + 1))
        time.sleep(0.3)
        sizes = [0, 1, 64, 1400, 1472, 1473, 5000, 5000, 5000, 12000, 30000, 65507]
        sink.settimeout(5)
        received = []
        for _ in range(3):
            for size in sizes:
                payload = datagram(rng, len(sent), size)
                sender.sendto(payload, (netpair.addr_b, PORT))
                sent.append(payload)
                # Each one arrived at the kernel socket in b: the capture must hold it too.
                received.append(sink.recv(65535))
        sport = sender.getsockname()[1]
        assert received == sent
        time.sleep(0.3)
    finally:
        sender.close()
        sink.close()
        err = stop_tcpdump(pcap)
    assert re.search(r"^0 packets dropped by kernel", err, re.M), err

    dlt, frames = read_both(path)
    assert dlt == P.DLT_EN10MB
    assert "%d packets captured" % len(frames) in err, err
    linktype, direct = P.read_pcap(path)
    assert linktype == P.DLT_EN10MB and frames == direct
    payloads, stats = run_packet_path(dlt, frames)
    src = P.addr(netpair.addr_a)
    assert collections.Counter(payloads) == collections.Counter((src, sport, p) for p in sent)
    assert [p for _, _, p in payloads] == sent          # one sender, one path: in order
    fragmented = sum(1 for p in sent if len(p) > 1472)
    assert stats.reassembled == fragmented
    assert stats.fragments >= fragmented * 2
    # Other traffic on the link (ARP, IPv6 neighbour discovery) is "not IPv4"; nothing else.
    assert stats.malformed_total == stats.malformed["link_not_ipv4"]


@pytest.mark.parametrize("which", ["next_ex", "dump"])
def test_readers_say_when_the_capture_is_exhausted(tmp_path, which):
    """``exhausted`` (what interrupt moderation relies on) is False while a refill stopped for
    lack of room or batch size with frames left, True once the savefile had nothing more."""
    frame = P.ethernet(P.ipv4(P.udp(b"x" * 32, 9, PORT, SRC, DST), SRC, DST))
    total = 50
    path = P.write_pcap(str(tmp_path / "many.pcap"), [frame] * total, snaplen=256)
    fns, handle = open_offline(path)
    try:
        snaplen = fns.pcap_snapshot(handle)
        if which == "next_ex":
            reader = _capture.NextExReader(fns, handle, snaplen, max_batch=20)
        else:
            reader = _capture.DumpBatchReader(fns, _platform._load_libc(), handle, snaplen,
                                              size=20 * (16 + snaplen))
        try:
            counts, flags = [], []
            while True:
                count = len(P.batch_frames(reader))
                counts.append(count)
                flags.append(reader.exhausted)
                if not count:
                    break
        finally:
            reader.close()
    finally:
        fns.pcap_close(handle)
    assert sum(counts) == total
    assert counts[:2] == [20, 20] and flags[:2] == [False, False]
    assert flags[-1] is True and counts[-1] == 0
    assert all(flag for count, flag in zip(counts, flags) if count < 20)
