"""Seeded fuzzing of the packet path (stdlib only, deterministic, runs in CI).

1. ``test_parser_fuzz``: >= 50,000 mutated frames (truncations, bit flips, lying IPv4 total
   length / IHL / UDP length, fragment offsets near 65535, random link layers among the
   supported ones, garbage around the frame in the buffer) through ``make_link_parser`` +
   ``parse_ipv4`` (+ ``parse_udp`` on fragment data): no exception, every offset within
   ``start <= ... <= end``, and every rejection counted exactly once.

2. ``test_receiver_poll_end_to_end_fuzz``: intact datagrams (many fragmented, fragments in
   random order) mixed into hostile noise, through the real :meth:`Receiver.poll`,
   :class:`Reassembler` and delivery rules.  The harness replaces only the native reader: each
   fake capture's reader lays frames from a list out in batches of savefile records, exactly
   what ``DumpBatchReader``/``NextExReader`` hand the receiver.  Every intact datagram must
   come out exactly once, byte-identical, with its source address, and the reassembly
   memory must never exceed its cap.  Noise never uses the intact datagrams' source
   addresses: someone who can forge the (src, dst, ident) of a datagram in flight can always
   break it -- that is IPv4.
"""

import collections
import inspect
import random
import struct
import time

import pytest

import packets as P
from udpcap_ctypes import _capture, _platform
from udpcap_ctypes._packet import FRAGMENT, UDP, make_link_parser, parse_ipv4, parse_udp
from udpcap_ctypes._reassembly import Reassembler
from udpcap_ctypes._receiver import Receiver, Subscription
from udpcap_ctypes._shared_capture import SharedCapture
from udpcap_ctypes._stats import Statistics
from udpcap_ctypes.udpcap_socket import Options

LINKTYPES = sorted(P.LINK_WRAPPERS)
PORT = 5000
LOCAL = P.addr("198.18.0.2")
GROUP = P.addr("239.1.2.3")
INTACT_SRCS = [P.addr("198.18.1.%d" % i) for i in range(1, 9)]
NOISE_SRCS = [P.addr("198.18.200.%d" % i) for i in range(1, 9)]
PARSER_CASES = 50000
_SF_RECORD = struct.Struct("=IIII")


def link_frame(rng, linktype, packet):
    """*packet* in a frame of *linktype*, with random link-layer details."""
    if linktype == P.DLT_EN10MB:
        vlans = rng.choice([(), (), (7,), ((P.ETH_8021AD, 1), 2), ((P.ETH_QINQ_OLD, 3),)])
        return P.ethernet(packet, vlans=vlans, pad_byte=rng.getrandbits(8))
    if linktype == P.DLT_LINUX_SLL:
        return P.sll(packet, pkttype=rng.choice([0, 0, 1, 2, 3, 4]))
    if linktype == P.DLT_LINUX_SLL2:
        return P.sll2(packet, pkttype=rng.choice([0, 0, 1, 2, 3, 4]))
    if linktype == P.DLT_NULL:
        return P.null(packet, byteorder=rng.choice(["little", "big"]))
    return P.wrap(linktype, packet)


def link_header_length(linktype, frame):
    if linktype == P.DLT_EN10MB:
        pos = 12
        while frame[pos:pos + 2] in (b"\x81\x00", b"\x88\xa8", b"\x91\x00"):
            pos += 4
        return pos + 2
    return P.LINK_WRAPPERS[linktype][1]


def random_packet(rng, src, dst=LOCAL, dport=None):
    """A well-formed IPv4 packet of some kind (UDP, fragment, other protocol)."""
    kind = rng.random()
    options = b"" if rng.random() < 0.8 else bytes(rng.getrandbits(8)
                                                    for _ in range(4 * rng.randint(1, 10)))
    ident = rng.getrandbits(16)
    if dport is None:
        dport = PORT if rng.random() < 0.7 else rng.getrandbits(16)
    size = rng.choice([0, 1, 7, 8, 31, 100, rng.randint(0, 1400)])
    payload = bytes(rng.getrandbits(8) for _ in range(min(size, 64))) * (size // 64 + 1)
    payload = payload[:size]
    checksum = True if rng.random() < 0.7 else rng.choice([0, rng.getrandbits(16)])
    if kind < 0.55:
        seg = P.udp(payload, rng.getrandbits(16), dport, src, dst, checksum=checksum)
        return P.ipv4(seg, src, dst, ident=ident, options=options, df=rng.random() < 0.5)
    if kind < 0.9:
        near_top = rng.random() < 0.3
        offset = (rng.choice([65528, 65520, 65512, 65504, 65480, 64000]) if near_top
                  else rng.choice([0, 0, 1480, 2960, 8 * rng.getrandbits(13)]))
        more = rng.random() < 0.6
        data = (P.udp(payload, 1, dport, src, dst, checksum=checksum, length=size + 8 + 1480)
                if offset == 0 else payload)
        if more:
            data = data[:len(data) & ~7]
        return P.ipv4(data, src, dst, ident=ident, offset_bytes=offset, mf=more,
                      options=options)
    return P.ipv4(payload, src, dst, proto=rng.choice([1, 6, 47, 255]), ident=ident,
                  options=options)


def make_pool(rng, srcs, count):
    pool = []
    for _ in range(count):
        linktype = rng.choice(LINKTYPES)
        packet = random_packet(rng, rng.choice(srcs))
        frame = link_frame(rng, linktype, packet)
        pool.append((linktype, frame, link_header_length(linktype, frame)))
    return pool


def fix_ip_checksum(frame, ip):
    if len(frame) < ip + 20:
        return
    ihl = (frame[ip] & 0x0F) * 4
    if ihl < 20 or len(frame) < ip + ihl:
        return
    frame[ip + 10:ip + 12] = b"\0\0"
    frame[ip + 10:ip + 12] = struct.pack("!H", P.checksum16(frame[ip:ip + ihl]))


def mutate(rng, frame, ip):
    """A hostile variant of *frame* (bytearray returned); *ip* is its IPv4 header offset."""
    frame = bytearray(frame)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(10)
        has_ip = len(frame) >= ip + 20
        if op == 0:
            del frame[rng.randint(0, len(frame)):]                     # truncate
        elif op == 1:
            for _ in range(rng.randint(1, 4)):                          # bit flips
                if frame:
                    frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
        elif op == 2 and has_ip:                                        # lying total length
            ihl = (frame[ip] & 0x0F) * 4
            real = len(frame) - ip
            value = rng.choice([0, ihl - 1, ihl, ihl + 7, ihl + 8, real - 1, real + 1, 65535,
                                rng.getrandbits(16)]) & 0xFFFF
            frame[ip + 2:ip + 4] = struct.pack("!H", value)
            if rng.random() < 0.7:
                fix_ip_checksum(frame, ip)
        elif op == 3 and has_ip:                                        # lying IHL
            frame[ip] = (frame[ip] & 0xF0) | rng.randrange(16)
            if rng.random() < 0.7:
                fix_ip_checksum(frame, ip)
        elif op == 4 and has_ip:                                        # lying UDP length
            udp = ip + (frame[ip] & 0x0F) * 4
            if len(frame) >= udp + 8:
                real = len(frame) - udp
                value = rng.choice([0, 7, 8, real - 1, real, real + 1, 65535,
                                    rng.getrandbits(16)]) & 0xFFFF
                frame[udp + 4:udp + 6] = struct.pack("!H", value)
        elif op == 5 and has_ip:                                        # offsets near 65535
            offset = rng.choice([65528, 65520, 65512, 8 * rng.getrandbits(13)])
            flags = rng.choice([0, 0x2000, 0x4000, 0x8000])
            frame[ip + 6:ip + 8] = struct.pack("!H", flags | (offset >> 3))
            total = rng.choice([len(frame) - ip, 65535, rng.getrandbits(16)])
            frame[ip + 2:ip + 4] = struct.pack("!H", total & 0xFFFF)
            fix_ip_checksum(frame, ip)
        elif op == 6:                                                   # garbage appended
            frame += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 40)))
        elif op == 7:                                                   # link header smashed
            for k in range(min(ip, len(frame))):
                if rng.random() < 0.3:
                    frame[k] = rng.getrandbits(8)
        elif op == 8:                                                   # random bytes
            frame = bytearray(rng.getrandbits(8) for _ in range(rng.randint(0, 80)))
        elif op == 9 and has_ip:                                        # version / protocol
            frame[ip + rng.choice([0, 9])] = rng.getrandbits(8)
            if rng.random() < 0.5:
                fix_ip_checksum(frame, ip)
    return frame


def place(rng, frame):
    """*frame* inside a buffer with random bytes around it: (buf, start, end)."""
    before = rng.choice([0, 0, 1, 3, 16, 61])
    after = rng.choice([0, 0, 2, 40])
    data = bytearray(rng.getrandbits(8) for _ in range(before)) + frame
    data += b"\x45\x00\xff\xff" * after          # plausible bytes past end must not be read
    kind = rng.random()
    buf = memoryview(data) if kind < 0.8 else (bytes(data) if kind < 0.9 else data)
    return buf, before, before + len(frame)


def count_total(stats):
    return stats.malformed_total + stats.not_for_us


def check_one(buf, start, end, linktype, stats, verify):
    """Parse one frame and check every invariant; returns the parse result (or None)."""
    before = count_total(stats)
    ip = make_link_parser(linktype)(buf, start, end, stats)
    if ip < 0:
        assert ip == -1
        assert count_total(stats) == before + 1
        return None
    assert start <= ip <= end
    assert count_total(stats) == before
    parsed = parse_ipv4(buf, ip, end, stats, verify)
    if parsed is None:
        assert count_total(stats) == before + 1
        return None
    assert count_total(stats) == before
    assert 0 <= parsed[1] < 1 << 32 and 0 <= parsed[2] < 1 << 32
    if parsed[0] == UDP:
        _, _src, _dst, sport, dport, first, last = parsed
        assert ip + 28 <= first <= last <= end
        assert 0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF
    else:
        assert parsed[0] == FRAGMENT
        _, src, dst, ident, offset, more, first, last = parsed
        assert ip + 20 <= first <= last <= end
        assert 0 <= ident <= 0xFFFF and 0 <= offset <= 65528 and offset % 8 == 0
        assert more in (True, False)
        # What the reassembler would hand to parse_udp: never raises either.
        seg = bytes(buf[first:last])
        got = parse_udp(seg, src, dst, stats, verify)
        if got is None:
            assert count_total(stats) == before + 1
        else:
            assert 8 <= got[5] <= got[6] <= len(seg)
    return parsed


def test_parser_fuzz():
    rng = random.Random(20240601)
    pool = make_pool(rng, NOISE_SRCS + INTACT_SRCS, 400)
    stats = Statistics()
    outcomes = collections.Counter()
    started = time.monotonic()
    for case in range(PARSER_CASES):
        linktype, frame, ip = pool[rng.randrange(len(pool))]
        if case % 10 == 0:
            mutated = bytearray(frame)                    # some intact ones
        else:
            mutated = mutate(rng, frame, ip)
        if case % 7 == 0:
            linktype = rng.choice(LINKTYPES)              # parsed as another link type
        buf, start, end = place(rng, mutated)
        verify = case % 2 == 0
        parsed = check_one(buf, start, end, linktype, stats, verify)
        outcomes["none" if parsed is None else parsed[0]] += 1
    elapsed = time.monotonic() - started
    # The mutations reach every stage: each rejection reason of the parser fired.
    for reason in ("link_truncated", "link_not_ipv4", "ip_truncated", "ip_version",
                   "ip_header_length", "ip_total_length", "ip_checksum", "udp_truncated",
                   "udp_length", "udp_checksum"):
        assert stats.malformed[reason] > 20, (reason, stats.malformed)
    assert outcomes[UDP] > 2000 and outcomes[FRAGMENT] > 2000 and outcomes["none"] > 20000
    assert stats.not_for_us > 100
    assert elapsed < 60, "parser fuzz took %.1f s" % elapsed


def test_parser_fuzz_exact_results_for_intact_frames():
    """Unmutated random frames: the parser finds exactly the payload that was put in."""
    rng = random.Random(7)
    for _ in range(3000):
        linktype = rng.choice(LINKTYPES)
        src = rng.choice(INTACT_SRCS)
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
        options = bytes(rng.getrandbits(8) for _ in range(4 * rng.randint(0, 10)))
        sport = rng.getrandbits(16)
        pkt = P.ipv4(P.udp(payload, sport, PORT, src, LOCAL), src, LOCAL, options=options)
        buf, start, end = place(rng, bytearray(link_frame(rng, linktype, pkt)))
        stats = Statistics()
        parsed = check_one(buf, start, end, linktype, stats, True)
        assert parsed[:5] == (UDP, src, LOCAL, sport, PORT)
        assert bytes(buf[parsed[5]:parsed[6]]) == payload
        assert count_total(stats) == 0


# -- end to end through Receiver.poll -----------------------------------------------------------

class ListBatchReader(_capture.BatchReader):
    """Stands in for the native reader only: batches of savefile records from a list of frames.

    ``refill()`` lays out 1..64 frames as ``pcap_dump`` would (16-byte native-order record
    header + captured bytes) from :attr:`start` (0) in one fixed buffer behind :attr:`view` and
    returns where they end, exactly the contract of ``DumpBatchReader``/``NextExReader``; bytes
    of earlier batches stay behind the end, as they do in the real buffer.  Before every batch
    it checks the reassembly memory of its capture against its cap.
    """

    shared = None        # the SharedCapture reading it (set once that exists)

    def __init__(self, frames, rng, watch):
        self._frames = collections.deque(frames)
        self._rng = rng
        self._watch = watch
        self._buffer = bytearray(1 << 20)
        self.view = memoryview(self._buffer)

    @property
    def remaining(self):
        return len(self._frames)

    def refill(self):
        pending = self.shared.reassembler.pending_bytes
        self._watch["max_pending"] = max(self._watch["max_pending"], pending)
        assert pending <= self._watch["cap"]
        assert self.shared.stats.pending_bytes == pending
        frames = self._frames
        buf = self._buffer
        pos = count = 0
        limit = self._rng.randint(1, 64)
        while frames and count < limit and pos + 16 + len(frames[0]) <= len(buf):
            frame = frames.popleft()
            _SF_RECORD.pack_into(buf, pos, 1700000000, count, len(frame), len(frame))
            buf[pos + 16:pos + 16 + len(frame)] = frame
            pos += 16 + len(frame)
            count += 1
        self._watch["read"] += count
        return pos


def poll_all(receiver):
    """Every datagram *receiver* delivers until its list readers are used up."""
    readers = [opened.capture.reader for opened in receiver.captures]
    while True:
        result = receiver.poll(None, 65535)
        if result is None:
            # "Nothing deliverable in the batches read": a real socket would wait on the
            # capture's fd here, which stays readable while frames are queued.
            if any(reader.remaining for reader in readers):
                continue
            return
        yield result


class ListCapture:
    handle = None                 # no native handle: no drops to ask for

    def __init__(self, linktype, reader):
        self.linktype = linktype
        self.reader = reader

    def close(self):
        pass


def fuzz_device():
    """One non-loopback device owning LOCAL (a host mask: no subnet broadcasts)."""
    return _capture.Device("fuzz0", None, 0, [(LOCAL, 0xFFFFFFFF, 0)])


class FakePosixPlatform:
    own_multicast_seen_on = "egress"
    drain_before_wait = False

    def coalesce_default(self, immediate):
        return _platform.LinuxPlatform.COALESCE       # the decision code runs too


def hostile_fragments(rng, src, ident):
    """Deliberately broken fragment sequences (one datagram key), as IPv4 packets."""
    body = bytes(rng.getrandbits(8) for _ in range(64)) * 50           # 3200 bytes
    seg = P.udp(body, 9, PORT, src, LOCAL)
    frags = [pkt for _, _, pkt in P.fragment_ip(seg, src, LOCAL, ident, size=rng.choice(
        [8, 16, 1480]))]
    kind = rng.randrange(8)
    if kind == 0:                 # overlap with different bytes
        frags.append(P.ipv4(b"X" * 64, src, LOCAL, ident=ident, offset_bytes=8, mf=True))
    elif kind == 1:               # two last fragments disagreeing on the end
        frags.append(P.ipv4(b"Y" * 8, src, LOCAL, ident=ident, offset_bytes=4000, mf=False))
    elif kind == 2:               # misaligned non-final fragment
        frags.insert(1, P.ipv4(b"Z" * 13, src, LOCAL, ident=ident, offset_bytes=16, mf=True))
    elif kind == 3:               # beyond 65535
        frags.append(P.ipv4(b"W" * 1480, src, LOCAL, ident=ident, offset_bytes=65528, mf=True))
    elif kind == 4:               # never completed (last fragment missing)
        frags = frags[:-1]
    elif kind == 5:               # duplicated fragments (delivered once, from the noise source)
        frags = frags + frags[:3]
    elif kind == 6:               # first fragment for another port: let go early
        other = P.udp(body, 9, PORT + 1, src, LOCAL)
        frags = [pkt for _, _, pkt in P.fragment_ip(other, src, LOCAL, ident, size=1480)]
    # kind 7: intact, from a noise source (a legitimate delivery from noise)
    rng.shuffle(frags)
    return frags


def flood_fragments(rng, keys, count):
    """Large never-completing fragments (no offset 0, no last) to push the byte cap."""
    chunk = bytes(rng.getrandbits(8) for _ in range(1480))
    out = []
    for _ in range(count):
        src, ident = rng.choice(keys)
        offset = 1480 * rng.randint(1, 43)
        out.append(P.ipv4(chunk, src, LOCAL, ident=ident, offset_bytes=offset, mf=True))
    return out


def pre_parse(linktype, frame):
    """Source address of *frame* as the parser sees it (None when it is rejected)."""
    stats = Statistics()
    ip = make_link_parser(linktype)(frame, 0, len(frame), stats)
    if ip < 0:
        return None
    parsed = parse_ipv4(frame, ip, len(frame), stats)
    return None if parsed is None else parsed[1]


@pytest.mark.parametrize("seed,verify", [(1, False), (2, True)])
def test_receiver_poll_end_to_end_fuzz(seed, verify):
    """Intact datagrams among hostile noise through Receiver.poll (only the reader is fake)."""
    rng = random.Random(seed)
    stats = Statistics()
    receiver = Receiver(FakePosixPlatform(), stats, Options(verify_udp_checksum=verify))
    receiver.configure([fuzz_device()], 0, PORT, {(GROUP, 0)})
    # Each capture reassembles on its own; a cap below the default lets the flood reach it.
    cap = inspect.signature(Reassembler.__init__).parameters["max_bytes"].default // 2
    watch = {"max_pending": 0, "cap": cap, "read": 0}

    linktypes = [P.DLT_EN10MB, P.DLT_LINUX_SLL2, P.DLT_LINUX_SLL, P.DLT_NULL, P.DLT_RAW]
    streams = {lt: [] for lt in linktypes}
    noise_pool = make_pool(rng, NOISE_SRCS, 300)
    flood_keys = [(rng.choice(NOISE_SRCS), 40000 + k) for k in range(300)]
    flood = flood_fragments(rng, flood_keys, 6000)
    expected = collections.Counter()
    intact_count = 0
    noise_frames = 0

    def noise_frame(linktype):
        while True:
            r = rng.random()
            # The flood goes to one capture (one reassembler), so that it reaches the cap.
            if flood and linktype == P.DLT_EN10MB and r < 0.9:
                frame = link_frame(rng, linktype, flood.pop())
            else:
                lt, base, ip = noise_pool[rng.randrange(len(noise_pool))]
                frame = bytes(mutate(rng, base, ip)) if r < 0.9 else base
                frame = frame if lt == linktype else None
                if frame is None:
                    continue
            if pre_parse(linktype, frame) not in INTACT_SRCS:
                return frame

    for index in range(360):
        linktype = linktypes[index % len(linktypes)]
        src = INTACT_SRCS[index % len(INTACT_SRCS)]
        dst = GROUP if index % 9 == 4 else LOCAL
        size = rng.choice([0, 1, 100, 1472, 1473, 3000, 8000, 20000, 65507,
                           rng.randint(0, 65507)])
        payload = struct.pack("!I", index) + bytes(rng.getrandbits(8)
                                                   for _ in range(64)) * (size // 64 + 1)
        payload = payload[:max(size, 4)]
        sport = 1024 + index
        seg = P.udp(payload, sport, PORT, src, dst)
        ident = index
        if len(seg) + 20 <= 1500 and rng.random() < 0.8:
            packets = [P.ipv4(seg, src, dst, ident=ident, df=True)]
        else:
            small = 576 if len(seg) < 20000 and rng.random() < 0.3 else 1480
            packets = [pkt for _, _, pkt in P.fragment_ip(seg, src, dst, ident, size=small)]
            rng.shuffle(packets)
        expected[(payload, src, sport)] += 1
        intact_count += 1
        block = []
        for pkt in packets:
            for _ in range(rng.randint(0, 6)):
                block.append(noise_frame(linktype))
            block.append(link_frame_intact(rng, linktype, pkt))
        for _ in range(rng.randint(0, 6)):
            block.append(noise_frame(linktype))
        if index % 4 == 0:
            for pkt in hostile_fragments(rng, rng.choice(NOISE_SRCS), 30000 + index):
                block.insert(rng.randint(0, len(block)), link_frame(rng, linktype, pkt))
        noise_frames += len(block) - len(packets)
        streams[linktype].extend(block)

    fed = 0
    shared_captures = []
    for linktype in linktypes:
        fed += len(streams[linktype])
        reader = ListBatchReader(streams[linktype], rng, watch)
        shared = SharedCapture(ListCapture(linktype, reader), fuzz_device(),
                               _platform.NO_OWN_FRAMES, own_on_egress=True, verify=verify,
                               reassembly_limits={"max_bytes": cap})
        reader.shared = shared
        subscription = Subscription(receiver, shared)
        shared.add(subscription)
        receiver.captures.append(subscription)
        shared_captures.append(shared)

    got = collections.Counter()
    noise_deliveries = 0
    for data, (host, sport) in poll_all(receiver):
        src = P.addr(host)
        if src in INTACT_SRCS:
            got[(data, src, sport)] += 1
        else:
            noise_deliveries += 1          # a valid datagram hidden in the noise: allowed
    receiver.settle_stats()       # the socket's counters, from its captures' and its own
    expected = collections.Counter({k: v for k, v in expected.items() if v})
    missing = expected - got
    extra = got - expected
    assert not missing, "%d intact datagrams not delivered" % len(missing)
    assert not extra, "%d unexpected or duplicate deliveries" % sum(extra.values())
    assert sum(got.values()) == intact_count
    assert noise_frames > 5 * intact_count and noise_deliveries > 0
    assert watch["read"] == fed == stats.frames
    assert watch["max_pending"] <= cap
    assert stats.reassembly_evictions > 0, "the flood never reached the byte cap"
    assert watch["max_pending"] > cap // 2
    assert stats.malformed_total > 1000 and stats.fragments > 3000
    for reason in ("fragment_overlap", "fragment_conflict", "fragment_alignment",
                   "fragment_offset"):
        assert stats.malformed[reason] > 0, reason
    assert stats.fragments_unwanted > 0
    for shared in shared_captures:
        shared.close()
        assert shared.reassembler.pending_bytes == 0


def link_frame_intact(rng, linktype, packet):
    """An intact frame: like link_frame but never marked as sent by this host."""
    if linktype == P.DLT_LINUX_SLL:
        return P.sll(packet)
    if linktype == P.DLT_LINUX_SLL2:
        return P.sll2(packet)
    return link_frame(rng, linktype, packet)
