"""UdpcapSocket: the receive side of ``socket.socket(AF_INET, SOCK_DGRAM)`` over packet capture.

The contract is ``docs/API.md``: where it is silent, behave like a Python UDP socket.
Frames are captured with Npcap/libpcap and parsed in user space, so on Windows the traffic never
passes through Winsock and the Defender firewall's per-datagram cost (MpsSvc in tcpip.sys).
"""

from __future__ import annotations

import array
import collections
import ctypes
import errno
import logging
import math
import mmap
import operator
import socket
import struct
import sys
import threading
import warnings
from typing import (
    TYPE_CHECKING,
    Any,
    Deque,
    Dict,
    List,
    Literal,
    Optional,
    Set,
    Tuple,
    Union,
    overload,
)

from . import _loader, _platform
from ._net import free_udp_port, ip6_int, ip6_text, ip_text, is_multicast6
from ._receiver import Receiver, is_multicast
from ._receiver6 import Receiver6
from ._stats import Statistics, StatisticsSnapshot
from .errors import NotBoundError, SocketClosedError

if TYPE_CHECKING:
    # What socket.recv_into accepts: any writable buffer (bytearray, memoryview,
    # array.array, ctypes arrays, mmap...).  typeshed's alias exists only for type checkers...
    from _typeshed import WriteableBuffer as WritableBuffer
else:
    # ...so typing.get_type_hints resolves this spelling of it at run time.
    WritableBuffer = Union[bytearray, memoryview, array.array, ctypes.Array, mmap.mmap]

log = logging.getLogger(__name__)

# (host, port) as an AF_INET socket reports it, the host as dotted text; an AF_INET6 socket's
# (host, port, flowinfo, scope_id).
Address = Union[Tuple[str, int], Tuple[str, int, int, int]]
# A host as bind() and the multicast calls take it: text, or ASCII bytes as a socket takes.
Host = Union[str, bytes, bytearray]
# A setsockopt value: an int, or the option's bytes (an ip_mreq...) as a socket takes them.
OptionValue = Union[int, bytes, bytearray, memoryview]
# A datagram queued by the receiver: (buffer, first, last, source address).
_Queued = Tuple[memoryview, int, int, Address]

MIN_RECEIVE_BUFFER = 65535
# The capture library takes the buffer size as a C int: a larger value would wrap.
MAX_RECEIVE_BUFFER = 2 ** 31 - 1
# What an unbound socket "has queued": nothing.
_NOTHING_QUEUED: Deque[_Queued] = collections.deque()
# SO_RCVBUF of a socket that did not set one: the most its queue holds of datagrams that
# other sockets' reads of a shared capture queued for it (payload plus 128 bytes each).  Its
# captures then are the process's shared ones with the platform's default rings
# (Platform.default_ring); a size set with set_receive_buffer_size is both the queue limit and
# the ring asked for on every device (captures shared only with sockets of that size).
DEFAULT_RECEIVE_BUFFER = 4 << 20
# The longest timeout socket.settimeout takes: CPython keeps it in int64 nanoseconds.
_MAX_TIMEOUT = (2 ** 63 - 1) / 1e9

# Seconds; at 60,000 datagrams/s, 10 ms fill the default 1 MiB ring of an MTU-1500 link.
MAX_COALESCE = 0.01


def _flag(name: str, value: object, optional: bool = False) -> Any:
    """An option that takes a bool (or None, meaning the platform default).  Typed Any: the
    attribute it is stored in says which of the two."""
    if isinstance(value, bool) or (optional and value is None):
        return value
    raise TypeError("%s must be True or False%s, not %r"
                    % (name, " (or None for the platform default)" if optional else "", value))


def _seconds(name: str, value: object) -> float:
    """A finite, non-negative number of seconds, as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("%s must be a number of seconds, not %r" % (name, value))
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError("%s must be a finite number of seconds >= 0, got %r" % (name, value))
    return value


class Options:
    """Knobs beyond the socket API, fixed at construction (see :class:`UdpcapSocket`)."""

    __slots__ = ("immediate", "promiscuous", "hold_memberships", "port_guard",
                 "verify_udp_checksum", "reassembly_timeout", "coalesce", "reader")

    immediate: bool
    promiscuous: bool
    hold_memberships: Optional[bool]       # None: the platform default
    port_guard: Optional[bool]             # None: the platform default
    verify_udp_checksum: bool
    reassembly_timeout: float
    coalesce: Optional[float]              # None: the platform default
    reader: Optional[str]                  # None: UDPCAP_CTYPES_READER, else "batch"

    def __init__(self, immediate: bool = True, promiscuous: bool = True,
                 hold_memberships: Optional[bool] = None, port_guard: Optional[bool] = None,
                 verify_udp_checksum: bool = False, reassembly_timeout: float = 30.0,
                 coalesce: Optional[float] = None, reader: Optional[str] = None) -> None:
        self.immediate = _flag("immediate", immediate)
        self.promiscuous = _flag("promiscuous", promiscuous)
        self.hold_memberships = _flag("hold_memberships", hold_memberships, optional=True)
        self.port_guard = _flag("port_guard", port_guard, optional=True)
        self.verify_udp_checksum = _flag("verify_udp_checksum", verify_udp_checksum)
        self.reassembly_timeout = _seconds("reassembly_timeout", reassembly_timeout)
        if not self.reassembly_timeout > 0:
            raise ValueError("reassembly_timeout must be > 0 seconds")
        if coalesce is not None:
            if isinstance(coalesce, bool) or not isinstance(coalesce, (int, float)):
                raise TypeError("coalesce must be a number of seconds, not %r" % (coalesce,))
            coalesce = float(coalesce)
            if not 0.0 <= coalesce <= MAX_COALESCE:          # also NaN
                raise ValueError("coalesce must be between 0 and %g seconds (0 turns it off), "
                                 "got %r" % (MAX_COALESCE, coalesce))
        self.coalesce = coalesce
        if reader is not None and not isinstance(reader, str):
            raise TypeError("reader must be a str, not %r" % (reader,))
        if reader is not None and reader not in _platform.READERS:
            raise ValueError("reader must be one of %s, got %r"
                             % (", ".join(map(repr, _platform.READERS)), reader))
        self.reader = reader


def _parse_ipv4(host: Host, what: str) -> int:
    """A dotted quad or resolvable name (str or bytes, as a socket takes) to an int; OSError
    for anything malformed."""
    if isinstance(host, (bytes, bytearray)):
        try:
            host = bytes(host).decode("ascii")
        except UnicodeError:
            raise OSError(errno.EINVAL, "%s %r is not a valid IPv4 address" % (what, host)) \
                from None
    if not isinstance(host, str):
        raise TypeError("%s must be str or bytes, not %s" % (what, type(host).__name__))
    if host in ("", "0.0.0.0"):
        return 0
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
    except OSError:
        try:
            packed = socket.inet_aton(socket.gethostbyname(host))
        except (OSError, UnicodeError) as exc:
            raise OSError(errno.EINVAL, "%s %r is not a valid IPv4 address (%s)"
                          % (what, host, exc)) from None
    return struct.unpack("!I", packed)[0]  # type: ignore[no-any-return]  # an int: "!I"


def _timeout(value: Optional[float]) -> Optional[float]:
    """*value* as socket.settimeout takes it: None, or seconds >= 0 (same exception types)."""
    if value is None:
        return None
    if not isinstance(value, float):
        value = operator.index(value)          # TypeError for str, bytes, ... as a socket
    if value != value:
        raise ValueError("Invalid value NaN (not a number)")
    if value > _MAX_TIMEOUT or value < -_MAX_TIMEOUT:
        raise OverflowError("timeout %r is too large (at most %d seconds)"
                            % (value, int(_MAX_TIMEOUT)))
    if value < 0:
        raise ValueError("Timeout value out of range")
    return float(value)


def _bufsize(value: int, call: str) -> int:
    """A receive size as a socket checks it: an int >= 0 (TypeError / ValueError otherwise)."""
    value = operator.index(value)
    if value < 0:
        raise ValueError("negative buffersize in %s" % call)
    if value > sys.maxsize:
        raise OverflowError("Python int too large to convert to C ssize_t")
    return value


class UdpcapSocket:
    """A UDP receive socket that captures instead of opening a socket.

    ``UdpcapSocket(family=AF_INET, type=SOCK_DGRAM, proto=0, **options)``: the first three as
    ``socket.socket`` takes them (IPv4 UDP only).  Keyword options (all optional, fixed at
    construction; booleans are ``True``/``False``, nothing else):

    ``immediate`` (True): deliver each frame at once (lowest latency).  False lets Linux batch
        frames in TPACKET_V3 blocks: far more burst tolerance per buffer byte, ~1 ms latency.
    ``promiscuous`` (True): open devices promiscuous; some NICs hand multicast to a capture
        only in promiscuous mode.
    ``hold_memberships`` (None = platform default: on for POSIX, off for Windows): keep a real
        kernel membership of each joined group (an unread socket on an unused port), so the NIC
        and IGMP-snooping switches keep delivering it.
    ``port_guard`` (None = platform default: on for POSIX, off for Windows): bind an unread
        kernel socket to the port, so the kernel does not answer unicast with ICMP
        port-unreachable (a connected sender would see ECONNREFUSED and lose datagrams).  By
        default it is left out where another socket already holds the port; ``True`` makes
        that an error.
    ``verify_udp_checksum`` (False): drop datagrams whose UDP checksum is wrong.  Only for real
        NICs: with checksum offload, locally sent frames (and veth) carry partial checksums.
    ``reassembly_timeout`` (30.0): seconds an incomplete fragmented datagram is kept.
    ``coalesce`` (None = platform default: 100 µs on Linux in immediate mode, else 0): the
        latency budget of interrupt moderation, in seconds.  The receiver estimates the arrival
        rate; where at least two frames would arrive within the budget, a receive that has
        emptied the capture sleeps up to the budget (less at very high rates: until 64 frames
        have arrived) before reading again, so that one wake-up serves many frames, as NICs
        and Linux's net DIM moderate interrupts.  It adds at most about the budget (plus the
        kernel's timer slack) of latency under load, and none at low rates.  0 turns it off.
        At most 0.01 s.
    ``reader`` (None = ``"batch"``, or what the environment variable ``UDPCAP_CTYPES_READER``
        says): how frames leave the capture library.  ``"batch"`` moves a whole batch in one
        native call (libpcap's ``pcap_dispatch`` into memory on POSIX, Packet.dll's
        ``PacketReceivePacket`` on Npcap) and falls back to ``"next_ex"`` on a device where it
        cannot; ``"next_ex"`` calls ``pcap_next_ex`` per frame.

    Raises :class:`~udpcap_ctypes.CaptureUnavailableError` when the capture library is missing.
    """

    def __init__(self, family: int = socket.AF_INET, type: int = socket.SOCK_DGRAM,
                 proto: int = 0, **options: Any) -> None:
        self._closed = True                 # until construction succeeds (see __del__)
        if family not in (socket.AF_INET, getattr(socket, "AF_INET6", None)):
            raise OSError(errno.EAFNOSUPPORT, "UdpcapSocket receives IPv4 (socket.AF_INET) "
                                              "or IPv6 (socket.AF_INET6), not address family "
                                              "%r" % (family,))
        self._family = socket.AddressFamily(family)
        if type != socket.SOCK_DGRAM:
            raise OSError(errno.EPROTONOSUPPORT, "UdpcapSocket receives UDP: type must be "
                                                 "socket.SOCK_DGRAM, not %r" % (type,))
        if proto not in (0, socket.IPPROTO_UDP):
            raise OSError(errno.EPROTONOSUPPORT, "UdpcapSocket receives UDP: proto must be 0 "
                                                 "or socket.IPPROTO_UDP, not %r" % (proto,))
        self._options = Options(**options)
        self._library: _loader.CaptureLibrary = _loader.get_library()
        self._platform: _platform.Platform = _platform.current(self._library)
        self._stats = Statistics()
        self._state_lock = threading.Lock()
        self._receiver: Optional[Receiver] = None
        self._timeout: Optional[float] = None
        self._buffer_size = DEFAULT_RECEIVE_BUFFER
        self._buffer_size_set = False       # set_receive_buffer_size was called
        self._memberships: Set[Tuple[int, int]] = set()  # (group, interface address or 0), as ints
        self._multicast_loopback = True
        self._sockname: Optional[Address] = None
        self._ready: Deque[_Queued] = _NOTHING_QUEUED   # the bound receiver's queue of datagrams
        # fileno()'s pollable fd, made on first use
        self._readiness: Optional[_platform.Readiness] = None
        self._closed = False

    @property
    def family(self) -> socket.AddressFamily:
        return self._family

    @property
    def _ipv6(self) -> bool:
        return self._family != socket.AF_INET

    @property
    def type(self) -> socket.SocketKind:
        return socket.SOCK_DGRAM

    # -- configuration -----------------------------------------------------------------------

    def set_receive_buffer_size(self, size: int) -> None:
        """Receive buffer size in bytes (``SO_RCVBUF``); only before :meth:`bind`.

        It is the capture buffer asked for on every device, and the most this socket's queue
        holds of datagrams other sockets' reads queued for it.  Unset, the platform sizes
        each device's buffer (see README "Buffer sizes") and the queue holds 4 MiB."""
        self._check_open()
        size = operator.index(size)
        if size < MIN_RECEIVE_BUFFER:
            raise ValueError("receive buffer size must be at least %d bytes, got %d"
                             % (MIN_RECEIVE_BUFFER, size))
        if size > MAX_RECEIVE_BUFFER:
            raise OverflowError("receive buffer size must be below 2**31 bytes (the capture "
                                "library takes a C int), got %d" % size)
        if self._receiver is not None:
            raise OSError(errno.EINVAL, "set the receive buffer size before bind(): the capture "
                                        "buffer is allocated when the device is opened")
        self._buffer_size = size
        self._buffer_size_set = True

    def set_multicast_loopback(self, enabled: Union[bool, int]) -> None:
        """Deliver datagrams this host sends to joined groups (default True)."""
        self._check_open()
        enabled = bool(enabled)
        with self._state_lock:
            self._multicast_loopback = enabled
            receiver = self._receiver
        if receiver is not None:
            receiver.update(multicast_loopback=enabled)

    @property
    def multicast_loopback(self) -> bool:
        return self._multicast_loopback

    def join_multicast_group(self, group: Host,
                             interface: Optional[Union[Host, int]] = None) -> None:
        """Receive datagrams sent to *group* (``IP_ADD_MEMBERSHIP``, ``IPV6_JOIN_GROUP``);
        allowed before bind.

        *interface*: IPv4, the address of a local interface to receive the group on; IPv6,
        an interface name or index; None (and ``"0.0.0.0"``, index 0) for every device the
        socket captures on.
        """
        self._change_group(group, interface, join=True)

    def leave_multicast_group(self, group: Host,
                              interface: Optional[Union[Host, int]] = None) -> None:
        """Stop receiving *group* (``IP_DROP_MEMBERSHIP``) on *interface* (as joined; None
        also matches the group's only membership)."""
        self._change_group(group, interface, join=False)

    def _change_group(self, group: Host, interface: Optional[Union[Host, int]],
                      join: bool) -> None:
        self._check_open()
        if self._ipv6:
            address, _scope = _parse_ipv6(group, "multicast group")
            if not is_multicast6(address):
                raise OSError(errno.EINVAL, "%s is not an IPv6 multicast address (ff00::/8)"
                              % ip6_text(address))
            where = _interface_index(interface)
            text, on = ip6_text, _on_index
        else:
            address = _parse_ipv4(group, "multicast group")
            if not is_multicast(address):
                raise OSError(errno.EINVAL, "%s is not a multicast address (224.0.0.0/4)"
                              % ip_text(address))
            if isinstance(interface, int):
                raise TypeError("an IPv4 interface is an address (str), not %r" % (interface,))
            where = 0 if interface is None else _parse_ipv4(interface, "interface")
            text, on = ip_text, _on
        with self._state_lock:
            receiver = self._receiver
            if join and where and receiver is not None:
                receiver.check_interface(where)
            key = (address, where)
            if join and key in self._memberships:
                raise OSError(errno.EADDRINUSE, "already a member of %s%s"
                              % (text(address), on(where)))
            if not join and key not in self._memberships:
                mine = [m for m in self._memberships if m[0] == address]
                if interface is not None or len(mine) != 1:
                    raise OSError(errno.EADDRNOTAVAIL, "not a member of %s%s"
                                  % (text(address), on(where)))
                key = mine[0]
            if join:
                self._memberships.add(key)
            else:
                self._memberships.discard(key)
            memberships = frozenset(self._memberships)
        if receiver is not None:
            receiver.update(memberships=memberships)

    def setsockopt(self, level: int, option: int, value: OptionValue) -> None:
        """The subset of ``socket.setsockopt`` a UDP receiver uses, mapped to the methods."""
        self._check_open()
        if level == socket.SOL_SOCKET and option == socket.SO_RCVBUF:
            return self.set_receive_buffer_size(value)  # type: ignore[arg-type]  # bytes: TypeError
        ip_level = socket.IPPROTO_IPV6 if self._ipv6 else socket.IPPROTO_IP
        if level == ip_level and option == _multicast_loop_option(self._ipv6):
            return self.set_multicast_loopback(
                value if isinstance(value, int) else struct.unpack("B", value[:1])[0])
        if not self._ipv6 and level == socket.IPPROTO_IP and option in (
                socket.IP_ADD_MEMBERSHIP, socket.IP_DROP_MEMBERSHIP):
            group, interface = _parse_mreq(value, self._platform)
            return self._change_group(group, interface,
                                      join=option == socket.IP_ADD_MEMBERSHIP)
        if self._ipv6 and level == socket.IPPROTO_IPV6 and option in _IPV6_MEMBERSHIP:
            group, index = _parse_mreq6(value)
            return self._change_group(group, index, join=_IPV6_MEMBERSHIP[option])
        if level == socket.SOL_SOCKET and option in (socket.SO_REUSEADDR,
                                                     getattr(socket, "SO_REUSEPORT", -1)):
            return None          # captures are always shared
        raise OSError(errno.ENOPROTOOPT, "option (%d, %d) is not supported by UdpcapSocket"
                      % (level, option))

    @overload
    def getsockopt(self, level: int, option: int, buflen: None = None) -> int: ...
    @overload
    def getsockopt(self, level: int, option: int, buflen: int) -> bytes: ...

    def getsockopt(self, level: int, option: int,
                   buflen: Optional[int] = None) -> Union[int, bytes]:
        """``SO_RCVBUF`` (the capture buffer size), ``IP_MULTICAST_LOOP`` (1 or 0),
        ``SO_TYPE`` (SOCK_DGRAM); as bytes of *buflen* when given, as ``socket.getsockopt``."""
        self._check_open()
        if level == socket.SOL_SOCKET and option == socket.SO_RCVBUF:
            value = self._buffer_size
        elif (level == (socket.IPPROTO_IPV6 if self._ipv6 else socket.IPPROTO_IP)
              and option == _multicast_loop_option(self._ipv6)):
            value = 1 if self._multicast_loopback else 0
        elif level == socket.SOL_SOCKET and option == socket.SO_TYPE:
            value = int(socket.SOCK_DGRAM)
        else:
            raise OSError(errno.ENOPROTOOPT, "option (%d, %d) is not supported by UdpcapSocket"
                          % (level, option))
        if buflen is None:
            return value
        return struct.pack("=i", value)[:operator.index(buflen)]

    def settimeout(self, timeout: Optional[float]) -> None:
        """As ``socket.settimeout``: None blocks, 0 is non-blocking, else seconds."""
        self._check_open()
        self._timeout = _timeout(timeout)

    def gettimeout(self) -> Optional[float]:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._check_open()
        self._timeout = None if flag else 0.0

    def getblocking(self) -> bool:
        return self._timeout != 0.0

    def fileno(self) -> int:
        """POSIX: an fd that ``select``, ``selectors`` and ``loop.add_reader`` accept, readable
        whenever a receive may return a datagram without blocking (sometimes also when it
        would not: a receive then blocks or raises BlockingIOError as usual).  Windows: no
        such fd exists (Npcap signals events); raises OSError."""
        with self._state_lock:
            self._check_open()
            if self._readiness is None:
                self._readiness = self._platform.make_readiness()
                if self._receiver is not None:
                    self._receiver.attach_readiness(self._readiness)
            return self._readiness.fileno()

    # -- binding -----------------------------------------------------------------------------

    def bind(self, address: Union[Tuple[Host, int], Tuple[Host, int, int, int]]) -> None:
        """Open the captures for ``(host, port)`` (AF_INET6 also ``(host, port, flowinfo,
        scope_id)``); see ``docs/API.md`` for host forms."""
        self._check_open()
        if self._ipv6:
            return self._bind6(address)
        if not isinstance(address, tuple) or len(address) != 2:
            raise TypeError("bind(): AF_INET address must be tuple, not %s"
                            % type(address).__name__)
        host, port = address
        _check_port(port)
        host_int = _parse_ipv4(host, "bind address")
        if is_multicast(host_int):
            raise OSError(errno.EADDRNOTAVAIL, "cannot bind to multicast address %s: bind to "
                          "0.0.0.0 (or an interface address) and join the group"
                          % ip_text(host_int))
        with self._state_lock:
            if self._receiver is not None:
                raise OSError(errno.EINVAL, "socket is already bound to %s:%d"
                              % self._sockname)  # type: ignore[str-format]  # set with _receiver
            if port == 0:
                port = free_udp_port(ip_text(host_int))
            receiver = Receiver(self._platform, self._stats, self._options,
                                queue_limit=self._buffer_size,
                                ring_size=self._buffer_size if self._buffer_size_set else None)
            receiver.configure(self._platform.devices(), host_int, port, self._memberships,
                               self._multicast_loopback)
            receiver.open(self._readiness)
            self._receiver = receiver
            self._ready = receiver.ready
            self._sockname = (ip_text(host_int), port)

    def _bind6(self, address: Any) -> None:
        if not isinstance(address, tuple) or len(address) not in (2, 3, 4):
            raise TypeError("bind(): AF_INET6 address must be tuple, not %s"
                            % type(address).__name__)
        host, port = address[0], address[1]
        _check_port(port)
        scope = address[3] if len(address) == 4 else 0
        if not isinstance(scope, int) or isinstance(scope, bool):
            raise TypeError("bind(): scope_id must be an integer")
        host_int, host_scope = _parse_ipv6(host, "bind address")
        scope = scope or host_scope
        with self._state_lock:
            if self._receiver is not None:
                raise OSError(errno.EINVAL, "socket is already bound to %r" % (self._sockname,))
            receiver = Receiver6(self._platform, self._stats, self._options,
                                 queue_limit=self._buffer_size,
                                 ring_size=self._buffer_size if self._buffer_size_set else None)
            receiver.configure(self._platform.devices(), host_int, port, self._memberships,
                               self._multicast_loopback, scope_id=scope)
            if port == 0:
                port = free_udp_port(ip6_text(host_int), socket.AF_INET6, scope)
                receiver.port = port
            receiver.open(self._readiness)
            self._receiver = receiver
            self._ready = receiver.ready
            self._sockname = (ip6_text(host_int), port, 0, scope)

    def getsockname(self) -> Address:
        self._check_open()
        if self._sockname is None:
            return ("::", 0, 0, 0) if self._ipv6 else ("0.0.0.0", 0)
        return self._sockname

    @property
    def bound(self) -> bool:
        return self._receiver is not None and not self._closed

    @property
    def closed(self) -> bool:
        return self._closed

    # -- receiving ---------------------------------------------------------------------------

    # recvfrom(0) returns (b"", None); a type checker can tell only when the 0 is written out.
    @overload
    def recvfrom(self, bufsize: Literal[0]) -> Tuple[bytes, None]:  # type: ignore[overload-overlap]
        ...
    @overload
    def recvfrom(self, bufsize: int) -> Tuple[bytes, Address]: ...

    def recvfrom(self, bufsize: int) -> Tuple[bytes, Optional[Address]]:
        """Return ``(bytes, (host, port))`` of the next datagram (at most *bufsize* bytes).

        ``recvfrom(0)`` returns ``(b"", None)`` at once and leaves the queue alone.
        """
        ready = self._ready
        if ready and type(bufsize) is int and bufsize > 0 and not self._closed:
            # Fast path: a datagram is queued.  Popping needs no lock: one thread receives at
            # a time, and close() only clears the queue (then IndexError: the slow path).
            try:
                buf, first, last, address = ready.popleft()
            except IndexError:
                pass
            else:
                if last - first > bufsize:
                    self._stats.truncated_deliveries += 1
                    last = first + bufsize
                return (bytes(buf[first:last]), address)
        return self._recvfrom(bufsize, "recvfrom")

    def recv(self, bufsize: int) -> bytes:
        """The next datagram's payload (at most *bufsize* bytes); ``recv(0)`` is ``b""`` at
        once, without consuming a datagram, as a socket's."""
        return self._recvfrom(bufsize, "recv")[0]

    def _recvfrom(self, bufsize: int, call: str) -> Tuple[bytes, Optional[Address]]:
        # Sizes are checked before anything waits or is consumed.
        bufsize = _bufsize(bufsize, call)
        if not bufsize:
            self._check_usable()
            return (b"", None)
        return self._receive(None, bufsize)

    def recvfrom_into(self, buffer: WritableBuffer, nbytes: int = 0) -> Tuple[int, Address]:
        """Copy the next datagram into *buffer* (any writable bytes-like object; *nbytes* 0
        means all of it); return ``(nbytes_copied, (host, port))``.  With room for 0 bytes it
        returns ``(0, None)`` at once without consuming a datagram."""
        ready = self._ready
        if ready and not nbytes and type(buffer) is bytearray and buffer and not self._closed:
            try:                                              # fast path, as in recvfrom
                buf, first, last, address = ready.popleft()
            except IndexError:
                pass
            else:
                size = last - first
                if size > len(buffer):
                    self._stats.truncated_deliveries += 1
                    size = len(buffer)
                memoryview(buffer)[:size] = buf[first:first + size]   # see Receiver.poll
                return (size, address)
        target: Union[bytearray, memoryview]
        if type(buffer) is bytearray and type(nbytes) is int and nbytes == 0:
            target, size = buffer, len(buffer)
        else:
            target, size = _writable_bytes(buffer, nbytes)
        if not size:
            self._check_usable()
            # Typed as an address, so that callers need not test for None: only a buffer with
            # room for 0 bytes gets here.
            return (0, None)  # type: ignore[return-value]
        return self._receive(target, size)

    def recv_into(self, buffer: WritableBuffer, nbytes: int = 0) -> int:
        return self.recvfrom_into(buffer, nbytes)[0]

    def recvfrom_batch(self, max_datagrams: int,
                       bufsize: int = 65535) -> List[Tuple[bytes, Address]]:
        """Up to *max_datagrams* ``(bytes, (host, port))`` pairs: waits for the first as
        :meth:`recvfrom` does (timeout, non-blocking, close), then adds what is queued or
        capturable without waiting.  The same datagrams, in the same order, as a loop of
        ``recvfrom(bufsize)``; each payload is cut at *bufsize*.  ``bufsize`` 0 returns ``[]``
        at once without consuming anything (as ``recvfrom(0)`` consumes nothing)."""
        if type(max_datagrams) is not int:
            max_datagrams = operator.index(max_datagrams)
        if max_datagrams < 1:
            raise ValueError("recvfrom_batch(): max_datagrams must be at least 1, not %d"
                             % max_datagrams)
        bufsize = _bufsize(bufsize, "recvfrom_batch")
        self._check_usable()
        if not bufsize:
            return []
        return self._receiver.receive_batch(max_datagrams, bufsize,  # type: ignore[union-attr]
                                            self._timeout)

    # (bytes, address) without a target, else (count copied, address)
    def _receive(self, target: Union[bytearray, memoryview, None],
                 nbytes: int) -> Tuple[Any, Address]:
        receiver = self._receiver
        if self._closed:
            raise SocketClosedError()
        if receiver is None:
            raise NotBoundError()
        return receiver.receive(target, nbytes, self._timeout)

    # -- statistics and lifetime -------------------------------------------------------------

    def statistics(self) -> StatisticsSnapshot:
        """A dict of this socket's counters (see :class:`~udpcap_ctypes._stats.Statistics`)."""
        receiver = self._receiver
        if receiver is not None and not self._closed:
            self._stats.capture_drops = receiver.capture_drops()
            receiver.settle_stats()
        return self._stats.snapshot()

    def filter_expressions(self) -> Dict[str, str]:
        """``{device: BPF filter}`` in force (for diagnostics)."""
        receiver = self._receiver
        if receiver is None:
            return {}
        return {c.device.name: c.filter_text for c in receiver.captures}

    def capture_readers(self) -> Dict[str, str]:
        """``{device: how frames are read}`` (the ``reader`` option as it worked out on each
        device, for diagnostics); ``{}`` before bind and after close."""
        receiver = self._receiver
        if receiver is None:
            return {}
        return {c.device.name: c.shared.reader.description for c in receiver.captures}

    def close(self) -> None:
        """Close the socket; a receive blocked in another thread raises SocketClosedError.

        The blocked thread is woken at once and raises; this call then waits (briefly) for it
        to leave the wait before the captures are released (``Receiver.shutdown``).
        """
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            receiver = self._receiver
            readiness, self._readiness = self._readiness, None
        if readiness is not None:
            readiness.close()
        if receiver is not None:
            receiver.shutdown()

    def _check_open(self) -> None:
        if self._closed:
            raise SocketClosedError()

    def _check_usable(self) -> None:
        if self._closed:
            raise SocketClosedError()
        if self._receiver is None:
            raise NotBoundError()

    def __enter__(self) -> "UdpcapSocket":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # An open socket that is garbage-collected: warn, as a socket does, and release it.
        if getattr(self, "_closed", True):
            return
        warnings.warn("unclosed %r" % (self,), ResourceWarning, stacklevel=1, source=self)
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("bound to %s:%d" % self._sockname[:2]
                                               if self._sockname else "unbound")
        return "<UdpcapSocket %s>" % state


def _writable_bytes(buffer: WritableBuffer, nbytes: int) -> Tuple[memoryview, int]:
    """``(target, nbytes)`` for recvfrom_into: a writable byte view of *buffer*."""
    nbytes = _bufsize(nbytes, "recvfrom_into")
    view = memoryview(buffer)
    if view.readonly:
        raise TypeError("recvfrom_into() argument 'buffer' must be read-write bytes-like object")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    if nbytes == 0:
        nbytes = len(view)
    elif nbytes > len(view):
        raise ValueError("nbytes is greater than the length of the buffer")
    return view, nbytes


def _on(interface: int) -> str:
    return " on interface %s" % ip_text(interface) if interface else ""


def _on_index(interface: int) -> str:
    return " on interface index %d" % interface if interface else ""


def _check_port(port: Any) -> None:
    if not isinstance(port, int):
        raise TypeError("'%s' object cannot be interpreted as an integer"
                        % type(port).__name__)
    if not 0 <= port <= 65535:
        raise OverflowError("bind(): port must be 0-65535.")


def _parse_ipv6(host: Host, what: str) -> Tuple[int, int]:
    """``(address, scope id)`` of IPv6 text (``"fe80::1%eth0"`` carries a scope), bytes, or a
    resolvable name; OSError for anything else."""
    if isinstance(host, (bytes, bytearray)):
        try:
            host = bytes(host).decode("ascii")
        except UnicodeError:
            raise OSError(errno.EINVAL, "%s %r is not a valid IPv6 address" % (what, host)) \
                from None
    if not isinstance(host, str):
        raise TypeError("%s must be str or bytes, not %s" % (what, type(host).__name__))
    if host == "":
        return 0, 0
    try:
        return ip6_int(host), 0
    except (OSError, ValueError):
        pass
    try:
        found = socket.getaddrinfo(host, None, socket.AF_INET6, socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:
        raise OSError(errno.EINVAL, "%s %r is not a valid IPv6 address (%s)"
                      % (what, host, exc)) from None
    sockaddr = found[0][4]
    return ip6_int(sockaddr[0].split("%", 1)[0]), int(sockaddr[3])


def _interface_index(interface: Optional[Union[Host, int]]) -> int:
    """An IPv6 membership's interface: None or 0 (any), an index, or an interface name."""
    if interface is None:
        return 0
    if isinstance(interface, bool):
        raise TypeError("an interface is a name or an index, not %r" % (interface,))
    if isinstance(interface, int):
        if interface < 0:
            raise OSError(errno.ENODEV, "no interface has the index %d" % interface)
        return interface
    if isinstance(interface, (bytes, bytearray)):
        interface = bytes(interface).decode("ascii", "replace")
    if not isinstance(interface, str):
        raise TypeError("an interface is a name or an index, not %r" % (interface,))
    try:
        return socket.if_nametoindex(interface)
    except (OSError, AttributeError):
        raise OSError(errno.ENODEV, "no interface is called %r" % interface) from None


_IPV6_MEMBERSHIP = {getattr(socket, "IPV6_JOIN_GROUP", -1): True,
                    getattr(socket, "IPV6_LEAVE_GROUP", -2): False}


def _multicast_loop_option(ipv6: bool) -> int:
    return getattr(socket, "IPV6_MULTICAST_LOOP", -3) if ipv6 else socket.IP_MULTICAST_LOOP


def _parse_mreq6(value: OptionValue) -> Tuple[str, int]:
    """``(group, interface index)`` from an ``ipv6_mreq`` (16-byte group, unsigned index)."""
    if isinstance(value, int):
        raise TypeError("IPV6_JOIN_GROUP / IPV6_LEAVE_GROUP take an ipv6_mreq as bytes")
    raw = bytes(value)
    if len(raw) < 20:
        raise OSError(errno.EINVAL, "a membership request is an ipv6_mreq of 20 bytes (group, "
                                    "interface index), got %d bytes" % len(raw))
    return ip6_text(int.from_bytes(raw[:16], "big")), struct.unpack("=I", raw[16:20])[0]


def _parse_mreq(value: OptionValue, platform: _platform.Platform) -> Tuple[str, Optional[str]]:
    """``(group, interface or None)`` from an ``ip_mreq`` (group, interface address) or Linux
    ``ip_mreqn`` (group, address, interface index) as bytes."""
    raw = bytes(value)
    if len(raw) < 8:
        raise OSError(errno.EINVAL, "a membership request is an ip_mreq of 8 bytes (group, "
                                    "interface), got %d bytes" % len(raw))
    group = socket.inet_ntoa(raw[:4])
    if len(raw) >= 12:
        index = struct.unpack("=i", raw[8:12])[0]
        if index:
            return group, platform.interface_address(index)
    interface = raw[4:8]
    return group, None if interface == b"\0\0\0\0" else socket.inet_ntoa(interface)
