"""The packet path: pure functions from a captured frame to a UDP datagram (or a fragment).

Nothing here calls native code or copies payload bytes.  Every function reads a buffer
(``memoryview``/``bytes``) between ``start`` and ``end`` -- the captured bytes, ``caplen``,
never the wire length -- and either returns where things are or returns ``None`` after counting
the reason in :class:`~udpcap_ctypes._stats.Statistics`.  Hostile input never raises.

Results:
  ``(UDP, src, dst, sport, dport, payload_start, payload_end)``
  ``(FRAGMENT, src, dst, ident, offset_bytes, more_fragments, data_start, data_end)``
with ``src``/``dst`` as ints (``int.from_bytes(address, "big")``).
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
# f(buf, start, end, stats) -> offset of the IPv4 header, or -1 (see make_link_parser)
LinkParser = Callable[[Buffer, int, int, Statistics], int]
# f(buf, start) -> True for a frame this host sent (see make_outgoing_test)
OutgoingTest = Callable[[Buffer, int], bool]
# What a batch walker appends (see the comment above make_batch_parser)
BatchEntry = Union[Tuple[int, int, int, int, int, int, int, memoryview],
                   Tuple[None, FragmentResult, None, int, int, int, int, memoryview]]
# The destination ports a batch walker keeps (anything with ``in``: a frozenset).
Ports = Container[int]
# parse_batch(view, start, end, ports, stats, verify, datagrams) -> where the walk stopped
BatchParser = Callable[[memoryview, int, int, Ports, Statistics, bool, List[BatchEntry]], int]

UDP: Final = 1
FRAGMENT: Final = 2

IPPROTO_UDP = 17
ETHERTYPE_IPV4 = 0x0800
VLAN_ETHERTYPES = (0x8100, 0x88A8, 0x9100)
AF_INET = 2
PACKET_OUTGOING = 4           # Linux sll_pkttype of frames this host sent
MAX_VLAN_TAGS = 3

_ipv4_udp = struct.Struct("!5I4H")     # IHL=5 header as 32-bit words + the UDP header
_ipv4_words = struct.Struct("!5I")      # a bare IPv4 header (first 20 bytes)
_udp = struct.Struct("!HHH")


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
# Link layers.  make_link_parser(linktype) returns f(buf, start, end, stats) -> the offset of the
# IPv4 header, or -1 (dropped and counted).  make_outgoing_test(linktype, own_macs) returns
# f(buf, start) -> True for frames this host sent itself; the receiver asks only for multicast,
# where "exactly once" depends on it.

class UnsupportedLinkType(ValueError):
    """The capture device uses a link layer the parser does not understand."""


def _parse_ethernet(buf: Buffer, start: int, end: int, stats: Statistics) -> int:
    if end - start >= 14 and buf[start + 12] == 0x08 and buf[start + 13] == 0x00:
        return start + 14                                    # untagged IPv4: the common case
    pos = start + 12
    for _ in range(MAX_VLAN_TAGS + 1):                       # 802.1Q / 802.1ad / QinQ tags
        if end - pos < 2:
            stats.drop("link_truncated")
            return -1
        ethertype = (buf[pos] << 8) | buf[pos + 1]
        if ethertype == ETHERTYPE_IPV4:
            return pos + 2
        if ethertype not in VLAN_ETHERTYPES:
            break
        pos += 4
    stats.drop("link_not_ipv4")
    return -1


def _null_parser(byte_order: Literal["little", "big"], accept_swapped: bool) -> LinkParser:
    # AF_INET written in the other byte order reads as AF_INET << 24 whatever ``byte_order`` is.
    other = AF_INET << 24 if accept_swapped else None

    def parse_null(buf: Buffer, start: int, end: int, stats: Statistics) -> int:
        if end - start < 4:
            stats.drop("link_truncated")
            return -1
        family = int.from_bytes(buf[start:start + 4], byte_order)
        # DLT_NULL stores the family in the capturing host's byte order; accept the other
        # order's AF_INET too, for capture files written elsewhere.
        if family == AF_INET or family == other:
            return start + 4
        stats.drop("link_not_ipv4")
        return -1
    return parse_null


def _parse_sll(buf: Buffer, start: int, end: int, stats: Statistics) -> int:
    if end - start < 16:
        stats.drop("link_truncated")
        return -1
    if buf[start + 14] != 0x08 or buf[start + 15] != 0x00:
        stats.drop("link_not_ipv4")
        return -1
    return start + 16


def _parse_sll2(buf: Buffer, start: int, end: int, stats: Statistics) -> int:
    if end - start < 20:
        stats.drop("link_truncated")
        return -1
    if buf[start] != 0x08 or buf[start + 1] != 0x00:
        stats.drop("link_not_ipv4")
        return -1
    return start + 20


def _parse_raw(buf: Buffer, start: int, end: int, stats: Statistics) -> int:
    if end - start < 1:
        stats.drop("link_truncated")
        return -1
    if buf[start] >> 4 != 4:
        stats.drop("link_not_ipv4")
        return -1
    return start


def make_link_parser(linktype: int) -> LinkParser:
    """Return the link-layer parser for a pcap ``linktype`` (``DLT_*``).

    Raises :class:`UnsupportedLinkType` for a link type we cannot parse -- at open time, so a
    device we cannot read fails once, clearly, instead of dropping every frame.
    """
    if linktype == _pcap.DLT_EN10MB:
        return _parse_ethernet
    if linktype == _pcap.DLT_NULL:
        return _null_parser(sys.byteorder, True)
    if linktype == _pcap.DLT_LOOP:
        return _null_parser("big", False)          # always network byte order
    if linktype == _pcap.DLT_LINUX_SLL:
        return _parse_sll
    if linktype == _pcap.DLT_LINUX_SLL2:
        return _parse_sll2
    if linktype in (_pcap.DLT_RAW, _pcap.DLT_RAW_BSD, _pcap.LINKTYPE_RAW, _pcap.DLT_IPV4):
        return _parse_raw
    raise UnsupportedLinkType(
        "link type %d is not supported (supported: Ethernet, BSD loopback/DLT_NULL, DLT_LOOP, "
        "Linux cooked SLL/SLL2, raw IPv4)" % linktype)


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
#       caller reassembles them in place, so datagrams complete in order).
# It returns where the walk stopped: ``end``, or the start of a record whose header lies (caplen
# above len or past ``end``, a header shorter than its fields); that record and the rest of the
# batch are dropped and counted once as malformed "record_header".  Everything else that is not
# for us is counted and dropped frame by frame.
#
# The common frame -- a fixed link header, IPv4 without options, not a fragment, UDP to our
# port, correct header checksum -- is decided with one struct unpack and a few integer tests;
# any frame that is not exactly that takes the general path (make_link_parser + parse_ipv4),
# so both paths accept the same frames and count the same reasons.

SAVEFILE_RECORDS = "savefile"
NPF_RECORDS = "npf"

# record layout -> (struct of the header fields after the 8-byte time stamp, fixed header
# length or 0 when the record says it, least header length, record alignment)
_RECORD_LAYOUTS: Dict[str, Tuple[struct.Struct, int, int, int]] = {
    SAVEFILE_RECORDS: (struct.Struct("=II"), 16, 16, 1),
    NPF_RECORDS: (struct.Struct("=IIH"), 0, 18, 4),
}

# linktype -> (marker format, marker offset, accepted marker values, IPv4 offset)
_FIXED_LINK_HEADERS: Dict[int, Tuple[str, int, Tuple[int, ...], int]] = {
    _pcap.DLT_EN10MB: ("H", 12, (ETHERTYPE_IPV4,), 14),
    _pcap.DLT_LINUX_SLL: ("H", 14, (ETHERTYPE_IPV4,), 16),
    _pcap.DLT_LINUX_SLL2: ("H", 0, (ETHERTYPE_IPV4,), 20),
    # BSD loopback: address family in the capturing host's byte order (Npcap's loopback)
    _pcap.DLT_NULL: ("I", 0, (AF_INET, AF_INET << 24), 4),
    _pcap.DLT_LOOP: ("I", 0, (AF_INET,), 4),
}


def make_batch_parser(linktype: int, fast_path: bool = True,
                      records: str = SAVEFILE_RECORDS) -> BatchParser:
    """Return the batch walker for a pcap ``linktype`` and record layout (see the comment
    above).

    ``fast_path=False`` sends every frame through the general path; the tests compare both.
    """
    parse_link = make_link_parser(linktype)
    header, fixed_header, least_header, alignment = _RECORD_LAYOUTS[records]
    header_at = header.unpack_from
    npf = fixed_header == 0
    align_mask = ~(alignment - 1)
    fixed = _FIXED_LINK_HEADERS.get(linktype) if fast_path else None
    unpack_fast: Callable[[memoryview, int], Tuple[Any, ...]]
    if fixed is None:
        unpack_fast = None  # type: ignore[assignment]  # never called: no caplen reaches minimum
        minimum = 1 << 30
        marker_a = marker_b = ip_offset = -1
    else:
        code, marker_at, markers, ip_offset = fixed
        unpack_fast = struct.Struct("!%dx%s%dx5I4H" % (
            marker_at, code, ip_offset - marker_at - struct.calcsize(code))).unpack_from
        minimum = ip_offset + 28
        marker_a, marker_b = markers[0], markers[-1]

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
            # The general path: every other frame, with exact accounting.
            ip = parse_link(view, start, stop, stats)
            if ip < 0:
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
