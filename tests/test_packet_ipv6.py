"""IPv6 on the pure packet path (udpcap_ctypes._packet): exact results, exact counters.

Frames are built by tests/packets.py (``ipv6``, ``udp6``, the extension headers, ``chain``,
``fragment_ipv6``, ``wrap6``): struct layouts written from RFC 8200 (header, extension headers,
fragment header), RFC 8200 8.1 (the UDP pseudo-header, checksummed with a plain 16-bit loop)
and the link-layer formats, independent of the parser.  Every test checks the outcome and that
exactly the expected counters moved.

* parse_ipv6: the header, every drop reason, every extension header kind and the chain bound,
  routing headers with segments left, other upper layers, the zero-checksum rule, checksum
  verification, atomic fragments, fragments and the RFC 7112 first-fragment rule, jumbograms;
* parse_udp6, parse_udp6_segment, udp_header_after_extensions (what reassembly uses);
* link layers with ``ipv6=True``: Ethernet 0x86DD (VLAN tags too), DLT_NULL/DLT_LOOP families
  24, 28, 30, Linux cooked 0x86DD, raw version 6, and the link layer and the version agreeing;
* the batch walker: IPv6 entries with port keys ``dport | PORT6``, FRAGMENT6 entries, IPv4 and
  IPv6 to the same port number told apart, the IPv6 fast path taken for the common frames and
  deciding exactly as the general path (edge cases and a seeded random mix of valid and
  mutated IPv6 and IPv4 frames, every fast link type, both record layouts);
* a seeded fuzz: random and mutated IPv6 frames never raise, and every frame is accounted for
  exactly once (a datagram, a fragment, not_for_us, or exactly one malformed reason).
"""

import collections
import random
import socket
import struct
import sys

import pytest
from test_packet_batch import FAST_LINKTYPES
from test_packet_batch import edge_packets as edge_packets4
from test_packet_npf_records import LAYOUTS, laid_out
from test_packet_parser import Counted, check_flipped_bit

import packets as P
from udpcap_ctypes import _packet
from udpcap_ctypes._packet import (
    FRAGMENT,
    FRAGMENT6,
    MAX_EXTENSION_HEADERS,
    PORT6,
    UDP,
    V6_TAG,
    make_batch_parser,
    make_link_parser,
    parse_ipv4,
    parse_ipv6,
    parse_udp6,
    parse_udp6_segment,
    udp6_checksum_ok,
    udp_header_after_extensions,
)
from udpcap_ctypes._stats import MALFORMED_REASONS, Statistics

PORT = 5000
SRC = P.SRC6
DST = P.DST6
SRC_I = P.addr6(SRC)
DST_I = P.addr6(DST)
IPV6_REASONS = ("ip6_header_chain", "ip6_first_fragment", "ip6_jumbogram")
IPV6_LINKTYPES = sorted(P.LINK_WRAPPERS6)


# -- helpers -----------------------------------------------------------------------------------

# What follows the packet in the buffer: bytes that would complete any header or payload that
# a parser read past ``end`` -- they must never be looked at.
AFTER = P.udp6(b"\xAA" * 64, dport=PORT) * 2


def embedded(packet, before=5, after=AFTER):
    data = b"\xEE" * before + bytes(packet) + after
    return memoryview(data), before, before + len(packet)


def relative(result, start):
    """A parse result with its offsets made relative to the packet's start."""
    if result is None:
        return None
    if result[0] == UDP:
        return result[:5] + (result[5] - start, result[6] - start)
    return result[:6] + (result[6] - start, result[7] - start, result[8])


def parse6(packet, counted, verify=False):
    """parse_ipv6 of *packet* inside a bigger buffer; offsets relative to the packet."""
    buf, start, end = embedded(packet)
    result = parse_ipv6(buf, start, end, counted.stats, verify)
    if result is not None:
        first, last = (result[5], result[6]) if result[0] == UDP else (result[6], result[7])
        assert start + 40 <= first <= last <= end
    return relative(result, start)


def udp_result(payload, at, sport=40000, dport=PORT, src=SRC_I, dst=DST_I):
    """The UDP result of *payload* whose UDP header is at offset *at*."""
    return (UDP, src, dst, sport, dport, at + 8, at + 8 + len(payload))


def segment6(payload=b"hello", sport=40000, dport=PORT, **kw):
    return P.udp6(payload, sport, dport, SRC, DST, **kw)


# -- the contract's constants ------------------------------------------------------------------

def test_constants_and_reasons():
    assert (UDP, FRAGMENT, FRAGMENT6) == (1, 2, 3)
    assert PORT6 == 0x10000 and V6_TAG == 1 << 128
    assert MAX_EXTENSION_HEADERS == 8
    assert set(IPV6_REASONS) <= set(MALFORMED_REASONS)
    assert all(Statistics().malformed[reason] == 0 for reason in IPV6_REASONS)
    # Port keys never collide with IPv4 ports, tagged sources never with IPv4 or IPv6 ones.
    assert all(port | PORT6 > 0xFFFF for port in (0, 1, 0xFFFF))
    assert (1 | V6_TAG) != 1 and ((2 ** 128 - 1) | V6_TAG) >> 128 == 1


# -- the UDP checksum over IPv6 ----------------------------------------------------------------

def test_checksum_matches_the_rfc_loop_on_random_segments():
    """udp6_checksum_ok against packets.udp6_checksum (RFC 8200 8.1 pseudo-header, 16-bit loop):
    right checksums verify, any single flipped bit (segment, checksum, either address) fails."""
    rng = random.Random(8200)
    corners = [0, 1, 2 ** 128 - 1, 2 ** 127, P.addr6("fe80::1"), P.addr6("ff02::1")]
    for case in range(3000):
        src = rng.choice(corners) if case % 5 == 0 else rng.getrandbits(128)
        dst = rng.choice(corners) if case % 7 == 0 else rng.getrandbits(128)
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 41)))
        seg = P.udp6(payload, rng.getrandbits(16), rng.getrandbits(16), src, dst)
        assert udp6_checksum_ok(src, dst, seg), case
        assert udp6_checksum_ok(src, dst, memoryview(seg))
        bad = bytearray(seg)
        bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
        if bad[6:8] != b"\0\0":
            assert not udp6_checksum_ok(src, dst, bytes(bad)), case
        assert not udp6_checksum_ok(src ^ (1 << rng.randrange(128)), dst, seg)
        assert not udp6_checksum_ok(src, dst ^ (1 << rng.randrange(128)), seg)
        # The IPv4 pseudo-header (32-bit addresses, 16-bit length) is another sum.
        assert not udp6_checksum_ok(src, dst, seg[:-1]) or len(seg) == 8


def test_checksum_zero_and_its_other_representation():
    """A checksum computing to 0 is sent as 0xFFFF and verifies; a zero field never does."""
    for n in range(1 << 16):
        seg = bytearray(segment6(struct.pack("!H", n)))
        if seg[6:8] == b"\xff\xff":
            break
    else:
        pytest.fail("no payload gives checksum 0")
    assert udp6_checksum_ok(SRC_I, DST_I, bytes(seg))
    seg[6:8] = b"\0\0"                       # arithmetically the same sum: still refused
    assert not udp6_checksum_ok(SRC_I, DST_I, bytes(seg))
    assert not udp6_checksum_ok(SRC_I, DST_I, segment6(checksum=0))


# -- parse_ipv6: the header --------------------------------------------------------------------

def test_common_datagram():
    c = Counted()
    payload = bytes(range(256)) * 4
    pkt = P.ipv6_udp(payload, 40000, PORT, traffic_class=0xB8, flow=0xABCDE, hop_limit=1)
    assert parse6(pkt, c) == udp_result(payload, 40)
    assert parse6(pkt, c, verify=True) == udp_result(payload, 40)
    buf, start, end = embedded(pkt)
    got = parse_ipv6(buf, start, end, c.stats)
    assert bytes(buf[got[5]:got[6]]) == payload
    c.expect()


@pytest.mark.parametrize("src,dst", [("::1", "::1"), ("::", "ff02::fb"),
                                     ("fe80::1:2:3:4", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
                                     ("::ffff:198.18.0.1", "2001:db8:0:1::42")])
def test_addresses_are_128_bit_ints(src, dst):
    c = Counted()
    pkt = P.ipv6_udp(b"a", src=src, dst=dst)
    got = parse6(pkt, c)
    assert got[1] == int.from_bytes(socket.inet_pton(socket.AF_INET6, src), "big")
    assert got[2] == int.from_bytes(socket.inet_pton(socket.AF_INET6, dst), "big")
    c.expect()


def test_link_padding_after_the_payload_is_ignored():
    c = Counted()
    pkt = P.ipv6_udp(b"abc") + b"\xA5" * 30
    assert parse6(pkt, c, verify=True) == udp_result(b"abc", 40)
    c.expect()


def test_truncated_header():
    c = Counted()
    pkt = P.ipv6_udp(b"x" * 20)
    for size in range(40):
        buf, start, end = embedded(pkt[:size], after=pkt[size:] + AFTER)
        assert parse_ipv6(buf, start, end, c.stats) is None
        c.expect(ip_truncated=1)


@pytest.mark.parametrize("delta", [1, 8, 1000])
def test_payload_length_beyond_the_captured_bytes(delta):
    c = Counted()
    pkt = P.ipv6_udp(b"x" * 20)
    lying = P.ipv6(pkt[40:], payload_length=len(pkt) - 40 + delta)
    assert parse6(lying, c) is None
    c.expect(ip_truncated=1)
    full = P.ipv6(pkt[40:], payload_length=0xFFFF)
    assert parse6(full, c) is None
    c.expect(ip_truncated=1)


@pytest.mark.parametrize("version", [0, 4, 5, 7, 15])
def test_version(version):
    c = Counted()
    assert parse6(P.ipv6_udp(b"x", version=version), c) is None
    c.expect(ip_version=1)


def test_jumbogram():
    """Payload length 0: a jumbogram (RFC 2675: Jumbo Payload option in a hop-by-hop header),
    not supported; and any other zero-length payload counted the same way."""
    c = Counted()
    seg = segment6(b"j" * 100)
    jumbo_option = struct.pack("!BBI", 0xC2, 4, 40 + 8 + len(seg))
    pkt = P.ipv6(P.hop_by_hop(P.NH_UDP, jumbo_option) + seg, next_header=P.NH_HOPOPTS,
                 payload_length=0)
    assert parse6(pkt, c) is None
    c.expect(ip6_jumbogram=1)
    for nh in (P.NH_UDP, P.NH_NONE, P.NH_FRAGMENT):
        assert parse6(P.ipv6(b"", next_header=nh), c) is None
        c.expect(ip6_jumbogram=1)


# -- parse_ipv6: UDP ---------------------------------------------------------------------------

def test_udp_truncated():
    c = Counted()
    seg = segment6(b"abcdefgh")
    for size in range(1, 8):
        assert parse6(P.ipv6(seg[:size]) + seg[size:], c) is None
        c.expect(udp_truncated=1)


def test_udp_length():
    c = Counted()
    for ulen in list(range(8)) + [8 + 6, 8 + 100, 0xFFFF]:
        pkt = P.ipv6(segment6(b"abcde", length=ulen))
        assert parse6(pkt, c) is None, ulen
        c.expect(udp_length=1)
    # Shorter than the payload: the datagram ends where UDP says (bytes after it ignored).
    pkt = P.ipv6(segment6(b"abc") + b"TRAILER")
    assert parse6(pkt, c, verify=True) == udp_result(b"abc", 40)
    seg = segment6(b"abcdefghij", length=8 + 3, checksum=0)
    seg = seg[:6] + struct.pack("!H", P.udp6_checksum(SRC, DST, seg[:11])) + seg[8:]
    assert parse6(P.ipv6(seg), c, verify=True) == udp_result(b"abc", 40)
    c.expect()


@pytest.mark.parametrize("verify", [False, True])
def test_zero_checksum_is_always_dropped(verify):
    c = Counted()
    assert parse6(P.ipv6(segment6(b"zero", checksum=0)), c, verify) is None
    c.expect(udp_checksum=1)
    assert parse6(P.ipv6_udp(b"zero", headers=["dst"], udp_checksum=0), c, verify) is None
    c.expect(udp_checksum=1)


def test_checksum_verified_only_when_asked():
    c = Counted()
    for payload in (b"", b"o", b"odd", b"even", bytes(range(256)) * 6 + b"!"):
        good = P.ipv6(segment6(payload))
        assert parse6(good, c, verify=True) == udp_result(payload, 40)
        c.expect()
        for wrong in (segment6(payload, checksum=0x1234), segment6(payload, checksum=0xFFFF)):
            if wrong[6:8] == good[46:48]:
                continue
            assert parse6(P.ipv6(wrong), c, verify=True) is None
            c.expect(udp_checksum=1)
            assert parse6(P.ipv6(wrong), c, verify=False) == udp_result(payload, 40)
            c.expect()
        if payload:
            flipped = bytearray(good)
            flipped[-1] ^= 0x10
            assert parse6(bytes(flipped), c, verify=True) is None
            c.expect(udp_checksum=1)
    # The pseudo-header: another source or destination breaks it.
    seg = segment6(b"data")
    for src, dst in ((SRC, "2001:db8::3"), ("2001:db8::9", DST)):
        assert parse6(P.ipv6(seg, src, dst), c, verify=True) is None
        c.expect(udp_checksum=1)
    # Behind extension headers the pseudo-header's length is still the UDP length.
    pkt = P.ipv6_udp(b"behind", headers=["hop", ("dst", {"size": 24}), "rt", "atomic"])
    assert parse6(pkt, c, verify=True) == udp_result(b"behind", 40 + 8 + 24 + 24 + 8)
    c.expect()


# -- parse_ipv6: extension headers -------------------------------------------------------------

EXTENSION_CASES = [
    ("hop", {}, 8), ("hop", {"size": 16}, 16), ("hop", {"options": b"\x05\x02\x00\x00"}, 8),
    ("hop", {"size": 2048}, 2048),                                  # Hdr Ext Len 255
    ("dst", {}, 8), ("dst", {"size": 40}, 40), ("dst", {"size": 2048}, 2048),
    ("rt", {"routing_type": 0}, 24), ("rt", {"routing_type": 2, "size": 24}, 24),
    ("rt", {"routing_type": 3, "size": 8}, 8), ("rt", {"routing_type": 4, "size": 56}, 56),
    ("atomic", {}, 8), ("atomic", {"ident": 0}, 8),
    ("atomic", {"reserved": 0xFF, "res_bits": 3}, 8),               # reserved bits ignored
]


@pytest.mark.parametrize("kind,kwargs,size", EXTENSION_CASES)
def test_each_extension_header_kind(kind, kwargs, size):
    c = Counted()
    payload = b"after %s" % kind.encode()
    pkt = P.ipv6_udp(payload, headers=[(kind, kwargs)])
    assert len(pkt) == 40 + size + 8 + len(payload)
    assert parse6(pkt, c, verify=True) == udp_result(payload, 40 + size)
    c.expect()


def bounded_chain(count):
    """*count* extension headers of every kind (hop-by-hop first), sizes varying."""
    cycle = [("dst", {"size": 16}), ("rt", {}), "atomic", ("dst", {})]
    headers = ["hop"] + [cycle[i % len(cycle)] for i in range(count - 1)]
    return headers[:count]


@pytest.mark.parametrize("count", range(1, MAX_EXTENSION_HEADERS + 1))
def test_chains_up_to_the_bound(count):
    c = Counted()
    headers = bounded_chain(count)
    first, ext = P.chain(headers)
    pkt = P.ipv6_udp(b"chain", headers=headers)
    assert parse6(pkt, c, verify=True) == udp_result(b"chain", 40 + len(ext))
    c.expect()


@pytest.mark.parametrize("count", [MAX_EXTENSION_HEADERS + 1, MAX_EXTENSION_HEADERS + 2, 40])
def test_chains_over_the_bound(count):
    c = Counted()
    assert parse6(P.ipv6_udp(b"chain", headers=bounded_chain(count)), c) is None
    c.expect(ip6_header_chain=1)
    # Atomic fragment headers count too.
    assert parse6(P.ipv6_udp(b"chain", headers=["atomic"] * count), c) is None
    c.expect(ip6_header_chain=1)


@pytest.mark.parametrize("headers", [["dst", "hop"], ["rt", "hop"], ["atomic", "hop"],
                                     ["hop", "hop"], ["hop", "dst", "hop"]])
def test_hop_by_hop_only_right_after_the_base_header(headers):
    c = Counted()
    assert parse6(P.ipv6_udp(b"x", headers=headers), c) is None
    c.expect(ip6_header_chain=1)


def test_a_header_running_past_the_payload():
    c = Counted()
    seg = segment6(b"x" * 40)
    # Hdr Ext Len says more than the payload holds (the bytes are there, past the payload).
    for nh in (P.NH_HOPOPTS, P.NH_DSTOPTS, P.NH_ROUTING):
        header = P.ext_header(P.NH_UDP, bytes(6), hdr_ext_len=200)
        assert parse6(P.ipv6(header + seg, next_header=nh), c) is None
        c.expect(ip6_header_chain=1)
        # The payload length ends inside a header whose bytes follow in the frame.
        header = P.ext_header(P.NH_UDP, bytes(14))
        for cut in (1, 2, 7, 8, 15):
            pkt = P.ipv6(header[:cut], next_header=nh) + header[cut:] + seg
            assert parse6(pkt, c) is None, (nh, cut)
            c.expect(ip6_header_chain=1)
    # A fragment header cut by the payload length.
    frag = P.fragment_header(P.NH_UDP, 0, False)
    for cut in range(1, 8):
        assert parse6(P.ipv6(frag[:cut], next_header=P.NH_FRAGMENT) + frag[cut:] + seg,
                      c) is None
        c.expect(ip6_header_chain=1)
    # A second header cut.
    first, ext = P.chain(["dst", "dst"])
    pkt = P.ipv6(ext[:12], next_header=first) + ext[12:] + seg
    assert parse6(pkt, c) is None
    c.expect(ip6_header_chain=1)


@pytest.mark.parametrize("routing_type", [0, 2, 3, 4, 253])
@pytest.mark.parametrize("segments_left", [1, 2, 255])
def test_routing_header_with_segments_left_is_not_for_us(routing_type, segments_left):
    c = Counted()
    rt = ("rt", {"routing_type": routing_type, "segments_left": segments_left})
    for headers in ([rt], ["hop", rt], ["hop", "dst", rt, "dst"]):
        assert parse6(P.ipv6_udp(b"x", headers=headers), c) is None
        c.expect(not_for_us=1)


@pytest.mark.parametrize("upper", [P.NH_AH, P.NH_ESP, P.NH_NONE, P.NH_TCP, P.NH_ICMPV6, 1, 4,
                                   41, 135, 253, 255])
def test_other_upper_layers_are_not_for_us(upper):
    c = Counted()
    body = bytes(range(64))
    for headers in ([], ["hop"], ["hop", "dst", "rt", "atomic"]):
        first, ext = P.chain(headers, upper)
        assert parse6(P.ipv6(ext + body, next_header=first), c) is None
        c.expect(not_for_us=1)


def test_atomic_fragments_are_delivered():
    """RFC 6946: offset 0 and M clear is no fragment at all; whatever follows it is parsed."""
    c = Counted()
    for headers, at in ((["atomic"], 48), (["hop", "atomic", "dst"], 64),
                        ([("atomic", {"ident": 0xFFFFFFFF}), "atomic"], 56)):
        pkt = P.ipv6_udp(b"atomic", headers=headers)
        assert parse6(pkt, c, verify=True) == udp_result(b"atomic", at)
    c.expect()


# -- parse_ipv6: fragments ---------------------------------------------------------------------

FRAGMENT_LAYOUTS = [
    ((), ()),
    (("hop",), ()),
    (("hop", "rt"), ()),
    ((), ("dst",)),
    (("hop", ("rt", {"size": 40})), (("dst", {"size": 16}), "dst")),
]


@pytest.mark.parametrize("unfragmentable,fragmentable", FRAGMENT_LAYOUTS)
@pytest.mark.parametrize("size", [8, 1232])
def test_fragments_exact_results(unfragmentable, fragmentable, size):
    c = Counted()
    payload = bytes(range(251)) * 12
    seg = segment6(payload, 7, PORT)
    frags = P.fragment_ipv6(seg, SRC, DST, 0xCAFEF00D, size, unfragmentable, fragmentable)
    assert len(frags) >= 3
    head = 40 + len(P.chain(unfragmentable)[1]) + 8
    first_nh, ext = P.chain(fragmentable)
    body = bytearray(len(ext) + len(seg))
    for offset, more, pkt in frags:
        got = parse6(pkt, c, verify=True)
        body[offset:offset + len(pkt) - head] = pkt[head:]
        if offset == 0 and size < len(ext) + 8:
            # The first fragment cannot hold the UDP header: RFC 7112.
            assert got is None
            c.expect(ip6_first_fragment=1)
            continue
        assert got == (FRAGMENT6, SRC_I, DST_I, 0xCAFEF00D, offset, more, head, len(pkt),
                       first_nh)
        c.expect()
    assert bytes(body) == ext + seg
    # The reassembled fragmentable part parses to the datagram.
    assert parse_udp6_segment(bytes(body), first_nh, SRC_I, DST_I, c.stats, True) == (
        UDP, SRC_I, DST_I, 7, PORT, len(ext) + 8, len(ext) + len(seg))
    c.expect()


def first_fragment(data, next_header=P.NH_UDP, unfragmentable=(), more=True, ident=1):
    """An IPv6 packet holding the fragment header (offset 0) and *data*."""
    nh, head = P.chain(list(unfragmentable) + [
        (P.NH_FRAGMENT, lambda n: P.fragment_header(n, 0, more, ident))], next_header)
    return P.ipv6(head + bytes(data), next_header=nh)


def test_first_fragment_without_the_udp_header_is_dropped():
    """RFC 7112: the first fragment must hold the whole header chain and the UDP header."""
    c = Counted()
    seg = segment6(b"x" * 100)
    dst16 = P.dest_options(P.NH_UDP, size=16)
    dst8 = P.dest_options(P.NH_UDP)
    cases = [
        (b"", P.NH_UDP),                                   # nothing at all (M set, empty)
        (dst16[:8], P.NH_DSTOPTS),                         # half a destination options header
        (dst8, P.NH_DSTOPTS),                              # the header, no UDP
        (dst16 + seg[:0], P.NH_DSTOPTS),                   # the header, no UDP
        (P.dest_options(P.NH_DSTOPTS) + dst16[:8], P.NH_DSTOPTS),   # second header cut
        (P.ext_header(P.NH_UDP, bytes(6), hdr_ext_len=9) + seg[:72], P.NH_DSTOPTS),
    ]
    for data, nh in cases:
        assert parse6(first_fragment(data, nh), c) is None, (data, nh)
        c.expect(ip6_first_fragment=1)
        assert parse6(first_fragment(data, nh, ["hop", "rt"]), c) is None
        c.expect(ip6_first_fragment=1)
    # With the UDP header the same fragments pass.
    for data, nh in ((seg[:8], P.NH_UDP), (dst8 + seg[:8], P.NH_DSTOPTS),
                     (dst16 + seg[:16], P.NH_DSTOPTS)):
        got = parse6(first_fragment(data, nh), c)
        assert got[0] == FRAGMENT6 and got[4:6] == (0, True) and got[8] == nh
    c.expect()


def test_first_fragment_of_another_protocol_is_passed_on():
    """Its datagram is not UDP: handed on, so that reassembly lets the datagram go at once
    (udp_header_after_extensions says -1)."""
    c = Counted()
    for data, nh in ((bytes(64), P.NH_TCP), (P.dest_options(P.NH_ESP) + bytes(56), P.NH_DSTOPTS),
                     (bytes(8), P.NH_NONE),
                     (P.routing(P.NH_UDP, segments_left=1) + bytes(16), P.NH_ROUTING)):
        got = parse6(first_fragment(data, nh), c)
        assert got == (FRAGMENT6, SRC_I, DST_I, 1, 0, True, 48, 48 + len(data), nh)
        assert udp_header_after_extensions(data, nh) == -1
    c.expect()


def test_first_fragment_with_a_broken_chain():
    c = Counted()
    seg = segment6(b"y" * 32)
    for data, nh in (
            (P.hop_by_hop(P.NH_UDP) + seg, P.NH_HOPOPTS),          # hop-by-hop after the frag
            (P.fragment_header(P.NH_UDP, 8, True) + seg, P.NH_FRAGMENT),   # a second one
            (P.dest_options(P.NH_FRAGMENT) + P.fragment_header(P.NH_UDP, 0, True) + seg,
             P.NH_DSTOPTS)):
        padded = data + bytes(-len(data) % 8)
        assert parse6(first_fragment(padded, nh), c) is None
        c.expect(ip6_header_chain=1)
    # An atomic fragment header in there is skipped.
    data = P.fragment_header(P.NH_UDP, 0, False) + seg
    assert parse6(first_fragment(data, P.NH_FRAGMENT), c)[0] == FRAGMENT6
    c.expect()


@pytest.mark.parametrize("before", range(0, MAX_EXTENSION_HEADERS))
def test_the_bound_counts_the_whole_chain_across_the_fragment_header(before):
    """*before* headers ahead of the fragment header, the rest of the 8 (and one more) after
    it, in the first fragment."""
    c = Counted()
    seg = segment6(b"z" * 16)
    unfragmentable = bounded_chain(before) if before else []
    after = MAX_EXTENSION_HEADERS - before - 1
    for extra, dropped in ((0, False), (1, True)):
        nh, ext = P.chain([("dst", {})] * (after + extra))
        got = parse6(first_fragment(ext + seg, nh, unfragmentable), c)
        if dropped:
            assert got is None
            c.expect(ip6_header_chain=1)
        else:
            assert got[0] == FRAGMENT6
            c.expect()


def test_later_fragments_next_header_is_not_looked_at():
    """RFC 8200 4.5: only the offset-zero fragment's Next Header counts; later ones are
    passed on whatever theirs says."""
    c = Counted()
    for nh in (P.NH_UDP, P.NH_HOPOPTS, P.NH_TCP, P.NH_FRAGMENT, P.NH_NONE, 255):
        for more, data in ((True, bytes(16)), (False, bytes(5)), (False, b"")):
            pkt = P.ipv6(P.fragment_header(nh, 1232, more, 77) + data,
                         next_header=P.NH_FRAGMENT)
            assert parse6(pkt, c) == (FRAGMENT6, SRC_I, DST_I, 77, 1232, more, 48,
                                      48 + len(data), nh)
    c.expect()


def test_fragment_alignment():
    c = Counted()
    for offset in (0, 8, 65528):
        for size in (0, 1, 7, 9, 15, 1231):
            if offset == 0 and size < 8:
                continue                     # no UDP header: RFC 7112 comes first
            pkt = P.ipv6(P.fragment_header(P.NH_UDP, offset, True) + segment6(b"q" * 2000)[:size],
                         next_header=P.NH_FRAGMENT)
            assert parse6(pkt, c) is None, (offset, size)
            c.expect(fragment_alignment=1)
    # A last fragment may end anywhere, and be empty.
    for size in (0, 1, 7, 9):
        pkt = P.ipv6(P.fragment_header(P.NH_UDP, 8, False) + bytes(size),
                     next_header=P.NH_FRAGMENT)
        assert parse6(pkt, c)[5:8] == (False, 48, 48 + size)
    c.expect()


def test_fragment_header_fields():
    c = Counted()
    for offset, more, ident in ((8, True, 0), (65528, False, 0xFFFFFFFF), (1232, True, 1 << 31)):
        frag = P.fragment_header(P.NH_UDP, offset, more, ident, reserved=0xFF, res_bits=3)
        got = parse6(P.ipv6(frag + bytes(8), next_header=P.NH_FRAGMENT), c)
        assert got == (FRAGMENT6, SRC_I, DST_I, ident, offset, more, 48, 56, P.NH_UDP)
    c.expect()


# -- reassembled segments ----------------------------------------------------------------------

def test_parse_udp6():
    c = Counted()
    payload = bytes(range(200)) * 30 + b"!"
    seg = segment6(payload)
    assert parse_udp6(seg, SRC_I, DST_I, c.stats, True) == (UDP, SRC_I, DST_I, 40000, PORT, 8,
                                                             8 + len(payload))
    assert parse_udp6(memoryview(seg + b"tail"), SRC_I, DST_I, c.stats, True)[5:] == (
        8, 8 + len(payload))
    c.expect()
    for size in range(8):
        assert parse_udp6(seg[:size], SRC_I, DST_I, c.stats) is None
        c.expect(udp_truncated=1)
    for ulen in (0, 7, len(seg) + 1):
        assert parse_udp6(segment6(payload, length=ulen), SRC_I, DST_I, c.stats) is None
        c.expect(udp_length=1)
    for verify in (False, True):
        assert parse_udp6(segment6(payload, checksum=0), SRC_I, DST_I, c.stats, verify) is None
        c.expect(udp_checksum=1)
    check_flipped_bit(parse_udp6, seg, SRC_I, DST_I, c)
    assert parse_udp6(seg, DST_I, SRC_I, c.stats, True) is not None      # the sum commutes
    c.expect()
    assert parse_udp6(seg, SRC_I, DST_I + 1, c.stats, True) is None
    c.expect(udp_checksum=1)


@pytest.mark.parametrize("headers", [[], ["dst"], [("dst", {"size": 32}), "rt"], ["atomic"],
                                     ["dst", "atomic", ("rt", {"size": 8}), "dst"],
                                     [("dst", {})] * (MAX_EXTENSION_HEADERS - 1)])
def test_parse_udp6_segment_walks_what_follows_the_fragment_header(headers):
    c = Counted()
    payload = b"segment" * 50
    nh, ext = P.chain(headers)
    body = ext + segment6(payload, 9, PORT)
    assert parse_udp6_segment(body, nh, SRC_I, DST_I, c.stats, True) == (
        UDP, SRC_I, DST_I, 9, PORT, len(ext) + 8, len(body))
    assert udp_header_after_extensions(body, nh) == len(ext)
    assert udp_header_after_extensions(memoryview(body)[:len(ext) + 8], nh) == len(ext)
    assert udp_header_after_extensions(body[:len(ext) + 7], nh) == -1
    c.expect()


def test_parse_udp6_segment_drops():
    c = Counted()
    seg = segment6(b"p" * 24)
    header_chain = [
        (P.hop_by_hop(P.NH_UDP) + seg, P.NH_HOPOPTS),
        (P.fragment_header(P.NH_UDP, 8, True) + seg, P.NH_FRAGMENT),
        (P.fragment_header(P.NH_UDP, 0, True) + seg, P.NH_FRAGMENT),
        (P.ext_header(P.NH_UDP, bytes(6), hdr_ext_len=50) + seg, P.NH_DSTOPTS),
        (P.dest_options(P.NH_UDP)[:5], P.NH_DSTOPTS),
        (P.chain([("dst", {})] * MAX_EXTENSION_HEADERS)[1] + seg, P.NH_DSTOPTS),
    ]
    for body, nh in header_chain:
        assert parse_udp6_segment(body, nh, SRC_I, DST_I, c.stats) is None, nh
        c.expect(ip6_header_chain=1)
        assert udp_header_after_extensions(body, nh) == -1
    for body, nh in ((P.routing(P.NH_UDP, segments_left=3) + seg, P.NH_ROUTING),
                     (bytes(40), P.NH_TCP), (bytes(40), P.NH_ESP), (b"", P.NH_NONE),
                     (P.dest_options(P.NH_AH) + bytes(24), P.NH_DSTOPTS)):
        assert parse_udp6_segment(body, nh, SRC_I, DST_I, c.stats) is None, nh
        c.expect(not_for_us=1)
        assert udp_header_after_extensions(body, nh) == -1
    ext = P.dest_options(P.NH_UDP)
    for verify in (False, True):
        assert parse_udp6_segment(ext + segment6(checksum=0), P.NH_DSTOPTS, SRC_I, DST_I,
                                  c.stats, verify) is None
        c.expect(udp_checksum=1)
    assert parse_udp6_segment(ext + segment6(checksum=0x4321), P.NH_DSTOPTS, SRC_I, DST_I,
                              c.stats, True) is None
    c.expect(udp_checksum=1)
    assert parse_udp6_segment(ext + seg[:7], P.NH_DSTOPTS, SRC_I, DST_I, c.stats) is None
    c.expect(udp_truncated=1)
    assert parse_udp6_segment(ext + segment6(length=14), P.NH_DSTOPTS, SRC_I, DST_I,
                              c.stats) is None
    c.expect(udp_length=1)


# -- link layers -------------------------------------------------------------------------------

def link6(linktype):
    return make_link_parser(linktype, ipv6=True)


def parse_frame(linktype, frame, counted, verify=False, before=3):
    """Link (ipv6=True) + dispatch on the version nibble: (offset, result) relative to the
    frame."""
    buf, start, end = embedded(frame, before=before)
    ip = link6(linktype)(buf, start, end, counted.stats)
    if ip < 0:
        assert ip == -1
        return -1, None
    assert start <= ip <= end
    if ip < end and buf[ip] >> 4 == 6:
        got = relative(parse_ipv6(buf, ip, end, counted.stats, verify), ip)
    else:
        got = parse_ipv4(buf, ip, end, counted.stats, verify)
        if got is not None:
            got = got[:-2] + (got[-2] - ip, got[-1] - ip)
    return ip - start, got


@pytest.mark.parametrize("vlans,offset", [
    ((), 14), ((100,), 18), (((P.ETH_8021AD, 10), (P.ETH_8021Q, 20)), 22),
    (((P.ETH_QINQ_OLD, 10), (P.ETH_8021Q, 20)), 22),
    (((P.ETH_8021AD, 1), (P.ETH_8021AD, 2), (P.ETH_8021Q, 3)), 26),
])
def test_ethernet_ipv6_untagged_and_tagged(vlans, offset):
    c = Counted()
    pkt = P.ipv6_udp(b"ether")
    assert parse_frame(P.DLT_EN10MB, P.ethernet(pkt, ethertype=P.ETH_IPV6, vlans=vlans), c) == (
        offset, udp_result(b"ether", 40))
    # IPv4 goes on as before.
    pkt4 = P.ipv4(P.udp(b"four", src="198.18.0.1", dst="198.18.0.2"))
    ip, got = parse_frame(P.DLT_EN10MB, P.ethernet(pkt4, vlans=vlans), c)
    assert ip == offset and got[0] == UDP and got[5:] == (28, 32)
    c.expect()
    assert parse_frame(P.DLT_EN10MB, P.ethernet(pkt, ethertype=P.ETH_IPV6,
                                                vlans=tuple(vlans) + (1, 2, 3, 4)), c) == (-1, None)
    c.expect(link_not_ipv4=1)


@pytest.mark.parametrize("ethertype", [P.ETH_ARP, 0x0000, 0x88CC, 0x86DE, 0x86DC, 0xDD86])
def test_ethernet_neither_ipv4_nor_ipv6(ethertype):
    c = Counted()
    for vlans in ((), (5,)):
        frame = P.ethernet(P.ipv6_udp(b"x"), ethertype=ethertype, vlans=vlans)
        assert parse_frame(P.DLT_EN10MB, frame, c) == (-1, None)
        c.expect(link_not_ipv4=1)


@pytest.mark.parametrize("family", P.BSD_AF_INET6)
def test_dlt_null_ipv6_families_in_both_byte_orders(family):
    c = Counted()
    pkt = P.ipv6_udp(b"null")
    for order in ("little", "big"):
        assert parse_frame(P.DLT_NULL, P.null(pkt, family, order), c) == (
            4, udp_result(b"null", 40))
    # DLT_LOOP: network byte order only, as for AF_INET.
    assert parse_frame(P.DLT_LOOP, P.loop(pkt, family), c) == (4, udp_result(b"null", 40))
    c.expect()
    assert parse_frame(P.DLT_LOOP, P.null(pkt, family, "little"), c) == (-1, None)
    c.expect(link_not_ipv4=1)


@pytest.mark.parametrize("family", [10, 23, 0, 1, 25, 29, 31, 24 << 8, 24 << 16, 28 << 8])
def test_dlt_null_other_families(family):
    """Linux's AF_INET6 (10) and Windows' (23) are not DLT_NULL values; nor the others."""
    c = Counted()
    for order in ("little", "big"):
        assert parse_frame(P.DLT_NULL, P.null(P.ipv6_udp(), family, order), c) == (-1, None)
        c.expect(link_not_ipv4=1)
        assert parse_frame(P.DLT_LOOP, P.null(P.ipv6_udp(), family, order), c) == (-1, None)
        c.expect(link_not_ipv4=1)


def test_dlt_null_on_a_big_endian_host_standin(monkeypatch):
    monkeypatch.setattr(sys, "byteorder", "big")
    parse = make_link_parser(P.DLT_NULL, ipv6=True)
    pkt = P.ipv6_udp()
    for family in P.BSD_AF_INET6:
        for order in ("big", "little"):
            c = Counted()
            assert parse(memoryview(P.null(pkt, family, order)), 0, 4 + len(pkt), c.stats) == 4
            c.expect()


@pytest.mark.parametrize("linktype,make,header", [(P.DLT_LINUX_SLL, P.sll, 16),
                                                  (P.DLT_LINUX_SLL2, P.sll2, 20)])
def test_linux_cooked_ipv6(linktype, make, header):
    c = Counted()
    pkt = P.ipv6_udp(b"cooked")
    for pkttype in (P.PACKET_HOST, 1, 2, P.PACKET_OUTGOING):
        assert parse_frame(linktype, make(pkt, protocol=P.ETH_IPV6, pkttype=pkttype), c) == (
            header, udp_result(b"cooked", 40))
    c.expect()
    for protocol in (P.ETH_ARP, 0x0004, 0x86DE):
        assert parse_frame(linktype, make(pkt, protocol=protocol), c) == (-1, None)
        c.expect(link_not_ipv4=1)
    full = make(pkt, protocol=P.ETH_IPV6)
    for size in range(header):
        buf, start, end = embedded(full[:size], after=full[size:])
        assert link6(linktype)(buf, start, end, c.stats) == -1
        c.expect(link_truncated=1)


@pytest.mark.parametrize("linktype", [P.DLT_RAW, P.DLT_RAW_BSD, P.LINKTYPE_RAW])
def test_raw_version_6(linktype):
    c = Counted()
    assert parse_frame(linktype, P.ipv6_udp(b"raw"), c) == (0, udp_result(b"raw", 40))
    ip, got = parse_frame(linktype, P.ipv4(P.udp(b"raw4", src="198.18.0.1", dst="198.18.0.2")),
                          c)
    assert ip == 0 and got[0] == UDP
    c.expect()
    for version in (0, 5, 7, 15):
        assert parse_frame(linktype, P.ipv6_udp(version=version), c) == (-1, None)
        c.expect(link_not_ipv4=1)
    buf, start, end = embedded(b"", after=P.ipv6_udp())
    assert link6(linktype)(buf, start, end, c.stats) == -1
    c.expect(link_truncated=1)


def test_dlt_ipv4_carries_no_ipv6():
    c = Counted()
    assert parse_frame(P.DLT_IPV4, P.ipv6_udp(), c) == (-1, None)
    c.expect(link_not_ipv4=1)


CLAIMS = [  # (linktype, IPv4 frame maker, IPv6 frame maker)
    (P.DLT_EN10MB, lambda p: P.ethernet(p, pad_to=0), lambda p: P.ethernet(
        p, ethertype=P.ETH_IPV6, pad_to=0)),
    (P.DLT_EN10MB, lambda p: P.ethernet(p, vlans=(3,), pad_to=0),
     lambda p: P.ethernet(p, ethertype=P.ETH_IPV6, vlans=(3,), pad_to=0)),
    (P.DLT_LINUX_SLL, P.sll, lambda p: P.sll(p, protocol=P.ETH_IPV6)),
    (P.DLT_LINUX_SLL2, P.sll2, lambda p: P.sll2(p, protocol=P.ETH_IPV6)),
    (P.DLT_NULL, P.null, lambda p: P.null(p, 28)),
    (P.DLT_LOOP, P.loop, lambda p: P.loop(p, 30)),
]


@pytest.mark.parametrize("linktype,as4,as6", CLAIMS)
def test_the_link_layer_and_the_version_agree(linktype, as4, as6):
    """A header whose version contradicts the link layer is dropped as the named protocol's
    parser would: ip_version, or ip_truncated when shorter than its header; with nothing after
    the link header, ip_truncated."""
    c = Counted()
    pkt6 = P.ipv6_udp(b"six")
    pkt4 = P.ipv4(P.udp(b"four", src="198.18.0.1", dst="198.18.0.2"))
    assert parse_frame(linktype, as4(pkt6), c) == (-1, None)        # says IPv4, carries IPv6
    c.expect(ip_version=1)
    assert parse_frame(linktype, as6(pkt4 + bytes(20)), c) == (-1, None)   # the reverse
    c.expect(ip_version=1)
    assert parse_frame(linktype, as4(pkt6[:19]), c) == (-1, None)
    c.expect(ip_truncated=1)
    assert parse_frame(linktype, as6(pkt4[:39]), c) == (-1, None)
    c.expect(ip_truncated=1)
    ip, got = parse_frame(linktype, as6(b""), c)
    assert got is None
    c.expect(ip_truncated=1)
    # Each as it says.
    assert parse_frame(linktype, as6(pkt6), c)[1] == udp_result(b"six", 40)
    assert parse_frame(linktype, as4(pkt4), c)[1][0] == UDP
    c.expect()


@pytest.mark.parametrize("linktype", IPV6_LINKTYPES + [P.DLT_IPV4])
def test_the_default_link_parser_is_still_ipv4_only(linktype):
    """make_link_parser(linktype) keeps its contract: IPv6 is "not IPv4"."""
    c = Counted()
    frame = P.wrap6(linktype, P.ipv6_udp()) if linktype != P.DLT_IPV4 else P.ipv6_udp()
    assert make_link_parser(linktype)(memoryview(frame), 0, len(frame), c.stats) == -1
    c.expect(link_not_ipv4=1)


# -- the batch walker --------------------------------------------------------------------------

def walk(linktype, frames, fast_path=True, verify=False, ports=frozenset({PORT | PORT6}),
         records="savefile"):
    """One walk over *frames*: ``(entries without their view, snapshot)``."""
    parse = make_batch_parser(linktype, fast_path=fast_path, records=records)
    stats = Statistics()
    found = []
    build = P.npf_batch if records == "npf" else P.savefile_batch
    view = memoryview(build(frames))
    assert parse(view, 0, len(view), ports, stats, verify, found) == len(view)
    assert stats.frames == len(frames)
    assert all(entry[7] is view for entry in found)
    return [entry[:7] for entry in found], stats.snapshot()


def frame_starts(frames, records="savefile"):
    build = P.npf_batch if records == "npf" else P.savefile_batch
    return [first for first, _last in P.record_spans(build(frames), 0, len(build(frames)),
                                                     records)]


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("linktype", IPV6_LINKTYPES)
def test_walker_entries(linktype, fast_path):
    seg = segment6(b"w" * 3000, 1234, PORT)
    frags = P.fragment_ipv6(seg, SRC, DST, 99, 1232)
    packets = [P.ipv6_udp(b"one", 1, PORT), P.ipv6_udp(b"two", 2, PORT, headers=["hop"])] + [
        pkt for _o, _m, pkt in frags]
    frames = [P.wrap6(linktype, pkt) for pkt in packets]
    link = len(frames[0]) - len(packets[0])
    starts = frame_starts(frames)
    found, stats = walk(linktype, frames, fast_path)
    at = [s + link for s in starts]
    assert found == [
        (SRC_I, DST_I, 1, PORT | PORT6, at[0] + 48, at[0] + 48 + 3, starts[0]),
        (SRC_I, DST_I, 2, PORT | PORT6, at[1] + 56, at[1] + 56 + 3, starts[1]),
    ] + [(None, (FRAGMENT6, SRC_I, DST_I, 99, offset, more, at[k] + 48,
                 at[k] + len(pkt), P.NH_UDP), None, 0, 0, 0, starts[k])
         for k, (offset, more, pkt) in enumerate(frags, 2)]
    assert stats["malformed_total"] == stats["not_for_us"] == 0


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("linktype", sorted(P.LINK_WRAPPERS6))
def test_ipv4_and_ipv6_to_the_same_port_are_told_apart(linktype, fast_path):
    """An IPv6 datagram to port P has the key P | PORT6: never delivered for key P, and an IPv4
    datagram to P never for key P | PORT6; a capture keeping both keys delivers both, each with
    its own key."""
    pkt4 = P.ipv4(P.udp(b"v4", 4, PORT, "198.18.0.1", "198.18.0.2"), "198.18.0.1", "198.18.0.2")
    frames = [P.wrap(linktype, pkt4), P.wrap6(linktype, P.ipv6_udp(b"v6", 6, PORT)),
              P.wrap6(linktype, P.ipv6_udp(b"v6", 6, PORT, headers=["dst"]))]
    for ports, keys, dropped in (({PORT}, [PORT], 2), ({PORT | PORT6}, [PORT | PORT6] * 2, 1),
                                 ({PORT, PORT | PORT6}, [PORT] + [PORT | PORT6] * 2, 0),
                                 ({PORT + 1, (PORT + 1) | PORT6}, [], 3)):
        found, stats = walk(linktype, frames, fast_path, ports=frozenset(ports))
        assert [entry[3] for entry in found] == keys
        assert [entry[2] for entry in found] == [4 if k == PORT else 6 for k in keys]
        assert stats["not_for_us"] == dropped and stats["malformed_total"] == 0


def refusing(*_args, **_kwargs):
    raise AssertionError("the general path was taken")


@pytest.mark.parametrize("records", LAYOUTS)
@pytest.mark.parametrize("linktype", FAST_LINKTYPES)
def test_the_fast_paths_are_taken_for_the_common_frames(monkeypatch, linktype, records):
    """With the general path's IP parsers made to fail, the common IPv6 frames (UDP to a port
    key; first, middle and last fragments naming UDP; a later fragment naming anything) and the
    common IPv4 frame still walk: the fast paths decide them."""
    monkeypatch.setattr(_packet, "parse_ipv6", refusing)
    monkeypatch.setattr(_packet, "parse_ipv4", refusing)
    seg = segment6(b"f" * 2500)
    packets = [P.ipv6_udp(b"fast", traffic_class=3, flow=0xFFFFF),
               P.ipv6_udp(b"", hop_limit=0),
               P.ipv6(segment6(b"short", length=13) + b"trail")]     # UDP shorter than payload
    packets += [pkt for _o, _m, pkt in P.fragment_ipv6(seg, size=1232)]
    packets += [P.ipv6(P.fragment_header(P.NH_TCP, 16, True) + bytes(8),
                       next_header=P.NH_FRAGMENT)]
    packets += [P.ipv4(P.udp(b"four", 4, PORT, "198.18.0.1", "198.18.0.2"))]
    frames = [P.wrap6(linktype, pkt) for pkt in packets[:-1]] + [P.wrap(linktype, packets[-1])]
    if linktype == P.DLT_NULL:
        frames += [P.null(packets[0], family, order) for family in P.BSD_AF_INET6
                   for order in ("little", "big")]
    if linktype == P.DLT_LOOP:
        frames += [P.loop(packets[0], family) for family in P.BSD_AF_INET6]
    found, stats = walk(linktype, frames, True, ports=frozenset({PORT, PORT | PORT6}),
                        records=records)
    assert len(found) == len(frames) and stats["malformed_total"] == 0


# -- the fast path decides as the general path -------------------------------------------------

def edge_packets6():
    """IPv6 packets at every boundary the IPv6 fast path tests, and beyond it."""
    seg = segment6(b"e" * 3000)
    frags = [pkt for _o, _m, pkt in P.fragment_ipv6(seg, size=1232)]
    frags_dst = [pkt for _o, _m, pkt in P.fragment_ipv6(seg, size=1232, fragmentable=["dst"])]
    frag = P.NH_FRAGMENT
    return [
        P.ipv6_udp(b"x" * 32),                                     # the common case
        P.ipv6_udp(b""),                                           # ulen 8
        P.ipv6_udp(b"x" * 32, dport=PORT + 1),                     # another port key
        P.ipv6_udp(b"x" * 32, sport=PORT, dport=PORT | 1),
        P.ipv6_udp(b"x" * 32, udp_checksum=0),                     # zero checksum
        P.ipv6_udp(b"x" * 32, udp_checksum=0x1234),                # wrong (verify decides)
        P.ipv6(segment6(b"x" * 20, length=7, checksum=0x55)),      # ulen < 8
        P.ipv6(segment6(b"x" * 20, length=29, checksum=0x55)),     # ulen > payload
        P.ipv6(segment6(b"x" * 20) + b"tail"),                     # ulen < payload
        P.ipv6(segment6(b"x" * 20), payload_length=0),             # jumbogram
        P.ipv6(segment6(b"x" * 20), payload_length=27),            # payload ends in UDP data
        P.ipv6(segment6(b"x" * 20), payload_length=7),             # not even a UDP header
        P.ipv6(segment6(b"x" * 20), payload_length=29),            # beyond the captured bytes
        P.ipv6(segment6(b"x" * 20), payload_length=0xFFFF),
        P.ipv6_udp(b"x" * 32, version=4),
        P.ipv6_udp(b"x" * 32, version=7),
        P.ipv6_udp(b"x" * 32, headers=["hop"]),
        P.ipv6_udp(b"x" * 32, headers=["atomic"]),                 # an atomic fragment
        P.ipv6_udp(b"x" * 32, headers=[("rt", {"segments_left": 1})]),
        P.ipv6(segment6(b"x" * 20), next_header=P.NH_TCP),
        P.ipv6(segment6(b"x" * 20), next_header=P.NH_NONE),
    ] + frags + frags_dst + [
        frags[1][:60], frags[0][:47], frags[0][:55],               # truncated fragments
        P.ipv6(P.fragment_header(P.NH_UDP, 0, True), next_header=frag),    # first, empty
        P.ipv6(P.fragment_header(P.NH_UDP, 0, True) + seg[:7], next_header=frag),
        P.ipv6(P.fragment_header(P.NH_UDP, 0, True) + seg[:12], next_header=frag),
        P.ipv6(P.fragment_header(P.NH_TCP, 0, True) + bytes(16), next_header=frag),
        P.ipv6(P.fragment_header(P.NH_DSTOPTS, 0, True) + bytes(16), next_header=frag),
        P.ipv6(P.fragment_header(P.NH_UDP, 8, True) + bytes(12), next_header=frag),
        P.ipv6(P.fragment_header(P.NH_UDP, 8, True), next_header=frag),   # middle, empty
        P.ipv6(P.fragment_header(P.NH_UDP, 8, False), next_header=frag),  # last, empty
        P.ipv6(P.fragment_header(P.NH_HOPOPTS, 8, False) + b"abc", next_header=frag),
        P.ipv6(P.fragment_header(P.NH_UDP, 0, False) + seg[:100], next_header=frag),  # atomic
        P.ipv6(P.fragment_header(P.NH_UDP, 8, True)[:7], next_header=frag),
        P.ipv6(P.fragment_header(P.NH_UDP, 65528, True) + bytes(8), next_header=frag),
        P.ipv6(P.fragment_header(P.NH_UDP, 16, True, res_bits=3, reserved=9) + bytes(8),
               next_header=frag),
    ]


PORTS_BOTH = frozenset({PORT, PORT | PORT6})


def normalized(found, view, spans):
    """The entries, independent of where the records lie (as test_packet_npf_records does,
    for IPv4 and IPv6 fragments): each names its frame by index and carries its payload or
    fragment data bytes, which must lie within that frame."""
    index = {first: i for i, (first, _last) in enumerate(spans)}
    out = []
    for entry in found:
        assert entry[7] is view
        number = index[entry[6]]
        first, last = spans[number]
        if entry[0] is None:
            assert entry[2:6] == (None, 0, 0, 0)
            fragment = entry[1]
            a, b = fragment[6:8]
            assert first <= a <= b <= last
            out.append(("fragment", number) + fragment[:6] + fragment[8:] + (
                a - first, b - first, bytes(view[a:b])))
        else:
            src, dst, sport, dport, a, b = entry[:6]
            assert first <= a <= b <= last
            out.append(("udp", number, src, dst, sport, dport, a - first, b - first,
                        bytes(view[a:b])))
    return out


def same_in_both_layouts(linktype, frames, fast_path, verify=False, caplens=None, start=0,
                         ports=frozenset({PORT | PORT6})):
    """Walk *frames* as savefile and as npf records (test_packet_npf_records.laid_out: decoy
    records before *start* and after the end); both must agree.  Returns the result."""
    results = {}
    for records in LAYOUTS:
        buf, first, end, spans = laid_out(frames, records, caplens, start)
        parse = make_batch_parser(linktype, fast_path=fast_path, records=records)
        stats = Statistics()
        found = []
        view = memoryview(buf)
        assert parse(view, first, end, ports, stats, verify, found) == end
        assert stats.frames == len(frames) and stats.malformed["record_header"] == 0
        # Every frame gave exactly one entry or one count.
        assert len(found) + stats.not_for_us + stats.malformed_total == len(frames)
        results[records] = (normalized(found, view, spans), stats.snapshot())
    assert results["npf"] == results["savefile"]
    return results["npf"]


@pytest.mark.parametrize("verify", [False, True])
@pytest.mark.parametrize("linktype", FAST_LINKTYPES)
def test_ipv6_edge_cases_same_on_both_paths(linktype, verify):
    frames = [P.wrap6(linktype, pkt) for pkt in edge_packets6()]
    fast = same_in_both_layouts(linktype, frames, True, verify, ports=PORTS_BOTH)
    general = same_in_both_layouts(linktype, frames, False, verify, ports=PORTS_BOTH)
    assert fast == general
    counts = collections.Counter(entry[0] for entry in fast[0])
    assert counts["udp"] >= (4 if verify else 5) and counts["fragment"] >= 10
    assert fast[1]["not_for_us"] >= 4


def mutated(rng, frame, flips=(0, 0, 1, 2, 3)):
    frame = bytearray(frame)
    for _ in range(rng.choice(flips)):
        frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
    if rng.random() < 0.2:
        del frame[rng.randrange(len(frame) + 1):]
    return bytes(frame)


def wrap_any6(rng, linktype, packet):
    """*packet* in a frame of *linktype* with the link-layer variety the parsers accept."""
    if linktype == P.DLT_NULL:
        return P.null(packet, rng.choice(P.BSD_AF_INET6), rng.choice(["little", "big"]))
    if linktype == P.DLT_LOOP:
        return P.loop(packet, rng.choice(P.BSD_AF_INET6))
    return P.wrap6(linktype, packet)


@pytest.mark.parametrize("seed", [61, 62, 63])
def test_random_mixed_batches_same_on_both_paths(seed):
    """Valid and mutated IPv6 frames mixed with valid and mutated IPv4 frames, some cut by a
    snapshot length, for every fast-path link type, in both record layouts, from several starts,
    checksums verified or not: the fast path and the general path agree exactly."""
    rng = random.Random(seed)
    base6 = edge_packets6()
    base4 = edge_packets4()
    for linktype in FAST_LINKTYPES:
        frames = []
        for _ in range(500):
            if rng.random() < 0.6:
                frames.append(mutated(rng, wrap_any6(rng, linktype, rng.choice(base6))))
            else:
                frames.append(mutated(rng, P.wrap(linktype, rng.choice(base4))))
        caplens = [rng.randint(0, len(f)) if rng.random() < 0.1 else len(f) for f in frames]
        start = rng.choice([0, 4, 8, 64])
        verify = rng.random() < 0.3
        ports = rng.choice([PORTS_BOTH, frozenset({PORT | PORT6}), frozenset({PORT})])
        fast = same_in_both_layouts(linktype, frames, True, verify, caplens, start, ports)
        assert fast == same_in_both_layouts(linktype, frames, False, verify, caplens, start,
                                            ports)
        counts = collections.Counter(entry[0] for entry in fast[0])
        assert counts["udp"] > 5 and counts["fragment"] > 30


# -- fuzz --------------------------------------------------------------------------------------

SRCS6 = [P.addr6("2001:db8:1::%x" % i) for i in range(1, 9)]
LOCAL6 = P.addr6("2001:db8::2")
UPPER = [P.NH_TCP, P.NH_ICMPV6, P.NH_ESP, P.NH_AH, P.NH_NONE, 253]


def random_headers(rng, allow_hop=True):
    count = rng.choice([0, 0, 0, 1, 1, 2, 3, MAX_EXTENSION_HEADERS - 1, MAX_EXTENSION_HEADERS,
                        MAX_EXTENSION_HEADERS + 1])
    headers = []
    for i in range(count):
        kind = rng.choice(["dst", "rt", "atomic", "dst"] + (["hop"] if i == 0 and allow_hop
                                                              else []))
        if kind == "dst":
            headers.append(("dst", {"size": 8 * rng.randint(1, 6)}))
        elif kind == "rt":
            headers.append(("rt", {"segments_left": 0 if rng.random() < 0.85 else 2,
                                   "routing_type": rng.choice([0, 2, 4])}))
        else:
            headers.append(kind)
    if rng.random() < 0.05 and headers:
        headers.insert(rng.randrange(1, len(headers) + 1), "hop")           # misplaced
    return headers


def random_packet6(rng, src=None, dport=None):
    """A well-formed IPv6 packet of some kind: UDP (behind a random chain), a fragment, another
    upper layer, a jumbogram."""
    src = rng.choice(SRCS6) if src is None else src
    if dport is None:
        dport = PORT if rng.random() < 0.7 else rng.getrandbits(16)
    size = rng.choice([0, 1, 7, 8, 31, 100, rng.randint(0, 1400)])
    payload = (bytes(rng.getrandbits(8) for _ in range(64)) * (size // 64 + 1))[:size]
    checksum = True if rng.random() < 0.8 else rng.choice([0, rng.getrandbits(16)])
    kind = rng.random()
    if kind < 0.5:
        return P.ipv6_udp(payload, rng.getrandbits(16), dport, src, LOCAL6,
                          headers=random_headers(rng), udp_checksum=checksum)
    if kind < 0.85:
        seg = P.udp6(payload + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 3000))),
                     rng.getrandbits(16), dport, src, LOCAL6, checksum=checksum)
        frags = P.fragment_ipv6(
            seg, src, LOCAL6, rng.getrandbits(32), rng.choice([8, 16, 64, 1232]),
            random_headers(rng)[:3], [("dst", {"size": 8 * rng.randint(1, 3)})] * rng.choice(
                [0, 0, 1, 2]), rng.choice([P.NH_UDP] * 9 + [P.NH_TCP]))
        offset, more, pkt = frags[0] if rng.random() < 0.3 else rng.choice(frags)
        return pkt
    if kind < 0.95:
        first, ext = P.chain(random_headers(rng), rng.choice(UPPER))
        return P.ipv6(ext + payload, src, LOCAL6, next_header=first)
    seg = P.udp6(payload, 1, dport, src, LOCAL6)
    return P.ipv6(P.hop_by_hop(P.NH_UDP, struct.pack("!BBI", 0xC2, 4, 70000)) + seg, src,
                  LOCAL6, next_header=P.NH_HOPOPTS, payload_length=0)


def mutate6(rng, frame, ip):
    """A hostile variant of *frame*; *ip* is its IPv6 header offset."""
    frame = bytearray(frame)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(11)
        has_ip = len(frame) >= ip + 40
        if op == 0:
            del frame[rng.randint(0, len(frame)):]
        elif op == 1:
            for _ in range(rng.randint(1, 4)):
                if frame:
                    frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
        elif op == 2 and has_ip:                                    # lying payload length
            real = len(frame) - ip - 40
            value = rng.choice([0, 1, 7, 8, real - 1, real + 1, 0xFFFF, rng.getrandbits(16)])
            frame[ip + 4:ip + 6] = struct.pack("!H", value & 0xFFFF)
        elif op == 3 and has_ip:                                    # next header
            frame[ip + 6] = rng.choice([0, 6, 17, 43, 44, 50, 51, 58, 59, 60,
                                        rng.getrandbits(8)])
        elif op == 4 and len(frame) > ip + 42:                      # a lying Hdr Ext Len
            at = rng.randrange(ip + 40, len(frame) - 1)
            frame[at] = rng.choice([0, 1, 2, 255, rng.getrandbits(8)])
        elif op == 5 and len(frame) >= ip + 48:                     # fragment/UDP fields
            at = ip + 40 + rng.choice([2, 4, 6]) + rng.choice([0, 0, 8, 16])
            if at + 2 <= len(frame):
                frame[at:at + 2] = struct.pack("!H", rng.choice([0, 1, 7, 8, 9, 0xFFF9, 0xFFF8,
                                                                 rng.getrandbits(16)]))
        elif op == 6:
            frame += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 40)))
        elif op == 7:                                                # link header smashed
            for k in range(min(ip, len(frame))):
                if rng.random() < 0.3:
                    frame[k] = rng.getrandbits(8)
        elif op == 8:
            frame = bytearray(rng.getrandbits(8) for _ in range(rng.randint(0, 100)))
            if rng.random() < 0.5 and len(frame) > ip:
                frame[ip] = 0x60 | (frame[ip] & 0x0F)
        elif op == 9 and has_ip:                                     # version nibble
            frame[ip] = (rng.getrandbits(4) << 4) | (frame[ip] & 0x0F)
        elif op == 10 and len(frame) > ip + 40:                      # the chain cut short
            cut = rng.randrange(ip + 40, len(frame))
            frame[ip + 4:ip + 6] = struct.pack("!H", cut - ip - 40)
    return frame


def check_one6(buf, start, end, linktype, stats, verify):
    """Link (ipv6=True) + dispatch + parse of one frame with every invariant; the outcome."""
    def total():
        return stats.malformed_total + stats.not_for_us
    before = total()
    ip = make_link_parser(linktype, ipv6=True)(buf, start, end, stats)
    if ip < 0:
        assert ip == -1 and total() == before + 1
        return "dropped"
    assert start <= ip <= end and total() == before
    six = ip < end and buf[ip] >> 4 == 6
    parsed = (parse_ipv6 if six else parse_ipv4)(buf, ip, end, stats, verify)
    if parsed is None:
        assert total() == before + 1
        return "dropped"
    assert total() == before
    bits = 128 if six else 32
    assert 0 <= parsed[1] < 1 << bits and 0 <= parsed[2] < 1 << bits
    if parsed[0] == UDP:
        _, _src, _dst, sport, dport, first, last = parsed
        assert ip + (48 if six else 28) <= first <= last <= end
        assert 0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF
        return "udp6" if six else "udp4"
    if not six:
        assert parsed[0] == FRAGMENT
        return "fragment4"
    kind, src, dst, ident, offset, more, first, last, next_header = parsed
    assert kind == FRAGMENT6
    assert ip + 48 <= first <= last <= end
    assert 0 <= ident < 1 << 32 and 0 <= offset <= 65528 and offset % 8 == 0
    assert more in (True, False) and 0 <= next_header <= 255
    if more:
        assert last > first and (last - first) % 8 == 0
    # What reassembly does with the fragmentable part never raises either, and counts at most
    # one reason.
    data = bytes(buf[first:last])
    at = udp_header_after_extensions(data, next_header)
    assert at == -1 or 0 <= at <= len(data) - 8
    mark = total()
    got = parse_udp6_segment(data, next_header, src, dst, stats, verify)
    assert total() == mark + (got is None)
    if got is not None:
        assert at >= 0 and got[5] == at + 8 and got[5] <= got[6] <= len(data)
    return "fragment6"


def link_frame6(rng, linktype, packet):
    if linktype == P.DLT_EN10MB:
        vlans = rng.choice([(), (), (7,), ((P.ETH_8021AD, 1), 2)])
        return P.ethernet(packet, ethertype=P.ETH_IPV6, vlans=vlans,
                          pad_byte=rng.getrandbits(8))
    if linktype in (P.DLT_LINUX_SLL, P.DLT_LINUX_SLL2):
        make = P.sll if linktype == P.DLT_LINUX_SLL else P.sll2
        return make(packet, protocol=P.ETH_IPV6, pkttype=rng.choice([0, 0, 1, 2, 4]))
    return wrap_any6(rng, linktype, packet)


def link_length(linktype, frame):
    if linktype == P.DLT_EN10MB:
        pos = 12
        while frame[pos:pos + 2] in (b"\x81\x00", b"\x88\xa8", b"\x91\x00"):
            pos += 4
        return pos + 2
    return P.LINK_WRAPPERS[linktype][1]


def test_ipv6_parser_fuzz():
    """40,000 random and mutated IPv6 frames (and some read as another link type): no
    exception, offsets inside the frame, every frame one outcome -- a datagram, a fragment, or
    exactly one count (not_for_us or one malformed reason) -- and every IPv6 reason reached."""
    rng = random.Random(2460)
    pool = []
    for _ in range(500):
        linktype = rng.choice(IPV6_LINKTYPES)
        frame = link_frame6(rng, linktype, random_packet6(rng))
        pool.append((linktype, frame, link_length(linktype, frame)))
    stats = Statistics()
    outcomes = collections.Counter()
    for case in range(40000):
        linktype, frame, ip = pool[rng.randrange(len(pool))]
        frame = bytearray(frame) if case % 10 == 0 else mutate6(rng, frame, ip)
        if case % 9 == 0:
            linktype = rng.choice(IPV6_LINKTYPES + [P.DLT_IPV4])
        before = rng.choice([0, 0, 3, 16])
        data = bytearray(rng.getrandbits(8) for _ in range(before)) + frame + AFTER[:40]
        buf = memoryview(data) if case % 3 else bytes(data)
        outcomes[check_one6(buf, before, before + len(frame), linktype, stats,
                            case % 2 == 0)] += 1
    for reason in IPV6_REASONS + ("link_truncated", "link_not_ipv4", "ip_truncated",
                                  "ip_version", "udp_truncated", "udp_length", "udp_checksum",
                                  "fragment_alignment"):
        assert stats.malformed[reason] > 20, (reason, stats.malformed)
    assert outcomes["udp6"] > 2000 and outcomes["fragment6"] > 2000, outcomes
    assert stats.not_for_us > 1000


def test_ipv6_walker_fuzz_accounts_for_every_frame():
    """Batches of mutated IPv6 and IPv4 frames through the walker (fast path on), checksums
    verified or not: each frame gave exactly one entry or one count."""
    rng = random.Random(4242)
    from test_packet_fuzz import make_pool, mutate
    pool4 = make_pool(rng, [P.addr("198.18.9.%d" % i) for i in range(1, 5)], 200)
    for linktype in FAST_LINKTYPES + [P.DLT_RAW]:
        pool6 = []
        for _ in range(150):
            frame = link_frame6(rng, linktype, random_packet6(rng))
            pool6.append((frame, link_length(linktype, frame)))
        pool4_here = [(f, ip) for lt, f, ip in pool4 if lt == linktype] or [
            (P.wrap(linktype, pkt), P.LINK_WRAPPERS[linktype][1]) for pkt in edge_packets4()]
        for _batch in range(30):
            frames = []
            for _ in range(rng.randint(1, 60)):
                if rng.random() < 0.7:
                    frame, ip = rng.choice(pool6)
                    frames.append(bytes(mutate6(rng, frame, ip)) if rng.random() < 0.8
                                  else frame)
                else:
                    frame, ip = rng.choice(pool4_here)
                    frames.append(bytes(mutate(rng, frame, ip)) if rng.random() < 0.8
                                  else frame)
            records = rng.choice(LAYOUTS)
            verify = rng.random() < 0.5
            found, snap = walk(linktype, frames, True, verify, PORTS_BOTH, records)
            assert len(found) + snap["not_for_us"] + snap["malformed_total"] == len(frames)


def reference_walk(linktype, frame, ports, verify):
    """What the walker must make of one frame, by the documented contract:
    make_link_parser(linktype, ipv6=True), dispatch on the version nibble, the port key
    filter.  ``(entries, stats snapshot)``."""
    stats = Statistics()
    stats.frames = 1
    view = memoryview(frame)
    ip = make_link_parser(linktype, ipv6=True)(view, 0, len(frame), stats)
    entries = []
    if ip >= 0:
        six = ip < len(frame) and view[ip] >> 4 == 6
        parsed = (parse_ipv6 if six else parse_ipv4)(view, ip, len(frame), stats, verify)
        if parsed is not None and parsed[0] == UDP:
            key = parsed[4] | (PORT6 if six else 0)
            if key in ports:
                entries.append(parsed[1:4] + (key,) + parsed[5:7])
            else:
                stats.not_for_us += 1
        elif parsed is not None:
            entries.append(parsed)
    return entries, stats.snapshot()


def test_the_walker_decides_as_the_documented_contract():
    """Frame by frame, random and mutated IPv6 and IPv4 frames (link layers saying one thing
    and carrying another included): the walker, fast path on and off, gives the entries and
    the counts of make_link_parser(linktype, ipv6=True) + version dispatch + port keys."""
    rng = random.Random(777)
    from test_packet_fuzz import make_pool, mutate
    pool4 = make_pool(rng, [P.addr("198.18.9.%d" % i) for i in range(1, 5)], 300)
    for linktype in FAST_LINKTYPES + [P.DLT_RAW]:
        pool4_here = [(f, ip) for lt, f, ip in pool4 if lt == linktype]
        for case in range(400):
            if rng.random() < 0.6:
                frame = link_frame6(rng, linktype, random_packet6(rng))
                ip = link_length(linktype, frame)
                frame = bytes(mutate6(rng, frame, ip)) if rng.random() < 0.7 else frame
            else:
                frame, ip = rng.choice(pool4_here)
                frame = bytes(mutate(rng, frame, ip)) if rng.random() < 0.7 else frame
            if rng.random() < 0.1 and linktype != P.DLT_RAW:       # a claim swapped
                packet = frame[link_length(linktype, frame):] if len(frame) > 30 else frame
                frame = rng.choice([P.wrap(linktype, packet), P.wrap6(linktype, packet)])
            verify = case % 3 == 0
            want_entries, want = reference_walk(linktype, frame, PORTS_BOTH, verify)
            for fast_path in (True, False):
                parse = make_batch_parser(linktype, fast_path=fast_path)
                stats = Statistics()
                found = []
                view = memoryview(P.savefile_batch([frame]))
                parse(view, 0, len(view), PORTS_BOTH, stats, verify, found)
                assert stats.snapshot() == want, (linktype, frame.hex())
                got = [e[1][:6] + (e[1][6] - 16, e[1][7] - 16) + e[1][8:] if e[0] is None
                       else e[:4] + (e[4] - 16, e[5] - 16) for e in found]
                assert got == want_entries, (linktype, frame.hex())


def test_intact_random_ipv6_exact_results():
    """Unmutated random datagrams behind random valid chains: the exact payload, addresses,
    ports; the walker too, with the port key."""
    rng = random.Random(6)
    for _ in range(2000):
        linktype = rng.choice(IPV6_LINKTYPES)
        src = rng.choice(SRCS6)
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
        headers = [h for h in random_headers(rng, True)[:MAX_EXTENSION_HEADERS]
                   if h != "hop" and not (isinstance(h, tuple) and h[1].get("segments_left"))]
        if rng.random() < 0.3:
            headers = ["hop"] + headers[:MAX_EXTENSION_HEADERS - 1]
        sport = rng.getrandbits(16)
        pkt = P.ipv6_udp(payload, sport, PORT, src, LOCAL6, headers=headers)
        frame = link_frame6(rng, linktype, pkt)
        stats = Statistics()
        buf, start, end = embedded(frame)
        assert check_one6(buf, start, end, linktype, stats, True) == "udp6"
        ip = make_link_parser(linktype, ipv6=True)(buf, start, end, stats)
        got = parse_ipv6(buf, ip, end, stats, True)
        assert got[:5] == (UDP, src, LOCAL6, sport, PORT)
        assert bytes(buf[got[5]:got[6]]) == payload
        found, snap = walk(linktype, [frame], True, True)
        assert found[0][:4] == (src, LOCAL6, sport, PORT | PORT6)
        assert snap["malformed_total"] == 0
