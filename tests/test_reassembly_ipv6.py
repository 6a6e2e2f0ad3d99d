"""IPv6 fragment reassembly (udpcap_ctypes._reassembly with strict=True, max_payload=65535) and
the shared reassembler serving IPv4 and IPv6 together; SharedCapture.reassemble for FRAGMENT6.

Written from RFC 8200 section 4.5 (reassembly; exact duplicates may be dropped while the other
fragments are kept; only the offset-zero fragment's Next Header counts), RFC 5722 (any
overlap discards the whole datagram), RFC 6946 (atomic fragments bypass reassembly) and
RFC 7112 (the first fragment holds the whole header chain and the UDP header).  Pure Python,
offline, no capture.
"""

import random
import struct

import pytest
from test_reassembly import Feeder, cost, fragment

from udpcap_ctypes import _capture, _packet, _platform
from udpcap_ctypes._reassembly import FRAGMENT_OVERHEAD, MAX_PAYLOAD, MAX_PAYLOAD6, Reassembler
from udpcap_ctypes._shared_capture import SharedCapture
from udpcap_ctypes._stats import Statistics

# The IPv6 source tag of the design (``_packet.V6_TAG`` once the parser lands).
V6_TAG = 1 << 128
SRC6 = int.from_bytes(bytes.fromhex("20010db8000000000000000000000001"), "big")
DST6 = int.from_bytes(bytes.fromhex("20010db8000000000000000000000002"), "big")
KEY_SRC = SRC6 | V6_TAG
NOISE_SRC6 = (SRC6 + 0x100) | V6_TAG
NH_UDP, NH_DSTOPTS, NH_ROUTING, NH_HOPOPTS = 17, 60, 43, 0
STRIDE = 1448          # 1500 - 40 (IPv6 header) - 8 (fragment header), a multiple of 8


def make_part(size, dport=5000, seed=0, ext=b""):
    """A fragmentable part of *size* bytes: *ext* (extension headers) + UDP header + body."""
    rng = random.Random(seed)
    body_len = size - len(ext) - 8
    assert body_len >= 0
    body = rng.getrandbits(8 * body_len).to_bytes(body_len, "little") if body_len else b""
    return ext + struct.pack("!HHHH", 40000, dport, (size - len(ext)) & 0xFFFF, 0x1234) + body


def fragments(data, size=STRIDE):
    """*data* cut as an IPv6 source would: (offset, more_fragments, payload), *size* each."""
    return fragment(data, size)


class Feeder6(Feeder):
    """A Reassembler fed IPv6 fragments the way SharedCapture.reassemble feeds them."""

    def add(self, offset, mf, payload, ident=1, now=0.0, src=KEY_SRC, tag=NH_UDP,
            header_offset=0, wanted=None):
        result = self.r.add(src, DST6, ident, offset, mf, memoryview(bytes(payload)), now,
                            strict=True, max_payload=MAX_PAYLOAD6, header_offset=header_offset,
                            wanted=wanted, tag=tag)
        if result is not None:
            self.out.append((bytes(result), self.r.completed_tag))
        return result

    def add4(self, offset, mf, payload, ident=1, now=0.0, src=1):
        """An IPv4 fragment into the same reassembler (defaults: IPv4 policy)."""
        result = self.r.add(src, DST6, ident, offset, mf, memoryview(bytes(payload)), now)
        if result is not None:
            self.out.append((bytes(result), None))
        return result

    def gauges(self):
        assert self.stats.pending_datagrams == self.r.pending_datagrams
        return super().gauges()


def test_constants():
    assert MAX_PAYLOAD6 == 65535 and MAX_PAYLOAD == 65515


# -- in order, out of order, the first fragment's Next Header ----------------------------------

def test_in_order_delivers_once_at_the_last_fragment():
    data = make_part(65527)              # the largest: payload length 65535 - fragment header
    frags = fragments(data)
    assert len(frags) == 46
    f = Feeder6()
    results = f.feed(frags)
    assert results[:-1] == [None] * 45
    assert bytes(results[-1]) == data
    assert f.stats.fragments == 46 and f.stats.reassembled == 1
    assert f.stats.malformed_total == 0
    assert f.gauges() == (0, 0)


@pytest.mark.parametrize("order", ["reverse", "first_last", "shuffled", "middle_first"])
def test_out_of_order_delivers_once_when_the_last_hole_closes(order):
    data = make_part(20000, seed=3)
    frags = fragments(data)
    if order == "reverse":
        frags = frags[::-1]
    elif order == "first_last":
        frags = frags[1:] + frags[:1]
    elif order == "shuffled":
        random.Random(5).shuffle(frags)
    else:
        mid = len(frags) // 2
        frags = [frags[mid]] + frags[:mid] + frags[mid + 1:]
    f = Feeder6()
    results = f.feed(frags)
    assert [r is not None for r in results] == [False] * (len(frags) - 1) + [True]
    assert bytes(results[-1]) == data
    assert f.gauges() == (0, 0) and f.stats.reassembled == 1


def test_pending_gauges_count_both_families_together():
    f = Feeder6()
    f.add(0, True, make_part(STRIDE))
    assert f.gauges() == (1, cost(STRIDE))
    f.add4(0, True, bytes(1480))
    assert f.gauges() == (2, cost(STRIDE, 1480))
    f.add(2 * STRIDE, True, bytes(STRIDE))
    assert f.gauges() == (2, cost(STRIDE, 1480, STRIDE))


@pytest.mark.parametrize("first_at", [0, 1, 2])
def test_only_the_first_fragments_next_header_counts(first_at):
    """RFC 8200 4.5: later fragments may carry other Next Header values in their fragment
    headers; the reassembled packet takes the offset-zero fragment's."""
    ext = bytes([NH_UDP, 0, 1, 4, 0, 0, 0, 0])          # destination options, PadN
    data = make_part(4000, ext=ext)
    frags = fragments(data)                              # 3 fragments
    order = [1, 2]
    order.insert(first_at, 0)
    f = Feeder6()
    for k in order:
        off, mf, part = frags[k]
        f.add(off, mf, part, tag=NH_DSTOPTS if off == 0 else 59 + k, header_offset=len(ext))
    assert f.out == [(data, NH_DSTOPTS)]


def test_atomic_fragment_passes_through_with_its_tag_and_no_state():
    """RFC 6946: offset 0 with M clear is no fragment; the reassembler's contract is that it
    never touches the state (the IPv6 parser handles atomic fragments without calling it)."""
    f = Feeder6(wanted=lambda header: False)
    f.add(STRIDE, True, bytes(STRIDE), ident=7)            # a datagram pending on the key
    f.add(8, True, bytes(5), ident=8)                      # and a tombstone on another
    before = (f.gauges(), f.stats.fragments, dict(f.stats.malformed), len(f.r._dead))
    payload = make_part(100, dport=9)
    for ident in (7, 8, 9):
        assert f.add(0, False, payload, ident=ident, tag=NH_DSTOPTS) == payload
        assert f.r.completed_tag == NH_DSTOPTS
    assert (f.gauges(), f.stats.fragments, dict(f.stats.malformed), len(f.r._dead)) == before
    assert f.stats.fragments_unwanted == 0
    # the pending datagram is intact: its own first fragment still completes it
    f.r._wanted = None
    assert f.add(0, True, bytes(STRIDE), ident=7) is None
    assert f.add(2 * STRIDE, False, bytes(8), ident=7) == bytes(2 * STRIDE + 8)


# -- duplicates and overlaps (RFC 5722, RFC 8200 4.5) ----------------------------------------

def test_exact_duplicates_are_ignored_and_keep_the_datagram():
    data = make_part(6000, seed=9)
    frags = fragments(data)                               # 5 fragments
    f = Feeder6()
    f.add(*frags[0], tag=NH_UDP)
    held = f.gauges()
    assert f.add(*frags[0], tag=NH_ROUTING) is None       # same bytes, another Next Header
    assert f.gauges() == held
    for frag in frags[1:-1]:
        f.add(*frag)
        held = f.gauges()
        assert f.add(*frag) is None
        assert f.add(*frags[1]) is None
        assert f.gauges() == held
    assert f.add(*frags[-1]) == data
    assert f.out == [(data, NH_UDP)]                      # the first copy's Next Header
    assert f.stats.malformed_total == 0 and f.stats.reassembled == 1
    # a duplicate of the final fragment while others are missing is harmless too
    f.feed([frags[4], frags[4], frags[2], frags[4], frags[0], frags[1], frags[3]], ident=2)
    assert f.out[-1] == (data, NH_UDP) and len(f.out) == 2
    # ... and an exact duplicate of a held empty final fragment
    f.feed([frags[0], (len(data), False, b""), (len(data), False, b"")], ident=3)
    assert f.gauges()[0] == 1 and f.stats.malformed_total == 0


# Each: (held fragments as (offset, mf, size), the offending fragment as (offset, mf, size,
# same_bytes)).  The datagram is 8 * 1024 bytes; fragments take their bytes from it unless
# same_bytes is False.  In IPv4 (strict=False) the ones marked tolerated are kept or ignored.
OVERLAPS = {
    "same_place_other_bytes": ([(1024, True, 1024)], (1024, True, 1024, False), False),
    "same_offset_shorter": ([(1024, True, 1024)], (1024, True, 512, True), True),
    "same_offset_longer": ([(1024, True, 1024)], (1024, True, 2048, True), True),
    "inside": ([(1024, True, 1024)], (1536, True, 256, True), True),
    "same_end_later_start": ([(1024, True, 1024)], (1536, True, 512, True), True),
    "tail_overlap": ([(1024, True, 1024)], (1536, True, 1024, True), False),
    "head_overlap": ([(1024, True, 1024)], (512, True, 1024, True), False),
    "covers_two_held": ([(1024, True, 512), (1536, True, 512)], (1024, True, 1024, True), True),
    "straddles_two_held": ([(1024, True, 512), (1536, True, 512)], (1280, True, 512, True),
                           True),
    "bridges_a_gap": ([(1024, True, 512), (2048, True, 512)], (1280, True, 1024, True), False),
    "covers_a_gap_and_both": ([(1024, True, 512), (2048, True, 512)], (1024, True, 1536, True),
                              True),
    "final_inside_held_data": ([(1024, True, 1024), (4096, False, 4096)],
                               (1536, True, 512, True), True),
    "first_fragment_shorter": ([(0, True, 1024)], (0, True, 512, True), True),
    "copy_of_held_fragment_claims_last": ([(1024, True, 1024)], (1024, False, 1024, True), True),
}


@pytest.mark.parametrize("name", sorted(OVERLAPS))
def test_every_overlap_drops_the_whole_datagram(name):
    held, (off, mf, size, same), _ = OVERLAPS[name]
    data = make_part(8 * 1024, seed=11)
    f = Feeder6()
    for h_off, h_mf, h_size in held:
        f.add(h_off, h_mf, data[h_off:h_off + h_size])
    assert f.gauges()[0] == 1
    bad = data[off:off + size] if same else bytes(b ^ 0xFF for b in data[off:off + size])
    assert f.add(off, mf, bad) is None
    assert f.stats.malformed["fragment_overlap"] == 1
    assert f.stats.malformed_total == 1
    assert f.gauges() == (0, 0)
    # the rest of the datagram, intact, neither completes it nor starts a new one
    assert f.feed(fragments(data, 1024)) == [None] * 8
    assert f.gauges() == (0, 0) and f.stats.reassembled == 0 and f.out == []


@pytest.mark.parametrize("name", sorted(n for n, case in OVERLAPS.items() if case[2]))
def test_ipv4_policy_tolerates_what_strict_drops(name):
    """The same sequences through the IPv4 default (strict=False) keep the datagram: strict is
    what drops them."""
    held, (off, mf, size, _same), _ = OVERLAPS[name]
    data = make_part(8 * 1024, seed=11)
    stats = Statistics()
    r = Reassembler(stats)
    for h_off, h_mf, h_size in held:
        r.add(1, 2, 3, h_off, h_mf, data[h_off:h_off + h_size], 0.0)
    r.add(1, 2, 3, off, mf, data[off:off + size], 0.0)
    assert stats.malformed_total == 0 and r.pending_datagrams == 1
    # fill the holes left: the datagram completes
    (dg,) = r._pending.values()
    holes, at = [], 0
    for start, piece in zip(dg.starts, dg.pieces):
        if start > at:
            holes.append((at, start))
        at = start + len(piece)
    if at < len(data):
        holes.append((at, len(data)))
    results = [r.add(1, 2, 3, a, b < len(data), data[a:b], 0.0) for a, b in holes]
    assert results[-1] == data and stats.malformed_total == 0


def test_overlap_is_judged_against_held_data_not_arrival_order():
    """The in-order tail (Linux's fast case): a fragment starting before the held end and
    ending after it overlaps, even arriving in order."""
    data = make_part(4096, seed=2)
    f = Feeder6()
    f.add(0, True, data[:1024])
    f.add(1024, True, data[1024:2048])
    assert f.add(2040, True, data[2040:3064]) is None
    assert f.stats.malformed["fragment_overlap"] == 1 and f.gauges() == (0, 0)


def test_conflicting_ends_drop_the_datagram():
    data = make_part(4096, seed=2)
    f = Feeder6()
    f.add(0, True, data[:1024])
    f.add(3072, False, data[3072:])
    assert f.add(2048, False, data[2048:3072]) is None        # a second, earlier end
    assert f.stats.malformed["fragment_conflict"] == 1 and f.gauges() == (0, 0)
    f.add(0, True, data[:1024], ident=2)
    f.add(3072, False, data[3072:], ident=2)
    assert f.add(4096, True, bytes(8), ident=2) is None       # data beyond the end
    assert f.stats.malformed["fragment_conflict"] == 2 and f.gauges() == (0, 0)


# -- the tombstone ------------------------------------------------------------------------

def test_tombstone_ignores_the_rest_until_the_datagram_would_have_aged_out():
    data = make_part(6000, seed=4)
    frags = fragments(data)
    f = Feeder6(max_age=30.0)
    f.add(*frags[1], now=100.0)                                # the datagram starts here
    f.add(frags[1][0], True, bytes(len(frags[1][2])), now=110.0)   # overlap: dropped
    assert f.gauges() == (0, 0) and f.stats.malformed["fragment_overlap"] == 1
    assert f.feed(frags, now=129.9) == [None] * len(frags)
    assert f.gauges() == (0, 0) and f.stats.malformed_total == 1
    assert f.stats.fragments_unwanted == 0                     # broken, not unwanted
    # other keys are not affected, of either family
    assert f.feed(frags, ident=2, now=129.9)[-1] == data
    f.add4(0, True, bytes(8), now=129.9)
    assert f.gauges()[0] == 1
    # 30 s after the datagram's first fragment, the key is free again
    assert f.feed(frags, now=130.0)[-1] == data
    assert f.out[-1] == (data, NH_UDP)


def test_tombstones_of_both_families_share_one_bound():
    f = Feeder6(max_datagrams=1)           # max(256, 4 * max_datagrams) marks in all
    for ident in range(128):
        f.add(8, True, bytes(7), ident=ident)
        f.add4(8, True, bytes(7), ident=ident)
    f.add(8, True, bytes(7), ident=128)
    assert len(f.r._dead) == 256 and f.stats.malformed["fragment_alignment"] == 257
    assert f.add(8, True, bytes(8), ident=0) is None           # the oldest mark is gone
    assert f.gauges() == (1, cost(8))


# -- max_payload 65535 (the fragmentable part) ----------------------------------------------

def test_fragmentable_part_may_end_at_65535():
    data = make_part(65535, seed=6)
    frags = fragments(data[:65160]) + [(65160, True, data[65160:65528]),
                                      (65528, False, data[65528:])]
    frags[-3] = (frags[-3][0], True, frags[-3][2])
    f = Feeder6()
    assert f.feed(frags)[-1] == data
    assert f.stats.malformed_total == 0
    # IPv4's default limit (65515) would have refused the same datagram
    stats = Statistics()
    r = Reassembler(stats)
    for off, mf, part in frags:
        r.add(1, 2, 3, off, mf, part, 0.0)
    assert stats.malformed["fragment_offset"] == 1 and stats.reassembled == 0


@pytest.mark.parametrize("offset,size,mf", [(65528, 8, False), (65528, 16, True),
                                            (64088, 1456, True), (65536, 0, False),
                                            (65528, 1448, False)])
def test_beyond_65535_drops_the_datagram(offset, size, mf):
    data = make_part(3000, seed=8)
    f = Feeder6()
    f.add(0, True, data[:STRIDE])
    assert f.add(offset, mf, bytes(size)) is None
    assert f.stats.malformed["fragment_offset"] == 1
    assert f.gauges() == (0, 0)
    assert f.add(STRIDE, False, data[STRIDE:]) is None         # tombstone
    assert f.gauges() == (0, 0)


def test_max_payload_bounds_the_in_order_path_too():
    """An in-order middle fragment takes the short path; it must honour max_payload."""
    stats = Statistics()
    r = Reassembler(stats)
    view = memoryview(bytes(4104))           # (the short path takes flat byte views)
    r.add(KEY_SRC, DST6, 1, 0, True, view[:2048], 0.0, strict=True, max_payload=4096)
    assert r.add(KEY_SRC, DST6, 1, 2048, True, view[2048:4096], 0.0, strict=True,
                 max_payload=4096) is None
    assert stats.malformed_total == 0
    assert r.add(KEY_SRC, DST6, 1, 4096, True, view[4096:], 0.0, strict=True,
                 max_payload=4096) is None
    assert stats.malformed["fragment_offset"] == 1 and r.pending_datagrams == 0


# -- ages ---------------------------------------------------------------------------------

def test_a_datagram_ages_out_from_its_first_fragment():
    data = make_part(5000, seed=1)
    frags = fragments(data)
    f = Feeder6(max_age=30.0)
    f.add(*frags[0], now=100.0)
    f.add(*frags[1], now=120.0)
    f.r.expire(129.9)
    assert f.gauges() == (1, cost(STRIDE, STRIDE)) and f.stats.reassembly_timeouts == 0
    f.r.expire(130.0)
    assert f.gauges() == (0, 0) and f.stats.reassembly_timeouts == 1
    assert f.feed(frags[2:], now=130.1) == [None, None]       # the rest starts a new one
    assert f.stats.reassembled == 0


def test_a_reused_identification_never_glues_to_stale_pieces():
    old, new = make_part(4000, seed=10), make_part(4000, seed=11)
    f = Feeder6(max_age=30.0)
    f.add(*fragments(old)[1], now=0.0)
    f.r._last_sweep = 1e9                                      # no periodic sweep: the lookup
    assert f.feed(fragments(new), now=30.0)[-1] == new         # finds the piece stale itself
    assert f.stats.reassembly_timeouts == 1 and f.stats.malformed_total == 0


def test_ages_sweep_both_families_oldest_first():
    f = Feeder6(max_age=2.0)
    f.add(0, True, bytes(STRIDE), ident=1, now=0.0)
    f.add4(0, True, bytes(1480), ident=1, now=0.5)
    f.add(0, True, bytes(STRIDE), ident=2, now=1.0)
    f.add4(0, True, bytes(1480), ident=2, now=2.4)              # sweeps the first v6 one
    assert f.stats.reassembly_timeouts == 1
    assert list(f.r._pending) == [(1, DST6, 1), (KEY_SRC, DST6, 2), (1, DST6, 2)]


# -- shared caps across the families --------------------------------------------------------

def test_eviction_by_bytes_takes_the_oldest_of_either_family():
    f = Feeder6(max_bytes=3 * cost(1480))
    f.add4(0, True, bytes(1480), ident=1, now=1)
    f.add(0, True, bytes(1480), ident=1, now=2)
    f.add4(0, True, bytes(1480), ident=2, now=3)
    assert f.gauges() == (3, 3 * cost(1480)) and f.stats.reassembly_evictions == 0
    f.add(0, True, bytes(1480), ident=2, now=4)                 # evicts IPv4 ident 1
    assert list(f.r._pending) == [(KEY_SRC, DST6, 1), (1, DST6, 2), (KEY_SRC, DST6, 2)]
    f.add4(0, True, bytes(1480), ident=3, now=5)                # evicts IPv6 ident 1
    assert list(f.r._pending) == [(1, DST6, 2), (KEY_SRC, DST6, 2), (1, DST6, 3)]
    assert f.stats.reassembly_evictions == 2
    assert f.gauges() == (3, 3 * cost(1480))


def test_eviction_by_count_takes_the_oldest_of_either_family():
    f = Feeder6(max_datagrams=2)
    f.add(0, True, bytes(8), ident=1, now=1)
    f.add4(0, True, bytes(8), ident=1, now=2)
    f.add(0, True, bytes(8), ident=2, now=3)
    assert list(f.r._pending) == [(1, DST6, 1), (KEY_SRC, DST6, 2)]
    f.add4(0, True, bytes(8), ident=2, now=4)
    assert list(f.r._pending) == [(KEY_SRC, DST6, 2), (1, DST6, 2)]
    assert f.stats.reassembly_evictions == 2


def test_a_flood_of_both_families_never_exceeds_the_caps():
    max_bytes, max_datagrams = 64 * 1024, 80
    f = Feeder6(max_bytes=max_bytes, max_datagrams=max_datagrams, max_age=5.0)
    rng = random.Random(99)
    seen = set()
    for n in range(20000):
        src = rng.choice([1, 2, KEY_SRC, NOISE_SRC6])
        ident = rng.randrange(1 << 16) if src < V6_TAG else rng.randrange(1 << 32)
        size = 8 * rng.randint(1, 181)
        offset = 8 * rng.randint(1, 8000)
        now = n * 0.0001
        if src < V6_TAG:
            f.add4(offset, True, bytes(size), ident=ident, src=src, now=now)
        else:
            f.add(offset, True, bytes(size), ident=ident, src=src, now=now)
        assert f.r.pending_bytes <= max_bytes
        assert f.r.pending_datagrams <= max_datagrams
        seen.update(k[0] >= V6_TAG for k in f.r._pending)
    assert seen == {False, True}
    assert f.stats.reassembly_evictions > 15000
    assert f.gauges()[1] > max_bytes // 2


# -- equal numbers, different families ------------------------------------------------------

def test_ipv4_and_ipv6_keys_with_equal_numbers_never_meet():
    """src 1 / dst 2 / ident 3 as IPv4 and as IPv6 (::1 -> ::2, ident 3): two datagrams."""
    v4 = make_part(3000, seed=20)
    v6 = make_part(3000, seed=21)
    f = Feeder6()
    f.add4(*fragments(v4, 1480)[0], ident=3, src=1)
    f.add(*fragments(v6)[1], ident=3, src=1 | V6_TAG)
    assert f.gauges()[0] == 2
    # an overlap on the IPv6 key kills only the IPv6 datagram
    f.add(STRIDE, True, bytes(STRIDE), ident=3, src=1 | V6_TAG)
    assert f.gauges() == (1, cost(1480))
    f.feed(fragments(v6), ident=3, src=1 | V6_TAG)              # tombstoned
    assert f.out == []
    for frag in fragments(v4, 1480)[1:]:
        f.add4(*frag, ident=3, src=1)
    assert f.out == [(v4, None)]
    # and the other way round: a broken IPv4 datagram leaves the IPv6 one alone
    f.add(*fragments(v6)[0], ident=4, src=1 | V6_TAG)
    f.add4(8, True, bytes(7), ident=4, src=1)
    assert f.feed(fragments(v6)[1:], ident=4, src=1 | V6_TAG)[-1] == v6


# -- wanted() and the UDP header behind extension headers --------------------------------------

def test_wanted_sees_the_udp_header_behind_extension_headers():
    ext = (bytes([NH_ROUTING, 0, 1, 4, 0, 0, 0, 0])           # destination options
           + bytes([NH_UDP, 0, 0, 0, 0, 0, 0, 0]))            # routing, segments left 0
    data = make_part(5000, dport=7, ext=ext)
    calls = []

    def wanted(header):
        assert isinstance(header, memoryview) and len(header) == 8
        calls.append(bytes(header))
        return True

    f = Feeder6()
    frags = fragments(data)
    f.feed(frags[2:] + frags[:2], header_offset=len(ext), wanted=wanted, tag=NH_DSTOPTS)
    assert calls == [data[16:24]]
    assert f.out == [(data, NH_DSTOPTS)]


@pytest.mark.parametrize("first", ["first", "last"])
def test_a_foreign_port_datagram_is_let_go_at_its_first_fragment(first):
    data = make_part(9000, dport=9, ext=bytes([NH_UDP, 0, 1, 4, 0, 0, 0, 0]))
    frags = fragments(data)

    def wanted(header):
        return struct.unpack("!H", header[2:4])[0] != 9

    f = Feeder6()
    order = frags if first == "first" else frags[1:] + frags[:1]
    f.feed(order, header_offset=8, wanted=wanted)
    assert f.gauges() == (0, 0) and f.out == []
    assert f.stats.fragments_unwanted == len(frags)
    assert f.stats.malformed_total == 0
    f.add(*frags[3], wanted=wanted)                            # late ones are let go too
    assert f.stats.fragments_unwanted == len(frags) + 1 and f.gauges() == (0, 0)


def test_the_per_call_wanted_replaces_the_constructors():
    asked = []
    f = Feeder6(wanted=lambda header: asked.append("constructor") or False)
    data = make_part(3000)
    f.feed(fragments(data), wanted=lambda header: asked.append("call") or True)
    assert asked == ["call"] and f.out == [(data, NH_UDP)]
    f.add4(0, True, bytes(8))                                  # IPv4: the constructor's
    assert asked == ["call", "constructor"]


@pytest.mark.parametrize("header_offset", [-1, STRIDE - 7, STRIDE])
def test_a_first_fragment_without_a_udp_header_lets_the_datagram_go(header_offset):
    """RFC 7112: the first fragment holds the whole chain and the UDP header; when the caller
    finds none (-1) or it would lie past the fragment, nothing is kept."""
    data = make_part(5000)
    f = Feeder6()
    assert f.feed(fragments(data), header_offset=header_offset) == [None] * 4
    assert f.gauges() == (0, 0) and f.stats.fragments_unwanted == 4


def test_header_offset_is_ignored_but_for_the_first_fragment():
    data = make_part(5000)
    f = Feeder6()
    frags = fragments(data)
    for off, mf, part in frags[1:]:
        f.add(off, mf, part, header_offset=-1)
    f.add(*frags[0], header_offset=0)
    assert f.out == [(data, NH_UDP)]


# -- seeded fuzz against a reference model ----------------------------------------------------

class Model:
    """What RFC 8200 4.5 + RFC 5722 (strict) and the IPv4 policy (not strict) say, one
    fragment at a time, written the plain way: per key, a list of (offset, bytes) pieces, a
    known end or -1, whether the first fragment was approved, and its tag; dead keys forever
    (the model has no clock and no caps)."""

    def __init__(self, wanted):
        self.wanted = wanted
        self.state = {}
        self.held = 0

    def _kill(self, key):
        st = self.state.get(key)
        if st is not None and st != "dead":
            self.held -= sum(len(p) + FRAGMENT_OVERHEAD for _, p in st["pieces"])
        self.state[key] = "dead"

    def _approved(self, wanted, payload, header_offset):
        if header_offset < 0 or header_offset + 8 > len(payload):
            return False
        return wanted(payload[header_offset:header_offset + 8])

    def add(self, key, offset, mf, payload, strict, max_payload, header_offset, wanted, tag):
        payload = bytes(payload)
        if offset == 0 and not mf:
            return payload, tag
        st = self.state.get(key)
        if st == "dead":
            return None
        size = len(payload)
        end = offset + size
        if offset % 8 or end > max_payload or (mf and (size == 0 or size % 8)):
            return self._kill(key)
        wanted = wanted or self.wanted
        if st is None:
            if offset == 0 and not self._approved(wanted, payload, header_offset):
                return self._kill(key)
            self.state[key] = {"pieces": [(offset, payload)] if size else [],
                               "total": -1 if mf else end, "checked": offset == 0,
                               "tag": tag if offset == 0 else 0}
            self.held += size + FRAGMENT_OVERHEAD if size else 0
            return None
        pieces, total = st["pieces"], st["total"]
        held_end = max((s + len(p) for s, p in pieces), default=0)
        if (mf and total >= 0 and end > total) or (not mf and total >= 0 and end != total) \
                or (not mf and total < 0 and end < held_end):
            return self._kill(key)
        touched = [(s, p) for s, p in pieces if s < end and offset < s + len(p)]
        if touched:
            if strict:
                if touched == [(offset, payload)] and (mf or total >= 0):
                    return None
                return self._kill(key)
            for s, p in touched:
                lo, hi = max(s, offset), min(s + len(p), end)
                if p[lo - s:hi - s] != payload[lo - offset:hi - offset]:
                    return self._kill(key)
            have = set()
            for s, p in touched:
                have.update(range(s, s + len(p)))
            if have.issuperset(range(offset, end)):
                return None                                   # duplicate
            if not all(offset <= s and s + len(p) <= end for s, p in touched):
                return self._kill(key)
            for piece in touched:                             # replace
                pieces.remove(piece)
                self.held -= len(piece[1]) + FRAGMENT_OVERHEAD
        if offset == 0 and not st["checked"]:
            if not self._approved(wanted, payload, header_offset):
                return self._kill(key)
            st["checked"] = True
        if size:
            pieces.append((offset, payload))
            pieces.sort()
            self.held += size + FRAGMENT_OVERHEAD
            if offset == 0:
                st["tag"] = tag
        if not mf:
            st["total"] = end
        if st["total"] >= 0 and sum(len(p) for _, p in pieces) == st["total"]:
            del self.state[key]
            self.held -= sum(len(p) + FRAGMENT_OVERHEAD for _, p in pieces)
            return b"".join(p for _, p in pieces), st["tag"]
        return None


def _wants(port):
    return lambda header: struct.unpack("!H", bytes(header[2:4]))[0] == port


def _fuzz_fragments(rng, data, ext_len, strict):
    """Fragments of *data* with the sorts of trouble networks and attackers make."""
    size = len(data)
    if size < 2000:
        stride = 8 * rng.choice([1, 2, 16, 64, 181, rng.randint(1, 200)])
    else:
        stride = 8 * rng.choice([64, 181, 185, rng.randint(64, 200)])
    frags = [(off, off + stride < size, data[off:off + stride])
             for off in range(0, size, stride)]
    if len(frags) == 1:
        frags = [(0, True, data[:8]), (8, False, data[8:])] if size > 8 else frags
    rng.shuffle(frags)
    base = list(frags)
    for _ in range(rng.choice([0, 0, 0, 1, 2, 4])):
        kind = rng.randrange(9)
        off, mf, part = rng.choice(base)
        if kind == 0:                                       # exact duplicate
            extra = (off, mf, part)
        elif kind == 1:                                     # same place, other bytes
            extra = (off, mf, bytes(len(part)) if part != bytes(len(part)) else b"\1" * len(part))
        elif kind == 2:                                     # re-cut from the same bytes
            a = 8 * rng.randrange(max(1, size // 8))
            b = min(size, a + 8 * rng.randint(1, 64))
            extra = (a, b < size, data[a:b])
        elif kind == 3:                                     # lies about the end
            extra = (off, not mf, part)
        elif kind == 4:                                     # misaligned or empty
            extra = (off, True, part[:rng.randrange(len(part))])
        elif kind == 5:                                     # beyond the limit
            extra = (8 * rng.randint(8180, 8191), rng.random() < 0.5, bytes(8 * rng.randint(0, 20)))
        elif kind == 6:                                     # an atomic fragment on the key
            extra = (0, False, data[:rng.randint(0, 64)])
        elif kind == 7:                                     # an empty final fragment
            extra = (size, False, b"")
        else:                                               # a first fragment too short
            extra = (0, True, data[:8])
        frags.insert(rng.randrange(len(frags) + 1), extra)
    return [(o, m, p, ext_len) for o, m, p in frags]


@pytest.mark.parametrize("seed", [8200, 5722, 6946])
def test_fuzz_both_families_interleaved_match_the_reference_model(seed):
    """Random fragment sequences of both families, on a few keys whose numbers collide
    across the families, interleaved: every return value (and the first fragment's tag), the
    held bytes and the datagram count are what the model says.  No caps, no clock."""
    rng = random.Random(seed)
    wants4, wants6 = _wants(5000), _wants(6000)
    stats = Statistics()
    r = Reassembler(stats, max_age=1e9, max_bytes=1 << 40, max_datagrams=10 ** 6,
                    wanted=wants4)
    model = Model(wants4)
    streams = []
    recent = []
    recent_all = []
    delivered = {False: 0, True: 0}
    ops = 0
    while ops < 40000:
        while len(streams) < 6:
            # mostly a new identification, else a recent one of either family (the same
            # numbers as IPv4 and IPv6 keys; a datagram on a broken or busy key)
            v6 = rng.random() < 0.5
            if recent and rng.random() < 0.3:
                src, ident = rng.choice(recent)
            else:
                src, ident = rng.choice((1, 2)), len(recent_all)
                recent_all.append(ident)
                recent = (recent + [(src, ident)])[-8:]
            key = (src | (V6_TAG if v6 else 0), 9, ident)
            ext_len = 8 * rng.choice([0, 0, 1, 2, 3]) if v6 else 0
            size = rng.choice([9, 64, 1500, 4000, rng.randint(ext_len + 8, 20000), 65535])
            size = max(size, ext_len + 8)
            if not v6:
                size = min(size, MAX_PAYLOAD)
            dport = (6000 if v6 else 5000) if rng.random() < 0.7 else rng.choice([5000, 6000, 9])
            data = make_part(size, dport=dport, seed=rng.random(), ext=bytes(ext_len))
            streams.append([key, _fuzz_fragments(rng, data, ext_len, v6)])
        stream = rng.choice(streams)
        key, frags = stream
        off, mf, part, ext_len = frags.pop()
        if not frags:
            streams.remove(stream)
        v6 = key[0] >= V6_TAG
        tag = rng.randrange(256)
        if v6:
            got = r.add(key[0], key[1], key[2], off, mf, memoryview(part), 0.0, strict=True,
                        max_payload=MAX_PAYLOAD6, header_offset=ext_len, wanted=wants6, tag=tag)
            want = model.add(key, off, mf, part, True, MAX_PAYLOAD6, ext_len, wants6, tag)
        else:
            got = r.add(key[0], key[1], key[2], off, mf, memoryview(part), 0.0, tag=tag)
            want = model.add(key, off, mf, part, False, MAX_PAYLOAD, 0, None, tag)
        ops += 1
        if got is not None:
            got = (bytes(got), r.completed_tag)
            delivered[v6] += off != 0 or mf                    # not counting atomic ones
        assert got == want, (ops, key, off, mf, len(part))
        assert r.pending_bytes == model.held == stats.pending_bytes
        live = sum(1 for st in model.state.values() if st != "dead")
        assert r.pending_datagrams == live == stats.pending_datagrams
    assert delivered[False] > 150 and delivered[True] > 150
    for reason in ("fragment_overlap", "fragment_conflict", "fragment_alignment",
                   "fragment_offset"):
        assert stats.malformed[reason] > 0, reason
    assert stats.fragments_unwanted > 0


@pytest.mark.parametrize("seed", [1, 2])
def test_fuzz_both_families_under_tight_caps_and_a_clock(seed):
    """Intact datagrams of both families (fragments shuffled, exact duplicates before the
    completing one) among floods and hostile fragments of both families, with small caps and
    time passing: never raises, never holds more than the caps, and every intact datagram is
    delivered once, whole, or not at all (a cap or the clock may take it)."""
    rng = random.Random(seed)
    max_bytes, max_datagrams = 96 * 1024, 24
    stats = Statistics()
    r = Reassembler(stats, max_age=0.5, max_bytes=max_bytes, max_datagrams=max_datagrams,
                    wanted=_wants(5000))
    wants6 = _wants(6000)
    intact = {}              # key -> [data, remaining fragments, deliveries]
    next_ident = [0]
    now = 0.0
    delivered = {False: 0, True: 0}
    lost = {False: 0, True: 0}

    def offer(key, off, mf, part, ext_len=0):
        v6 = key[0] >= V6_TAG
        if v6:
            return r.add(key[0], key[1], key[2], off, mf, memoryview(part), now, strict=True,
                         max_payload=MAX_PAYLOAD6, header_offset=ext_len, wanted=wants6,
                         tag=NH_UDP)
        return r.add(key[0], key[1], key[2], off, mf, memoryview(part), now)

    def new_intact():
        next_ident[0] += 1
        v6 = rng.random() < 0.5
        key = ((SRC6 | V6_TAG) if v6 else 7, 9, next_ident[0])
        ext_len = 8 * rng.randint(0, 2) if v6 else 0
        size = rng.choice([100, 3000, 9000, rng.randint(ext_len + 9, 30000)])
        data = make_part(size, dport=6000 if v6 else 5000, seed=rng.random(),
                         ext=bytes(ext_len))
        stride = 8 * rng.choice([56, 181, 185])
        frags = [(off, off + stride < size, data[off:off + stride])
                 for off in range(0, size, stride)]
        if len(frags) == 1:
            frags = [(0, True, data[:8 + ext_len]), (8 + ext_len, False, data[8 + ext_len:])]
        rng.shuffle(frags)
        for _ in range(rng.randint(0, 2)):                 # exact duplicates, before the end
            frags.insert(rng.randrange(len(frags)), rng.choice(frags[:-1]))
        intact[key] = [data, [(o, m, p, ext_len) for o, m, p in frags[::-1]], 0]

    def noise():
        v6 = rng.random() < 0.5
        src = NOISE_SRC6 if v6 else 8
        key = (src, 9, rng.randrange(1 << 32) if v6 else rng.randrange(1 << 16))
        kind = rng.randrange(4)
        if kind == 0:                                      # a flood of big middle fragments
            offer(key, 8 * rng.randint(1, 8000), True, bytes(8 * rng.randint(100, 185)))
        elif kind == 1:                                    # overlaps
            off = 8 * rng.randint(1, 100)
            offer(key, off, True, bytes(16))
            offer(key, off + 8, True, b"\1" * 16)
        elif kind == 2:                                    # beyond the limit
            offer(key, 8 * rng.randint(8185, 8191), True, bytes(64))
        else:                                              # tiny fragments
            offer(key, 8 * rng.randint(1, 8000), rng.random() < 0.8, bytes(8))

    ops = 0
    while ops < 30000 or intact:
        while ops < 30000 and len(intact) < 5:
            new_intact()
        if ops < 30000 and rng.random() < 0.5:
            noise()
        elif intact:
            key = rng.choice(list(intact))
            entry = intact[key]
            off, mf, part, ext_len = entry[1].pop()
            result = offer(key, off, mf, part, ext_len)
            if result is not None:
                assert bytes(result) == entry[0]
                entry[2] += 1
            if not entry[1]:
                v6 = key[0] >= V6_TAG
                assert entry[2] <= 1
                delivered[v6] += entry[2]
                lost[v6] += 1 - entry[2]
                del intact[key]
        ops += 1
        now += rng.random() * 0.0002
        if rng.random() < 0.0005:
            now += 0.6                                     # a quiet spell: all ages out
        assert r.pending_bytes <= max_bytes and stats.pending_bytes == r.pending_bytes
        assert r.pending_datagrams <= max_datagrams
        assert len(r._dead) <= r._max_dead
    assert delivered[False] > 100 and delivered[True] > 100
    assert lost[False] > 0 and lost[True] > 0
    assert stats.reassembly_evictions > 0 and stats.reassembly_timeouts > 0
    assert stats.malformed["fragment_overlap"] > 0 and stats.malformed["fragment_offset"] > 0
    r.expire(now + 1.0)
    assert r.pending_bytes == 0 and r.pending_datagrams == 0


# -- SharedCapture.reassemble with FRAGMENT6 (needs the IPv6 parser's names in _packet) -------

HAVE_IPV6_PARSER = all(hasattr(_packet, name) for name in (
    "FRAGMENT6", "V6_TAG", "PORT6", "parse_udp6_segment", "udp_header_after_extensions"))
needs_parser = pytest.mark.skipif(not HAVE_IPV6_PARSER,
                                  reason="the IPv6 parser (_packet.FRAGMENT6, ...) has not landed")
PORT = 5000


def udp6(payload, sport, dport, src, dst):
    """A UDP segment over IPv6 with its (mandatory) checksum."""
    length = 8 + len(payload)
    pseudo = (src.to_bytes(16, "big") + dst.to_bytes(16, "big")
              + struct.pack("!I3xB", length, NH_UDP))
    segment = struct.pack("!HHHH", sport, dport, length, 0) + payload
    data = pseudo + segment + b"\0" * (len(segment) & 1)
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    checksum = ~total & 0xFFFF or 0xFFFF
    return segment[:6] + struct.pack("!H", checksum) + segment[8:]


class _Reader:
    records = "savefile"


class _Capture:
    linktype = 12                          # DLT_RAW
    reader = _Reader()
    handle = None

    def close(self):
        pass


def shared_capture(ports, verify=False, **limits):
    device = _capture.Device("test0", None, 0, [(0xC6120002, 0xFFFFFFFF, 0)])
    shared = SharedCapture(_Capture(), device, _platform.NO_OWN_FRAMES, own_on_egress=True,
                           verify=verify, reassembly_limits=limits or None)
    shared.ports = frozenset(ports)
    return shared


def fragment6_entries(part, ident, src=SRC6, dst=DST6, stride=STRIDE, first_nh=NH_UDP,
                      later_nh=NH_UDP):
    """(fragment tuple, view) for each fragment of *part*: the fragmentable part sits in a
    frame of junk, as it would behind the IPv6 and fragment headers."""
    out = []
    for off in range(0, len(part), stride):
        chunk = part[off:off + stride]
        frame = bytearray(b"\xee" * 48) + chunk + b"\xee" * 4
        nh = first_nh if off == 0 else later_nh
        out.append(((_packet.FRAGMENT6, src, dst, ident, off, off + stride < len(part), 48,
                     48 + len(chunk), nh), memoryview(frame)))
    return out


@needs_parser
def test_parser_constants_are_the_designs():
    assert _packet.V6_TAG == V6_TAG and _packet.PORT6 == 0x10000
    assert _packet.FRAGMENT6 == 3 and _packet.FRAGMENT == 2


@needs_parser
@pytest.mark.parametrize("verify", [False, True])
def test_reassemble_ipv6_behind_extension_headers_out_of_order(verify):
    payload = bytes(random.Random(1).getrandbits(8) for _ in range(7000))
    segment = udp6(payload, 40001, PORT, SRC6, DST6)
    dstopts = bytes([NH_UDP, 0, 1, 4, 0, 0, 0, 0])
    part = dstopts + segment
    shared = shared_capture({PORT | _packet.PORT6}, verify=verify)
    entries = fragment6_entries(part, 0xDEADBEEF, first_nh=NH_DSTOPTS, later_nh=NH_HOPOPTS)
    entries = entries[2:] + entries[:2]
    results = [shared.reassemble(frag, view, 0.0, 1000 + k)
               for k, (frag, view) in enumerate(entries)]
    assert results[:-1] == [None] * (len(entries) - 1)
    src, dst, sport, port, first, last, start, buf = results[-1]
    assert (src, dst, sport, port, start) == (SRC6, DST6, 40001, PORT | _packet.PORT6,
                                              1000 + len(entries) - 1)
    assert bytes(buf[first:last]) == payload
    assert shared.stats.reassembled == 1 and shared.stats.malformed_total == 0
    assert shared.reassembler.pending_datagrams == 0


@needs_parser
def test_reassemble_lets_a_foreign_port_go_at_the_first_fragment():
    segment = udp6(bytes(6000), 40001, PORT + 1, SRC6, DST6)
    shared = shared_capture({PORT | _packet.PORT6, PORT + 1})       # PORT + 1: IPv4 only
    entries = fragment6_entries(segment, 7)
    for frag, view in entries[1:]:
        shared.reassemble(frag, view, 0.0, 0)
    assert shared.reassembler.pending_datagrams == 1
    assert shared.reassemble(entries[0][0], entries[0][1], 0.0, 0) is None
    assert shared.reassembler.pending_datagrams == 0
    assert shared.stats.fragments_unwanted == len(entries)


@needs_parser
def test_reassemble_an_ipv4_port_does_not_take_ipv6_and_back():
    segment = udp6(bytes(3000), 40001, PORT, SRC6, DST6)
    v4 = shared_capture({PORT})
    assert [v4.reassemble(f, v, 0.0, 0) for f, v in fragment6_entries(segment, 1)] == \
        [None] * 3
    assert v4.stats.fragments_unwanted == 3 and v4.reassembler.pending_datagrams == 0
    v6 = shared_capture({PORT | _packet.PORT6})
    assert v6.reassemble(*fragment6_entries(segment, 1)[0], 0.0, 0) is None
    assert v6.reassembler.pending_datagrams == 1
    ipv4_first = (_packet.FRAGMENT, 1, 2, 1, 0, True, 0, 8)
    v6.reassemble(ipv4_first, memoryview(struct.pack("!HHHH", 1, PORT, 16, 0)), 0.0, 0)
    assert v6.stats.fragments_unwanted == 1            # IPv4 to PORT: not subscribed


@needs_parser
def test_reassemble_keys_ipv6_apart_from_equal_ipv4_numbers():
    shared = shared_capture({PORT, PORT | _packet.PORT6})
    segment = udp6(bytes(3000), 40001, PORT, 1, 2)
    frag6, view6 = fragment6_entries(segment, 3, src=1, dst=2)[1]
    shared.reassemble(frag6, view6, 0.0, 0)
    shared.reassemble((_packet.FRAGMENT, 1, 2, 3, STRIDE, True, 0, STRIDE),
                      memoryview(bytes(STRIDE)), 0.0, 0)
    assert shared.reassembler.pending_datagrams == 2
    assert shared.stats.malformed_total == 0


@needs_parser
def test_reassemble_ipv6_is_strict_and_ends_at_65535():
    shared = shared_capture({PORT | _packet.PORT6})
    segment = udp6(bytes(range(256)) * 12, 40001, PORT, SRC6, DST6)
    (frag0, view0), (frag1, view1), _ = fragment6_entries(segment, 9)
    shared.reassemble(frag0, view0, 0.0, 0)
    shared.reassemble(frag1, view1, 0.0, 0)
    # a re-cut of held bytes, identical: IPv4's policy ignores it, RFC 5722 drops the datagram
    recut = frag1[:4] + (frag1[4] + 8, True, 48, 48 + 64, NH_UDP)
    assert shared.reassemble(recut, view1[8:], 0.0, 0) is None
    assert shared.stats.malformed["fragment_overlap"] == 1
    assert shared.reassembler.pending_datagrams == 0
    # a fragment ending at 65535 is inside the IPv6 limit (IPv4's is 65515)
    last = (_packet.FRAGMENT6, SRC6, DST6, 10, 65528, False, 48, 55, NH_UDP)
    assert shared.reassemble(last, memoryview(bytes(60)), 0.0, 0) is None
    assert shared.stats.malformed_total == 1 and shared.reassembler.pending_datagrams == 1
    beyond = (_packet.FRAGMENT6, SRC6, DST6, 11, 65528, False, 48, 56, NH_UDP)
    shared.reassemble(beyond, memoryview(bytes(60)), 0.0, 0)
    assert shared.stats.malformed["fragment_offset"] == 1


@needs_parser
def test_reassemble_drops_a_datagram_for_a_port_unsubscribed_meanwhile():
    shared = shared_capture({PORT | _packet.PORT6})
    segment = udp6(bytes(3000), 40001, PORT, SRC6, DST6)
    entries = fragment6_entries(segment, 5)
    shared.reassemble(*entries[0], 0.0, 0)
    shared.ports = frozenset({PORT})                       # the IPv6 socket went away
    assert [shared.reassemble(f, v, 0.0, 0) for f, v in entries[1:]] == [None, None]
    assert shared.stats.not_for_us == 1 and shared.stats.reassembled == 1
