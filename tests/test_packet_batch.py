"""The batch walker's one-unpack fast path decides exactly as the general path does.

``make_batch_parser(linktype)`` handles the common frame (fixed link header, IPv4 without
options, UDP to our port or a fragment, good header checksum) with one ``struct`` unpack and
sends everything else through ``make_link_parser`` + ``parse_ipv4``.  These tests walk the same
batches with the fast path on and off (``fast_path=False``) and require identical output and
identical statistics, over crafted edge cases and a seeded random mix of valid and mutated
frames, for every link type that has a fast path.
"""

import random

import pytest

import packets as P
from udpcap_ctypes import _packet, _pcap
from udpcap_ctypes._stats import Statistics

PORT = 5000
FAST_LINKTYPES = [_pcap.DLT_EN10MB, _pcap.DLT_LINUX_SLL, _pcap.DLT_LINUX_SLL2, _pcap.DLT_NULL,
                  _pcap.DLT_LOOP]

def walk(linktype, frames, fast_path, verify=False, ports=frozenset({PORT})):
    parse = _packet.make_batch_parser(linktype, fast_path=fast_path)
    stats = Statistics()
    found = []
    view = memoryview(P.savefile_batch(frames))
    end = parse(view, 0, len(view), ports, stats, verify, found)
    assert end == len(view)
    assert stats.frames == len(frames)
    # Views compare by identity; compare what they point at instead.
    result = [e[:7] for e in found]
    return result, stats.snapshot()


def datagram(payload=b"x" * 32, dport=PORT, **ip):
    src, dst = ip.pop("src", "198.18.0.1"), ip.pop("dst", "198.18.0.2")
    return P.ipv4(P.udp(payload, dport=dport, src=src, dst=dst), src=src, dst=dst, **ip)


def edge_packets():
    """IPv4 packets at every boundary the fast path tests."""
    segment = P.udp(b"y" * 3000, dport=PORT, src="198.18.0.1", dst="198.18.0.2")
    frags = [pkt for _o, _m, pkt in P.fragment_ip(segment, "198.18.0.1", "198.18.0.2", 7)]
    return [
        datagram(),                                    # the common case
        datagram(b""),                                 # empty payload: total 28
        datagram(dport=PORT + 1),                      # other port
        datagram(proto=6),                             # not UDP
        datagram(checksum=0x1234),                     # bad header checksum
        datagram(options=b"\x01\x01\x01\x01"),         # IHL 6
        datagram(total_length=19),                     # total below the header
        datagram(total_length=27),                     # no room for the UDP header
        datagram(total_length=2000),                   # beyond the captured bytes
        datagram(version=6),
        P.ipv4(P.udp(b"z" * 20, dport=PORT, length=7, checksum=0), src="198.18.0.1",
               dst="198.18.0.2"),
        P.ipv4(P.udp(b"z" * 20, dport=PORT, length=60, checksum=0), src="198.18.0.1",
               dst="198.18.0.2"),
        datagram(df=True),                             # DF set: not a fragment
        datagram(flags_raw=0x8000),                    # the reserved bit: not a fragment
    ] + frags + [frags[1][:30], frags[0][:25]]         # fragments, and truncated ones


def mixed_frames(rng, linktype, count, base=None):
    """*count* frames of *linktype* wrapping packets of *base* (default :func:`edge_packets`),
    some with bit flips, some truncated (possibly to nothing)."""
    base = edge_packets() if base is None else base
    frames = []
    for _ in range(count):
        frame = bytearray(P.wrap(linktype, rng.choice(base)))
        for _flip in range(rng.choice((0, 0, 1, 2, 3))):
            frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
        if rng.random() < 0.2:
            del frame[rng.randrange(len(frame) + 1):]
        frames.append(bytes(frame))
    return frames


@pytest.mark.parametrize("linktype", FAST_LINKTYPES)
def test_edge_cases_same_on_both_paths(linktype):
    frames = [P.wrap(linktype, pkt) for pkt in edge_packets()]
    fast = walk(linktype, frames, True)
    general = walk(linktype, frames, False)
    assert fast == general
    # And the fast path is really taken for the common case: two frames, one datagram each.
    assert len(walk(linktype, frames[:2], True)[0]) == 2


@pytest.mark.parametrize("linktype", FAST_LINKTYPES)
def test_checksum_verification_takes_the_general_path_with_same_result(linktype):
    frames = [P.wrap(linktype, pkt) for pkt in edge_packets()]
    assert walk(linktype, frames, True, verify=True) == walk(linktype, frames, False,
                                                             verify=True)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_and_mutated_frames_same_on_both_paths(seed):
    """4,000 frames per seed: valid datagrams and fragments, then bit flips, truncations and
    lying length fields, across the fast-path link types."""
    rng = random.Random(seed)
    base = edge_packets()
    for linktype in FAST_LINKTYPES:
        frames = mixed_frames(rng, linktype, 800, base)
        fast = walk(linktype, frames, True)
        assert fast == walk(linktype, frames, False)
        assert fast[0], "the mix must contain deliverable datagrams"


@pytest.mark.parametrize("fast_path", [True, False])
def test_a_shared_capture_keeps_every_port_it_is_given(fast_path):
    """A capture shared by sockets on several ports walks the batch once for all of them:
    each datagram comes with its destination port, other ports are counted and dropped."""
    linktype = FAST_LINKTYPES[0]
    frames = [P.wrap(linktype, datagram(dport=port)) for port in
              (PORT, PORT + 1, PORT + 2, PORT + 1, PORT)]
    found, stats = walk(linktype, frames, fast_path, ports=frozenset({PORT, PORT + 1}))
    assert [entry[3] for entry in found] == [PORT, PORT + 1, PORT + 1, PORT]
    assert stats["not_for_us"] == 1

