"""IPv4 fragment reassembly (udpcap_ctypes._reassembly): pure Python, offline, no capture."""

import random
import struct

import pytest

from udpcap_ctypes._reassembly import FRAGMENT_OVERHEAD, MAX_PAYLOAD, Reassembler
from udpcap_ctypes._stats import Statistics

SRC = bytes([198, 18, 0, 1])
DST = bytes([198, 18, 0, 2])
NOISE_SRC = bytes([198, 18, 0, 3])


def make_datagram(size, dport=5000, seed=0):
    """A UDP datagram (header + body) of *size* bytes (size >= 8), deterministic bytes."""
    rng = random.Random(seed)
    body = rng.getrandbits(8 * (size - 8)).to_bytes(size - 8, "little") if size > 8 else b""
    return struct.pack("!HHHH", 40000, dport, size & 0xFFFF, 0) + body


def fragment(data, size=1480):
    """Fragments of *data* as (offset, more_fragments, payload) with *size* bytes each."""
    assert size % 8 == 0
    view = memoryview(data)
    return [(off, off + size < len(data), view[off:off + size])
            for off in range(0, len(data), size)]


def cost(*sizes):
    return sum(sizes) + FRAGMENT_OVERHEAD * len(sizes)


class Feeder:
    """A Reassembler plus its Statistics and the results it returned."""

    def __init__(self, **kwargs):
        self.stats = Statistics()
        self.r = Reassembler(self.stats, **kwargs)
        self.out = []

    def add(self, offset, mf, payload, ident=1, now=0.0, src=SRC):
        result = self.r.add(src, DST, ident, offset, mf, memoryview(bytes(payload)), now)
        if result is not None:
            self.out.append(bytes(result))
        return result

    def feed(self, frags, ident=1, now=0.0, **kwargs):
        return [self.add(o, mf, p, ident, now, **kwargs) for o, mf, p in frags]

    def gauges(self):
        assert self.stats.pending_bytes == self.r.pending_bytes
        return self.stats.pending_datagrams, self.stats.pending_bytes


def test_in_order_delivers_once_at_the_last_fragment():
    data = make_datagram(65507)
    f = Feeder()
    frags = fragment(data)
    assert len(frags) == 45
    results = f.feed(frags)
    assert results[:-1] == [None] * 44
    assert bytes(results[-1]) == data
    assert f.stats.fragments == 45
    assert f.stats.reassembled == 1
    assert f.stats.malformed_total == 0
    assert f.gauges() == (0, 0)


def test_pending_gauges_track_what_is_held_and_return_to_zero():
    data = make_datagram(4000)
    frags = fragment(data)          # 1480, 1480, 1040
    f = Feeder()
    f.add(*frags[0])
    assert f.gauges() == (1, cost(1480))
    f.add(*frags[2])
    assert f.gauges() == (1, cost(1480, 1040))
    assert f.add(*frags[1]) == data
    assert f.gauges() == (0, 0)


def test_reverse_order():
    data = make_datagram(30001, seed=2)
    f = Feeder()
    results = f.feed(list(reversed(fragment(data, 1000 // 8 * 8))))
    assert [r for r in results if r is not None] == [data]
    assert results[-1] == data
    assert f.stats.reassembled == 1 and f.gauges() == (0, 0)


@pytest.mark.parametrize("size,fsize", [(9, 8), (1481, 1480), (20000, 8 * 37), (65507, 1480),
                                        (MAX_PAYLOAD, 512)])
def test_random_order(size, fsize):
    data = make_datagram(size, seed=size)
    frags = fragment(data, fsize)
    random.Random(size).shuffle(frags)
    f = Feeder()
    results = f.feed(frags)
    assert results[-1] == data
    assert all(r is None for r in results[:-1])
    assert f.stats.reassembled == 1 and f.stats.malformed_total == 0
    assert f.gauges() == (0, 0)


def test_largest_payload_is_accepted_and_one_more_byte_is_not():
    data = make_datagram(MAX_PAYLOAD)
    f = Feeder()
    assert f.feed(fragment(data))[-1] == data
    # one byte further: the last fragment ends at 65516
    f.feed(fragment(data)[:-1], ident=2)
    last_off = fragment(data)[-1][0]
    assert f.add(last_off, False, bytes(MAX_PAYLOAD + 1 - last_off), ident=2) is None
    assert f.stats.malformed["fragment_offset"] == 1
    assert f.gauges() == (0, 0)


def test_exact_duplicates_are_harmless():
    data = make_datagram(6000, seed=3)
    frags = fragment(data)           # 5 fragments
    f = Feeder()
    order = [frags[1], frags[1], frags[4], frags[0], frags[4], frags[0], frags[2], frags[2],
             frags[3]]
    results = f.feed(order)
    assert results[:-1] == [None] * 8
    assert results[-1] == data
    assert f.stats.reassembled == 1 and f.stats.malformed_total == 0
    assert f.stats.fragments == 9
    # a late duplicate after delivery starts a new (never completing) datagram; nothing more
    assert f.add(*frags[2]) is None
    assert f.out == [data]


def test_duplicate_inside_held_data_and_identical_superset_are_harmless():
    data = make_datagram(64, seed=4)
    f = Feeder()
    f.add(8, True, data[8:16])
    f.add(16, True, data[16:24])
    f.add(32, True, data[32:48])
    assert f.add(8, True, data[8:24]) is None          # inside two contiguous held pieces
    assert f.add(40, True, data[40:48]) is None        # inside one piece
    assert f.add(24, True, data[24:56]) is None        # fills a hole, covers [32,48) fully
    assert f.stats.malformed_total == 0
    assert f.gauges() == (1, cost(8, 8, 32))           # [24,56) replaced [32,48)
    assert f.add(56, False, data[56:]) is None
    assert f.add(0, True, data[:8]) == data
    assert f.gauges() == (0, 0)


def test_identical_superset_across_a_hole_fills_it_and_a_cut_piece_does_not():
    data = make_datagram(64, seed=8)
    f = Feeder()
    f.add(0, True, data[0:8])
    f.add(16, True, data[16:24])
    assert f.add(0, True, data[0:32]) is None      # covers both pieces and the hole between
    assert f.stats.malformed_total == 0
    assert f.gauges() == (1, cost(32))
    assert f.add(32, False, data[32:]) == data
    f.add(0, True, data[0:16], ident=2)
    f.add(24, True, data[24:32], ident=2)
    assert f.add(8, True, data[8:32], ident=2) is None   # cuts [0,16), covers the hole
    assert f.stats.malformed["fragment_overlap"] == 1
    assert f.gauges() == (0, 0)


def test_overlap_with_different_bytes_drops_the_datagram_and_later_fragments():
    data = make_datagram(6000, seed=5)
    frags = fragment(data)
    f = Feeder()
    f.feed(frags[:2])
    bad = bytearray(data[1480:2960])
    bad[100] ^= 0xFF
    assert f.add(1480, True, bad) is None
    assert f.stats.malformed["fragment_overlap"] == 1
    assert f.gauges() == (0, 0)
    # the rest of the datagram, even with a fresh copy of everything, is never delivered
    assert f.feed(frags) == [None] * len(frags)
    assert f.gauges() == (0, 0)
    assert f.stats.reassembled == 0 and f.out == []
    # the mark is for the datagram's lifetime: still there at 29.9 s, gone at 30 s
    f.r.expire(29.9)
    assert f.feed(frags, now=29.9) == [None] * len(frags)
    f.r._last_sweep = 1e9                           # found stale on lookup, without a sweep
    assert f.feed(frags, now=30.0)[-1] == data


def test_partial_overlap_even_with_identical_bytes_is_an_overlap():
    data = make_datagram(64, seed=6)
    f = Feeder()
    f.add(0, True, data[0:16])
    assert f.add(8, True, data[8:24]) is None      # cuts the held piece [0, 16)
    assert f.stats.malformed["fragment_overlap"] == 1
    assert f.gauges() == (0, 0)


def test_overlap_with_final_fragment_and_inside_bytes_differing():
    data = make_datagram(64, seed=7)
    f = Feeder()
    f.add(0, True, data[0:32])
    changed = bytearray(data[8:16])
    changed[0] ^= 1
    assert f.add(8, True, changed) is None         # inside, but different bytes
    assert f.stats.malformed["fragment_overlap"] == 1
    assert f.gauges() == (0, 0)


def test_two_final_fragments_disagreeing_is_a_conflict():
    data = make_datagram(3000)
    f = Feeder()
    f.add(1480, False, data[1480:])
    assert f.add(1480, False, data[1480:2000]) is None
    assert f.stats.malformed["fragment_conflict"] == 1
    assert f.gauges() == (0, 0)
    assert f.feed(fragment(data)) == [None] * 3     # tombstoned key


def test_fragment_beyond_known_end_is_a_conflict():
    data = make_datagram(3000)
    f = Feeder()
    f.add(1480, False, data[1480:])                 # end 3000
    assert f.add(2960, True, bytes(1480)) is None   # starts before, ends after the end
    assert f.stats.malformed["fragment_conflict"] == 1
    f2 = Feeder()
    f2.add(2960, True, bytes(1480))                 # data up to 4440 ...
    assert f2.add(1480, False, data[1480:]) is None  # ... then a final fragment ending at 3000
    assert f2.stats.malformed["fragment_conflict"] == 1
    assert f2.gauges() == (0, 0)


@pytest.mark.parametrize("size", [1476, 1, 7, 0])
def test_misaligned_or_empty_non_final_fragment(size):
    data = make_datagram(3000)
    f = Feeder()
    f.add(1480, False, data[1480:])
    assert f.add(0, True, data[:size]) is None
    assert f.stats.malformed["fragment_alignment"] == 1
    assert f.stats.malformed_total == 1
    assert f.gauges() == (0, 0)


@pytest.mark.parametrize("size", [1476, 1, 7, 0])
def test_misaligned_or_empty_fragment_in_order_drops_the_datagram(size):
    """The same rule for a fragment that continues the held data in order (the short path
    of add()): dropped, counted, the datagram let go."""
    data = make_datagram(4000)
    f = Feeder()
    f.add(0, True, data[:1480])
    assert f.add(1480, True, data[1480:1480 + size]) is None
    assert f.stats.malformed["fragment_alignment"] == 1
    assert f.gauges() == (0, 0)
    assert f.add(2960, False, data[2960:]) is None      # the rest cannot complete it
    assert f.stats.reassembled == 0


def test_in_order_fragment_after_max_age_starts_over():
    """A datagram older than max_age is not continued by an in-order fragment, even between
    two sweeps (every max_age/4): it is dropped as timed out and the fragment starts anew."""
    data = make_datagram(5000)
    frags = fragment(data)
    f = Feeder(max_age=1.0)
    f.add(*frags[0], now=0.0)
    f.add(*frags[1], now=0.9)            # sweeps (0.9 >= 0.25): still young
    assert f.gauges() == (1, cost(1480, 1480))
    assert f.add(*frags[2], now=1.05) is None   # 0.15 s after the sweep, 1.05 s old
    assert f.stats.reassembly_timeouts == 1
    assert f.gauges() == (1, cost(1480))
    assert f.add(*frags[3], now=1.1) is None
    assert f.stats.reassembled == 0


@pytest.mark.parametrize("offset,size,mf", [(65528, 8, True), (64040, 1476, False),
                                            (65504, 16, True), (65528, 0, False)])
def test_beyond_65515(offset, size, mf):
    f = Feeder()
    f.add(0, True, make_datagram(1480))
    assert f.add(offset, mf, bytes(size)) is None
    assert f.stats.malformed["fragment_offset"] == 1
    assert f.gauges() == (0, 0)


def test_expiry_by_age_from_the_first_fragment():
    data = make_datagram(5000)
    frags = fragment(data)
    f = Feeder(max_age=30.0)
    f.add(*frags[0], now=100.0)
    f.add(*frags[1], now=120.0)
    f.r.expire(129.9)
    assert f.gauges() == (1, cost(1480, 1480))
    assert f.stats.reassembly_timeouts == 0
    f.r.expire(130.0)
    assert f.gauges() == (0, 0)
    assert f.stats.reassembly_timeouts == 1
    # the remaining fragments start a new datagram that cannot complete
    assert f.feed(frags[2:], now=130.1) == [None, None]
    assert f.stats.reassembled == 0


def test_expiry_happens_on_add_of_other_datagrams():
    f = Feeder(max_age=2.0)
    f.add(0, True, make_datagram(1480), ident=1, now=0.0)
    f.add(0, True, make_datagram(1480), ident=2, now=1.0)
    f.add(0, True, make_datagram(1480), ident=3, now=2.5)   # no explicit expire() call
    assert f.stats.reassembly_timeouts == 1
    assert f.gauges() == (2, cost(1480) * 2)


def test_id_reuse_after_expiry_does_not_glue_to_stale_pieces():
    old = make_datagram(4000, seed=10)
    new = make_datagram(4000, seed=11)
    f = Feeder(max_age=30.0)
    f.add(*fragment(old)[1], now=0.0)               # the middle of an old datagram, then lost
    results = f.feed(fragment(new), now=30.0)      # same key, 30 s later
    assert results[-1] == new
    assert f.stats.reassembly_timeouts == 1
    assert f.stats.malformed_total == 0
    # and the stale piece is found stale on lookup even without a sweep in between
    f2 = Feeder(max_age=30.0)
    f2.add(*fragment(old)[1], now=0.0)
    f2.r._last_sweep = 1e9                          # make the periodic sweep not run
    assert f2.feed(fragment(new), now=31.0)[-1] == new
    assert f2.stats.reassembly_timeouts == 1


def test_eviction_by_bytes_takes_the_oldest_first():
    f = Feeder(max_bytes=3 * cost(1480))
    for ident in (1, 2, 3):
        f.add(0, True, make_datagram(1480), ident=ident, now=ident)
    assert f.gauges() == (3, 3 * cost(1480))
    f.add(0, True, make_datagram(1480), ident=4, now=4)
    assert f.stats.reassembly_evictions == 1
    assert f.gauges() == (3, 3 * cost(1480))
    assert list(f.r._pending) == [(SRC, DST, 2), (SRC, DST, 3), (SRC, DST, 4)]
    # a second fragment of datagram 2 (now the oldest) evicts the next oldest, not itself
    f.add(1480, True, make_datagram(1480), ident=2, now=5)
    assert list(f.r._pending) == [(SRC, DST, 2), (SRC, DST, 4)]
    assert f.stats.reassembly_evictions == 2
    assert f.r.pending_bytes <= 3 * cost(1480)


def test_a_fragment_that_cannot_fit_alone_is_not_held():
    f = Feeder(max_bytes=1000)
    f.add(0, True, make_datagram(480), ident=1)
    assert f.gauges() == (1, cost(480))
    assert f.add(0, True, make_datagram(1480), ident=2) is None
    assert f.stats.reassembly_evictions == 2    # datagram 1 made room in vain, 2 itself
    assert f.gauges() == (0, 0)


def test_a_datagram_that_outgrows_the_budget_alone_is_evicted():
    f = Feeder(max_bytes=cost(1480) + 100)
    f.add(0, True, make_datagram(1480))
    assert f.add(1480, True, bytes(1480)) is None
    assert f.stats.reassembly_evictions == 1
    assert f.gauges() == (0, 0)


def test_tombstones_are_bounded():
    f = Feeder(max_datagrams=1)          # keeps max(256, 4 * max_datagrams) marks
    for ident in range(257):
        f.add(8, True, bytes(7), ident=ident)
    assert f.stats.malformed["fragment_alignment"] == 257
    assert f.add(8, True, bytes(8), ident=1) is None    # still marked: ignored
    assert f.gauges() == (0, 0)
    assert f.add(8, True, bytes(8), ident=0) is None    # the oldest mark was forgotten
    assert f.gauges() == (1, cost(8))


def test_bytes_and_bytearray_payloads_are_accepted():
    data = make_datagram(3000)
    stats = Statistics()
    r = Reassembler(stats)
    parts = [(o, mf, bytes(p)) for o, mf, p in fragment(data)]
    assert r.add(SRC, DST, 1, parts[0][0], parts[0][1], parts[0][2], 0.0) is None
    assert r.add(SRC, DST, 1, parts[1][0], parts[1][1], bytearray(parts[1][2]), 0.0) is None
    wide = memoryview(bytearray(parts[2][2])).cast("H")     # 40 bytes seen as 20 items
    assert len(parts[2][2]) == 40 and len(wide) == 20
    assert r.add(SRC, DST, 1, parts[2][0], parts[2][1], wide, 0.0) == data


def test_eviction_by_count():
    data = make_datagram(3000)
    frags = fragment(data)
    f = Feeder(max_datagrams=3)
    for ident in (1, 2, 3, 4):
        f.add(*frags[0], ident=ident, now=ident)
    assert f.stats.reassembly_evictions == 1
    assert f.gauges()[0] == 3
    assert [k[2] for k in f.r._pending] == [2, 3, 4]
    assert f.feed(frags[1:], ident=1, now=5) == [None, None]   # datagram 1 is gone ...
    assert f.stats.reassembly_evictions == 2    # ... and its rest, a new datagram, evicted 2
    assert [k[2] for k in f.r._pending] == [3, 4, 1]
    assert f.feed(frags[1:], ident=4, now=5)[-1] == data
    assert f.stats.reassembly_evictions == 2
    assert f.gauges()[0] == 2


def test_wanted_false_first_fragment_first():
    data = make_datagram(6000, dport=9)
    frags = fragment(data)
    calls = []

    def wanted(header):
        calls.append(bytes(header))
        return struct.unpack("!H", header[2:4])[0] != 9

    f = Feeder(wanted=wanted)
    results = f.feed(frags)
    assert results == [None] * len(frags)
    assert calls == [data[:8]]
    assert f.stats.fragments_unwanted == len(frags)
    assert f.gauges() == (0, 0)
    assert f.stats.malformed_total == 0 and f.stats.reassembled == 0


def test_wanted_false_first_fragment_last():
    data = make_datagram(6000, dport=9)
    frags = fragment(data)
    calls = []

    def wanted(header):
        calls.append(bytes(header))
        return False

    f = Feeder(wanted=wanted)
    assert f.feed(frags[1:]) == [None] * 4
    assert f.gauges() == (1, cost(1480, 1480, 1480, 80))
    assert calls == []
    assert f.add(*frags[0]) is None
    assert calls == [data[:8]]
    assert f.gauges() == (0, 0)
    assert f.stats.fragments_unwanted == 5
    assert f.add(*frags[3]) is None                 # a late duplicate is let go as well
    assert f.stats.fragments_unwanted == 6
    assert f.gauges() == (0, 0)
    # the mark ages out like a datagram: the same key later is asked again
    f.feed(frags, now=30.0)
    assert len(calls) == 2


def test_wanted_true_is_asked_once_with_the_udp_header():
    data = make_datagram(6000, dport=7)
    frags = fragment(data)
    calls = []

    def wanted(header):
        assert isinstance(header, memoryview) and len(header) == 8
        calls.append(bytes(header))
        return True

    f = Feeder(wanted=wanted)
    results = f.feed([frags[0], frags[0], frags[2], frags[1], frags[0], frags[4], frags[3]])
    assert results[-1] == data
    assert calls == [data[:8]]
    results = f.feed([frags[2], frags[1], frags[0], frags[0], frags[4], frags[3]], ident=2)
    assert results[-1] == data                      # first fragment arriving in the middle
    assert calls == [data[:8]] * 2
    assert f.stats.fragments_unwanted == 0 and f.stats.reassembled == 2


def test_not_a_fragment_passes_through_without_state():
    f = Feeder(wanted=lambda header: False)
    assert f.add(0, False, b"12345678abc") == b"12345678abc"
    assert f.stats.fragments == 0 and f.gauges() == (0, 0)


def test_payload_is_copied():
    data = make_datagram(3000)
    buf = bytearray(1500)
    f = Feeder()
    result = None
    for off, mf, part in fragment(data):
        buf[:len(part)] = part
        result = f.r.add(SRC, DST, 1, off, mf, memoryview(buf)[:len(part)], 0.0)
        buf[:] = bytes(1500)                       # the capture buffer is reused
    assert result == data


def test_zero_length_final_fragment_fixes_the_end():
    data = make_datagram(2960)
    f = Feeder()
    f.feed(fragment(data))  # 2 fragments, the second one final: delivered normally
    assert f.out == [data]
    f.add(0, True, data[:1480], ident=2)
    f.add(1480, True, data[1480:], ident=2)
    assert f.add(2960, False, b"", ident=2) == data
    assert f.gauges() == (0, 0)


def test_clear_forgets_everything():
    f = Feeder()
    f.add(0, True, make_datagram(1480), ident=1)
    f.add(0, True, bytes(5), ident=2)               # misaligned: tombstone
    f.r.clear()
    assert f.gauges() == (0, 0)
    assert f.r.pending_datagrams == 0
    assert f.add(0, True, bytes(8), ident=2) is None  # the tombstone is gone too
    assert f.gauges() == (1, cost(8))


def test_constructor_rejects_nonsense_limits():
    with pytest.raises(ValueError, match="max_age"):
        Reassembler(Statistics(), max_age=0)
    with pytest.raises(ValueError, match="max_datagrams"):
        Reassembler(Statistics(), max_datagrams=0)
    with pytest.raises(ValueError, match="max_bytes"):
        Reassembler(Statistics(), max_bytes=-1)


# -- fuzz -------------------------------------------------------------------------------------

class _Stream:
    """One intact datagram being fed: its fragments (shuffled, with duplicates) and its fate."""

    def __init__(self, rng, ident, unwanted):
        size = rng.randint(9, 65507)
        self.data = make_datagram(size, dport=9 if unwanted else 5000, seed=rng.random())
        self.ident = ident
        self.unwanted = unwanted
        self.polluted = False
        frags = []
        off = 0
        while off < size:
            step = 8 * rng.randint(1, 185) if rng.random() < 0.9 else 8 * rng.randint(1, 8)
            if off == 0:
                step = min(step, 8 * ((size - 1) // 8))   # always at least two fragments
            frags.append((off, off + step < size, self.data[off:off + step]))
            off += step
        rng.shuffle(frags)
        # Duplicates only before the fragment that completes the datagram: a duplicate arriving
        # after it starts a new datagram (as in any IP stack) that could complete again.
        for _ in range(rng.randint(0, 3)):
            frags.insert(rng.randrange(len(frags)), rng.choice(frags[:-1]))
        self.frags = frags[::-1]     # fed with pop()
        self.delivered = 0


@pytest.mark.parametrize("seed", [20240601, 7])
def test_fuzz_intact_datagrams_survive_hostile_noise(seed):
    rng = random.Random(seed)
    max_bytes, max_datagrams = 1 << 20, 512
    stats = Statistics()
    r = Reassembler(stats, max_age=1.0, max_bytes=max_bytes, max_datagrams=max_datagrams,
                    wanted=lambda h: h[2:4] != b"\x00\x09")
    biggest_fragment = 1500 + FRAGMENT_OVERHEAD
    streams = {}
    finished = []
    next_ident = [0]
    noise_ident = [0]
    now = [0.0]
    ops = [0]

    def new_stream():
        next_ident[0] += 1
        s = _Stream(rng, next_ident[0], rng.random() < 0.1)
        streams[s.ident] = s

    def offer(src, ident, off, mf, payload):
        ops[0] += 1
        now[0] += rng.random() * 0.0004
        if rng.random() < 0.001:
            r.expire(now[0])
        result = r.add(src, DST, ident, off, mf, memoryview(payload), now[0])
        assert r.pending_bytes <= max_bytes + biggest_fragment
        assert stats.pending_bytes == r.pending_bytes
        assert stats.pending_datagrams == len(r._pending) <= max_datagrams
        if result is not None and src == SRC:
            s = streams.get(ident) or next(x for x in finished if x.ident == ident)
            s.delivered += 1
            if not s.polluted:
                assert bytes(result) == s.data
        return result

    def noise():
        kind = rng.randrange(6)
        noise_ident[0] = (noise_ident[0] + 1) & 0xFFFF
        nid = rng.randrange(64) if rng.random() < 0.5 else noise_ident[0]
        if kind == 0:      # overlaps on a noise key
            off = 8 * rng.randrange(100)
            offer(NOISE_SRC, nid, off, True, bytes([rng.randrange(256)]) * 16)
            offer(NOISE_SRC, nid, off + 8, True, bytes([rng.randrange(256)]) * 16)
        elif kind == 1:    # lying offsets near 65535
            off = 8 * rng.randint(7900, 8191)
            offer(NOISE_SRC, nid, off, rng.random() < 0.5, bytes(8 * rng.randint(0, 190)))
        elif kind == 2:    # a flood of distinct ids
            for _ in range(rng.randint(1, 20)):
                noise_ident[0] = (noise_ident[0] + 1) & 0xFFFF
                offer(NOISE_SRC, noise_ident[0], 8 * rng.randint(1, 8000), True,
                      bytes(8 * rng.randint(1, 185)))
        elif kind == 3:    # truncations: misaligned, empty
            offer(NOISE_SRC, nid, 8 * rng.randrange(8000), True, bytes(rng.randint(0, 1479)))
        elif kind == 4 and streams and rng.random() < 0.1:   # pollute an intact datagram's key
            s = streams[rng.choice(list(streams))]
            s.polluted = True
            off, mf, part = rng.choice(s.frags)
            hostile = [(off, mf, bytes(len(part))),                    # same place, other bytes
                       (off, not mf, part),                            # lies about the end
                       (off, True, part[:len(part) - 1]),              # truncated
                       (off + 8, mf, part)]                            # shifted overlap
            # (offset 0 with MF clear would be a whole packet of its own, not a fragment)
            hostile = [h for h in hostile if h[0] or h[1]]
            offer(SRC, s.ident, *rng.choice(hostile))
        else:              # garbage anywhere on the noise keys
            offer(NOISE_SRC, nid, 8 * rng.randrange(8192), rng.random() < 0.7,
                  bytes(rng.randrange(1500)))

    def finish_open_streams():
        for s in list(streams.values()):
            while s.frags:
                offer(SRC, s.ident, *s.frags.pop())
            del streams[s.ident]
            finished.append(s)

    while ops[0] < 50000:
        if rng.random() < 0.0003:     # a quiet spell: what the noise left behind ages out
            finish_open_streams()
            now[0] += 1.0 + rng.random()
        while len(streams) < 3:
            new_stream()
        if rng.random() < 0.3:
            noise()
            continue
        s = streams[rng.choice(list(streams))]
        off, mf, part = s.frags.pop()
        offer(SRC, s.ident, off, mf, part)
        if not s.frags:
            del streams[s.ident]
            finished.append(s)
    finish_open_streams()

    clean = [s for s in finished if not s.polluted]
    assert len(finished) > 200 and len(clean) > 0.5 * len(finished)
    for s in finished:
        if s.unwanted:
            assert s.delivered == 0
        elif s.polluted:
            assert s.delivered <= 1
        else:
            assert s.delivered == 1, (s.ident, len(s.data))
    # the run really went through every defence
    for reason in ("fragment_offset", "fragment_alignment", "fragment_overlap",
                   "fragment_conflict"):
        assert stats.malformed[reason] > 0, reason
    assert stats.reassembly_timeouts > 0
    assert stats.reassembly_evictions > 0
    assert stats.fragments_unwanted > 0
    r.expire(now[0] + 1.0)
    assert r.pending_bytes == 0 and stats.pending_datagrams == 0
