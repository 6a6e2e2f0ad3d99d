"""Helpers shared by the tools (send, recv, the bench modules, bench_replay, bench_packet_path;
stdlib only).

* the datagram header the sender embeds and the receivers read back,
* the clock used for one-way latency,
* sequence and latency bookkeeping,
* opening a receiver (``UdpcapSocket`` or a plain ``socket.socket``) the same way,
* addresses: ``HOST:PORT`` and ``[IPV6]:PORT`` (link-local with ``%scope``), the family of a
  host, sockaddrs, multicast checks,
* a writer for classic pcap savefiles (LINKTYPE_RAW with synthesized IPv4/UDP or IPv6/UDP
  headers),
* what the namespace benchmarks (bench_sockets, bench_readers) share: their namespaces' base,
  their parent's base, the worker's reply, options and tables.

The datagram header (network byte order, 24 bytes)::

    offset 0   4 bytes  magic b"UCT1"
    offset 4   u64      sequence number, starting at 0
    offset 12  u64      send time, nanoseconds of the clock returned by :func:`clock_name`
    offset 20  u32      total datagram length (the --size of the sender)

followed by padding up to the datagram size.  The send time is CLOCK_MONOTONIC read with
``time.clock_gettime_ns`` where the platform has it: on Linux that clock is machine-wide (also
across network namespaces), so sender and receiver processes on the *same host* can compute a
one-way latency.  Elsewhere ``time.monotonic_ns`` is used (also machine-wide on macOS and
Windows).  Latencies between two different hosts are meaningless and are not computed.
"""

import argparse
import errno
import functools
import json
import os
import socket
import struct
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MAGIC = b"UCT1"
HEADER = struct.Struct("!4sQQI")
HEADER_SIZE = HEADER.size          # 24
MAX_UDP_PAYLOAD = 65507            # 65535 - 20 (IPv4) - 8 (UDP)
MAX_UDP_PAYLOAD6 = 65527           # 65535 (IPv6 payload length, no jumbograms) - 8 (UDP)
SEQ_TIME = struct.Struct("!QQ")    # sequence number and send time, at offset 4 of the header
SEQ_TIME_OFFSET = 4
END_SEQ = (1 << 64) - 1            # sequence number of the end markers (send.py --end-marker)


def ensure_package_importable():
    """Put the checkout's root on sys.path when udpcap_ctypes is not installed."""
    try:
        import udpcap_ctypes  # noqa: F401
    except ImportError:
        if REPO_ROOT not in sys.path:
            sys.path.insert(0, REPO_ROOT)


# --------------------------------------------------------------------------- clock

if hasattr(time, "clock_gettime_ns") and hasattr(time, "CLOCK_MONOTONIC"):
    _CLOCK_ID = time.CLOCK_MONOTONIC

    # a partial is called without a Python frame: the sender stamps every datagram with it
    monotonic_ns = functools.partial(time.clock_gettime_ns, _CLOCK_ID)
    monotonic_ns.__doc__ = "Machine-wide monotonic nanoseconds (CLOCK_MONOTONIC)."

    def clock_name():
        return "CLOCK_MONOTONIC"
else:  # Windows
    monotonic_ns = time.monotonic_ns

    def clock_name():
        return "time.monotonic_ns"


# --------------------------------------------------------------------------- header

def make_payload(size, family=socket.AF_INET):
    """A reusable bytearray of *size* bytes with the magic in place and a fixed pad pattern
    (at most the UDP maximum of *family*: 65507 bytes over IPv4, 65527 over IPv6)."""
    if size < HEADER_SIZE:
        raise ValueError("datagram size %d is smaller than the %d-byte header; use --size >= %d"
                         % (size, HEADER_SIZE, HEADER_SIZE))
    ipv6 = family == socket.AF_INET6
    maximum = MAX_UDP_PAYLOAD6 if ipv6 else MAX_UDP_PAYLOAD
    if size > maximum:
        raise ValueError("datagram size %d exceeds the %s UDP maximum of %d bytes"
                         % (size, "IPv6" if ipv6 else "IPv4", maximum))
    buf = bytearray(size)
    pad = bytes(range(256))
    for off in range(HEADER_SIZE, size, 256):
        chunk = pad[:size - off]
        buf[off:off + len(chunk)] = chunk
    HEADER.pack_into(buf, 0, MAGIC, 0, 0, size)
    return buf


def stamp(buf, seq):
    """Write sequence number and the current send time into *buf* (from :func:`make_payload`)."""
    HEADER.pack_into(buf, 0, MAGIC, seq, monotonic_ns(), len(buf))


def parse_header(data, length=None):
    """``(seq, send_ns)`` of a datagram carrying our header, else None."""
    if length is None:
        length = len(data)
    if length < HEADER_SIZE:
        return None
    magic, seq, send_ns, _size = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        return None
    return seq, send_ns


# --------------------------------------------------------------------------- bookkeeping

class SequenceTracker:
    """Counts gaps, reorders and duplicates of the sequence numbers seen.

    ``lost`` is the number of sequence numbers below the highest seen that never arrived
    (a late arrival of one of them counts as a reorder and removes it from ``lost``).
    Memory is bounded: at most *window* missing numbers are remembered.
    """

    def __init__(self, window=1 << 20):
        self.highest = -1
        self.unique = 0
        self.gaps = 0          # number of times a jump forward skipped numbers
        self.reorders = 0
        self.duplicates = 0
        self.missing = set()
        self.window = window
        self._forgotten = 0    # missing numbers dropped from the set to bound memory

    def add(self, seq):
        highest = self.highest
        if seq == highest + 1:
            self.highest = seq
            self.unique += 1
        elif seq > highest:
            self.gaps += 1
            if seq - highest - 1 <= self.window:
                self.missing.update(range(highest + 1, seq))
            else:
                self._forgotten += seq - highest - 1
            self.highest = seq
            self.unique += 1
            if len(self.missing) > self.window:
                floor = seq - self.window
                old = [s for s in self.missing if s < floor]
                self.missing.difference_update(old)
                self._forgotten += len(old)
        elif seq in self.missing:
            self.missing.discard(seq)
            self.reorders += 1
            self.unique += 1
        else:
            self.duplicates += 1

    @property
    def lost(self):
        return len(self.missing) + self._forgotten


def percentile(sorted_values, fraction):
    """Nearest-rank percentile of an ascending list (None when empty): the package's own, so
    that the tools and ``check`` report the same p50/p99 for the same samples."""
    ensure_package_importable()
    from udpcap_ctypes._stats import percentile as nearest_rank
    return nearest_rank(sorted_values, fraction)


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    if len(values) % 2:
        return values[mid]
    return (values[mid - 1] + values[mid]) / 2.0


def parse_hostport(text, default_host="0.0.0.0"):
    """``"host:port"`` / ``"[ipv6]:port"`` / ``":port"`` / ``"port"`` -> ``(host, port)``;
    raises ValueError.

    An IPv6 address goes in brackets (``[::1]:14000``, ``[fe80::1%eth0]:14000`` with the
    scope of a link-local address); the host comes back without them.
    """
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("%r: no ']' after the IPv6 address ([HOST]:PORT)" % text)
        host, rest = text[1:end], text[end + 1:]
        if not host:
            raise ValueError("%r: no address between the brackets ([HOST]:PORT)" % text)
        if not rest.startswith(":"):
            raise ValueError("%r is not [HOST]:PORT (a port after the brackets)" % text)
        port = rest[1:]
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = default_host, text
        if not host:
            host = default_host
        elif ":" in host:
            raise ValueError("%r: an IPv6 address goes in brackets, [HOST]:PORT" % text)
    try:
        port = int(port)
    except ValueError:
        raise ValueError("%r is not HOST:PORT (port must be a number)" % text) from None
    if not 0 <= port <= 65535:
        raise ValueError("port %d in %r is out of range 0..65535" % (port, text))
    return host, port


def family_of(host):
    """``socket.AF_INET6`` for an IPv6 host (it has a colon), else ``socket.AF_INET``."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def format_hostport(host, port):
    """``host:port``, ``[host]:port`` for IPv6."""
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


def split_scope(host):
    """``"fe80::1%eth0"`` -> ``("fe80::1", "eth0")``; no scope: ``(host, None)``."""
    address, sep, scope = host.partition("%")
    return address, (scope if sep else None)


def sockaddr(host, port):
    """The address *host*, *port* as a socket of its family takes it: ``(host, port)`` for
    IPv4; for IPv6 ``(address, port, 0, scope_id)``, the scope of ``%name`` or ``%index``
    resolved.  OSError for a malformed address (names are not looked up)."""
    if family_of(host) == socket.AF_INET:
        return host, port
    if not host.split("%", 1)[0]:
        raise OSError("%r is not an IPv6 address" % host)
    found = socket.getaddrinfo(host, port, socket.AF_INET6, socket.SOCK_DGRAM, 0,
                               socket.AI_NUMERICHOST)
    return found[0][4]


def interface_index(text):
    """An IPv6 interface given as a name, an index or a scoped address (``fe80::1%eth0``):
    its index.  OSError when there is no such interface."""
    text = str(text)
    if "%" in text:
        text = split_scope(text)[1]
    if text.isdigit():
        return int(text)
    try:
        return socket.if_nametoindex(text)
    except OSError:
        raise OSError("no interface is called %r" % text) from None


def is_multicast(host):
    """224.0.0.0/4, or for IPv6 ff00::/8."""
    if ":" in host:
        try:
            return socket.inet_pton(socket.AF_INET6, split_scope(host)[0])[0] == 0xFF
        except OSError:
            return False
    try:
        return 224 <= int(host.split(".")[0]) <= 239
    except ValueError:
        return False


def pin_to_cpu(cpu):
    """Pin this process to one CPU where the OS allows it; returns True on success."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return False
    # No pre-check against sched_getaffinity(0): that is the *inherited* mask (a child of a
    # process pinned to CPU 0 starts with {0}), not the CPUs this process may use; the kernel
    # refuses (EINVAL) a CPU outside the cpuset, which is the real limit.
    try:
        os.sched_setaffinity(0, {cpu})
        return True
    except OSError:
        return False


def is_root():
    return hasattr(os, "geteuid") and os.geteuid() == 0


# --------------------------------------------------------------------------- receivers

def import_udpcap_socket():
    """The ``UdpcapSocket`` class, or raise ImportError saying why it is not available."""
    ensure_package_importable()
    import udpcap_ctypes
    try:
        cls = udpcap_ctypes.UdpcapSocket
    except (AttributeError, ImportError) as exc:
        try:
            from udpcap_ctypes.udpcap_socket import UdpcapSocket as cls
        except ImportError:
            raise ImportError("udpcap_ctypes.UdpcapSocket is not available in this checkout "
                              "(%s)" % exc) from exc
    return cls


def set_socket_rcvbuf(sock, size):
    """SO_RCVBUF of a plain socket; as root SO_RCVBUFFORCE, which ignores net.core.rmem_max."""
    force = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform.startswith("linux") else None)
    if force is not None and is_root():
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
            return
        except OSError:
            pass
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def open_receiver(use_socket, bind, groups=(), loopback=True, rcvbuf=None, timeout=None,
                  options=None):
    """Open and bind a receiver.

    *use_socket* True gives a plain ``socket.socket(AF_INET, SOCK_DGRAM)``; False an
    ``udpcap_ctypes.UdpcapSocket``.  Both are configured the same way: receive buffer, multicast
    loopback, bind, group memberships, timeout.  *options* are keyword arguments of the
    ``UdpcapSocket`` constructor.

    An IPv6 bind address (``"::"``, ``"::1"``, ``"fe80::1%eth0"``) gives an AF_INET6 receiver
    instead: a socket with IPV6_V6ONLY (IPv6 only, as ``UdpcapSocket(AF_INET6)``), or
    ``UdpcapSocket(socket.AF_INET6)``; its *groups* are IPv6 groups, each optionally with the
    interface to join it on as ``%name`` or ``%index`` (``ff15::1%eth0``; none: the kernel's
    choice for the socket, every device for an UdpcapSocket).
    """
    host, port = bind
    if family_of(host) == socket.AF_INET6:
        return _open_receiver6(use_socket, host, port, groups, loopback, rcvbuf, timeout,
                               options)
    if use_socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if rcvbuf:
                set_socket_rcvbuf(sock, rcvbuf)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1 if loopback else 0)
            sock.bind((host, port))
            for group in groups:
                mreq = socket.inet_aton(group) + socket.inet_aton("0.0.0.0")
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        except BaseException:
            sock.close()
            raise
    else:
        cls = import_udpcap_socket()
        sock = cls(**(options or {}))
        try:
            if rcvbuf:
                sock.set_receive_buffer_size(max(rcvbuf, 65535))
            sock.set_multicast_loopback(bool(loopback))
            sock.bind((host, port))
            for group in groups:
                sock.join_multicast_group(group)
        except BaseException:
            sock.close()
            raise
    sock.settimeout(timeout)
    return sock


def _open_receiver6(use_socket, host, port, groups, loopback, rcvbuf, timeout, options):
    """:func:`open_receiver` for an IPv6 bind address."""
    address = sockaddr(host, port)
    memberships = []
    for group in groups:
        name, scope = split_scope(group)
        memberships.append((name, None if scope is None else interface_index(scope)))
    if use_socket:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if rcvbuf:
                set_socket_rcvbuf(sock, rcvbuf)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP,
                            1 if loopback else 0)
            sock.bind(address)
            for name, index in memberships:
                mreq = socket.inet_pton(socket.AF_INET6, name) + struct.pack("@I", index or 0)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        except BaseException:
            sock.close()
            raise
    else:
        cls = import_udpcap_socket()
        sock = cls(socket.AF_INET6, **(options or {}))
        try:
            if rcvbuf:
                sock.set_receive_buffer_size(max(rcvbuf, 65535))
            sock.set_multicast_loopback(bool(loopback))
            sock.bind(address)
            for name, index in memberships:
                sock.join_multicast_group(name, interface=index)
        except BaseException:
            sock.close()
            raise
    sock.settimeout(timeout)
    return sock


def ring_frames(sock):
    """Frames the capture ring of a bound UdpcapSocket holds (the smallest of its devices),
    where slots fix that (Linux immediate mode); None otherwise and for a plain socket."""
    receiver = getattr(sock, "_receiver", None)
    if receiver is None:
        return None
    counts = [receiver.platform.ring_frames(c.capture.buffer_size, c.capture.snaplen,
                                            receiver.options.immediate)
              for c in receiver.captures]
    counts = [n for n in counts if n]
    return min(counts) if counts else None


def receiver_statistics(sock):
    """The receiver's own counters as a dict ({} for a plain socket or an older UdpcapSocket)."""
    stats = getattr(sock, "statistics", None)
    if stats is None:
        return {}
    try:
        value = stats() if callable(stats) else stats
    except Exception:  # diagnostics only: never let a counter read kill the receiver
        return {}
    if hasattr(value, "snapshot"):
        value = value.snapshot()
    return dict(value) if isinstance(value, dict) else {}


def is_timeout(exc):
    return isinstance(exc, socket.timeout) or getattr(exc, "errno", None) in (
        errno.EAGAIN, errno.ETIMEDOUT)


# --------------------------------------------------------------------------- pcap savefile

PCAP_MAGIC_USEC = 0xA1B2C3D4
LINKTYPE_RAW = 101          # raw IPv4/IPv6, first nibble tells the version
LINKTYPE_ETHERNET = 1
# What a Linux loopback capture shows before each IPv4 packet: zero MACs, ethertype IPv4.
LOOPBACK_ETHERNET_HEADER = bytes(12) + b"\x08\x00"
LOOPBACK_ETHERNET_HEADER6 = bytes(12) + b"\x86\xdd"       # ... and before an IPv6 one
PCAP_SNAPLEN = 65535

_PCAP_GLOBAL = struct.Struct("<IHHiIII")
_PCAP_RECORD = struct.Struct("<IIII")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")


def ipv4_checksum(header):
    total = 0
    for (word,) in struct.iter_unpack("!H", header):
        total += word
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def synthesize_ipv4_udp(payload, src, dst, ident=0, ttl=64):
    """IPv4 header + UDP header + *payload* (UDP checksum 0 = "not computed", legal in IPv4)."""
    (src_host, src_port), (dst_host, dst_port) = src, dst
    udp_len = 8 + len(payload)
    total = 20 + udp_len
    if total > 65535:
        raise ValueError("datagram of %d bytes does not fit an IPv4 packet" % len(payload))
    src_raw, dst_raw = socket.inet_aton(src_host), socket.inet_aton(dst_host)
    header = _IPV4.pack(0x45, 0, total, ident & 0xFFFF, 0, ttl, socket.IPPROTO_UDP, 0,
                        src_raw, dst_raw)
    header = header[:10] + struct.pack("!H", ipv4_checksum(header)) + header[12:]
    return header + _UDP.pack(src_port, dst_port, udp_len, 0) + bytes(payload)


def synthesize_ipv6_udp(payload, src, dst, hop_limit=64):
    """IPv6 header + UDP header + *payload*; the UDP checksum computed (IPv6 requires one).
    Hosts may carry a ``%scope`` (dropped: a packet has none)."""
    (src_host, src_port), (dst_host, dst_port) = src[:2], dst[:2]
    udp_len = 8 + len(payload)
    if udp_len > 65535:
        raise ValueError("datagram of %d bytes does not fit an IPv6 packet" % len(payload))
    src_raw = socket.inet_pton(socket.AF_INET6, split_scope(src_host)[0])
    dst_raw = socket.inet_pton(socket.AF_INET6, split_scope(dst_host)[0])
    udp = _UDP.pack(src_port, dst_port, udp_len, 0) + bytes(payload)
    pseudo = src_raw + dst_raw + struct.pack("!IxxxB", udp_len, socket.IPPROTO_UDP)
    data = pseudo + udp
    if len(data) % 2:
        data += b"\x00"
    checksum = ipv4_checksum(data) or 0xFFFF      # the same one's complement sum; 0 is "none"
    header = _IPV6.pack(0x60000000, udp_len, socket.IPPROTO_UDP, hop_limit, src_raw, dst_raw)
    return header + udp[:6] + struct.pack("!H", checksum) + udp[8:]


class PcapWriter:
    """Writes a classic (microsecond) pcap savefile, LINKTYPE_RAW, one record per datagram.

    Each received datagram is stored as the IPv4/UDP packet that carried it, with synthesized
    headers (no options, DF clear, UDP checksum 0), so Wireshark and tcpdump show source,
    destination, ports and payload; a datagram between IPv6 addresses as an IPv6/UDP packet
    (UDP checksum computed).  ``ethernet=True`` writes LINKTYPE_ETHERNET frames as a Linux
    loopback capture has them instead (tools/bench_replay.py replays those).
    """

    def __init__(self, path, ethernet=False):
        self._file = open(path, "wb")
        self._ident = 0
        self._ethernet = ethernet
        self.records = 0
        self._file.write(_PCAP_GLOBAL.pack(PCAP_MAGIC_USEC, 2, 4, 0, 0, PCAP_SNAPLEN,
                                           LINKTYPE_ETHERNET if ethernet else LINKTYPE_RAW))

    def write(self, payload, src, dst, timestamp=None):
        """One datagram from *src* to *dst* (``(host, port)``, IPv6 also 4-tuples)."""
        if ":" in src[0]:
            packet = synthesize_ipv6_udp(payload, src, dst)
        else:
            packet = synthesize_ipv4_udp(payload, src, dst, self._ident)
            self._ident += 1
        self.write_packet(packet, timestamp)

    def write_packet(self, packet, timestamp=None):
        """One record of an IPv4 or IPv6 *packet* as it is (a fragment, say)."""
        if self._ethernet:
            packet = (LOOPBACK_ETHERNET_HEADER6 if packet[0] >> 4 == 6
                      else LOOPBACK_ETHERNET_HEADER) + bytes(packet)
        if timestamp is None:
            timestamp = time.time()
        sec = int(timestamp)
        usec = int(round((timestamp - sec) * 1e6))
        if usec >= 1000000:
            sec, usec = sec + 1, usec - 1000000
        caplen = min(len(packet), PCAP_SNAPLEN)
        self._file.write(_PCAP_RECORD.pack(sec, usec, caplen, len(packet)))
        self._file.write(packet[:caplen])
        self.records += 1

    def close(self):
        if not self._file.closed:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# --------------------------------------------------------------------------- output

def format_rate(pps, bytes_per_s):
    return "%10.0f dgram/s %8.2f MB/s" % (pps, bytes_per_s / 1e6)


class LiveLine:
    """A one-line progress display, rewritten with a carriage return, only on a TTY."""

    def __init__(self, stream=None, enabled=None):
        self.stream = stream or sys.stdout
        if enabled is None:
            enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = enabled
        self._width = 0

    def show(self, text):
        if not self.enabled:
            return
        pad = max(0, self._width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._width = len(text)

    def finish(self):
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


# --------------------------------------------------------------------------- namespace benchmarks

class Namespaces:
    """Base of the benchmarks' network namespaces: a receiving one (``recv_ns``) and a peer
    (``peer_ns``).  ``created`` lists those made so far; :meth:`close` deletes them, and may be
    called more than once."""

    @staticmethod
    def _ip(*args):
        done = subprocess.run(("ip",) + args, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=30)
        if done.returncode:
            raise RuntimeError("ip %s: %s" % (" ".join(args), done.stderr.strip()))

    def _add_namespaces(self):
        """Both namespaces, ``lo`` up in each."""
        for ns in (self.recv_ns, self.peer_ns):
            self._ip("netns", "add", ns)
            self.created.append(ns)
            self._ip("-n", ns, "link", "set", "lo", "up")

    def _add_veth(self, recv_if, peer_if):
        """A veth pair made inside the namespaces: the root namespace never sees it."""
        self._ip("-n", self.recv_ns, "link", "add", recv_if, "type", "veth",
                 "peer", "name", peer_if, "netns", self.peer_ns)

    def close(self):
        while self.created:
            ns = self.created.pop()
            subprocess.run(["ip", "netns", "del", ns], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30)

    def __exit__(self, *exc):
        self.close()
        return False


class NamespaceBench:
    """Base of a namespace benchmark's parent, with options *args* in namespaces *ns*:
    progress on *out*, ports from --port on, and with --pin the receiver's and the sender's
    CPUs."""

    def __init__(self, args, ns, out=sys.stderr):
        self.args = args
        self.ns = ns
        self.out = out
        self.port = args.port
        self.rx_cpu = self.tx_cpu = None
        if args.pin and hasattr(os, "sched_getaffinity"):
            cpus = sorted(os.sched_getaffinity(0))
            if len(cpus) >= 2:
                self.rx_cpu, self.tx_cpu = cpus[0], cpus[1]

    def log(self, text):
        if not self.args.json or self.args.verbose:
            self.out.write(text + "\n")
            self.out.flush()

    def next_port(self, span=1):
        port = self.port
        self.port += span
        if self.port > 65000:
            self.port = self.args.port
        return port

    @classmethod
    def result(cls, out, err):
        """The worker's RESULT; raises with its ERROR, or with :meth:`failure` without either."""
        for line in out.splitlines():
            if line.startswith("RESULT "):
                return json.loads(line[7:])
            if line.startswith("ERROR "):
                raise RuntimeError(line[6:])
        raise RuntimeError("receiver failed: %s" % (cls.failure(out, err),))

    @staticmethod
    def failure(out, err):
        """What a worker that printed neither RESULT nor ERROR said."""
        return err.strip().splitlines()[-1:] or out

    def attempt(self, errors, what, func, *args):
        """``func(*args)``, or None with what went wrong appended to *errors*."""
        try:
            return func(*args)
        except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
            errors.append("%s: %s" % (what, exc))
            self.log("    %s failed: %s" % (what, exc))
            return None


def serve_worker(spec, work):
    """In a benchmark's receiver process, pinned to ``spec["cpu"]`` if given: one line
    "RESULT <json>" of ``work(spec)`` and status 0, or "ERROR <type>: <message>" and 1."""
    if spec.get("cpu") is not None:
        pin_to_cpu(spec["cpu"])
    try:
        result = work(spec)
    except Exception as exc:  # the parent shows it
        print("ERROR %s: %s" % (type(exc).__name__, exc), flush=True)
        return 1
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def terminate(signum, _frame):
    """A SIGTERM handler: raises SystemExit, which runs the finally blocks (namespaces go)."""
    raise SystemExit(128 + signum)


def int_list(text, name, minimum=1, number=int):
    """``--name A,B,...``: integers (each read with *number*) of at least *minimum*."""
    try:
        values = [number(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("%s: comma-separated integers, got %r"
                                         % (name, text)) from None
    if not values or any(v < minimum for v in values):
        raise argparse.ArgumentTypeError("%s: integers >= %d, got %r" % (name, minimum, text))
    return values


def add_switch(parser, name, dest, default, help_on, help_off=None):
    """``--NAME`` and ``--no-NAME``, mutually exclusive, setting *dest* True or False."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--" + name, dest=dest, action="store_true", default=default,
                       help=help_on)
    group.add_argument("--no-" + name, dest=dest, action="store_false", help=help_off)


def add_bench_options(parser, port, quick_help):
    """The options every namespace benchmark ends with: --port (default *port*), --pin,
    --quick (*quick_help*), --json, --verbose and the hidden --worker."""
    parser.add_argument("--port", type=int, default=port,
                        help="first UDP port (default %d)" % port)
    parser.add_argument("--pin", action="store_true",
                        help="pin receivers to the first usable CPU and senders to the second "
                             "(default: nothing pinned)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--verbose", action="store_true",
                        help="progress on stderr also with --json")
    parser.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)


def parse_bench_args(parser, argv, quick):
    """*parser*'s arguments; with --quick (and not --worker), *quick* ``((dest, value), ...)``
    for those left at their defaults."""
    args = parser.parse_args(argv)
    if args.quick and not args.worker:
        defaults = {a.dest: a.default for a in parser._actions}
        for name, value in quick:
            if getattr(args, name) == defaults[name]:
                setattr(args, name, value)
    return args


def print_report(report, as_json, report_text):
    """*report* as JSON, or as ``report_text(report)``."""
    if as_json:
        print(json.dumps(report, indent=1))
    else:
        print(report_text(report))


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def columns(head, lines, left=1):
    """Table lines: *head*, a rule, *lines*; the first *left* columns left-aligned."""
    widths = [max(len(x[i]) for x in [head] + lines) for i in range(len(head))]

    def row(cells):
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return [row(head), "  ".join("-" * w for w in widths)] + [row(x) for x in lines]
