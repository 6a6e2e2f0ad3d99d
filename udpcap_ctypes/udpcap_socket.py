"""UdpcapSocket: the receive side of ``socket.socket(AF_INET, SOCK_DGRAM)`` over packet capture.

The contract is ``docs/API.md``: where it is silent, behave like a Python UDP socket.
Frames are captured with Npcap/libpcap and parsed in user space, so on Windows the traffic never
passes through Winsock and the Defender firewall's per-datagram cost (MpsSvc in tcpip.sys).
"""

import collections
import errno
import logging
import socket
import struct
import threading
import time

from . import _loader, _platform
from ._receiver import Receiver, ip_text, is_multicast
from ._stats import Statistics
from .errors import NotBoundError, SocketClosedError

log = logging.getLogger("udpcap_ctypes")

_monotonic = time.monotonic
MIN_RECEIVE_BUFFER = 65535
_NOTHING_QUEUED = collections.deque()   # what an unbound socket "has queued": nothing
_CLOSE_WAIT = 2.0       # how long close() waits for a woken receiver to leave its wait
# The capture ring per device.  In immediate mode Linux cuts it into snaplen-sized slots:
# ~2 KiB on an MTU-1500 device (16 MiB ~ 8,000 frames), 128 KiB on lo (MTU 65536), where every
# datagram is also captured twice (outgoing and incoming): 16 MiB holds 64 loopback datagrams.
DEFAULT_RECEIVE_BUFFER = 16 << 20


MAX_COALESCE = 0.01   # seconds; longer would need more capture buffer than the default holds


class Options:
    """Knobs beyond the socket API, fixed at construction (see :class:`UdpcapSocket`)."""

    __slots__ = ("immediate", "promiscuous", "hold_memberships", "port_guard",
                 "verify_udp_checksum", "reassembly_timeout", "coalesce")

    def __init__(self, immediate=True, promiscuous=True, hold_memberships=None, port_guard=False,
                 verify_udp_checksum=False, reassembly_timeout=30.0, coalesce=None):
        if coalesce is not None:
            coalesce = float(coalesce)
            if not 0.0 <= coalesce <= MAX_COALESCE:
                raise ValueError("coalesce must be between 0 and %g seconds (0 turns it off), "
                                 "got %r" % (MAX_COALESCE, coalesce))
        self.coalesce = coalesce
        self.immediate = bool(immediate)
        self.promiscuous = bool(promiscuous)
        self.hold_memberships = hold_memberships
        self.port_guard = bool(port_guard)
        self.verify_udp_checksum = bool(verify_udp_checksum)
        if not reassembly_timeout > 0:
            raise ValueError("reassembly_timeout must be > 0 seconds")
        self.reassembly_timeout = float(reassembly_timeout)


def _parse_ipv4(host, what):
    """A dotted-quad (or resolvable name) to an int; OSError for anything malformed."""
    if not isinstance(host, str):
        raise TypeError("%s must be a str, not %s" % (what, type(host).__name__))
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
    return struct.unpack("!I", packed)[0]


class UdpcapSocket:
    """A UDP receive socket that captures instead of opening a socket.

    Keyword options (all optional, fixed at construction):

    ``immediate`` (True): deliver each frame at once (lowest latency).  False lets Linux batch
        frames in TPACKET_V3 blocks: far more burst tolerance per buffer byte, ~1 ms latency.
    ``promiscuous`` (True): open devices promiscuous; some NICs hand multicast to a capture
        only in promiscuous mode.
    ``hold_memberships`` (None = platform default: on for POSIX, off for Windows): keep a real
        kernel membership of each joined group (an unread socket on an unused port), so the NIC
        and IGMP-snooping switches keep delivering it.
    ``port_guard`` (False): bind an unread kernel socket to the port so the kernel stops
        answering unicast with ICMP port-unreachable.
    ``verify_udp_checksum`` (False): drop datagrams whose UDP checksum is wrong.  Only for real
        NICs: with checksum offload, locally sent frames (and veth) carry partial checksums.
    ``reassembly_timeout`` (30.0): seconds an incomplete fragmented datagram is kept.
    ``coalesce`` (None = platform default: 100 µs on Linux in immediate mode, else 0): while
        datagrams arrive faster than one per ``2 * coalesce`` seconds, a receive that has
        emptied the capture sleeps this long before reading again, so that one wake-up serves
        many frames (interrupt moderation, as NICs do).  It adds up to about this much latency
        under load and none at low rates.  0 wakes up for every frame.  At most 0.01 s.

    Raises :class:`~udpcap_ctypes.CaptureUnavailableError` when the capture library is missing.
    """

    def __init__(self, **options):
        self._options = Options(**options)
        self._library = _loader.get_library()
        self._platform = _platform.current(self._library)
        self._stats = Statistics()
        self._state_lock = threading.Lock()
        self._receiver = None
        # One token per thread inside _wait_and_receive (deque append/pop are atomic), so that
        # close() can wake them and wait for them to leave before releasing the waiter.
        self._receiving = collections.deque()
        self._closed = False
        self._timeout = None
        self._buffer_size = DEFAULT_RECEIVE_BUFFER
        self._groups = set()
        self._multicast_loopback = True
        self._sockname = None
        self._ready = _NOTHING_QUEUED       # the bound receiver's queue of datagrams

    # -- configuration -----------------------------------------------------------------------

    def set_receive_buffer_size(self, size):
        """Capture buffer size in bytes (``SO_RCVBUF``); only before :meth:`bind`."""
        self._check_open()
        size = int(size)
        if size < MIN_RECEIVE_BUFFER:
            raise ValueError("receive buffer size must be at least %d bytes, got %d"
                             % (MIN_RECEIVE_BUFFER, size))
        if self._receiver is not None:
            raise OSError(errno.EINVAL, "set the receive buffer size before bind(): the capture "
                                        "buffer is allocated when the device is opened")
        self._buffer_size = size

    def set_multicast_loopback(self, enabled):
        """Deliver datagrams this host sends to joined groups (default True)."""
        self._check_open()
        enabled = bool(enabled)
        with self._state_lock:
            self._multicast_loopback = enabled
            receiver = self._receiver
        if receiver is not None:
            receiver.update(multicast_loopback=enabled)

    @property
    def multicast_loopback(self):
        return self._multicast_loopback

    def join_multicast_group(self, group):
        """Receive datagrams sent to *group* (``IP_ADD_MEMBERSHIP``); allowed before bind."""
        self._change_group(group, join=True)

    def leave_multicast_group(self, group):
        """Stop receiving *group* (``IP_DROP_MEMBERSHIP``)."""
        self._change_group(group, join=False)

    def _change_group(self, group, join):
        self._check_open()
        address = _parse_ipv4(group, "multicast group")
        if not is_multicast(address):
            raise OSError(errno.EINVAL, "%s is not a multicast address (224.0.0.0/4)" % group)
        with self._state_lock:
            if join and address in self._groups:
                raise OSError(errno.EADDRINUSE, "already a member of %s" % group)
            if not join and address not in self._groups:
                raise OSError(errno.EADDRNOTAVAIL, "not a member of %s" % group)
            if join:
                self._groups.add(address)
            else:
                self._groups.discard(address)
            groups = frozenset(self._groups)
            receiver = self._receiver
        if receiver is not None:
            receiver.update(groups=groups)

    def setsockopt(self, level, option, value):
        """The subset of ``socket.setsockopt`` a UDP receiver uses, mapped to the methods."""
        if level == socket.SOL_SOCKET and option == socket.SO_RCVBUF:
            return self.set_receive_buffer_size(value)
        if level == socket.IPPROTO_IP and option == socket.IP_MULTICAST_LOOP:
            return self.set_multicast_loopback(
                value if isinstance(value, int) else struct.unpack("B", value[:1])[0])
        if level == socket.IPPROTO_IP and option in (socket.IP_ADD_MEMBERSHIP,
                                                     socket.IP_DROP_MEMBERSHIP):
            group = socket.inet_ntoa(bytes(value)[:4])
            return self._change_group(group, join=option == socket.IP_ADD_MEMBERSHIP)
        if level == socket.SOL_SOCKET and option in (socket.SO_REUSEADDR,
                                                     getattr(socket, "SO_REUSEPORT", -1)):
            return None          # captures are always shared
        raise OSError(errno.ENOPROTOOPT, "option (%d, %d) is not supported by UdpcapSocket"
                      % (level, option))

    def settimeout(self, timeout):
        if timeout is not None:
            timeout = float(timeout)
            if timeout < 0:
                raise ValueError("Timeout value out of range")
        self._timeout = timeout

    def gettimeout(self):
        return self._timeout

    def setblocking(self, flag):
        self._timeout = None if flag else 0.0

    def getblocking(self):
        return self._timeout != 0.0

    # -- binding -----------------------------------------------------------------------------

    def bind(self, address):
        """Open the captures for ``(host, port)``; see ``docs/API.md`` for host forms."""
        self._check_open()
        if not isinstance(address, tuple) or len(address) != 2:
            raise TypeError("bind(): AF_INET address must be tuple, not %s"
                            % type(address).__name__)
        host, port = address
        if not isinstance(port, int):
            raise TypeError("'%s' object cannot be interpreted as an integer"
                            % type(port).__name__)
        if not 0 <= port <= 65535:
            raise OverflowError("bind(): port must be 0-65535.")
        host_int = _parse_ipv4(host, "bind address")
        if is_multicast(host_int):
            raise OSError(errno.EADDRNOTAVAIL, "cannot bind to multicast address %s: bind to "
                          "0.0.0.0 (or an interface address) and join the group" % host)
        with self._state_lock:
            if self._receiver is not None:
                raise OSError(errno.EINVAL, "socket is already bound to %s:%d"
                              % self._sockname)
            if port == 0:
                port = _free_port(ip_text(host_int))
            receiver = Receiver(self._platform, self._stats, self._options)
            receiver.open(host_int, port, self._buffer_size, self._groups,
                          self._multicast_loopback)
            self._receiver = receiver
            self._ready = receiver.ready
            self._sockname = (ip_text(host_int), port)

    def getsockname(self):
        self._check_open()
        if self._sockname is None:
            return ("0.0.0.0", 0)
        return self._sockname

    @property
    def bound(self):
        return self._receiver is not None and not self._closed

    @property
    def closed(self):
        return self._closed

    # -- receiving ---------------------------------------------------------------------------

    def recvfrom(self, bufsize):
        """Return ``(bytes, (host, port))`` of the next datagram (at most *bufsize* bytes)."""
        ready = self._ready
        if ready and not self._closed and bufsize >= 0:
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
        if bufsize < 0:
            raise ValueError("negative buffersize in recvfrom")
        return self._receive(None, bufsize)

    def recv(self, bufsize):
        return self.recvfrom(bufsize)[0]

    def recvfrom_into(self, buffer, nbytes=0):
        """Copy the next datagram into *buffer*; return ``(nbytes_copied, (host, port))``."""
        ready = self._ready
        if ready and not nbytes and type(buffer) is bytearray and not self._closed:
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
        if nbytes == 0 and type(buffer) is bytearray:
            return self._receive(buffer, len(buffer))
        return self._receive(*_writable_bytes(buffer, nbytes))

    def recv_into(self, buffer, nbytes=0):
        return self.recvfrom_into(buffer, nbytes)[0]

    def _receive(self, target, nbytes):
        receiver = self._receiver
        if self._closed:
            raise SocketClosedError()
        if receiver is None:
            raise NotBoundError()
        nonblocking = self._timeout == 0.0
        if nonblocking or receiver.drain_before_wait or receiver.ready:
            # Read without waiting.  close() takes io_lock before it releases the captures,
            # so holding it here is enough.
            with receiver.io_lock:
                if self._closed:
                    raise SocketClosedError()
                result = receiver.poll(target, nbytes)
            if result is not None:
                return result
            if nonblocking:
                raise BlockingIOError(errno.EAGAIN, "no datagram is queued (non-blocking)")
        # Otherwise (Linux, immediate mode) the wait itself returns at once while the ring
        # holds unread frames: no read attempt before it.
        return self._wait_and_receive(receiver, target, nbytes)

    def _wait_and_receive(self, receiver, target, nbytes):
        """Slow path: wait for frames, then read them.

        The thread holds a token in ``_receiving`` while it may be inside the waiter, so that
        close() can wake it and wait for it to leave before releasing the waiter and captures.
        The token goes in before ``_closed`` is read, and close() sets ``_closed`` before it
        looks for tokens: either close() sees the token, or this thread sees ``_closed``.
        This runs once per wake-up, so it is kept short: at low rates its cost is latency.
        """
        timeout = self._timeout
        deadline = None if timeout is None else _monotonic() + timeout
        receiving = self._receiving
        receiving.append(None)
        try:
            if self._closed:
                raise SocketClosedError()
            wait = receiver.waiter.wait      # close() leaves the waiter to us from here on
            poll = receiver.poll
            io_lock = receiver.io_lock
            while True:
                if receiver.coalescing:
                    # Frames arrive faster than wake-ups pay off: let some collect first.
                    delay = receiver.coalesce
                    if deadline is not None:
                        delay = min(delay, deadline - _monotonic())
                    if delay > 0:
                        time.sleep(delay)
                    self._stats.coalesced_waits += 1
                elif deadline is None:
                    wait(None)
                else:
                    remaining = deadline - _monotonic()
                    if remaining <= 0:
                        raise socket.timeout("timed out")
                    wait(remaining)
                with io_lock:
                    if self._closed:
                        raise SocketClosedError()
                    result = poll(target, nbytes)
                if result is not None:
                    return result
        finally:
            receiving.pop()

    # -- statistics and lifetime -------------------------------------------------------------

    def statistics(self):
        """A dict of this socket's counters (see :class:`~udpcap_ctypes._stats.Statistics`)."""
        receiver = self._receiver
        if receiver is not None and not self._closed:
            self._stats.capture_drops = receiver.capture_drops()
            receiver.settle_stats()
        return self._stats.snapshot()

    def filter_expressions(self):
        """``{device: BPF filter}`` in force (for diagnostics)."""
        receiver = self._receiver
        if receiver is None:
            return {}
        return {c.device.name: c.filter_text for c in receiver.captures}

    def close(self):
        """Close the socket; a receive blocked in another thread raises SocketClosedError.

        The blocked thread is woken at once and raises; this call then waits (briefly) for it
        to leave the wait before releasing the captures, so the waiter is never closed under it.
        The wake-up is permanent, so a thread about to wait cannot miss it.
        """
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            receiver = self._receiver
        if receiver is None:
            return
        if self._receiving:
            receiver.waiter.wake()
            deadline = _monotonic() + _CLOSE_WAIT
            while self._receiving and _monotonic() < deadline:
                time.sleep(0.001)
            if self._receiving:
                log.warning("a receiving thread did not leave within %.1f s of close(); "
                            "its captures are released anyway", _CLOSE_WAIT)
        with receiver.io_lock:           # waits for a fast-path poll() to finish
            receiver.close()

    def _check_open(self):
        if self._closed:
            raise SocketClosedError()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __del__(self):
        # Safety net for sockets that were never closed: release the captures.
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass

    def __repr__(self):
        state = "closed" if self._closed else ("bound to %s:%d" % self._sockname
                                               if self._sockname else "unbound")
        return "<UdpcapSocket %s>" % state


def _writable_bytes(buffer, nbytes):
    """``(target, nbytes)`` for recvfrom_into: a writable byte view of *buffer*."""
    view = memoryview(buffer)
    if view.readonly:
        raise TypeError("recvfrom_into() argument 'buffer' must be read-write bytes-like object")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    if nbytes < 0:
        raise ValueError("negative buffersize in recvfrom_into")
    if nbytes == 0:
        nbytes = len(view)
    elif nbytes > len(view):
        raise ValueError("nbytes is greater than the length of the buffer")
    return view, nbytes


def _free_port(host):
    """An ephemeral port that no kernel socket uses on *host*, for bind(port=0)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind((host, 0))
        return probe.getsockname()[1]
    finally:
        probe.close()
