"""The pure packet parser (udpcap_ctypes._packet) on crafted frames: exact results, exact counters.

Every test checks the outcome AND that exactly the expected counters of
:class:`~udpcap_ctypes._stats.Statistics` moved (all other counters unchanged).  Frames are built
by tests/packets.py, an independent implementation of the formats (RFC 1071 checksums with a
16-bit loop); the header-checksum shortcut of ``parse_ipv4`` is cross-checked against it on
10,000 random headers.
"""

import random
import socket
import struct
import sys

import pytest

import packets as P
from udpcap_ctypes._packet import (
    FRAGMENT,
    UDP,
    UnsupportedLinkType,
    make_link_parser,
    make_outgoing_test,
    parse_ipv4,
    parse_udp,
    udp_checksum_ok,
)
from udpcap_ctypes._stats import MALFORMED_REASONS, Statistics

SRC = "198.18.0.1"
DST = "198.18.0.2"
SRC_I = P.addr(SRC)
DST_I = P.addr(DST)


def flat(stats):
    snap = stats.snapshot()
    out = {k: v for k, v in snap.items() if k not in ("malformed", "malformed_total")}
    out.update(("malformed." + k, v) for k, v in snap["malformed"].items())
    return out


class Counted:
    """A Statistics whose changes are compared, all of them, with what a test expects."""

    def __init__(self):
        self.stats = Statistics()
        self._before = flat(self.stats)

    def moved(self):
        after = flat(self.stats)
        return {k: after[k] - self._before[k] for k in after if after[k] != self._before[k]}

    def expect(self, **changes):
        """Assert exactly these counters moved (``malformed.x`` spelled ``x`` for reasons)."""
        want = {}
        for key, value in changes.items():
            want[("malformed." + key) if key in MALFORMED_REASONS else key] = value
        assert self.moved() == want
        self._before = flat(self.stats)


def check_flipped_bit(parse, segment, src, dst, counted):
    """``parse(segment, src, dst, stats, verify)`` of *segment* with a payload bit flipped: a
    ``udp_checksum`` drop when verifying, a UDP result when not."""
    bad = bytearray(segment)
    bad[100] ^= 4
    assert parse(bytes(bad), src, dst, counted.stats, True) is None
    counted.expect(udp_checksum=1)
    assert parse(bytes(bad), src, dst, counted.stats, False)[0] == UDP


def udp_packet(payload=b"hello", sport=40000, dport=5000, src=SRC, dst=DST, udp_checksum=True,
               length=None, **ip_kwargs):
    return P.ipv4(P.udp(payload, sport, dport, src, dst, checksum=udp_checksum, length=length),
                  src, dst, **ip_kwargs)


def parse_frame(linktype, frame, counted, verify=False, start=0, end=None, buf=None):
    """Link + IPv4 parse of *frame* placed at *start* inside *buf* (default: frame alone)."""
    if buf is None:
        buf = memoryview(frame)
        end = len(frame) if end is None else end
    ip = make_link_parser(linktype)(buf, start, end, counted.stats)
    if ip < 0:
        return ip, None
    return ip, parse_ipv4(buf, ip, end, counted.stats, verify)


def embedded(frame, before=7, after=b"\x45" * 64):
    """*frame* inside a bigger buffer (as DumpBatchReader hands them): (buf, start, end)."""
    data = b"\xEE" * before + frame + after
    return memoryview(data), before, before + len(frame)


# -- link layers -----------------------------------------------------------------------------

@pytest.mark.parametrize("vlans,offset", [
    ((), 14),
    ((100,), 18),                                                   # 802.1Q
    (((P.ETH_8021AD, 10), (P.ETH_8021Q, 20)), 22),                  # QinQ: 802.1ad outer
    (((P.ETH_QINQ_OLD, 10), (P.ETH_8021Q, 20)), 22),                # old 0x9100 outer tag
    (((P.ETH_8021AD, 1), (P.ETH_8021AD, 2), (P.ETH_8021Q, 3)), 26),  # three tags: the limit
])
def test_ethernet_untagged_and_vlan_tagged(vlans, offset):
    pkt = udp_packet(b"x" * 32)
    frame = P.ethernet(pkt, vlans=vlans)
    buf, start, end = embedded(frame)
    c = Counted()
    ip, parsed = parse_frame(P.DLT_EN10MB, None, c, buf=buf, start=start, end=end)
    assert ip == start + offset
    assert parsed == (UDP, SRC_I, DST_I, 40000, 5000, ip + 28, ip + 28 + 32)
    assert bytes(buf[parsed[5]:parsed[6]]) == b"x" * 32
    c.expect()


def test_ethernet_four_vlan_tags_is_beyond_the_limit():
    frame = P.ethernet(udp_packet(), vlans=(1, 2, 3, 4))
    c = Counted()
    assert parse_frame(P.DLT_EN10MB, frame, c) == (-1, None)
    c.expect(link_not_ipv4=1)


@pytest.mark.parametrize("ethertype", [P.ETH_IPV6, P.ETH_ARP, 0x0000, 0x88CC])
@pytest.mark.parametrize("vlans", [(), (5,), ((P.ETH_8021AD, 1), 2)])
def test_ethernet_not_ipv4(ethertype, vlans):
    frame = P.ethernet(udp_packet(), vlans=vlans, ethertype=ethertype)
    c = Counted()
    assert parse_frame(P.DLT_EN10MB, frame, c) == (-1, None)
    c.expect(link_not_ipv4=1)


@pytest.mark.parametrize("frame", [
    b"",
    bytes(13),
    P.MAC_B + P.MAC_A + b"\x08",                                    # 13 bytes, half a type
    P.MAC_B + P.MAC_A + b"\x81\x00\x00\x05",                        # tag, no inner type
    P.MAC_B + P.MAC_A + b"\x81\x00\x00\x05\x08",                    # tag, half an inner type
    P.MAC_B + P.MAC_A + b"\x88\xa8\x00\x05\x81\x00\x00\x06",        # QinQ, no inner type
])
def test_ethernet_truncated_never_reads_past_end(frame):
    # The bytes after ``end`` would complete an IPv4 frame: they must not be looked at.
    buf, start, end = embedded(frame, after=b"\x08\x00" + udp_packet() * 2)
    c = Counted()
    assert parse_frame(P.DLT_EN10MB, None, c, buf=buf, start=start, end=end) == (-1, None)
    c.expect(link_truncated=1)


def test_ethernet_padding_beyond_total_length_is_ignored():
    pkt = udp_packet(b"abc")                   # 31 bytes of IPv4: Ethernet pads to 60
    frame = P.ethernet(pkt, pad_byte=0xFF)
    assert len(frame) == 60
    c = Counted()
    ip, parsed = parse_frame(P.DLT_EN10MB, frame, c, verify=True)
    assert parsed == (UDP, SRC_I, DST_I, 40000, 5000, 14 + 28, 14 + 31)
    assert frame[parsed[5]:parsed[6]] == b"abc"
    c.expect()


def test_dlt_null_host_order_and_other_order():
    pkt = udp_packet(b"null")
    other = "big" if sys.byteorder == "little" else "little"
    for frame in (P.null(pkt), P.null(pkt, byteorder=other)):
        buf, start, end = embedded(frame)
        c = Counted()
        ip, parsed = parse_frame(P.DLT_NULL, None, c, buf=buf, start=start, end=end)
        assert ip == start + 4
        assert parsed[0] == UDP and bytes(buf[parsed[5]:parsed[6]]) == b"null"
        c.expect()


def test_dlt_null_on_a_big_endian_host_standin(monkeypatch):
    """Stand-in for a big-endian host (cannot exist here): sys.byteorder patched to "big".

    Both orders of AF_INET must be accepted there too (a file written on a little-endian host).
    """
    monkeypatch.setattr(sys, "byteorder", "big")
    parse = make_link_parser(P.DLT_NULL)
    pkt = udp_packet()
    for order in ("big", "little"):
        c = Counted()
        assert parse(memoryview(P.null(pkt, byteorder=order)), 0, 4 + len(pkt), c.stats) == 4
        c.expect()


@pytest.mark.parametrize("family", [socket.AF_INET6, 24, 28, 30, 0, 2 << 8, 2 << 16])
def test_dlt_null_not_af_inet(family):
    for order in ("little", "big"):
        c = Counted()
        assert parse_frame(P.DLT_NULL, P.null(udp_packet(), family, order), c) == (-1, None)
        c.expect(link_not_ipv4=1)


def test_dlt_loop_is_big_endian_only():
    pkt = udp_packet(b"loop")
    c = Counted()
    ip, parsed = parse_frame(P.DLT_LOOP, P.loop(pkt), c)
    assert ip == 4 and parsed[0] == UDP
    c.expect()
    ip, parsed = parse_frame(P.DLT_LOOP, P.null(pkt, byteorder="little"), c)
    assert ip == -1
    c.expect(link_not_ipv4=1)
    assert parse_frame(P.DLT_LOOP, P.loop(pkt, socket.AF_INET6), c) == (-1, None)
    c.expect(link_not_ipv4=1)


@pytest.mark.parametrize("linktype", [P.DLT_NULL, P.DLT_LOOP])
def test_dlt_null_and_loop_truncated(linktype):
    for size in range(4):
        c = Counted()
        buf, start, end = embedded(b"\x02\x00\x00\x00"[:size] if linktype == P.DLT_NULL
                                   else b"\x00\x00\x00\x02"[:size],
                                   after=b"\x02\x00\x00\x00" + udp_packet())
        assert parse_frame(linktype, None, c, buf=buf, start=start, end=end) == (-1, None)
        c.expect(link_truncated=1)


@pytest.mark.parametrize("linktype,make,header", [
    (P.DLT_LINUX_SLL, P.sll, 16),
    (P.DLT_LINUX_SLL2, P.sll2, 20),
])
def test_linux_cooked(linktype, make, header):
    pkt = udp_packet(b"cooked")
    buf, start, end = embedded(make(pkt))
    c = Counted()
    ip, parsed = parse_frame(linktype, None, c, buf=buf, start=start, end=end)
    assert ip == start + header
    assert bytes(buf[parsed[5]:parsed[6]]) == b"cooked"
    c.expect()
    assert parse_frame(linktype, make(pkt, protocol=P.ETH_IPV6), c) == (-1, None)
    c.expect(link_not_ipv4=1)
    for size in range(header):
        full = make(pkt)
        buf, start, end = embedded(full[:size], after=full[size:])
        assert parse_frame(linktype, None, c, buf=buf, start=start, end=end) == (-1, None)
        c.expect(link_truncated=1)


@pytest.mark.parametrize("linktype,make", [(P.DLT_LINUX_SLL, P.sll),
                                           (P.DLT_LINUX_SLL2, P.sll2)])
def test_linux_cooked_outgoing_packet_type(linktype, make):
    is_own = make_outgoing_test(linktype)
    pkt = udp_packet()
    for pkttype in range(8):
        buf, start, _end = embedded(make(pkt, pkttype=pkttype), before=3)
        assert is_own(buf, start) == (pkttype == P.PACKET_OUTGOING)
    # The parse result does not depend on the packet type: direction is the receiver's call.
    c = Counted()
    ip, parsed = parse_frame(linktype, make(pkt, pkttype=P.PACKET_OUTGOING), c)
    assert parsed[0] == UDP
    c.expect()


def test_ethernet_outgoing_compares_the_source_mac():
    pkt = udp_packet()
    assert make_outgoing_test(P.DLT_EN10MB)(P.ethernet(pkt, src_mac=P.MAC_A), 0) is False
    is_own = make_outgoing_test(P.DLT_EN10MB, [bytearray(P.MAC_A)])
    buf, start, _ = embedded(P.ethernet(pkt, src_mac=P.MAC_A))
    assert is_own(buf, start) is True
    assert is_own(P.ethernet(pkt, src_mac=P.MAC_B), 0) is False
    assert is_own(P.ethernet(pkt, src_mac=P.MAC_B, dst_mac=P.MAC_A), 0) is False
    for linktype in (P.DLT_NULL, P.DLT_LOOP, P.DLT_RAW, P.DLT_IPV4):
        assert make_outgoing_test(linktype, [P.MAC_A])(P.wrap(linktype, pkt), 0) is False


@pytest.mark.parametrize("linktype", [P.DLT_RAW, P.DLT_RAW_BSD, P.LINKTYPE_RAW, P.DLT_IPV4])
def test_raw_ipv4(linktype):
    pkt = udp_packet(b"raw")
    buf, start, end = embedded(pkt)
    c = Counted()
    ip, parsed = parse_frame(linktype, None, c, buf=buf, start=start, end=end)
    assert ip == start and bytes(buf[parsed[5]:parsed[6]]) == b"raw"
    c.expect()
    ipv6 = b"\x60" + bytes(39)
    assert parse_frame(linktype, ipv6, c) == (-1, None)
    c.expect(link_not_ipv4=1)
    buf, start, end = embedded(b"", after=pkt)
    assert parse_frame(linktype, None, c, buf=buf, start=start, end=end) == (-1, None)
    c.expect(link_truncated=1)


@pytest.mark.parametrize("linktype", [105, 127, 147, 2, 9, 228 + 1, 0xFFFF, -1])
def test_unsupported_link_type_raises_at_make_time(linktype):
    with pytest.raises(UnsupportedLinkType) as info:
        make_link_parser(linktype)
    assert isinstance(info.value, ValueError)
    text = str(info.value)
    assert str(linktype) in text and "Ethernet" in text and "supported" in text


# -- IPv4 ------------------------------------------------------------------------------------

def parse_ip(pkt, verify=False, counted=None, where=None):
    """parse_ipv4 of *pkt* embedded in a bigger buffer; results relative to the packet."""
    counted = counted or Counted()
    buf, start, end = embedded(pkt, **(where or {}))
    parsed = parse_ipv4(buf, start, end, counted.stats, verify)
    if parsed is None:
        return None
    assert start <= parsed[-2] <= parsed[-1] <= end
    return parsed[:-2] + (parsed[-2] - start, parsed[-1] - start)


def test_ipv4_udp_fast_path():
    c = Counted()
    assert parse_ip(udp_packet(b"p" * 100), counted=c) == (UDP, SRC_I, DST_I, 40000, 5000,
                                                            28, 128)
    c.expect()


@pytest.mark.parametrize("size", [0, 1, 5, 19])
def test_ip_truncated_below_minimal_header(size):
    c = Counted()
    assert parse_ip(udp_packet()[:size], counted=c) is None
    c.expect(ip_truncated=1)


def test_ip_truncated_ihl_beyond_capture():
    pkt = udp_packet(options=b"\x01" * 40)               # IHL 15: 60-byte header
    c = Counted()
    for cut in (20, 28, 40, 59):
        assert parse_ip(pkt[:cut], counted=c) is None
        c.expect(ip_truncated=1)


def test_ip_truncated_total_length_beyond_capture():
    c = Counted()
    for pkt in (udp_packet(b"q" * 50), udp_packet(b"q" * 50, options=b"\x01" * 8)):
        for cut in (len(pkt) - 1, len(pkt) - 30):
            assert parse_ip(pkt[:cut], counted=c) is None
            c.expect(ip_truncated=1)
    # Total length lies upwards on an otherwise complete packet.
    assert parse_ip(udp_packet(b"q" * 50, total_length=20 + 8 + 51), counted=c) is None
    c.expect(ip_truncated=1)
    assert parse_ip(udp_packet(b"q", total_length=65535), counted=c) is None
    c.expect(ip_truncated=1)


@pytest.mark.parametrize("version", [0, 1, 5, 6, 15])
def test_ip_version(version):
    c = Counted()
    for ihl in (5, 6):
        pkt = udp_packet(version=version, options=b"\x01" * (4 * (ihl - 5)))
        assert parse_ip(pkt, counted=c) is None
        c.expect(ip_version=1)


@pytest.mark.parametrize("ihl", [0, 1, 4])
def test_ip_header_length_below_five_words(ihl):
    c = Counted()
    assert parse_ip(udp_packet(b"z" * 20, ihl=ihl), counted=c) is None
    c.expect(ip_header_length=1)


def test_ip_total_length_below_header_length():
    c = Counted()
    for total in (0, 1, 19):
        assert parse_ip(udp_packet(total_length=total), counted=c) is None
        c.expect(ip_total_length=1)
    opts = udp_packet(options=b"\x01" * 8)                # IHL 7: 28-byte header
    for total in (20, 27):
        assert parse_ip(P.ipv4(P.udp(b"", src=SRC, dst=DST), SRC, DST, options=b"\x01" * 8,
                               total_length=total), counted=c) is None
        c.expect(ip_total_length=1)
    assert parse_ip(opts, counted=c)[0] == UDP
    c.expect()


def test_ip_checksum_bad_with_fast_path_header():
    pkt = bytearray(udp_packet(b"k" * 40))
    c = Counted()
    for position in range(20):
        for bit in range(8):
            if position in (0, 2, 3):
                continue        # version/IHL/total length: rejected for other reasons first
            bad = bytearray(pkt)
            bad[position] ^= 1 << bit
            assert parse_ip(bytes(bad), counted=c) is None, (position, bit)
            c.expect(ip_checksum=1)


@pytest.mark.parametrize("ihl", range(5, 16))
def test_ip_options_every_header_length(ihl):
    options = bytes((7 * i + 1) & 0xFF for i in range(4 * (ihl - 5)))
    pkt = udp_packet(b"opt" * 7, options=options)
    assert pkt[0] == 0x40 | ihl
    c = Counted()
    assert parse_ip(pkt, counted=c) == (UDP, SRC_I, DST_I, 40000, 5000, 4 * ihl + 8,
                                        4 * ihl + 8 + 21)
    c.expect()
    for verify in (False, True):
        assert parse_ip(pkt, verify=verify, counted=c)[0] == UDP
    c.expect()
    # Any bit flipped in the checksum or the options makes the header checksum fail.
    for position in [10, 11] + list(range(20, 4 * ihl)):
        bad = bytearray(pkt)
        bad[position] ^= 0x10
        assert parse_ip(bytes(bad), counted=c) is None
        c.expect(ip_checksum=1)
    # Short header-only packets with options take the slow path too.
    short = P.ipv4(b"", options=options, proto=6)
    assert parse_ip(short, counted=c) is None
    c.expect(not_for_us=1)


def test_non_udp_protocol_is_not_for_us():
    c = Counted()
    for proto in (1, 6, 47, 50, 132, 255, 0):
        for options in (b"", b"\x01" * 4):
            pkt = P.ipv4(b"\0" * 40, SRC, DST, proto=proto, options=options)
            assert parse_ip(pkt, verify=True, counted=c) is None
            c.expect(not_for_us=1)
    # Also a non-UDP fragment: protocol is checked before fragmentation.
    assert parse_ip(P.ipv4(b"\0" * 16, proto=6, mf=True), counted=c) is None
    c.expect(not_for_us=1)


# -- fragments -------------------------------------------------------------------------------

def test_fragments_are_returned_with_exact_offset_and_flag():
    segment = P.udp(bytes(range(256)) * 20, src=SRC, dst=DST)       # 5128 bytes
    frags = P.fragment_ip(segment, SRC, DST, ident=0xBEEF, size=1480)
    assert [(o, m) for o, m, _ in frags] == [(0, True), (1480, True), (2960, True),
                                             (4440, False)]
    c = Counted()
    for offset, more, pkt in frags:
        parsed = parse_ip(pkt, counted=c)
        size = min(1480, len(segment) - offset)
        assert parsed == (FRAGMENT, SRC_I, DST_I, 0xBEEF, offset, more, 20, 20 + size)
        assert pkt[20:20 + size] == segment[offset:offset + size]
    c.expect()          # the parser counts nothing for fragments (the reassembler does)


def test_fragment_edge_values():
    c = Counted()
    # Highest possible offset (8191 * 8), tiny last fragments, empty fragments, DF ignored.
    cases = [
        (dict(offset_bytes=65528, mf=False), b"\x01\x02\x03", (65528, False, 3)),
        (dict(offset_bytes=65528, mf=True), b"", (65528, True, 0)),
        (dict(offset_bytes=8, mf=False), b"\x01", (8, False, 1)),
        (dict(offset_bytes=0, mf=True), b"\x00\x01\x00", (0, True, 3)),     # < a UDP header
        (dict(offset_bytes=16, mf=True, df=True), b"x" * 8, (16, True, 8)),
        (dict(offset_bytes=8, mf=False, options=b"\x01" * 12), b"y" * 9, (8, False, 9)),
    ]
    for kwargs, data, (offset, more, size) in cases:
        pkt = P.ipv4(data, SRC, DST, ident=7, **kwargs)
        header = len(pkt) - len(data)
        assert parse_ip(pkt, counted=c) == (FRAGMENT, SRC_I, DST_I, 7, offset, more, header,
                                            header + size)
    c.expect()
    # The reserved (evil) bit alone does not make a fragment; DF alone neither.
    for flags in (0x8000, 0x4000, 0xC000):
        assert parse_ip(udp_packet(flags_raw=flags), counted=c)[0] == UDP
    c.expect()


# -- UDP -------------------------------------------------------------------------------------

@pytest.mark.parametrize("udp_bytes", [0, 1, 7])
def test_udp_truncated(udp_bytes):
    c = Counted()
    for options in (b"", b"\x01" * 4):
        pkt = P.ipv4(P.udp(b"", src=SRC, dst=DST)[:udp_bytes], SRC, DST, options=options)
        assert parse_ip(pkt, counted=c) is None
        c.expect(udp_truncated=1)
    # Also when the capture holds more bytes than the total length says (padding).
    pkt = P.ipv4(P.udp(b"", src=SRC, dst=DST)[:udp_bytes], SRC, DST)
    assert parse_ip(pkt + b"\x00" * 40, counted=c) is None
    c.expect(udp_truncated=1)


def test_udp_length():
    c = Counted()
    for ulen in (0, 1, 7, 8 + 11, 0xFFFF):
        pkt = udp_packet(b"0123456789", udp_checksum=0, length=ulen)
        assert parse_ip(pkt, counted=c) is None
        c.expect(udp_length=1)
    # A UDP length shorter than the IP payload is accepted: the payload ends at the UDP length.
    pkt = udp_packet(b"0123456789", udp_checksum=0, length=12)
    assert parse_ip(pkt, counted=c) == (UDP, SRC_I, DST_I, 40000, 5000, 28, 32)
    assert parse_ip(udp_packet(b"", udp_checksum=0, length=8), counted=c)[4:] == (5000, 28, 28)
    c.expect()


def force_zero_checksum(payload):
    """*payload* plus two bytes chosen so that the computed UDP checksum is 0."""
    seg = P.udp(payload + b"\0\0", src=SRC, dst=DST, checksum=0)
    pseudo = P.addr_bytes(SRC) + P.addr_bytes(DST) + struct.pack("!BBH", 0, 17, len(seg))
    rest = P.ones_sum16(pseudo + seg)                # sum without the last word
    w = 0xFFFF - rest if rest != 0xFFFF else 0       # rest (+) w == 0xFFFF: checksum ~0xFFFF
    return payload + struct.pack("!H", w)


def test_udp_checksum_verification():
    c = Counted()
    for payload in (b"", b"a", b"even", b"odd", bytes(range(256)) * 5 + b"!", b"\xff" * 1471):
        good = udp_packet(payload)
        bad = bytearray(good)
        bad[26] ^= 0x01                              # checksum field
        zero = udp_packet(payload, udp_checksum=0)
        corrupt = bytearray(good)
        if payload:
            corrupt[-1] ^= 0x80                      # payload bit (odd length: high byte)
        for pkt in (good, zero):
            assert parse_ip(pkt, verify=True, counted=c) == (
                UDP, SRC_I, DST_I, 40000, 5000, 28, 28 + len(payload))
        c.expect()
        assert parse_ip(bytes(bad), verify=True, counted=c) is None
        c.expect(udp_checksum=1)
        if payload:
            assert parse_ip(bytes(corrupt), verify=True, counted=c) is None
            c.expect(udp_checksum=1)
        # Verification off: the bad checksum passes, nothing counted.
        assert parse_ip(bytes(bad), verify=False, counted=c)[0] == UDP
        c.expect()


def test_udp_checksum_computed_zero_is_sent_as_ffff():
    payload = force_zero_checksum(b"zero-sum")
    segment = P.udp(payload, src=SRC, dst=DST)
    assert segment[6:8] == b"\xff\xff"               # computed 0 is transmitted as 0xFFFF
    pkt = P.ipv4(segment, SRC, DST)
    c = Counted()
    assert parse_ip(pkt, verify=True, counted=c)[0] == UDP
    c.expect()


def test_udp_checksum_covers_only_udp_length_and_pseudo_header():
    c = Counted()
    # Trailing bytes beyond the UDP length are not part of the checksum.
    seg = P.udp(b"data", src=SRC, dst=DST)
    pkt = P.ipv4(seg + b"TRAILER", SRC, DST)
    assert parse_ip(pkt, verify=True, counted=c) == (UDP, SRC_I, DST_I, 40000, 5000, 28, 32)
    c.expect()
    # Another destination address (pseudo-header) breaks it.
    pkt = P.ipv4(seg, SRC, "198.18.0.3")
    assert parse_ip(pkt, verify=True, counted=c) is None
    c.expect(udp_checksum=1)


def test_parse_udp_reassembled_segment():
    c = Counted()
    payload = bytes(range(200)) * 30
    seg = P.udp(payload, src=SRC, dst=DST)
    assert parse_udp(seg, SRC_I, DST_I, c.stats, True) == (UDP, SRC_I, DST_I, 40000, 5000, 8,
                                                            8 + len(payload))
    c.expect()
    assert parse_udp(seg[:7], SRC_I, DST_I, c.stats) is None
    c.expect(udp_truncated=1)
    assert parse_udp(P.udp(b"ab", length=11, checksum=0), SRC_I, DST_I, c.stats) is None
    c.expect(udp_length=1)
    check_flipped_bit(parse_udp, seg, SRC_I, DST_I, c)
    c.expect()


def test_every_parser_reason_is_reachable_and_named():
    owned = {"link_truncated", "link_not_ipv4", "ip_truncated", "ip_version", "ip_header_length",
             "ip_total_length", "ip_checksum", "udp_truncated", "udp_length", "udp_checksum",
             "ip6_header_chain", "ip6_first_fragment", "ip6_jumbogram"}
    assert owned <= set(MALFORMED_REASONS)
    # The remaining reasons belong to the reassembler, and to the batch walker (a capture
    # record whose header lies: tests/test_packet_npf_records.py).
    assert set(MALFORMED_REASONS) - owned == {"fragment_offset", "fragment_alignment",
                                              "fragment_overlap", "fragment_conflict",
                                              "record_header"}


# -- cross-checks against a straightforward RFC 1071 implementation ---------------------------

def rfc1071_header_ok(header):
    """Verify an IPv4 header the textbook way: 16-bit ones'-complement sum must be 0xFFFF."""
    total = 0
    for i in range(0, len(header), 2):
        total += (header[i] << 8) | header[i + 1]
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def test_header_checksum_shortcut_matches_rfc1071_on_random_headers():
    rng = random.Random(1071)
    accepted = rejected = 0
    for case in range(10000):
        ihl = 5 if case % 2 else rng.randint(5, 15)
        header = bytearray(rng.getrandbits(8) for _ in range(4 * ihl))
        header[0] = 0x40 | ihl
        header[9] = 17
        body = P.udp(b"r" * rng.randint(0, 12), src=0, dst=0, checksum=0)
        struct.pack_into("!H", header, 2, len(header) + len(body))
        mode = rng.randrange(5)
        if mode <= 1:                       # correct checksum
            struct.pack_into("!H", header, 10, 0)
            struct.pack_into("!H", header, 10, P.checksum16(header))
        elif mode == 2:                     # correct, then one bit flipped somewhere harmless
            struct.pack_into("!H", header, 10, 0)
            struct.pack_into("!H", header, 10, P.checksum16(header))
            position = rng.choice([1, 4, 5, 6, 7, 8, 10, 11] + list(range(12, 4 * ihl)))
            header[position] ^= 1 << rng.randrange(8)
        elif mode == 3:                     # the complement of the right checksum
            struct.pack_into("!H", header, 10, 0)
            struct.pack_into("!H", header, 10, P.checksum16(header) ^ 0xFFFF)
        # mode 4: whatever random bytes were there
        packet = bytes(header) + body
        expected = rfc1071_header_ok(header)
        c = Counted()
        parsed = parse_ipv4(memoryview(packet), 0, len(packet), c.stats)
        assert (parsed is not None) == expected, (case, packet.hex())
        if expected:
            accepted += 1
            assert c.moved() == {}
        else:
            rejected += 1
            assert c.moved() == {"malformed.ip_checksum": 1}
    assert accepted > 3500 and rejected > 5000


def test_header_checksum_both_zero_representations():
    # A header whose correct checksum is 0x0000: 0xFFFF (the other zero) is equally correct.
    for ident in range(0x10000):
        pkt = bytearray(udp_packet(b"", ident=ident, udp_checksum=0))
        if pkt[10:12] == b"\0\0":
            break
    else:
        pytest.fail("no identification gives checksum 0")
    for value in (b"\0\0", b"\xff\xff"):
        pkt[10:12] = value
        assert rfc1071_header_ok(pkt[:20])
        c = Counted()
        assert parse_ip(bytes(pkt), counted=c)[0] == UDP
        c.expect()


def test_udp_checksum_shortcut_matches_rfc1071_on_random_segments():
    rng = random.Random(768)
    for case in range(3000):
        src, dst = rng.getrandbits(32), rng.getrandbits(32)
        payload = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 2, 3, 17, 64, 301])))
        seg = bytearray(P.udp(payload, rng.getrandbits(16), rng.getrandbits(16), src, dst))
        if case % 3 == 1:
            seg[rng.randrange(len(seg))] ^= 1 << rng.randrange(8)
        elif case % 3 == 2:
            seg[6:8] = struct.pack("!H", rng.getrandbits(16))
        pseudo = struct.pack("!IIBBH", src, dst, 0, 17, len(seg))
        data = pseudo + bytes(seg) + (b"\0" if len(seg) & 1 else b"")
        expected = seg[6:8] == b"\0\0" or rfc1071_header_ok(data)
        assert udp_checksum_ok(src, dst, memoryview(bytes(seg))) == expected, (case, seg.hex())
