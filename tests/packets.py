"""Frame-crafting helpers for the packet-path tests (stdlib only, independent of the parser).

Everything here is written from the RFCs / link-layer formats, not from udpcap_ctypes._packet, so
the tests compare the parser with a second implementation:

* :func:`checksum16` -- RFC 1071 ones'-complement checksum with a plain 16-bit loop;
* :func:`ipv4` -- an IPv4 header (+ payload) with a correct checksum, options, any flags, and
  every field overridable to build hostile packets;
* :func:`udp` -- a UDP segment with a correct (or given, or zero) checksum;
* :func:`fragment_ip` -- split a UDP segment into IPv4 fragments;
* IPv6 (RFC 8200): :func:`ipv6` -- a base header (+ payload), every field overridable;
  :func:`udp6` -- a UDP segment with a correct (or given, or zero) checksum over the IPv6
  pseudo-header (:func:`udp6_checksum`, RFC 8200 8.1, with the same 16-bit loop);
  extension headers :func:`hop_by_hop`, :func:`dest_options`, :func:`routing`,
  :func:`fragment_header`, :func:`ext_header` (any type, any Hdr Ext Len), :func:`chain` (a
  list of them linked by their Next Header fields), :func:`ipv6_udp` (an IPv6 UDP datagram
  behind a chain), :func:`fragment_ipv6` -- split a datagram into IPv6 fragments with
  unfragmentable and fragmentable extension headers; :func:`wrap6` -- an IPv6 packet in a
  frame of any link type (Ethernet 0x86DD, DLT_NULL/DLT_LOOP family 24, cooked 0x86DD, raw);
* link layers: :func:`ethernet` (with 802.1Q/802.1ad tags and padding), :func:`sll`,
  :func:`sll2`, :func:`null` (DLT_NULL, either byte order), :func:`loop` (DLT_LOOP),
  :func:`raw`, and :data:`LINK_WRAPPERS` by link type;
* :func:`write_pcap` -- a classic pcap savefile;
* :func:`savefile_batch`, :func:`npf_batch` -- frames laid out as the records of a capture
  batch, in either layout (16-byte savefile headers back to back; Npcap's ``bpf_hdr`` records,
  4-aligned, as the NPF driver writes them);
* :func:`record_frames`, :func:`batch_frames` -- the frames of savefile-format records, as the
  capture's batch readers and ``pending_records`` lay them out.

Addresses are ints or dotted-quad strings (IPv6: ints of 128 bits or text as ``"2001:db8::1"``).
"""

import socket
import struct
import sys

DLT_NULL = 0
DLT_EN10MB = 1
DLT_RAW = 12
DLT_RAW_BSD = 14
LINKTYPE_RAW = 101
DLT_LOOP = 108
DLT_LINUX_SLL = 113
DLT_IPV4 = 228
DLT_LINUX_SLL2 = 276

ETH_IPV4 = 0x0800
ETH_ARP = 0x0806
ETH_IPV6 = 0x86DD
ETH_8021Q = 0x8100
ETH_8021AD = 0x88A8
ETH_QINQ_OLD = 0x9100

PACKET_HOST = 0
PACKET_OUTGOING = 4

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


def addr(value):
    """An IPv4 address (int or dotted quad) as an int."""
    if isinstance(value, int):
        return value
    return struct.unpack("!I", socket.inet_aton(value))[0]


def addr_bytes(value):
    return struct.pack("!I", addr(value))


def checksum16(data):
    """RFC 1071 Internet checksum of *data*: 16-bit words, end-around carry, complement."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ones_sum16(data):
    """RFC 1071 folded ones'-complement sum (not complemented); 0xFFFF for a valid header."""
    return ~checksum16(data) & 0xFFFF


def udp_checksum(src, dst, segment):
    """The UDP checksum of *segment* (its checksum field must be zero), 0 mapped to 0xFFFF."""
    pseudo = addr_bytes(src) + addr_bytes(dst) + struct.pack("!BBH", 0, 17, len(segment))
    value = checksum16(pseudo + bytes(segment))
    return value or 0xFFFF


def _udp_segment(payload, sport, dport, checksum, length, correct_checksum):
    """A UDP segment (see udp and udp6); ``correct_checksum(segment)`` computes a correct
    checksum of the segment whose checksum field is zero."""
    payload = bytes(payload)
    ulen = 8 + len(payload) if length is None else length
    segment = struct.pack("!HHHH", sport, dport, ulen & 0xFFFF, 0) + payload
    if checksum is True:
        value = correct_checksum(segment)
    else:
        value = int(checksum or 0)
    return segment[:6] + struct.pack("!H", value) + segment[8:]


def udp(payload, sport=40000, dport=5000, src=None, dst=None, checksum=True, length=None):
    """A UDP segment.  ``checksum``: True = correct (needs src/dst), False/0 = none, int = that.

    ``length`` overrides the UDP length field (the checksum is computed over the real bytes with
    that field, so only the length lies).
    """
    return _udp_segment(payload, sport, dport, checksum, length,
                        lambda segment: udp_checksum(src, dst, segment))


def ipv4(payload, src="198.18.0.1", dst="198.18.0.2", proto=17, ident=0x1234, ttl=64,
         offset_bytes=0, mf=False, df=False, options=b"", tos=0, version=4, ihl=None,
         total_length=None, checksum=None, flags_raw=None):
    """An IPv4 packet.  The checksum is correct unless ``checksum`` gives one.

    ``options`` are padded with zero (EOL) bytes to a multiple of 4.  ``ihl`` (in 32-bit words)
    and ``total_length`` override the fields after the real sizes are laid out, and the checksum
    is computed over the header *as written*, so only the overridden field lies.
    """
    options = bytes(options)
    if len(options) % 4:
        options += b"\0" * (4 - len(options) % 4)
    header_len = 20 + len(options)
    if ihl is None:
        ihl = header_len // 4
    if total_length is None:
        total_length = header_len + len(payload)
    if flags_raw is None:
        if offset_bytes % 8:
            raise ValueError("fragment offset must be a multiple of 8")
        flags_raw = (0x4000 if df else 0) | (0x2000 if mf else 0) | (offset_bytes >> 3)
    header = bytearray(struct.pack(
        "!BBHHHBBH4s4s", ((version & 0xF) << 4) | (ihl & 0xF), tos, total_length & 0xFFFF,
        ident & 0xFFFF, flags_raw & 0xFFFF, ttl, proto, 0, addr_bytes(src), addr_bytes(dst)))
    header += options
    value = checksum16(header) if checksum is None else checksum
    struct.pack_into("!H", header, 10, value)
    return bytes(header) + bytes(payload)


def fragment_ip(segment, src, dst, ident, size=1480, proto=17, options=b""):
    """IPv4 fragments carrying *segment* (a whole UDP segment), *size* payload bytes each.

    Returns ``[(offset_bytes, more_fragments, packet)]`` in order.
    """
    if size % 8:
        raise ValueError("fragment size must be a multiple of 8")
    out = []
    for offset in range(0, len(segment), size):
        chunk = segment[offset:offset + size]
        more = offset + size < len(segment)
        out.append((offset, more, ipv4(chunk, src, dst, proto=proto, ident=ident,
                                       offset_bytes=offset, mf=more, options=options)))
    return out


# -- IPv6 (RFC 8200) --------------------------------------------------------------------------

# Next Header values (IANA protocol numbers)
NH_HOPOPTS = 0
NH_TCP = 6
NH_UDP = 17
NH_ROUTING = 43
NH_FRAGMENT = 44
NH_ESP = 50
NH_AH = 51
NH_ICMPV6 = 58
NH_NONE = 59
NH_DSTOPTS = 60

# DLT_NULL/DLT_LOOP address family values for IPv6: NetBSD/OpenBSD/BSD/OS and Npcap (24),
# FreeBSD (28), Darwin (30) -- libpcap gencode.c BSD_AFNUM_INET6_*, Npcap DLTNULLTYPE_IPV6.
BSD_AF_INET6 = (24, 28, 30)

SRC6 = "2001:db8::1"
DST6 = "2001:db8::2"


def addr6(value):
    """An IPv6 address (int or text) as a 128-bit int."""
    if isinstance(value, int):
        return value
    return int.from_bytes(socket.inet_pton(socket.AF_INET6, value), "big")


def addr6_bytes(value):
    return addr6(value).to_bytes(16, "big")


def udp6_checksum(src, dst, segment):
    """The UDP checksum of *segment* (checksum field zero) over IPv6 (RFC 8200 8.1): the
    pseudo-header is source, destination, the 32-bit upper-layer packet length, three zero
    bytes and next header 17; a computed 0 is sent as 0xFFFF."""
    pseudo = (addr6_bytes(src) + addr6_bytes(dst)
              + struct.pack("!I3xB", len(segment), 17))
    value = checksum16(pseudo + bytes(segment))
    return value or 0xFFFF


def udp6(payload, sport=40000, dport=5000, src=SRC6, dst=DST6, checksum=True, length=None):
    """A UDP segment for IPv6.  ``checksum``: True = correct, False/0 = zero, int = that value.

    ``length`` overrides the UDP length field; the checksum then covers the real bytes with that
    field and a pseudo-header length of ``len(segment)``, so only the field lies.
    """
    return _udp_segment(payload, sport, dport, checksum, length,
                        lambda segment: udp6_checksum(src, dst, segment))


def ipv6(payload, src=SRC6, dst=DST6, next_header=NH_UDP, payload_length=None, version=6,
         traffic_class=0, flow=0, hop_limit=64):
    """An IPv6 packet: the 40-byte header (RFC 8200 3) then *payload* (extension headers and
    the upper layer).  ``payload_length`` overrides the field."""
    if payload_length is None:
        payload_length = len(payload)
    word = ((version & 0xF) << 28) | ((traffic_class & 0xFF) << 20) | (flow & 0xFFFFF)
    return struct.pack("!IHBB16s16s", word, payload_length & 0xFFFF, next_header & 0xFF,
                       hop_limit, addr6_bytes(src), addr6_bytes(dst)) + bytes(payload)


def ext_header(next_header, body=b"", hdr_ext_len=None):
    """A generic extension header (RFC 8200 4: Next Header, Hdr Ext Len in 8-octet units not
    counting the first 8, then the body); *body* (the bytes after the first two) is padded with
    zeros to a multiple of 8 in all.  ``hdr_ext_len`` overrides the field (so it can lie)."""
    body = bytes(body)
    size = 2 + len(body)
    if size < 8 or size % 8:
        body += b"\0" * ((-size % 8) if size >= 8 else 8 - size)
    if hdr_ext_len is None:
        hdr_ext_len = (2 + len(body)) // 8 - 1
    return struct.pack("!BB", next_header, hdr_ext_len & 0xFF) + body


def _options(options, size):
    """TLV options padded with Pad1/PadN (RFC 8200 4.2) so the header is *size* bytes (or the
    least multiple of 8 that holds them)."""
    options = bytes(options)
    if size is None:
        size = max(8, -(-(2 + len(options)) // 8) * 8)
    pad = size - 2 - len(options)
    if pad < 0 or size % 8:
        raise ValueError("options do not fit in %d bytes" % size)
    while pad:
        if pad == 1:
            options += b"\0"                                   # Pad1
            break
        chunk = min(pad, 257) if pad - min(pad, 257) != 1 else 256
        options += bytes([1, chunk - 2]) + b"\0" * (chunk - 2)   # PadN
        pad -= chunk
    return options


def hop_by_hop(next_header, options=b"", size=None):
    """A Hop-by-Hop Options header (type 0) of *size* bytes (a multiple of 8)."""
    return ext_header(next_header, _options(options, size))


def dest_options(next_header, options=b"", size=None):
    """A Destination Options header (type 60) of *size* bytes (a multiple of 8)."""
    return ext_header(next_header, _options(options, size))


def routing(next_header, segments_left=0, routing_type=4, data=None, size=None):
    """A Routing header (type 43, RFC 8200 4.4): Routing Type, Segments Left, then
    type-specific data (default: 4 reserved bytes and ``(size - 8) // 16`` addresses)."""
    size = 24 if size is None else size
    if data is None:
        data = bytes(4) + bytes(range(size - 8))
    return ext_header(next_header, struct.pack("!BB", routing_type, segments_left) + data)


def fragment_header(next_header, offset_bytes=0, more=False, ident=0x12345678, reserved=0,
                    res_bits=0):
    """A Fragment header (type 44, RFC 8200 4.5): Next Header, Reserved, Fragment Offset (13
    bits, 8-octet units), Res (2 bits), M, Identification (32 bits)."""
    if offset_bytes % 8:
        raise ValueError("fragment offset must be a multiple of 8")
    field = ((offset_bytes >> 3) << 3) | ((res_bits & 3) << 1) | (1 if more else 0)
    return struct.pack("!BBHI", next_header, reserved, field & 0xFFFF, ident & 0xFFFFFFFF)


# kind -> (Next Header value, builder(next_header, **kw))
EXTENSIONS = {
    "hop": (NH_HOPOPTS, hop_by_hop),
    "dst": (NH_DSTOPTS, dest_options),
    "rt": (NH_ROUTING, routing),
    "atomic": (NH_FRAGMENT, lambda nh, **kw: fragment_header(nh, 0, False, **kw)),
    "frag": (NH_FRAGMENT, fragment_header),
}


def chain(headers, upper=NH_UDP):
    """Extension headers linked in order: *headers* are kinds of :data:`EXTENSIONS` or
    ``(kind, kwargs)`` / ``(next_header_value, bytes_builder)`` pairs.  Returns ``(first next
    header, bytes)``; the last header names *upper*."""
    specs = []
    for item in headers:
        kind, kwargs = (item, {}) if isinstance(item, str) else item
        if isinstance(kind, str):
            value, build = EXTENSIONS[kind]
            specs.append((value, lambda nh, b=build, k=kwargs: b(nh, **k)))
        else:
            specs.append((kind, kwargs))          # (value, callable(next_header) -> bytes)
    out = b""
    following = upper
    for value, build in reversed(specs):
        out = build(following) + out
        following = value
    return following, out


def ipv6_udp(payload=b"hello", sport=40000, dport=5000, src=SRC6, dst=DST6, headers=(),
             udp_checksum=True, length=None, **ip):
    """An IPv6 packet carrying a UDP datagram behind the extension headers *headers*."""
    first, ext = chain(headers)
    segment = udp6(payload, sport, dport, src, dst, checksum=udp_checksum, length=length)
    return ipv6(ext + segment, src, dst, next_header=first, **ip)


def fragment_ipv6(segment, src=SRC6, dst=DST6, ident=0x12345678, size=1232, unfragmentable=(),
                  fragmentable=(), upper=NH_UDP):
    """IPv6 fragments (RFC 8200 4.5) of *segment* (the upper-layer packet, e.g. a UDP segment).

    The original packet's unfragmentable part is the base header plus *unfragmentable*
    extension headers (kinds as for :func:`chain`, hop-by-hop and routing); its fragmentable
    part the *fragmentable* extension headers (destination options) then *segment*.  Each
    fragment carries the unfragmentable part, a Fragment header whose Next Header is the first
    header of the fragmentable part, and *size* bytes of it (a multiple of 8; the last may be
    shorter).  Returns ``[(offset_bytes, more_fragments, packet)]``.
    """
    if size % 8 or size <= 0:
        raise ValueError("fragment size must be a positive multiple of 8")
    first, ext = chain(fragmentable, upper)
    body = ext + bytes(segment)
    out = []
    for offset in range(0, len(body), size):
        more = offset + size < len(body)
        head_nh, head = chain(list(unfragmentable) + [
            (NH_FRAGMENT, lambda nh, o=offset, m=more: fragment_header(nh, o, m, ident))], first)
        out.append((offset, more, ipv6(head + body[offset:offset + size], src, dst,
                                       next_header=head_nh)))
    return out


# -- link layers -------------------------------------------------------------------------------

def ethernet(packet, src_mac=MAC_A, dst_mac=MAC_B, vlans=(), ethertype=ETH_IPV4, pad_to=60,
             pad_byte=0xA5):
    """An Ethernet II frame.  ``vlans``: outer first, ``(tpid, vid)`` pairs or bare VIDs (802.1Q).

    Padded to ``pad_to`` bytes (60 = minimum frame without FCS) with ``pad_byte``, as a NIC would.
    """
    frame = bytearray(dst_mac + src_mac)
    for tag in vlans:
        tpid, vid = tag if isinstance(tag, tuple) else (ETH_8021Q, tag)
        frame += struct.pack("!HH", tpid, vid & 0x0FFF)
    frame += struct.pack("!H", ethertype) + bytes(packet)
    if len(frame) < pad_to:
        frame += bytes([pad_byte]) * (pad_to - len(frame))
    return bytes(frame)


def sll(packet, pkttype=PACKET_HOST, protocol=ETH_IPV4, hatype=1, lladdr=MAC_A):
    """A Linux cooked (DLT_LINUX_SLL) frame: 16-byte header."""
    address = (bytes(lladdr) + b"\0" * 8)[:8]
    return struct.pack("!HHH8sH", pkttype, hatype, len(lladdr), address, protocol) + bytes(packet)


def sll2(packet, pkttype=PACKET_HOST, protocol=ETH_IPV4, ifindex=2, hatype=1, lladdr=MAC_A):
    """A Linux cooked v2 (DLT_LINUX_SLL2) frame: 20-byte header."""
    address = (bytes(lladdr) + b"\0" * 8)[:8]
    return (struct.pack("!HHIHBB8s", protocol, 0, ifindex, hatype, pkttype, len(lladdr), address)
            + bytes(packet))


def null(packet, family=socket.AF_INET, byteorder=sys.byteorder):
    """A DLT_NULL frame: 4-byte address family in *byteorder* (the capturing host's)."""
    return int(family).to_bytes(4, byteorder) + bytes(packet)


def loop(packet, family=socket.AF_INET):
    """A DLT_LOOP frame: like DLT_NULL, family always big-endian."""
    return int(family).to_bytes(4, "big") + bytes(packet)


def raw(packet):
    return bytes(packet)


# link type -> (wrapper(packet) for an ordinary IPv4 frame, link header length)
LINK_WRAPPERS = {
    DLT_EN10MB: (ethernet, 14),
    DLT_LINUX_SLL: (sll, 16),
    DLT_LINUX_SLL2: (sll2, 20),
    DLT_NULL: (null, 4),
    DLT_LOOP: (loop, 4),
    DLT_RAW: (raw, 0),
    DLT_RAW_BSD: (raw, 0),
    LINKTYPE_RAW: (raw, 0),
    DLT_IPV4: (raw, 0),
}


def wrap(linktype, packet, **kwargs):
    """*packet* in an ordinary frame of *linktype*."""
    return LINK_WRAPPERS[linktype][0](packet, **kwargs)


# link type -> wrapper(packet) for an ordinary IPv6 frame (DLT_NULL: Npcap's 24, host order;
# DLT_LOOP: 24 in network order, as OpenBSD writes it); DLT_IPV4 carries no IPv6
LINK_WRAPPERS6 = {
    DLT_EN10MB: lambda packet, **kw: ethernet(packet, ethertype=ETH_IPV6, **kw),
    DLT_LINUX_SLL: lambda packet, **kw: sll(packet, protocol=ETH_IPV6, **kw),
    DLT_LINUX_SLL2: lambda packet, **kw: sll2(packet, protocol=ETH_IPV6, **kw),
    DLT_NULL: lambda packet, **kw: null(packet, **dict({"family": 24}, **kw)),
    DLT_LOOP: lambda packet, **kw: loop(packet, **dict({"family": 24}, **kw)),
    DLT_RAW: raw,
    DLT_RAW_BSD: raw,
    LINKTYPE_RAW: raw,
}


def wrap6(linktype, packet, **kwargs):
    """IPv6 *packet* in an ordinary frame of *linktype*."""
    return LINK_WRAPPERS6[linktype](packet, **kwargs)


# -- savefiles ---------------------------------------------------------------------------------

def pcap_bytes(frames, linktype=DLT_EN10MB, snaplen=65535, byteorder="<", nanosecond=False):
    """A classic pcap savefile holding *frames* (bytes, or ``(bytes, wire_length)``)."""
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    out = [struct.pack(byteorder + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for i, frame in enumerate(frames):
        if isinstance(frame, tuple):
            frame, wire = frame
        else:
            wire = len(frame)
        caplen = min(len(frame), snaplen)
        out.append(struct.pack(byteorder + "IIII", 1700000000 + i // 1000, (i % 1000) * 1000,
                               caplen, wire))
        out.append(bytes(frame[:caplen]))
    return b"".join(out)


def write_pcap(path, frames, **kwargs):
    with open(path, "wb") as fh:
        fh.write(pcap_bytes(frames, **kwargs))
    return path


def read_pcap(path):
    """``(linktype, [frame bytes])`` of a classic pcap savefile, parsed with struct (either order).

    Used to cross-check what libpcap hands out and to read files tcpdump wrote.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    magic_le = struct.unpack_from("<I", data, 0)[0]
    if magic_le in (0xA1B2C3D4, 0xA1B23C4D):
        order = "<"
    elif struct.unpack_from(">I", data, 0)[0] in (0xA1B2C3D4, 0xA1B23C4D):
        order = ">"
    else:
        raise ValueError("%s is not a classic pcap savefile" % path)
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0x0FFFFFFF
    frames = []
    pos = 24
    while pos + 16 <= len(data):
        caplen = struct.unpack_from(order + "I", data, pos + 8)[0]
        frames.append(data[pos + 16:pos + 16 + caplen])
        pos += 16 + caplen
    return linktype, frames


# -- capture batches ---------------------------------------------------------------------------

SAVEFILE_RECORD = struct.Struct("=IIII")     # ts_sec, ts_usec, caplen, len (native)
# Npcap's struct bpf_hdr (packetWin7/npf/npf/win_bpf.h): struct timeval bh_tstamp (two 32-bit
# LONGs on Windows), bpf_u_int32 bh_caplen, bh_datalen, u_short bh_hdrlen; sizeof 20 (2 bytes
# of tail padding).
NPF_HEADER = struct.Struct("=iiIIH")
NPF_HDRLEN = 20
NPF_PAD_BYTE = 0xEE


def _snapped(frames, caplens):
    """``(captured bytes, wire length)`` of each frame; *caplens* cut the captured bytes."""
    if caplens is None:
        return [(bytes(frame), len(frame)) for frame in frames]
    if len(caplens) != len(frames):
        raise ValueError("one caplen per frame")
    return [(bytes(frame[:caplen]), len(frame)) for frame, caplen in zip(frames, caplens)]


def savefile_batch(frames, caplens=None):
    """*frames* as savefile records back to back (what ``pcap_dump`` writes): a 16-byte native
    header ``ts_sec, ts_usec, caplen, len`` then the captured bytes.  ``caplens``: how many
    bytes of each frame were captured (the snapshot length; default all); ``len`` is always the
    frame's whole length."""
    out = bytearray()
    for i, (data, wire) in enumerate(_snapped(frames, caplens)):
        out += SAVEFILE_RECORD.pack(1700000000 + i, i, len(data), wire) + data
    return out


def npf_batch(frames, caplens=None, pad_byte=NPF_PAD_BYTE):
    """*frames* as the records of one Packet.dll read buffer, laid out exactly as Npcap's
    ``NPF_Read`` (nmap/npcap packetWin7/npf/npf/Read.c) writes them from the buffer's start::

        header = (struct bpf_hdr *) (packp + copied);
        header->bh_tstamp = ...;  header->bh_caplen = 0;
        header->bh_datalen = pCapData->pNBCopy->ulPacketSize;
        header->bh_hdrlen = sizeof(struct bpf_hdr);
        copied += sizeof(struct bpf_hdr);
        ... copy plen bytes to packp + copied ...;  header->bh_caplen += ulCopied;
        copied += ulCopied;
        copied = Packet_WORDALIGN(copied);
        ...
        Irp->IoStatus.Information = copied;

    (older releases: ``copied += Packet_WORDALIGN(ulCopied)``, the same layout since the header
    is 20 bytes).  So every record starts 4-aligned from the buffer's start and the byte count
    the read returns -- ``len()`` of the result -- includes the last record's padding.

    The bytes the driver never writes (the 2 bytes of ``struct bpf_hdr`` tail padding and the
    alignment padding after each frame) are *pad_byte*, non-zero garbage by default, so that
    nothing can depend on them being zero.  ``caplens`` as for :func:`savefile_batch`
    (``bh_caplen`` the bytes copied, ``bh_datalen`` the whole frame).
    """
    out = bytearray()
    for i, (data, wire) in enumerate(_snapped(frames, caplens)):
        out += NPF_HEADER.pack(1700000000 + i, i, len(data), wire, NPF_HDRLEN)
        out += bytes([pad_byte]) * (NPF_HDRLEN - NPF_HEADER.size) + data
        out += bytes([pad_byte]) * (-len(out) % 4)         # Packet_WORDALIGN(copied)
    return out


_RECORD_CAPLEN = struct.Struct("=I")


def record_spans(buffer, start, end, records="savefile"):
    """``[(first, last)]`` in *buffer* of every frame of the records in ``buffer[start:end]``,
    in either layout of the capture's batch readers (``_packet.SAVEFILE_RECORDS``: 16-byte
    headers back to back; ``_packet.NPF_RECORDS``: Npcap's bpf_hdr, ``bh_hdrlen`` then the
    frame, records Packet_WORDALIGN'ed).  Written independently of the package's walker."""
    spans, pos = [], start
    while pos < end:
        caplen = _RECORD_CAPLEN.unpack_from(buffer, pos + 8)[0]
        if records == "npf":
            first = pos + struct.unpack_from("=H", buffer, pos + 16)[0]
            pos = (first + caplen + 3) // 4 * 4
        else:
            first = pos + 16
            pos = first + caplen
        spans.append((first, first + caplen))
    return spans


def record_frames(records, end, layout="savefile"):
    """The frames (bytes, caplen each) of the records in ``records[:end]`` (what
    ``pending_records`` returns)."""
    return [bytes(records[a:b]) for a, b in record_spans(records, 0, end, layout)]


def batch_frames(reader):
    """``[(start, end)]`` in ``reader.view`` of every frame of one ``reader.refill()`` (the
    contract of the capture's batch readers)."""
    end = reader.refill()
    if not end:
        return []           # no batch (start is stale)
    return record_spans(reader.view, reader.start, end, reader.records)
