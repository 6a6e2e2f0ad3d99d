"""Npcap's ``bpf_hdr`` records ("npf") walk exactly like savefile records.

The Windows batch reader hands ``make_batch_parser(records="npf")`` the buffer of one
Packet.dll read as the NPF driver fills it (``packets.npf_batch``: a 20-byte ``struct
bpf_hdr``, the frame at ``record + bh_hdrlen``, every record ``Packet_WORDALIGN``'ed from the
buffer's start, alignment padding of garbage bytes).  These tests require:

* the same frames laid out as savefile records and as npf records give the same datagrams
  (addresses, ports, payload bytes, the frame they came from), the same fragments and
  identical statistics, on the fast path and the general path, over the edge cases of
  test_packet_batch and a seeded mix of valid and mutated frames, some cut by a snapshot
  length;
* frames of every length modulo 4 (alignment padding, and none), the last record's padding
  inside ``end`` (what NPF_Read returns) or not, a walk from a nonzero aligned ``start``, and
  bytes before ``start`` and after ``end`` that are never read;
* a record header that lies stops the walk exactly there: the records before it are walked
  and delivered, the rest of the batch is one ``record_header`` drop, the walker returns the
  lying record's offset; lies it cannot see (a ``bh_caplen`` smaller than the truth) never
  raise and leave the counts bounded; random buffers never raise;
* end to end, a Receiver over an npf reader delivers exactly what it delivers over a savefile
  reader of the same frames, with the same statistics.
"""

import collections
import inspect
import random
import struct
import sys

import pytest
from test_packet_batch import FAST_LINKTYPES, PORT, datagram, edge_packets, mixed_frames
from test_packet_fuzz import (
    INTACT_SRCS,
    LOCAL,
    NOISE_SRCS,
    FakePosixPlatform,
    ListBatchReader,
    ListCapture,
    fuzz_device,
    hostile_fragments,
    link_frame,
    link_frame_intact,
    make_pool,
    mutate,
    poll_all,
    pre_parse,
)

import packets as P
from udpcap_ctypes import _packet, _platform
from udpcap_ctypes._reassembly import Reassembler
from udpcap_ctypes._receiver import Receiver, Subscription
from udpcap_ctypes._shared_capture import SharedCapture
from udpcap_ctypes._stats import Statistics
from udpcap_ctypes.udpcap_socket import Options

PORTS = frozenset({PORT})
LAYOUTS = ("savefile", "npf")
# The fast-path link types, and one the walker always sends down the general path.
LINKTYPES = FAST_LINKTYPES + [P.DLT_RAW]
LEAST_HEADER = 18           # ts (8) + bh_caplen (4) + bh_datalen (4) + bh_hdrlen (2)
_NPF_FIELDS = struct.Struct("=IIH")     # bh_caplen, bh_datalen, bh_hdrlen at record + 8


# -- helpers -----------------------------------------------------------------------------------

def laid_out(frames, records, caplens=None, start=0):
    """``(buffer, start, end, spans)``: *frames* as records of *records* from *start*.

    The bytes before *start* would parse as records of datagrams to our port if the walker
    started at 0, and after *end* comes one more such record: a walker that does not keep to
    ``[start, end)`` finds frames that are not in the batch.  *spans* are the frames'
    ``(first, last)`` in the buffer (start must be 4-aligned for npf records: the driver aligns
    from the buffer's start).
    """
    build = P.npf_batch if records == "npf" else P.savefile_batch
    decoy = build([P.ethernet(datagram(b"not in this batch"))])
    prefix = (bytes(decoy) * (start // len(decoy) + 1))[:start]
    body = build(frames, caplens)
    buf = bytearray(prefix) + body + decoy
    end = start + len(body)
    return buf, start, end, P.record_spans(buf, start, end, records)


def walk(linktype, buf, start, end, records, fast_path=True, verify=False, ports=PORTS):
    """One walk of ``buf[start:end]``: ``(returned pos, entries, stats, view)``."""
    parse = _packet.make_batch_parser(linktype, fast_path=fast_path, records=records)
    stats = Statistics()
    found = []
    view = memoryview(buf)
    pos = parse(view, start, end, ports, stats, verify, found)
    return pos, found, stats, view


def normalized(found, view, spans):
    """The entries, independent of where the records lie: each names its frame by index (its
    ``frame_start`` must be a frame's first byte), carries its payload (UDP) or fragment data
    bytes, which must lie within that frame, and a fragment carries its frame's bytes."""
    index = {first: i for i, (first, _last) in enumerate(spans)}
    out = []
    for entry in found:
        assert entry[7] is view
        assert entry[6] in index, "frame_start %d is no frame's start" % entry[6]
        number = index[entry[6]]
        first, last = spans[number]
        if entry[0] is None:
            assert entry[2:6] == (None, 0, 0, 0)
            kind, src, dst, ident, offset, more, a, b = entry[1]
            assert first <= a <= b <= last
            out.append(("fragment", number, bytes(view[first:last]), kind, src, dst, ident,
                        offset, more, bytes(view[a:b])))
        else:
            src, dst, sport, dport, a, b = entry[:6]
            assert first <= a <= b <= last
            out.append(("udp", number, src, dst, sport, dport, bytes(view[a:b])))
    return out


def same_in_both_layouts(linktype, frames, fast_path, verify=False, caplens=None, start=0,
                         ports=PORTS):
    """Walk *frames* as savefile and as npf records; both must agree.  Returns the result."""
    results = {}
    for records in LAYOUTS:
        buf, first, end, spans = laid_out(frames, records, caplens, start)
        assert len(spans) == len(frames)
        pos, found, stats, view = walk(linktype, buf, first, end, records, fast_path, verify,
                                       ports)
        assert pos == end, records
        assert stats.frames == len(frames), records
        assert stats.malformed["record_header"] == 0, records
        results[records] = (normalized(found, view, spans), stats.snapshot())
    assert results["npf"][0] == results["savefile"][0]
    assert results["npf"][1] == results["savefile"][1]
    return results["npf"]


def kinds(result):
    return collections.Counter(entry[0] for entry in result[0])


def header_lies(buf, pos, end):
    """Does the npf record header at *pos* lie?  The rule of the walker's documentation,
    restated: shorter than its fields, bh_hdrlen below them, caplen above len, or the frame
    past *end*."""
    if end - pos < LEAST_HEADER:
        return True
    caplen, datalen, hdrlen = _NPF_FIELDS.unpack_from(buf, pos + 8)
    return hdrlen < LEAST_HEADER or caplen > datalen or pos + hdrlen + caplen > end


def reference_npf_walk(buf, start, end):
    """``(records walked, offset of the lying record or None)`` by that rule, records
    Packet_WORDALIGN'ed from the buffer's start."""
    pos = start
    walked = 0
    while pos < end:
        if header_lies(buf, pos, end):
            return walked, pos
        caplen, _datalen, hdrlen = _NPF_FIELDS.unpack_from(buf, pos + 8)
        pos = (pos + hdrlen + caplen + 3) & ~3
        walked += 1
    return walked, None


def agrees_with_reference(buf, start, end, pos, stats):
    """The walk's frame count, drop and stop agree with :func:`reference_npf_walk`;
    returns the reference's ``(walked, liar)``."""
    walked, liar = reference_npf_walk(buf, start, end)
    assert stats.frames == walked
    if liar is None:
        assert stats.malformed["record_header"] == 0 and pos >= end
    else:
        assert stats.malformed["record_header"] == 1 and pos == liar
    return walked, liar


def within(found, start, end):
    """Every offset the walker reported lies inside the batch."""
    for entry in found:
        assert start <= entry[6] <= end
        first, last = entry[1][6:8] if entry[0] is None else entry[4:6]
        assert start <= first <= last <= end


# -- the same frames in both layouts -----------------------------------------------------------

@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("linktype", FAST_LINKTYPES)
def test_edge_cases_walk_the_same_in_both_layouts(linktype, fast_path):
    frames = [P.wrap(linktype, pkt) for pkt in edge_packets()]
    result = same_in_both_layouts(linktype, frames, fast_path)
    assert kinds(result)["udp"] >= 4 and kinds(result)["fragment"] >= 3
    # Checksum verification (the general path) too.
    same_in_both_layouts(linktype, frames, fast_path, verify=True)


@pytest.mark.parametrize("seed", [11, 12])
def test_random_mix_walks_the_same_in_both_layouts(seed):
    """Valid and mutated frames of every fast-path link type (and DLT_RAW), some cut by a
    snapshot length (bh_caplen < bh_datalen), DLT_NULL in both byte orders, from several
    starts: the same results in both layouts, on both paths, and both paths agree."""
    rng = random.Random(seed)
    base = edge_packets()
    for linktype in LINKTYPES:
        frames = mixed_frames(rng, linktype, 300, base)
        if linktype == P.DLT_NULL:
            other = "big" if sys.byteorder == "little" else "little"
            frames += [P.null(pkt, byteorder=other) for pkt in base]
            rng.shuffle(frames)
        caplens = [rng.randint(0, len(f)) if rng.random() < 0.15 else len(f) for f in frames]
        start = rng.choice([0, 4, 8, 64, 100])
        verify = rng.random() < 0.3
        fast = same_in_both_layouts(linktype, frames, True, verify, caplens, start)
        general = same_in_both_layouts(linktype, frames, False, verify, caplens, start)
        assert fast == general
        assert kinds(fast)["udp"] > 10 and kinds(fast)["fragment"] > 10
        assert fast[1]["malformed"]["link_truncated"] + fast[1]["malformed"]["ip_truncated"] > 0


# -- alignment ---------------------------------------------------------------------------------

def residue_frames(linktype):
    """Datagram frames of 8 consecutive lengths (every residue modulo 4, twice), each with a
    distinct payload."""
    frames, payloads = [], []
    for extra in range(8):
        payload = bytes([0x30 + extra]) * (41 + extra)
        payloads.append(payload)
        frames.append(P.wrap(linktype, datagram(payload)))
    assert sorted(len(f) % 4 for f in frames) == [0, 0, 1, 1, 2, 2, 3, 3]
    return frames, payloads


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("linktype", [P.DLT_EN10MB, P.DLT_NULL])
def test_records_of_every_length_modulo_4(linktype, fast_path):
    """Each record starts at Packet_WORDALIGN(end of the previous frame): the walker finds
    every frame where the driver put it, whatever the padding bytes are."""
    frames, payloads = residue_frames(linktype)
    frames = frames + frames[::-1]
    payloads = payloads + payloads[::-1]
    # Where NPF_Read puts them (Read.c): header at copied, frame at copied + 20, then
    # copied = Packet_WORDALIGN(copied + caplen).
    expected, copied = [], 0
    for frame in frames:
        expected.append(copied + P.NPF_HDRLEN)
        copied = (copied + P.NPF_HDRLEN + len(frame) + 3) & ~3
    outcomes = []
    for pad_byte in (P.NPF_PAD_BYTE, 0x00, 0xFF, 0x45):
        buf = P.npf_batch(frames, pad_byte=pad_byte)
        assert len(buf) == copied
        for first, frame in zip(expected, frames):
            assert buf[first:first + len(frame)] == frame
            pad = buf[first + len(frame):(first + len(frame) + 3) & ~3]
            assert pad == bytes([pad_byte]) * len(pad)
            assert buf[first - 2:first] == bytes([pad_byte]) * 2      # bpf_hdr tail padding
        pos, found, stats, view = walk(linktype, buf, 0, len(buf), "npf", fast_path)
        assert pos == len(buf)
        assert stats.frames == len(frames)
        assert [entry[6] for entry in found] == expected
        assert [bytes(view[entry[4]:entry[5]]) for entry in found] == payloads
        outcomes.append((normalized(found, view, [(a, a + len(f)) for a, f in
                                                  zip(expected, frames)]), stats.snapshot()))
    assert all(outcome == outcomes[0] for outcome in outcomes)
    assert outcomes[0] == same_in_both_layouts(linktype, frames, fast_path)


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("residue", [0, 1, 2, 3])
def test_last_record_with_and_without_its_padding(residue, fast_path):
    """NPF_Read returns ``copied`` after Packet_WORDALIGN, so a batch normally ends with the
    last record's padding; a batch that ends right after the last frame is whole too.  The
    view ends at ``end``: nothing past it may be read."""
    linktype = P.DLT_EN10MB
    frames, payloads = residue_frames(linktype)
    last = [i for i, f in enumerate(frames) if len(f) % 4 == residue][0]
    frames, payloads = frames + [frames[last]], payloads + [payloads[last]]
    buf = P.npf_batch(frames)
    spans = P.record_spans(buf, 0, len(buf), "npf")
    unpadded = spans[-1][1]
    assert len(buf) - unpadded == -residue % 4
    for end in {len(buf), unpadded}:
        pos, found, stats, view = walk(linktype, bytes(buf[:end]), 0, end, "npf", fast_path)
        assert stats.frames == len(frames)
        assert stats.malformed_total == 0
        assert [bytes(view[e[4]:e[5]]) for e in found] == payloads
        assert end <= pos <= len(buf)
        if end == len(buf):
            assert pos == end


def test_unpadded_end_returns_end():
    """The documented contract: the walk returns ``end`` when every record was walked."""
    frame = P.ethernet(datagram(b"x" * 33))
    assert len(frame) % 4
    buf = P.npf_batch([frame])
    end = P.record_spans(buf, 0, len(buf), "npf")[0][1]
    pos, _found, stats, _view = walk(P.DLT_EN10MB, bytes(buf[:end]), 0, end, "npf")
    assert stats.frames == 1
    assert pos == end


@pytest.mark.parametrize("start", [4, 8, 20, 36, 1000])
@pytest.mark.parametrize("linktype", [P.DLT_EN10MB, P.DLT_LINUX_SLL2, P.DLT_NULL])
def test_walk_from_a_nonzero_aligned_start(linktype, start):
    """Records laid out from an aligned offset, decoy records before it and after the end:
    the same result as from 0, only the offsets shifted."""
    frames, _payloads = residue_frames(linktype)
    frames += [P.wrap(linktype, pkt) for pkt in edge_packets()]
    for fast_path in (True, False):
        assert (same_in_both_layouts(linktype, frames, fast_path, start=start)
                == same_in_both_layouts(linktype, frames, fast_path, start=0))
        buf, first, end, _spans = laid_out(frames, "npf", start=start)
        shifted = [e[:7] for e in walk(linktype, buf, first, end, "npf", fast_path)[1]]
        buf, first, end, _spans = laid_out(frames, "npf", start=0)
        plain = [e[:7] for e in walk(linktype, buf, first, end, "npf", fast_path)[1]]
        assert [e[4:7] for e in shifted if e[0] is not None] == [
            (a + start, b + start, f + start) for _s, _d, _p, _q, a, b, f in
            (e for e in plain if e[0] is not None)]


# -- lying record headers ----------------------------------------------------------------------

LIES = ("hdrlen_small", "hdrlen_huge", "caplen_over_len", "caplen_past_end", "end_mid_record")
UNSEEN = ("caplen_short", "caplen_long", "hdrlen_other", "random_header")


def corrupt(rng, kind, buf, pos, end):
    """Corrupt the npf record at *pos* (in place); returns the batch's end (changed only by
    end_mid_record)."""
    caplen, datalen, hdrlen = _NPF_FIELDS.unpack_from(buf, pos + 8)
    room = end - pos - hdrlen           # what a frame of this record could hold
    if kind == "hdrlen_small":
        hdrlen = rng.choice([0, 1, 17])
    elif kind == "hdrlen_huge":
        hdrlen = 0xFFFF
    elif kind == "caplen_over_len":
        if caplen:
            datalen = rng.randint(0, caplen - 1)
        else:
            caplen, datalen = 1, 0
    elif kind == "caplen_past_end":
        caplen = rng.choice([room + 1, room + rng.randint(2, 300), 0xFFFFFFFF])
        datalen = max(datalen, caplen)
    elif kind == "end_mid_record":
        if rng.random() < 0.5:
            return pos + rng.randint(1, LEAST_HEADER - 1)      # inside the header's fields
        return pos + rng.randint(LEAST_HEADER, hdrlen + caplen - 1)     # inside the frame
    elif kind == "caplen_short":
        caplen = rng.randint(0, caplen - 1) if caplen else 0
    elif kind == "caplen_long":
        caplen = rng.randint(caplen, room)
        datalen = max(datalen, caplen)
    elif kind == "hdrlen_other":
        hdrlen = rng.choice([18, 19, 21, 24, 28])
    else:
        buf[pos:pos + P.NPF_HDRLEN] = bytes(rng.getrandbits(8) for _ in range(P.NPF_HDRLEN))
        return end
    _NPF_FIELDS.pack_into(buf, pos + 8, caplen, datalen, hdrlen)
    return end


def test_a_lying_record_header_drops_the_rest_of_the_batch():
    """Valid npf batches with exactly one record header corrupted.

    A lie the walker can see: it walks exactly the records before the liar (their frames
    counted, their datagrams delivered and counted as without the liar), counts one
    ``record_header`` drop and returns the liar's offset.  A lie it cannot see (a bh_caplen
    smaller or larger than the truth, another bh_hdrlen, random bytes that happen to be
    consistent): no exception, the records before it as before, at most one drop, every
    offset inside the batch, and exactly what the documented rule says.
    """
    rng = random.Random(5150)
    pools = {lt: mixed_frames(rng, lt, 200) + [P.wrap(lt, pkt) for pkt in edge_packets()]
             for lt in LINKTYPES}
    seen = collections.Counter()
    for _case in range(1500):
        linktype = rng.choice(LINKTYPES)
        fast_path = rng.random() < 0.7
        frames = rng.sample(pools[linktype], rng.randint(1, 12))
        caplens = [rng.randint(0, len(f)) if rng.random() < 0.1 else len(f) for f in frames]
        buf, start, end, spans = laid_out(frames, "npf", caplens, rng.choice([0, 4, 64]))
        offsets = [first - P.NPF_HDRLEN for first, _last in spans]
        k = rng.randrange(len(frames))
        kind = rng.choice(LIES + UNSEEN)
        if kind == "end_mid_record":
            cut = corrupt(rng, kind, buf, offsets[k], end)
            buf, end = buf[:cut], cut           # the view ends with the batch
        else:
            corrupt(rng, kind, buf, offsets[k], end)
        lies = header_lies(buf, offsets[k], end)
        assert lies or kind not in LIES
        seen[kind, lies] += 1
        # The same buffer walked up to the corrupted record: what must come out before it.
        _p, before, before_stats, _v = walk(linktype, buf, start, offsets[k], "npf", fast_path)
        before = [e[:7] for e in before]
        pos, found, stats, _view = walk(linktype, buf, start, end, "npf", fast_path)
        within(found, start, end)
        assert [e[:7] for e in found[:len(before)]] == before
        assert stats.malformed["record_header"] <= 1
        assert stats.frames <= (end - start + 2) // 20
        walked, liar = agrees_with_reference(buf, start, end, pos, stats)
        if lies:
            assert pos == offsets[k] and stats.frames == k
            assert [e[:7] for e in found] == before
            expected = before_stats.snapshot()
            expected["malformed"]["record_header"] += 1
            expected["malformed_total"] += 1
            assert stats.snapshot() == expected
        else:
            assert stats.frames >= k + 1
    for kind in LIES:
        assert seen[kind, True] > 50, (kind, seen)
    assert sum(seen[kind, False] for kind in UNSEEN) > 300, seen
    assert seen["caplen_short", False] > 50, seen


def plausible_garbage(rng):
    """Records with random but often consistent headers and random frames."""
    out = bytearray()
    for _ in range(rng.randint(0, 8)):
        caplen = rng.choice([0, 1, 3, rng.randint(0, 80)])
        datalen = rng.choice([caplen, caplen + rng.randint(0, 9), rng.randint(0, 80)])
        hdrlen = rng.choice([18, 19, 20, 20, 20, 24, rng.randint(0, 40)])
        out += _NPF_FIELDS.pack(caplen, datalen, hdrlen).rjust(18, b"\xee")
        out += bytes(rng.getrandbits(8) for _ in range(max(hdrlen - 18, 0) + caplen))
        out += b"\xee" * (-len(out) % 4)
    return out


def test_random_buffers_never_raise():
    """Random bytes, and records with random headers, as npf batches: no exception, at most
    one record_header drop, at most one frame per 20 bytes, every offset inside the batch,
    and the documented rule's count of frames and stopping place."""
    rng = random.Random(77)
    stopped = collections.Counter()
    for case in range(3000):
        if case % 2:
            data = bytearray(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
        else:
            data = plausible_garbage(rng)
        start = rng.choice([0, 0, 4, 8])
        buf = bytearray(b"\xee" * start) + data
        end = len(buf) if rng.random() < 0.8 else rng.randint(start, len(buf))
        if rng.random() < 0.5:
            buf = buf[:end]
        linktype = rng.choice(LINKTYPES)
        ports = frozenset(rng.getrandbits(16) for _ in range(3)) | PORTS
        pos, found, stats, _view = walk(linktype, buf, start, end, "npf",
                                        rng.random() < 0.7, rng.random() < 0.3, ports)
        within(found, start, end)
        assert stats.malformed["record_header"] <= 1
        assert stats.frames <= (end - start + 2) // 20
        walked, liar = agrees_with_reference(buf, start, end, pos, stats)
        stopped["lie" if liar is not None else "end", walked > 1] += 1
    assert stopped["end", True] > 100 and stopped["lie", True] > 100, stopped


# -- end to end through Receiver.poll ----------------------------------------------------------

class NpfListBatchReader(ListBatchReader):
    """ListBatchReader's batches (the same frames per refill, the same checks), laid out as
    Npcap's bpf_hdr records, as one PacketReceivePacket returns them: from offset 0 of a fixed
    buffer, 4-aligned, padding included in the count returned."""

    records = "npf"

    def __init__(self, frames, rng, watch):
        super().__init__(frames, rng, watch)
        self._savefile_view = self.view
        self._npf = bytearray(2 * len(self._buffer))
        self.view = memoryview(self._npf)

    def refill(self):
        end = super().refill()
        batch = P.npf_batch(P.record_frames(self._savefile_view, end))
        self._npf[:len(batch)] = batch
        return len(batch)


def receiver_streams(seed):
    """Per link type: intact datagrams (some fragmented, fragments shuffled) among mutated
    noise and hostile fragment sequences.  ``(streams, expected Counter)``."""
    rng = random.Random(seed)
    linktypes = [P.DLT_EN10MB, P.DLT_NULL, P.DLT_LINUX_SLL2, P.DLT_RAW]
    pool = make_pool(rng, NOISE_SRCS, 200)
    streams = {lt: [] for lt in linktypes}
    expected = collections.Counter()

    def noise(linktype):
        while True:
            lt, base, ip = pool[rng.randrange(len(pool))]
            if lt != linktype:
                continue
            frame = bytes(mutate(rng, base, ip)) if rng.random() < 0.8 else base
            if pre_parse(linktype, frame) not in INTACT_SRCS:
                return frame

    for index in range(160):
        linktype = linktypes[index % len(linktypes)]
        src = INTACT_SRCS[index % len(INTACT_SRCS)]
        size = rng.choice([0, 1, 2, 3, 100, 1472, 1473, 3000, rng.randint(0, 9000)])
        payload = (struct.pack("!I", index) + bytes(rng.getrandbits(8) for _ in range(size)))
        sport = 1024 + index
        seg = P.udp(payload, sport, PORT, src, LOCAL)
        if len(seg) + 20 <= 1500 and rng.random() < 0.7:
            packets = [P.ipv4(seg, src, LOCAL, ident=index, df=True)]
        else:
            packets = [pkt for _o, _m, pkt in P.fragment_ip(seg, src, LOCAL, index,
                                                           size=rng.choice([576, 1480]))]
            rng.shuffle(packets)
        expected[payload, src, sport] += 1
        block = []
        for pkt in packets:
            block += [noise(linktype) for _ in range(rng.randint(0, 4))]
            block.append(link_frame_intact(rng, linktype, pkt))
        if index % 5 == 0:
            for pkt in hostile_fragments(rng, rng.choice(NOISE_SRCS), 30000 + index):
                block.insert(rng.randint(0, len(block)), link_frame(rng, linktype, pkt))
        streams[linktype].extend(block)
    return streams, expected


def run_receiver(streams, reader_class, seed, verify):
    """Every frame of *streams* through Receiver.poll, one fake capture per link type whose
    reader is *reader_class*; ``(deliveries in order, socket stats, frames fed)``."""
    stats = Statistics()
    receiver = Receiver(FakePosixPlatform(), stats, Options(verify_udp_checksum=verify))
    receiver.configure([fuzz_device()], 0, PORT)
    cap = inspect.signature(Reassembler.__init__).parameters["max_bytes"].default
    watch = {"max_pending": 0, "cap": cap, "read": 0}
    rng = random.Random(seed)       # the batch sizes: the same sequence for both layouts
    shared_captures = []
    for linktype, frames in streams.items():
        reader = reader_class(frames, rng, watch)
        shared = SharedCapture(ListCapture(linktype, reader), fuzz_device(),
                               _platform.NO_OWN_FRAMES, own_on_egress=True, verify=verify)
        reader.shared = shared
        subscription = Subscription(receiver, shared)
        shared.add(subscription)
        receiver.captures.append(subscription)
        shared_captures.append(shared)
    deliveries = list(poll_all(receiver))
    receiver.settle_stats()
    for shared in shared_captures:
        shared.close()
    return deliveries, stats.snapshot(), watch["read"]


@pytest.mark.parametrize("seed,verify", [(3, False), (4, True)])
def test_receiver_delivers_the_same_from_npf_batches(seed, verify):
    streams, expected = receiver_streams(seed)
    fed = sum(len(frames) for frames in streams.values())
    savefile = run_receiver(streams, ListBatchReader, seed, verify)
    npf = run_receiver(streams, NpfListBatchReader, seed, verify)
    assert npf[0] == savefile[0]
    assert npf[1] == savefile[1]
    assert npf[2] == savefile[2] == fed == npf[1]["frames"]
    # And what came out is right: every intact datagram exactly once.
    got = collections.Counter((data, P.addr(host), sport) for data, (host, sport) in npf[0]
                              if P.addr(host) in INTACT_SRCS)
    assert got == expected
    assert npf[1]["malformed_total"] > 100 and npf[1]["fragments"] > 100
    assert npf[1]["malformed"]["record_header"] == 0
