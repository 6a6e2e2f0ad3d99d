"""The packet path: pure functions from a captured frame to a UDP datagram (or a fragment).

Nothing here calls native code or copies payload bytes.  Every function reads a buffer
(``memoryview``/``bytes``) between ``start`` and ``end`` -- the captured bytes, ``caplen``,
never the wire length -- and either returns where things are or returns ``None`` after counting
the reason in :class:`~udpcap_ctypes._stats.Statistics`.  Hostile input never raises.

Results:
  ``(UDP, src, dst, sport, dport, payload_start, payload_end)``
  ``(FRAGMENT, src, dst, ident, offset_bytes, more_fragments, data_start, data_end)``
  ``(FRAGMENT6, src6, dst6, ident32, offset_bytes, more_fragments, data_start, data_end,
  next_header)`` (IPv6)
with ``src``/``dst`` as ints (``int.from_bytes(address, "big")``: 32 bits for IPv4, 128 bits
for IPv6).

IPv6 (RFC 8200) shares the walker with IPv4 without new plumbing: an IPv6 datagram's entry
carries the *port key* ``dport | PORT6`` where IPv4's carries ``dport``, so a capture shared by
AF_INET and AF_INET6 sockets tells the families apart with the one ``key in ports`` test it
already makes.  Where IPv4 and IPv6 sources could meet (reassembly keys), IPv6 ones are tagged
``src | V6_TAG``.
"""

from __future__ import annotations

import struct
import sys
from typing import (
    Any,
    Callable,
    Container,
    Dict,
    Final,
    FrozenSet,
    Iterable,
    List,
    Literal,
    Optional,
    Tuple,
    Union,
)

from . import _pcap
from ._stats import Statistics

# What the parsers read: captured bytes (a capture's memoryview, or bytes in the tests).
Buffer = Union[bytes, bytearray, memoryview]
# The results (see the module doc), tagged Literal[1] (UDP) or Literal[2] (FRAGMENT) so that a
# type checker tells them apart by their first item.
# (UDP, src, dst, sport, dport, payload_start, payload_end)
UdpResult = Tuple[Literal[1], int, int, int, int, int, int]
# (FRAGMENT, src, dst, ident, offset_bytes, more_fragments, data_start, data_end)
FragmentResult = Tuple[Literal[2], int, int, int, int, bool, int, int]
# IPv6: (UDP, src6, dst6, sport, dport, payload_start, payload_end) -- UdpResult's shape, with
# 128-bit addresses
UdpResult6 = UdpResult
# (FRAGMENT6, src6, dst6, ident32, offset_bytes, more_fragments, data_start, data_end,
#  next_header): data_start..data_end is the fragmentable part after the fragment header
Fragment6Result = Tuple[Literal[3], int, int, int, int, bool, int, int, int]
# f(buf, start, end, stats) -> offset of the IP header, or -1 (see make_link_parser)
LinkParser = Callable[[Buffer, int, int, Statistics], int]
# f(buf, start) -> True for a frame this host sent (see make_outgoing_test)
OutgoingTest = Callable[[Buffer, int], bool]
# What a batch walker appends (see the comment above make_batch_parser)
BatchEntry = Union[Tuple[int, int, int, int, int, int, int, memoryview],
                   Tuple[None, FragmentResult, None, int, int, int, int, memoryview],
                   Tuple[None, Fragment6Result, None, int, int, int, int, memoryview]]
# The destination ports a batch walker keeps (anything with ``in``: a frozenset).
Ports = Container[int]
# parse_batch(view, start, end, ports, stats, verify, datagrams) -> where the walk stopped
BatchParser = Callable[[memoryview, int, int, Ports, Statistics, bool, List[BatchEntry]], int]

UDP: Final = 1
FRAGMENT: Final = 2
FRAGMENT6: Final = 3

# An IPv6 datagram's port key is its destination port | PORT6 (IPv4's is the port itself).
PORT6: Final = 0x10000
# IPv6 sources are tagged with V6_TAG wherever they could meet IPv4 ones (reassembly keys).
V6_TAG: Final = 1 << 128

IPPROTO_UDP = 17
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
VLAN_ETHERTYPES = (0x8100, 0x88A8, 0x9100)
AF_INET = 2
# DLT_NULL/DLT_LOOP address families of IPv6 (libpcap gencode.c BSD_AFNUM_INET6_*): 24 NetBSD,
# OpenBSD, BSD/OS and Npcap's loopback adapter (DLTNULLTYPE_IPV6 0x18, npf macros.h and
# Loopback.c, written in host order), 28 FreeBSD, 30 Darwin.
AF_INET6_BSD = (24, 28, 30)
PACKET_OUTGOING = 4           # Linux sll_pkttype of frames this host sent
MAX_VLAN_TAGS = 3

# IPv6 next header values (RFC 8200 4; IANA protocol numbers)
IPPROTO_HOPOPTS = 0
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_DSTOPTS = 60
# At most this many extension headers (fragment headers, atomic ones too, included) before the
# upper-layer header; a longer chain is dropped ("ip6_header_chain").
MAX_EXTENSION_HEADERS = 8

_ipv4_udp = struct.Struct("!5I4H")     # IHL=5 header as 32-bit words + the UDP header
_ipv4_words = struct.Struct("!5I")      # a bare IPv4 header (first 20 bytes)
_udp = struct.Struct("!HHH")
_udp_ck = struct.Struct("!HHHH")        # the UDP header with its checksum
# The IPv6 header: version/class/flow, payload length, next header, (hop limit), addresses as
# 64-bit halves
_ipv6 = struct.Struct("!IHBxQQQQ")
_ident6 = struct.Struct("!I")


def udp_checksum_ok(src: int, dst: int, segment: Buffer) -> bool:
    """True when a UDP checksum verifies (a zero checksum means "none" and passes).

    ``segment`` is the UDP header plus payload, ``src``/``dst`` are int addresses.  Only
    meaningful for frames from real NICs: with checksum offload, frames sent by this host (and
    frames crossing a veth) carry partial checksums that a capture cannot tell from bad ones.
    """
    length = len(segment)
    if length < 8 or (segment[6] == 0 and segment[7] == 0):
        return True
    # Same congruence as the header checksum (see parse_ipv4): the segment as one big integer,
    # padded to an even length by "* 256", plus the pseudo-header, modulo 0xFFFF.
    total = (src + dst + IPPROTO_UDP + length
             + int.from_bytes(segment, "big") * (256 if length & 1 else 1))
    return total % 0xFFFF == 0


def _words_sum(buf: Buffer, start: int, count: int) -> int:
    """Sum of ``count`` big-endian 32-bit words at ``start``."""
    return sum(struct.unpack_from("!%dI" % count, buf, start))


def parse_ipv4(buf: Buffer, start: int, end: int, stats: Statistics,
               verify_udp_checksum: bool = False) -> Union[UdpResult, FragmentResult, None]:
    """Parse the IPv4 packet in ``buf[start:end]``; see the module doc for results.

    Addresses come back as ints (``int.from_bytes(addr, "big")``).  Ethernet padding beyond the
    IPv4 total length is ignored.  Non-UDP packets count as ``not_for_us`` (the BPF filter
    normally keeps them out).

    The header checksum is checked without a 16-bit loop: 2**16 and 2**32 are both 1 modulo
    0xFFFF, so the ones'-complement sum of the header's 16-bit words is congruent to the plain
    sum of its 32-bit words, and a correct header sums to 0xFFFF, i.e. 0 modulo 0xFFFF.
    """
    available = end - start
    if available >= 28 and buf[start] == 0x45:
        # Fast path: no IP options.  One unpack for the IPv4 and UDP headers.
        w0, w1, w2, src, dst, sport, dport, ulen, _ = _ipv4_udp.unpack_from(buf, start)
        ihl = 20
        checksum_residue = (w0 + w1 + w2 + src + dst) % 0xFFFF
    else:
        if available < 20:
            stats.drop("ip_truncated")
            return None
        vihl = buf[start]
        if vihl >> 4 != 4:
            stats.drop("ip_version")
            return None
        ihl = (vihl & 0x0F) * 4
        if ihl < 20:
            stats.drop("ip_header_length")
            return None
        if ihl > available:
            stats.drop("ip_truncated")
            return None
        w0, w1, w2, src, dst = _ipv4_words.unpack_from(buf, start)
        checksum_residue = _words_sum(buf, start, ihl >> 2) % 0xFFFF
        sport = None
    total = w0 & 0xFFFF
    if total < ihl:
        stats.drop("ip_total_length")
        return None
    if total > available:
        stats.drop("ip_truncated")
        return None
    if checksum_residue:
        stats.drop("ip_checksum")
        return None
    if (w2 >> 16) & 0xFF != IPPROTO_UDP:
        stats.not_for_us += 1
        return None
    data_start = start + ihl
    data_end = start + total
    if w1 & 0x3FFF:                      # MF set or offset != 0: a fragment
        return (FRAGMENT, src, dst, w1 >> 16, (w1 & 0x1FFF) << 3, bool(w1 & 0x2000),
                data_start, data_end)
    if data_end - data_start < 8:
        stats.drop("udp_truncated")
        return None
    if sport is None:
        sport, dport, ulen = _udp.unpack_from(buf, data_start)
    if ulen < 8 or ulen > data_end - data_start:
        stats.drop("udp_length")
        return None
    if verify_udp_checksum and not udp_checksum_ok(src, dst, buf[data_start:data_start + ulen]):
        stats.drop("udp_checksum")
        return None
    return (UDP, src, dst, sport, dport, data_start + 8, data_start + ulen)


def parse_udp(segment: Buffer, src: int, dst: int, stats: Statistics,
              verify_udp_checksum: bool = False) -> Optional[UdpResult]:
    """Parse a reassembled UDP segment (header + payload); returns a UDP result or None."""
    if len(segment) < 8:
        stats.drop("udp_truncated")
        return None
    sport, dport, ulen = _udp.unpack_from(segment, 0)
    if ulen < 8 or ulen > len(segment):
        stats.drop("udp_length")
        return None
    if verify_udp_checksum and not udp_checksum_ok(src, dst, memoryview(segment)[:ulen]):
        stats.drop("udp_checksum")
        return None
    return (UDP, src, dst, sport, dport, 8, ulen)


# ---------------------------------------------------------------------------------------------
# IPv6 (RFC 8200).

def udp6_checksum_ok(src6: int, dst6: int, segment: Buffer) -> bool:
    """True when the UDP checksum of ``segment`` (UDP header + payload, ``ulen`` bytes) over
    IPv6 verifies.  A zero checksum never does: it is forbidden over IPv6 (RFC 8200 8.1).

    The pseudo-header is src, dst (128 bits each), the upper-layer length (``len(segment)``)
    and next header 17.  Same congruence as :func:`udp_checksum_ok`: 2**16 is 1 modulo 0xFFFF,
    so a 128-bit address is congruent to the sum of its 16-bit words, and the segment as one
    big integer (padded to an even length by "* 256") to the sum of its.
    """
    if len(segment) < 8 or (segment[6] == 0 and segment[7] == 0):
        return False
    return udp_checksum_ok(src6, dst6, segment)


# What _walk_extensions stops at besides a next header: the chain is invalid (hop-by-hop not
# first, more than MAX_EXTENSION_HEADERS), a header runs past the end, or the packet is not for
# us (an upper layer other than UDP, a routing header with segments left).
_CHAIN = -1
_PAST = -2
_OTHER = -3


def _walk_extensions(buf: Buffer, pos: int, stop: int, nh: int,
                     count: int) -> Tuple[int, int, int]:
    """Skip extension headers in ``buf[pos:stop]``, the first of type ``nh``; ``count``
    headers came before (hop-by-hop is accepted only when it is 0).

    Returns ``(next_header, pos, count)``: 17 with the UDP header at ``pos``, or 44 with a
    fragment header at ``pos`` that is not atomic (atomic ones, offset 0 and M clear, RFC 6946,
    are skipped), or ``_CHAIN``/``_PAST``/``_OTHER``.
    """
    while nh != IPPROTO_UDP:
        if nh == IPPROTO_ROUTING or nh == IPPROTO_DSTOPTS or nh == IPPROTO_FRAGMENT or (
                nh == IPPROTO_HOPOPTS and count == 0):
            count += 1
            if count > MAX_EXTENSION_HEADERS:
                return _CHAIN, pos, count
            if stop - pos < 8:
                return _PAST, pos, count
            if nh == IPPROTO_FRAGMENT:
                if ((buf[pos + 2] << 8) | buf[pos + 3]) & 0xFFF9:
                    return nh, pos, count
                length = 8
            else:
                length = (buf[pos + 1] + 1) << 3
                if length > stop - pos:
                    return _PAST, pos, count
                if nh == IPPROTO_ROUTING and buf[pos + 3]:
                    return _OTHER, pos, count        # segments left: not (yet) for us
            nh = buf[pos]
            pos += length
        elif nh == IPPROTO_HOPOPTS:
            return _CHAIN, pos, count                # hop-by-hop, but not first
        else:
            return _OTHER, pos, count                # AH, ESP, no next header, TCP, ...
    return nh, pos, count


def _udp6(buf: Buffer, pos: int, stop: int, src6: int, dst6: int, stats: Statistics,
          verify_udp_checksum: bool) -> Optional[UdpResult6]:
    """The UDP datagram at ``buf[pos:stop]`` over IPv6, offsets absolute."""
    if stop - pos < 8:
        stats.drop("udp_truncated")
        return None
    sport, dport, ulen, checksum = _udp_ck.unpack_from(buf, pos)
    if ulen < 8 or ulen > stop - pos:
        stats.drop("udp_length")
        return None
    # Zero is dropped whether or not checksums are verified, as Linux's udp6 does unless the
    # socket set UDP_NO_CHECK6_RX (RFC 8200 8.1: the checksum is mandatory).
    if not checksum or (verify_udp_checksum
                        and not udp6_checksum_ok(src6, dst6, buf[pos:pos + ulen])):
        stats.drop("udp_checksum")
        return None
    return (UDP, src6, dst6, sport, dport, pos + 8, pos + ulen)


def parse_ipv6(buf: Buffer, start: int, end: int, stats: Statistics,
               verify_udp_checksum: bool = False
               ) -> Union[UdpResult6, Fragment6Result, None]:
    """Parse the IPv6 packet in ``buf[start:end]``: a UDP result, an IPv6 fragment result (see
    the module doc) or None (counted).

    * the 40-byte header: version 6 (``ip_version``), payload length 0 is a jumbogram
      (``ip6_jumbogram``), ``40 + payload length`` within the captured bytes
      (``ip_truncated``); link padding after the payload is ignored;
    * extension headers (hop-by-hop only first, routing, destination options, fragment), at
      most :data:`MAX_EXTENSION_HEADERS`, each within the payload, else ``ip6_header_chain``;
      a routing header with segments left, AH, ESP, no next header or any other upper layer
      than UDP: ``not_for_us``;
    * a fragment header with offset 0 and M clear is an atomic fragment (RFC 6946): parsing
      goes on.  Otherwise the fragment result: a first fragment (offset 0) must hold the rest of
      the header chain and, for UDP, the 8-byte UDP header (RFC 7112; else
      ``ip6_first_fragment``; a first fragment of another protocol is passed on, so that the
      reassembler lets its datagram go); a non-final fragment's data must be a non-empty
      multiple of 8 bytes (``fragment_alignment``).  The fragment header's Next Header of a
      later fragment is never looked at (RFC 8200 4.5: only the first fragment's counts);
    * UDP: ``udp_truncated``, ``udp_length`` as for IPv4; a zero checksum is always dropped
      (``udp_checksum``); a non-zero one is verified only with ``verify_udp_checksum``.
    """
    available = end - start
    if available < 40:
        stats.drop("ip_truncated")
        return None
    w0, payload, nh, src_hi, src_lo, dst_hi, dst_lo = _ipv6.unpack_from(buf, start)
    if w0 >> 28 != 6:
        stats.drop("ip_version")
        return None
    if not payload:
        stats.drop("ip6_jumbogram")
        return None
    if payload > available - 40:
        stats.drop("ip_truncated")
        return None
    src6 = (src_hi << 64) | src_lo
    dst6 = (dst_hi << 64) | dst_lo
    pos = start + 40
    stop = pos + payload
    if nh != IPPROTO_UDP:
        nh, pos, count = _walk_extensions(buf, pos, stop, nh, 0)
        if nh == IPPROTO_FRAGMENT:
            return _fragment6(buf, pos, stop, src6, dst6, count, stats)
        if nh == _OTHER:
            stats.not_for_us += 1
            return None
        if nh < 0:
            stats.drop("ip6_header_chain")
            return None
    return _udp6(buf, pos, stop, src6, dst6, stats, verify_udp_checksum)


def _fragment6(buf: Buffer, pos: int, stop: int, src6: int, dst6: int, count: int,
               stats: Statistics) -> Optional[Fragment6Result]:
    """The (not atomic) fragment header at ``pos``, the payload ending at ``stop``."""
    field = (buf[pos + 2] << 8) | buf[pos + 3]
    next_header = buf[pos]
    data_start = pos + 8
    more = field & 1
    offset = field & 0xFFF8
    if not offset:
        # The first fragment: the rest of the chain, and the UDP header, must be in it.
        nh, udp, _count = _walk_extensions(buf, data_start, stop, next_header, count)
        if (nh == IPPROTO_UDP and stop - udp < 8) or nh == _PAST:
            stats.drop("ip6_first_fragment")
            return None
        if nh == _CHAIN or nh == IPPROTO_FRAGMENT:
            stats.drop("ip6_header_chain")
            return None
    if more and (stop == data_start or (stop - data_start) & 7):
        stats.drop("fragment_alignment")
        return None
    return (FRAGMENT6, src6, dst6, _ident6.unpack_from(buf, pos + 4)[0], offset, bool(more),
            data_start, stop, next_header)


def parse_udp6(segment: Buffer, src6: int, dst6: int, stats: Statistics,
               verify_udp_checksum: bool = False) -> Optional[UdpResult6]:
    """Parse a reassembled UDP segment (header + payload) over IPv6: like :func:`parse_udp`,
    but a zero checksum is always dropped (``udp_checksum``) and the pseudo-header is IPv6's."""
    return _udp6(segment, 0, len(segment), src6, dst6, stats, verify_udp_checksum)


def parse_udp6_segment(segment: Buffer, next_header: int, src6: int, dst6: int,
                       stats: Statistics, verify_udp_checksum: bool = False
                       ) -> Optional[UdpResult6]:
    """Parse a reassembled IPv6 fragmentable part: the extension headers left at its start
    (the first of type ``next_header``, the first fragment's Next Header), then the UDP
    datagram as :func:`parse_udp6` does.  Offsets in the result are into ``segment``.

    Hop-by-hop here, a fragment header that is not atomic, a header running past the end, or
    more than ``MAX_EXTENSION_HEADERS - 1`` headers (the fragment header was one):
    ``ip6_header_chain``; a routing header with segments left or another upper layer than
    UDP: ``not_for_us``.
    """
    pos = 0
    stop = len(segment)
    if next_header != IPPROTO_UDP:
        nh, pos, _count = _walk_extensions(segment, 0, stop, next_header, 1)
        if nh == _OTHER:
            stats.not_for_us += 1
            return None
        if nh != IPPROTO_UDP:
            stats.drop("ip6_header_chain")
            return None
    return _udp6(segment, pos, stop, src6, dst6, stats, verify_udp_checksum)


def udp_header_after_extensions(buf: Buffer, next_header: int) -> int:
    """Where the UDP header starts in ``buf``, the fragmentable part of a first fragment whose
    fragment header's Next Header is ``next_header``: the offset after the extension headers
    (as :func:`parse_udp6_segment` walks them), or -1 when ``buf`` holds no whole 8-byte UDP
    header there (another upper layer, a broken chain, too short)."""
    stop = len(buf)
    nh, pos, _count = _walk_extensions(buf, 0, stop, next_header, 1)
    return pos if nh == IPPROTO_UDP and stop - pos >= 8 else -1


# ---------------------------------------------------------------------------------------------
# Link layers.  make_link_parser(linktype) returns f(buf, start, end, stats) -> the offset of the
# IPv4 header, or -1 (dropped and counted); make_link_parser(linktype, ipv6=True) the offset of
# an IPv4 or IPv6 header, whose version nibble then tells which (see there).
# make_outgoing_test(linktype, own_macs) returns f(buf, start) -> True for frames this host sent
# itself; the receiver asks only for multicast, where "exactly once" depends on it.

class UnsupportedLinkType(ValueError):
    """The capture device uses a link layer the parser does not understand."""


# The IPv6-aware link parsers.  The link layer names the protocol (ethertype, family, raw: the
# version nibble), as the kernel goes by it (ip_rcv drops version != 4, ipv6_rcv version != 6).
# The walker's parsers return the offset of an IPv4 header, or _IPV6_HEADER + the offset of an
# IPv6 header, so that the walker dispatches with one comparison and an IPv4 frame costs what
# it did (make_link_parser's IPv4 fast checks, unchanged); each IP parser then checks the
# version itself.  make_link_parser(linktype, ipv6=True) returns plain offsets instead (see
# there).
#
# Each link layer has one parser factory; ``ipv6=False`` builds make_link_parser's IPv4-only
# parser, to which IPv6 is "not IPv4": its IPv6 marker is one no frame carries (-1, an empty
# set), tested only after the IPv4 one, so an IPv4 frame pays nothing for it.

_IPV6_HEADER = 1 << 32          # larger than any offset into a capture buffer


def _ethernet_parser(ipv6: bool) -> LinkParser:
    ethertype6 = ETHERTYPE_IPV6 if ipv6 else -1

    def parse_ethernet(buf: Buffer, start: int, end: int, stats: Statistics) -> int:
        if end - start >= 14 and buf[start + 12] == 0x08 and buf[start + 13] == 0x00:
            return start + 14                                # untagged IPv4: the common case
        pos = start + 12
        for _ in range(MAX_VLAN_TAGS + 1):                   # 802.1Q / 802.1ad / QinQ tags
            if end - pos < 2:
                stats.drop("link_truncated")
                return -1
            ethertype = (buf[pos] << 8) | buf[pos + 1]
            if ethertype == ETHERTYPE_IPV4:
                return pos + 2
            if ethertype == ethertype6:
                return pos + 2 + _IPV6_HEADER
            if ethertype not in VLAN_ETHERTYPES:
                break
            pos += 4
        stats.drop("link_not_ipv4")
        return -1
    return parse_ethernet


def _null_parser(byte_order: Literal["little", "big"], accept_swapped: bool,
                 ipv6: bool) -> LinkParser:
    # A family written in the other byte order reads as family << 24 whatever ``byte_order``.
    other = AF_INET << 24 if accept_swapped else None
    families6 = frozenset((AF_INET6_BSD + (tuple(f << 24 for f in AF_INET6_BSD)
                                           if accept_swapped else ())) if ipv6 else ())

    def parse_null(buf: Buffer, start: int, end: int, stats: Statistics) -> int:
        if end - start < 4:
            stats.drop("link_truncated")
            return -1
        family = int.from_bytes(buf[start:start + 4], byte_order)
        # DLT_NULL stores the family in the capturing host's byte order; accept the other
        # order's too, for capture files written elsewhere.
        if family == AF_INET or family == other:
            return start + 4
        if family in families6:
            return start + 4 + _IPV6_HEADER
        stats.drop("link_not_ipv4")
        return -1
    return parse_null


def _cooked_parser(length: int, type_at: int, ipv6: bool) -> LinkParser:
    """Linux cooked captures: a ``length``-byte header, the protocol (an ethertype) at
    ``type_at``."""
    def parse_cooked(buf: Buffer, start: int, end: int, stats: Statistics) -> int:
        if end - start < length:
            stats.drop("link_truncated")
            return -1
        at = start + type_at
        if buf[at] == 0x08 and buf[at + 1] == 0x00:
            return start + length
        if ipv6 and buf[at] == 0x86 and buf[at + 1] == 0xDD:
            return start + length + _IPV6_HEADER
        stats.drop("link_not_ipv4")
        return -1
    return parse_cooked


def _raw_parser(ipv6: bool) -> LinkParser:
    version6 = 6 if ipv6 else -1

    def parse_raw(buf: Buffer, start: int, end: int, stats: Statistics) -> int:
        if end - start < 1:
            stats.drop("link_truncated")
            return -1
        version = buf[start] >> 4
        if version == 4:
            return start
        if version == version6:
            return start + _IPV6_HEADER
        stats.drop("link_not_ipv4")
        return -1
    return parse_raw


# ipv6 -> the parsers of the fixed link layers (DLT_NULL's depends on the byte order)
_LINK_PARSERS: Dict[bool, Tuple[LinkParser, LinkParser, LinkParser, LinkParser]] = {
    ipv6: (_ethernet_parser(ipv6), _cooked_parser(16, 14, ipv6), _cooked_parser(20, 0, ipv6),
           _raw_parser(ipv6))
    for ipv6 in (False, True)
}


def _link_parser(linktype: int, ipv6: bool) -> LinkParser:
    """The walker's link parser (``ipv6``: IPv4 offsets, or _IPV6_HEADER + IPv6 offsets) or
    make_link_parser's IPv4-only one."""
    ethernet, sll, sll2, raw = _LINK_PARSERS[ipv6]
    if linktype == _pcap.DLT_EN10MB:
        return ethernet
    if linktype == _pcap.DLT_NULL:
        return _null_parser(sys.byteorder, True, ipv6)
    if linktype == _pcap.DLT_LOOP:
        return _null_parser("big", False, ipv6)      # always network byte order
    if linktype == _pcap.DLT_LINUX_SLL:
        return sll
    if linktype == _pcap.DLT_LINUX_SLL2:
        return sll2
    if linktype in (_pcap.DLT_RAW, _pcap.DLT_RAW_BSD, _pcap.LINKTYPE_RAW):
        return raw
    if linktype == _pcap.DLT_IPV4:
        return _LINK_PARSERS[False][3]               # IPv4 only (DLT_IPV6 is 229)
    raise UnsupportedLinkType(
        "link type %d is not supported (supported: Ethernet, BSD loopback/DLT_NULL, DLT_LOOP, "
        "Linux cooked SLL/SLL2, raw IP)" % linktype)


def _make_link_parser46(linktype: int) -> LinkParser:
    """The walker's link parser: IPv4 offsets, or _IPV6_HEADER + IPv6 offsets."""
    return _link_parser(linktype, True)


def _agreeing(parse_tagged: LinkParser) -> LinkParser:
    """Plain offsets from a walker's link parser, a header whose version contradicts the link
    layer dropped as the named protocol's parser counts it."""
    def parse_link46(buf: Buffer, start: int, end: int, stats: Statistics) -> int:
        ip = parse_tagged(buf, start, end, stats)
        if ip >= _IPV6_HEADER:
            ip -= _IPV6_HEADER
            if ip < end and buf[ip] >> 4 != 6:
                stats.drop("ip_truncated" if end - ip < 40 else "ip_version")
                return -1
        elif 0 <= ip < end and buf[ip] >> 4 == 6:
            stats.drop("ip_truncated" if end - ip < 20 else "ip_version")
            return -1
        return ip
    return parse_link46


def make_link_parser(linktype: int, ipv6: bool = False) -> LinkParser:
    """Return the link-layer parser for a pcap ``linktype`` (``DLT_*``).

    The parser returns the offset of the IPv4 header, or -1 after counting why not
    (``link_truncated``; ``link_not_ipv4`` for another protocol, IPv6 included).

    With ``ipv6=True`` it returns the offset of an IPv4 or IPv6 header: Ethernet type 0x86DD
    (also behind VLAN tags), DLT_NULL families 24, 28 and 30 in either byte order (DLT_LOOP:
    network order), Linux cooked protocol 0x86DD, raw version 6.  The caller dispatches on the
    version nibble (6: :func:`parse_ipv6`, else :func:`parse_ipv4`), which agrees with the link
    layer: a header whose version contradicts it is dropped here, counted as the named
    protocol's parser would count it (``ip_version``, or ``ip_truncated`` when shorter than
    that header).  ``link_not_ipv4`` then means "neither IPv4 nor IPv6".  The batch walker
    decides exactly so.

    Raises :class:`UnsupportedLinkType` for a link type we cannot parse -- at open time, so a
    device we cannot read fails once, clearly, instead of dropping every frame.
    """
    if ipv6:
        return _agreeing(_make_link_parser46(linktype))
    return _link_parser(linktype, False)


def make_outgoing_test(linktype: int, own_macs: Iterable[Buffer] = ()) -> OutgoingTest:
    """Return f(buf, start) -> True when the frame at ``start`` was sent by this host.

    Linux cooked captures say so in their packet type; on Ethernet we compare the source
    address with the adapter's own (``own_macs``, as udpcap does on Windows); other link types
    carry no direction and answer False.
    """
    if linktype == _pcap.DLT_LINUX_SLL:
        return lambda buf, start: buf[start + 1] == PACKET_OUTGOING and buf[start] == 0
    if linktype == _pcap.DLT_LINUX_SLL2:
        return lambda buf, start: buf[start + 10] == PACKET_OUTGOING
    if linktype == _pcap.DLT_EN10MB and own_macs:
        own = frozenset(bytes(mac) for mac in own_macs)
        return lambda buf, start: bytes(buf[start + 6:start + 12]) in own
    return lambda buf, start: False


# ---------------------------------------------------------------------------------------------
# Batches.  A capture batch is a run of records in one buffer, in one of two layouts
# (``_capture.BatchReader.records``):
#   "savefile" -- a 16-byte header ``ts_sec, ts_usec, caplen, len`` (native uint32), then
#                 ``caplen`` bytes, back to back (libpcap's pcap_dump; the POSIX readers);
#   "npf"      -- Npcap's struct bpf_hdr: ``ts_sec, ts_usec`` (two 32-bit longs), ``bh_caplen``,
#                 ``bh_datalen`` (uint32), ``bh_hdrlen`` (uint16: where the frame starts), then
#                 the frame; every record starts Packet_WORDALIGN'ed (4 bytes) from the start
#                 of the buffer (npf Read.c; the Windows batch reader of _npf).
# make_batch_parser(linktype, records) returns
# parse_batch(view, start, end, ports, stats, verify, datagrams), which walks the records in
# view[start:end] once, adds their number to ``stats.frames`` and appends to ``datagrams``, in
# frame order:
#   (src, dst, sport, dport, payload_first, payload_last, frame_start, view) for every complete
#       UDP datagram to one of ``ports`` (a frozenset: a capture shared by several sockets
#       keeps all their ports);
#   (None, fragment_result, None, 0, 0, 0, frame_start, view) for every IPv4 fragment (the
#       caller reassembles them in place, so datagrams complete in order);
#   IPv6 alike: (src6, dst6, sport, dport | PORT6, payload_first, payload_last, frame_start,
#       view) for every complete datagram whose port key ``dport | PORT6`` is in ``ports``, and
#       (None, fragment6_result, None, 0, 0, 0, frame_start, view) for every IPv6 fragment
#       (fragment6_result[0] is FRAGMENT6).  Frames go by what the link layer names (raw: the
#       version nibble); a version contradicting it is the IP parser's ip_version.
# It returns where the walk stopped: ``end``, or the start of a record whose header lies (caplen
# above len or past ``end``, a header shorter than its fields); that record and the rest of the
# batch are dropped and counted once as malformed "record_header".  Everything else that is not
# for us is counted and dropped frame by frame.
#
# The common frame -- a fixed link header, IPv4 without options, not a fragment, UDP to our
# port, correct header checksum -- is decided with one struct unpack and a few integer tests;
# any frame that is not exactly that takes the general path (the link parser, then parse_ipv4
# or parse_ipv6), so both paths accept the same frames and count the same reasons.  Its IPv6
# twin, tried only when the frame is not that IPv4 frame (the IPv4 fast path pays nothing for
# it), takes an IPv6 header followed directly by UDP (to a port key in ``ports``, non-zero
# checksum, no verification) or by a fragment header (not atomic; a first fragment's must name
# UDP), the payload within the captured bytes, with a second unpack; everything else is
# parse_ipv6's.

SAVEFILE_RECORDS = "savefile"
NPF_RECORDS = "npf"

# record layout -> (struct of the header fields after the 8-byte time stamp, fixed header
# length or 0 when the record says it, least header length, record alignment)
_RECORD_LAYOUTS: Dict[str, Tuple[struct.Struct, int, int, int]] = {
    SAVEFILE_RECORDS: (struct.Struct("=II"), 16, 16, 1),
    NPF_RECORDS: (struct.Struct("=IIH"), 0, 18, 4),
}

# linktype -> (marker format, marker offset, accepted IPv4 marker values, IPv6 marker values,
# IP offset); markers are read big-endian
_FIXED_LINK_HEADERS: Dict[int, Tuple[str, int, Tuple[int, ...], Tuple[int, ...], int]] = {
    _pcap.DLT_EN10MB: ("H", 12, (ETHERTYPE_IPV4,), (ETHERTYPE_IPV6,), 14),
    _pcap.DLT_LINUX_SLL: ("H", 14, (ETHERTYPE_IPV4,), (ETHERTYPE_IPV6,), 16),
    _pcap.DLT_LINUX_SLL2: ("H", 0, (ETHERTYPE_IPV4,), (ETHERTYPE_IPV6,), 20),
    # BSD loopback: address family in the capturing host's byte order (Npcap's loopback)
    _pcap.DLT_NULL: ("I", 0, (AF_INET, AF_INET << 24),
                     AF_INET6_BSD + tuple(f << 24 for f in AF_INET6_BSD), 4),
    _pcap.DLT_LOOP: ("I", 0, (AF_INET,), AF_INET6_BSD, 4),
}
# The IPv6 fast path's unpack, at the IP header: version/class/flow, payload length, next
# header, the addresses as 64-bit halves, then the next 8 bytes as a UDP header (or a fragment
# header: next header and reserved, offset/M, identification).
_ipv6_udp = struct.Struct("!IHBxQQQQ4H")


def make_batch_parser(linktype: int, fast_path: bool = True,
                      records: str = SAVEFILE_RECORDS) -> BatchParser:
    """Return the batch walker for a pcap ``linktype`` and record layout (see the comment
    above).

    ``fast_path=False`` sends every frame through the general path; the tests compare both.
    """
    parse_link = _make_link_parser46(linktype)
    ipv6_header = _IPV6_HEADER
    header, fixed_header, least_header, alignment = _RECORD_LAYOUTS[records]
    header_at = header.unpack_from
    npf = fixed_header == 0
    align_mask = ~(alignment - 1)
    fixed = _FIXED_LINK_HEADERS.get(linktype) if fast_path else None
    unpack_fast: Callable[[memoryview, int], Tuple[Any, ...]]
    unpack6 = _ipv6_udp.unpack_from
    if fixed is None:
        unpack_fast = None  # type: ignore[assignment]  # never called: no caplen reaches minimum
        minimum = minimum6 = 1 << 30
        marker_a = marker_b = ip_offset = -1
        markers6: FrozenSet[int] = frozenset()
    else:
        code, marker_at, markers, ipv6_markers, ip_offset = fixed
        unpack_fast = struct.Struct("!%dx%s%dx5I4H" % (
            marker_at, code, ip_offset - marker_at - struct.calcsize(code))).unpack_from
        minimum = ip_offset + 28
        minimum6 = ip_offset + 48
        marker_a, marker_b = markers[0], markers[-1]
        markers6 = frozenset(ipv6_markers)

    def parse_batch(view: memoryview, pos: int, end: int, ports: Ports, stats: Statistics,
                    verify: bool, datagrams: List[BatchEntry]) -> int:
        append = datagrams.append
        walked = 0
        while pos < end:
            if end - pos < least_header:
                stats.drop("record_header")
                break
            if npf:
                caplen, length, hdrlen = header_at(view, pos + 8)
                start = pos + hdrlen
            else:
                caplen, length = header_at(view, pos + 8)
                hdrlen = fixed_header
                start = pos + fixed_header
            stop = start + caplen
            if caplen > length or stop > end or hdrlen < least_header:
                stats.drop("record_header")
                break
            pos = (stop + alignment - 1) & align_mask
            walked += 1
            if caplen >= minimum:
                marker, w0, w1, w2, src, dst, sport, dport, ulen, _ = unpack_fast(view, start)
                if ((marker == marker_a or marker == marker_b) and w0 >> 24 == 0x45
                        and w2 >> 16 & 0xFF == IPPROTO_UDP
                        and not (w0 + w1 + w2 + src + dst) % 0xFFFF):
                    total = w0 & 0xFFFF
                    if 20 <= total <= caplen - ip_offset:
                        ip = start + ip_offset
                        if not w1 & 0x3FFF:
                            if dport in ports and 8 <= ulen <= total - 20 and not verify:
                                append((src, dst, sport, dport, ip + 28, ip + 20 + ulen, start,
                                        view))
                                continue
                        else:
                            append((None, (FRAGMENT, src, dst, w1 >> 16, (w1 & 0x1FFF) << 3,
                                           bool(w1 & 0x2000), ip + 20, ip + total),
                                    None, 0, 0, 0, start, view))
                            continue
                elif marker in markers6 and caplen >= minimum6:
                    ip = start + ip_offset
                    (w0, payload, nh, src_hi, src_lo, dst_hi, dst_lo, sport, dport, ulen,
                     checksum) = unpack6(view, ip)
                    if w0 >> 28 == 6 and payload <= caplen - ip_offset - 40:
                        if nh == IPPROTO_UDP:
                            key = dport | PORT6
                            if (key in ports and 8 <= ulen <= payload and checksum
                                    and not verify):
                                append(((src_hi << 64) | src_lo, (dst_hi << 64) | dst_lo,
                                        sport, key, ip + 48, ip + 40 + ulen, start, view))
                                continue
                        elif nh == IPPROTO_FRAGMENT and payload >= 8:
                            # sport: next header and reserved; dport: offset, M; ulen and
                            # checksum: the identification
                            data = payload - 8
                            if (dport & 0xFFF8 or (dport & 1 and sport >> 8 == IPPROTO_UDP)) \
                                    and (not dport & 1 or (data and not data & 7)):
                                append((None, (FRAGMENT6, (src_hi << 64) | src_lo,
                                               (dst_hi << 64) | dst_lo, (ulen << 16) | checksum,
                                               dport & 0xFFF8, bool(dport & 1), ip + 48,
                                               ip + 40 + payload, sport >> 8),
                                        None, 0, 0, 0, start, view))
                                continue
            # The general path: every other frame, with exact accounting.
            ip = parse_link(view, start, stop, stats)
            if ip < 0:
                continue
            if ip >= ipv6_header:
                parsed6 = parse_ipv6(view, ip - ipv6_header, stop, stats, verify)
                if parsed6 is None:
                    continue
                if parsed6[0] == UDP:
                    key = parsed6[4] | PORT6
                    if key not in ports:
                        stats.not_for_us += 1
                        continue
                    append((parsed6[1], parsed6[2], parsed6[3], key, parsed6[5], parsed6[6],
                            start, view))
                else:
                    append((None, parsed6, None, 0, 0, 0, start, view))
                continue
            parsed = parse_ipv4(view, ip, stop, stats, verify)
            if parsed is None:
                continue
            if parsed[0] == UDP:
                if parsed[4] not in ports:
                    stats.not_for_us += 1
                    continue
                append((parsed[1], parsed[2], parsed[3], parsed[4], parsed[5], parsed[6], start,
                        view))
            else:
                append((None, parsed, None, 0, 0, 0, start, view))
        stats.frames += walked
        # The last record's alignment padding may lie past the batch's end.
        return pos if pos < end else end

    return parse_batch
