"""The private implementation behind :class:`~udpcap_ctypes.UdpcapSocket`.

A :class:`Receiver` owns, for one bound socket: the open captures (one per device), their BPF
filters, the waiter, the reassembler, the kernel helper sockets, the rules that decide which
parsed datagram is delivered, and receiving itself -- waiting, interrupt moderation and the
close handshake.  The public socket adds argument checking, the socket-shaped surface and the
lock-free fast path for datagrams already queued.

Setting up is two steps: :meth:`Receiver.configure` (pure: the rules for a bind over a list of
devices) and :meth:`Receiver.open` (the captures, the waiter, the helper sockets).

Locking: ``io_lock`` is held while frames are read or filters are swapped, never while waiting,
so ``join``/``leave``/``set_multicast_loopback`` from other threads wait at most one batch.
"""

import collections
import errno
import logging
import socket
import struct
import threading
import time

from . import _fixes, _packet, _pcap
from ._kernel_sockets import MembershipHolder, PortGuard
from ._net import ip_text
from ._reassembly import Reassembler
from .errors import PcapError, SocketClosedError

log = logging.getLogger(__name__)

_u16 = struct.Struct("!H")
_monotonic = time.monotonic
_ADDRESS_CACHE_LIMIT = 4096
_CLOSE_WAIT = 2.0       # how long shutdown() waits for woken receivers to leave their wait


def is_multicast(address):
    return address >> 28 == 0xE


class _OpenCapture:
    """A capture plus what the delivery rules need to know about its device."""

    __slots__ = ("capture", "device", "parse_link", "is_own", "is_loopback", "own",
                 "filter_text", "view", "reader", "parse_batch", "check_own", "addresses")

    def __init__(self, capture, device, own, own_on_egress):
        """*own*: how this host's frames look here (``_platform.OwnFrames``)."""
        self.capture = capture
        self.device = device
        self.addresses = frozenset(address for address, _m, _b in device.ipv4)
        self.is_loopback = device.loopback
        self.own = own
        self.parse_link = _packet.make_link_parser(capture.linktype)
        self.is_own = _packet.make_outgoing_test(capture.linktype, own.macs)
        # Must a frame's direction be asked before delivering unicast?  (See Receiver._fill.)
        self.check_own = own_on_egress and (bool(own.macs) or capture.linktype in (
            _pcap.DLT_LINUX_SLL, _pcap.DLT_LINUX_SLL2))
        self.parse_batch = _packet.make_batch_parser(capture.linktype)
        self.filter_text = None
        self.reader = capture.reader
        self.view = capture.reader.view


class Receiver:
    """Captures, delivery rules and receiving of one bound socket."""

    def __init__(self, platform, stats, options):
        self.platform = platform
        self.stats = stats
        self.options = options
        self.io_lock = threading.Lock()
        self.captures = []
        self.chosen = []                # the devices to open (configure)
        self.waiter = None
        self.port = 0
        self.bound_address = 0          # int; 0 = any
        self.local_addresses = frozenset()
        self.interface_addresses = frozenset()
        self.membership_pairs = frozenset()   # (group, interface address or 0)
        self.groups = frozenset()       # joined groups (ints)
        self.group_interfaces = {}      # group -> interface addresses it was joined on (0: any)
        self.readiness = None           # fileno()'s pollable fd, when the socket has one
        self.multicast_loopback = True
        self.memberships = None
        self.port_guard = None
        self._addresses = {}            # (src << 16 | sport) -> ("a.b.c.d", sport)
        self.ready = collections.deque()  # (buffer, first, last, address) to hand out
        self.reassembler = Reassembler(stats, max_age=options.reassembly_timeout,
                                       wanted=self._wanted_first_fragment)
        self._verify_udp = options.verify_udp_checksum
        self._own_on_egress = platform.own_multicast_seen_on == "egress"
        # Read the captures before every wait?  Needed where the wait cannot see frames the
        # capture library already holds: Npcap (its event is not signalled again for them)
        # and TPACKET_V3 blocks that libpcap has started.  With immediate mode on Linux the
        # ring's fd is readable exactly while unread frames remain, so the wait itself tells,
        # and an idle receiver makes one native call per datagram instead of two.
        self.drain_before_wait = platform.drain_before_wait or not options.immediate
        # Interrupt moderation (Options.coalesce): _fill decides, the wait loop sleeps.
        self.coalesce = (platform.coalesce_default(options.immediate)
                         if options.coalesce is None else options.coalesce)
        self.coalescing = False
        self._last_fill = 0.0
        self.lost = []                  # captures whose device went away (closed on close())
        self._lost_drops = 0            # their drop counts when they went
        self.failure = None             # (errno, text) once no capture is left to read
        # The close handshake: one token per thread inside receive() (deque append/pop are
        # atomic), so that shutdown() can wake them and wait for them to leave.
        self.closing = False
        self._receiving = collections.deque()

    # -- setting up --------------------------------------------------------------------------

    def configure(self, devices, address, port, memberships=(), multicast_loopback=True):
        """The receive rules for a bind to *address* (int, 0 = any) and *port* over *devices*
        (``Device`` objects with ``loopback`` decided).  Pure: nothing is opened.  Raises
        ``EADDRNOTAVAIL`` when no device owns *address*, ``ENODEV`` for a membership on an
        interface address no device has."""
        devices = [d for d in devices if d.ipv4 or d.loopback]
        self.chosen = select_devices(devices, address)
        self.port = port
        self.bound_address = address
        self.multicast_loopback = multicast_loopback
        local = set()
        for device in devices:
            for addr, mask, broadcast in device.ipv4:
                local.add(addr)
                if broadcast:
                    local.add(broadcast)
                if mask and mask < 0xFFFFFFFE:
                    # Linux makes the subnet's all-ones and all-zeros addresses local
                    # broadcasts whatever "brd" says (fib_add_ifaddr), so a socket bound to
                    # 0.0.0.0 receives them.
                    local.add((addr & mask) | (~mask & 0xFFFFFFFF))
                    local.add(addr & mask)
        local.add(0xFFFFFFFF)
        self.local_addresses = frozenset(local)
        self.interface_addresses = frozenset(a for d in devices for a, _m, _b in d.ipv4)
        for _group, interface in memberships:
            if interface:
                self.check_interface(interface)
        self._set_memberships(memberships)

    def open(self, buffer_size, readiness=None):
        """Open and filter a capture on every chosen device (see :meth:`configure`), then the
        waiter and the helper sockets.

        A device that fails to open is logged, counted (``devices_failed``) and left out when
        the socket can do without it: any device of a bind to 0.0.0.0, the loopback device of
        a bind to an interface address.  Opening fails only when nothing opens.
        """
        address, port = self.bound_address, self.port
        try:
            failure = None
            for device in self.chosen:
                try:
                    opened = self._open_capture(device, buffer_size)
                except OSError as exc:
                    if not (address == 0 or address >> 24 != 127 and device.loopback):
                        raise
                    self.stats.devices_failed += 1
                    log.warning("not capturing on %s%s: %s", device.name,
                                " (%s)" % device.description if device.description else "",
                                exc)
                    failure = failure or exc
                    continue
                self.captures.append(opened)
                self._apply_filter(opened)
            if not self.captures:
                raise failure or OSError(errno.ENODEV, "no capture device could be opened")
            # Between activation and the filter, the ring took whatever the device carried; on a
            # busy loopback that can fill it and drop the first datagrams for us.  libpcap runs
            # the new filter over those frames in user space, so reading them now keeps what is
            # ours (queued) and frees the ring.
            while self._fill():
                pass
            self.waiter = self.platform.make_waiter([c.capture for c in self.captures],
                                                    self.options.immediate)
            if readiness is not None:
                self.attach_readiness(readiness)
            self.platform.groups_joined(self.groups, self.captures, self.multicast_loopback)
            hold = self.options.hold_memberships
            if hold is None:
                hold = self.platform.hold_memberships_default()
            if hold:
                interfaces = ([address] if address and not (address >> 24 == 127) else
                              [a for d in self.chosen if not d.loopback
                               for a, _m, _b in d.ipv4])
                self.memberships = MembershipHolder(interfaces)
                for group, interface in self.membership_pairs:
                    self.memberships.join(group, interface)
            guard = self.options.port_guard
            if guard is None:
                guard = self.platform.port_guard_default()
            if guard:
                self.port_guard = PortGuard.acquire(
                    ip_text(address), port, self.platform.port_guard_options,
                    required=self.options.port_guard is True)
        except BaseException:
            self.close()
            raise
        log.debug("bound %s:%d on %s", ip_text(address), port,
                  ", ".join(c.device.name for c in self.captures))

    def _open_capture(self, device, buffer_size):
        """Open one device through the platform: an :class:`_OpenCapture` (not yet filtered).

        A device that refuses promiscuous mode is opened again without it, with a warning
        (multicast may then arrive only for groups some local socket has joined).
        """
        promiscuous = self.options.promiscuous
        while True:
            try:
                capture = self.platform.open_capture(device, buffer_size,
                                                     self.options.immediate, promiscuous)
                break
            except OSError as exc:
                if (not promiscuous or isinstance(exc, PermissionError)
                        or exc.errno == errno.ENODEV):
                    raise
                log.warning("%s: %s; opening it again without promiscuous mode", device.name,
                            exc)
                promiscuous = False
        try:
            return _OpenCapture(capture, device, self.platform.own_frames(device, capture),
                                self._own_on_egress)
        except _packet.UnsupportedLinkType as exc:
            capture.close()
            raise OSError(errno.EPROTONOSUPPORT, "cannot capture on %s: %s"
                          % (device.name, exc)) from None
        except BaseException:
            capture.close()
            raise

    def filter_expression(self, opened):
        """The BPF filter for one capture (also shown by ``check --verbose``)."""
        port = self.port
        group_terms = ["dst host %s" % ip_text(g) for g in sorted(self._groups_for(opened))]
        if self.bound_address:
            destinations = ["dst host %s" % ip_text(self.bound_address)] + group_terms
        else:
            # Any unicast (the parser keeps only local addresses) and joined groups only.
            destinations = ["not dst net 224.0.0.0/4"] + group_terms
        text = ("udp and (%s) and (dst port %d or ip[6:2] & 0x1fff != 0)"
                % (" or ".join(destinations), port))
        own = opened.own.clause(self.multicast_loopback)
        if own:
            text = "(%s) and %s" % (own, text)
        return text

    def _groups_for(self, opened):
        """The groups a capture may deliver: those joined on any interface or on one of its
        device's addresses (the loopback device carries this host's own multicast, whichever
        interface it was sent on)."""
        if opened.is_loopback:
            return self.groups
        return [group for group, where in self.group_interfaces.items()
                if 0 in where or where & opened.addresses]

    def _set_memberships(self, memberships):
        pairs = frozenset(memberships)
        interfaces = {}
        for group, interface in pairs:
            interfaces.setdefault(group, set()).add(interface)
        self.membership_pairs = pairs
        self.group_interfaces = {group: frozenset(where) for group, where in interfaces.items()}
        self.groups = frozenset(interfaces)

    def check_interface(self, interface):
        """OSError unless *interface* (int) is the address of a local interface."""
        if interface not in self.interface_addresses:
            raise OSError(errno.ENODEV, "no local interface has the address %s (local IPv4 "
                          "addresses: %s)" % (ip_text(interface), ", ".join(
                              sorted(ip_text(a) for a in self.interface_addresses)) or "none"))

    def attach_readiness(self, readiness):
        """Have *readiness* (see ``Platform.make_readiness``) watch this socket's captures."""
        self.readiness = readiness
        readiness.watch(self.waiter, [c.capture for c in self.captures])

    def _apply_filter(self, opened):
        text = self.filter_expression(opened)
        if text != opened.filter_text:
            opened.capture.set_filter(text)
            opened.filter_text = text

    def _drain(self, opened):
        """Queue the datagrams a capture holds now, under the delivery rules in force.

        Called before a join, leave or loopback change: Npcap discards pending frames when the
        filter changes, libpcap on Linux filters frames still in the ring with the new filter,
        and a socket delivers what was queued before the change.  The frames are copied out
        (``pending_records``) because queued datagrams may still point into the batch
        reader's buffer.
        """
        records, count = opened.capture.pending_records()
        if count:
            self.stats.frames += count
            view = memoryview(records)
            datagrams = []
            opened.parse_batch(view, 0, count, self.port, self.stats, self._verify_udp,
                               datagrams)
            if datagrams:
                self._queue(opened, view, datagrams, _monotonic())

    def update(self, memberships=None, multicast_loopback=None):
        """Swap the memberships (``(group, interface)`` pairs) and/or the loopback flag;
        refilter every capture (any thread)."""
        with self.io_lock:
            for opened in list(self.captures):
                try:
                    self._drain(opened)
                except PcapError as exc:
                    self._lose(opened, exc)
            old_groups, old_pairs = self.groups, self.membership_pairs
            if memberships is not None:
                self._set_memberships(memberships)
                if self.memberships is not None:
                    for group, interface in self.membership_pairs - old_pairs:
                        self.memberships.join(group, interface)
                    for group, interface in old_pairs - self.membership_pairs:
                        self.memberships.leave(group, interface)
            if multicast_loopback is not None:
                self.multicast_loopback = multicast_loopback
            for opened in self.captures:
                self._apply_filter(opened)
            fresh = (self.groups - old_groups if multicast_loopback is None else self.groups)
            self.platform.groups_joined(fresh, self.captures, self.multicast_loopback)

    # -- receiving ---------------------------------------------------------------------------

    def receive(self, target, nbytes, timeout):
        """The next datagram, as :meth:`poll` hands it out, waiting as a socket with
        *timeout* would (None: without limit; 0: not at all, ``BlockingIOError``).

        Raises ``socket.timeout`` when nothing came in time and ``SocketClosedError`` when
        :meth:`shutdown` ends the wait.
        """
        nonblocking = timeout == 0.0
        if nonblocking or self.drain_before_wait or self.ready:
            # Read without waiting.  shutdown() takes io_lock before it releases the captures,
            # so holding it here is enough.
            with self.io_lock:
                if self.closing:
                    raise SocketClosedError()
                result = self.poll(target, nbytes)
            if result is not None:
                return result
            if nonblocking:
                raise BlockingIOError(errno.EAGAIN, "no datagram is queued (non-blocking)")
        # Otherwise (Linux, immediate mode) the wait itself returns at once while the ring
        # holds unread frames: no read attempt before it.
        return self._wait_and_receive(target, nbytes, timeout)

    def _wait_and_receive(self, target, nbytes, timeout):
        """Slow path: wait for frames, then read them.

        The thread holds a token in ``_receiving`` while it may be inside the waiter, so that
        shutdown() can wake it and wait for it to leave before releasing the waiter and the
        captures.  The token goes in before ``closing`` is read, and shutdown() sets
        ``closing`` before it looks for tokens: either shutdown() sees the token, or this
        thread sees ``closing``.  This runs once per wake-up, so it is kept short: at low rates
        its cost is latency.
        """
        deadline = None if timeout is None else _monotonic() + timeout
        receiving = self._receiving
        receiving.append(None)
        try:
            if self.closing:
                raise SocketClosedError()
            wait = self.waiter.wait          # shutdown() leaves the waiter to us from here on
            poll = self.poll
            io_lock = self.io_lock
            while True:
                if self.coalescing:
                    # Frames arrive faster than wake-ups pay off: let some collect first.
                    delay = self.coalesce
                    if deadline is not None:
                        delay = min(delay, deadline - _monotonic())
                    if delay > 0:
                        time.sleep(delay)
                    self.stats.coalesced_waits += 1
                elif deadline is None:
                    wait(None)
                else:
                    remaining = deadline - _monotonic()
                    if remaining <= 0:
                        raise socket.timeout("timed out")
                    wait(remaining)
                with io_lock:
                    if self.closing:
                        raise SocketClosedError()
                    result = poll(target, nbytes)
                if result is not None:
                    return result
        finally:
            receiving.pop()

    def shutdown(self):
        """Wake every thread blocked in :meth:`receive` (each raises ``SocketClosedError``),
        wait briefly for them to leave the wait, then release everything (:meth:`close`).
        The wake-up is permanent, so a thread about to wait cannot miss it."""
        self.closing = True
        if self._receiving and self.waiter is not None:
            self.waiter.wake()
            deadline = _monotonic() + _CLOSE_WAIT
            while self._receiving and _monotonic() < deadline:
                time.sleep(0.001)
            if self._receiving:
                log.warning("a receiving thread did not leave within %.1f s of close(); "
                            "its captures are released anyway", _CLOSE_WAIT)
        with self.io_lock:           # waits for a fast-path poll() to finish
            self.close()

    def _wanted_first_fragment(self, udp_header):
        return _u16.unpack_from(udp_header, 2)[0] == self.port

    def poll(self, target, nbytes):
        """Hand out the next deliverable datagram.  Caller holds ``io_lock``.

        Returns ``(payload_or_count, address)`` or None.  With a *target* (a ``bytearray`` or
        a writable byte ``memoryview``) the payload is copied into it, at most *nbytes*;
        otherwise a new ``bytes`` of at most *nbytes* is returned.  Datagrams come from
        :attr:`ready`; when it is empty, the captures are read (:meth:`_fill`).
        ``stats.delivered`` is settled from the queue length (see :meth:`settle_stats`), so
        handing out costs no counter update.
        """
        ready = self.ready
        if not ready and not self._fill():
            return None
        buf, first, last, address = ready.popleft()
        if self.readiness is not None and (ready or self.drain_before_wait):
            # More may be ready without any fd saying so: queued here, or held by libpcap.
            self.readiness.set()
        if last - first > nbytes:
            self.stats.truncated_deliveries += 1
            last = first + nbytes
        if target is None:
            return (bytes(buf[first:last]), address)
        # Through a memoryview: a bytearray's slice assignment would copy a memoryview source
        # into a temporary bytearray first (an extra allocation and copy per datagram).
        memoryview(target)[:last - first] = buf[first:last]
        return (last - first, address)

    def settle_stats(self):
        """Make ``delivered``/``delivered_bytes`` count handed-out datagrams only."""
        with self.io_lock:
            stats = self.stats
            stats.delivered = stats.accepted - len(self.ready)
            stats.delivered_bytes = stats.accepted_bytes - sum(
                last - first for _b, first, last, _a in self.ready)

    def _fill(self):
        """Read batches from the captures, round robin, until one yields a deliverable datagram
        (True) or every capture is empty (False).

        A batch stays valid until the next refill of its capture, which happens only once
        :attr:`ready` is empty again.  The pure batch parser finds the UDP datagrams to our
        port; this loop applies the delivery rules and queues what passes.  It runs once per
        wake-up, so it is written for few bytecodes: at low rates its cost is latency.
        """
        stats = self.stats
        now = _monotonic()
        datagrams = []
        captures = self.captures
        if self.readiness is not None:
            self.readiness.clear()      # reading everything now: the fds speak from here on
        for turn, opened in enumerate(captures):
            # Drain this capture until a batch yields something or it is empty: on Windows the
            # read event is not signalled again for frames libpcap already holds, so waiting
            # with frames left behind could sleep on data that has arrived.
            reader = opened.reader
            try:
                found = reader.refill()
                while found:
                    stats.frames += found
                    view = opened.view
                    reader.consumed(opened.parse_batch(view, reader.start, found, self.port,
                                                       stats, self._verify_udp, datagrams))
                    if datagrams and self._queue(opened, view, datagrams, now):
                        if len(captures) > 1:       # the next fill starts with the next capture
                            self.captures = captures[turn + 1:] + captures[:turn + 1]
                        if self.coalesce:
                            # Coalesce once the capture is empty, if frames come more than one
                            # per wake-up or closer together than two coalescing delays.
                            self.coalescing = reader.exhausted and (
                                found > 1 or now - self._last_fill < 2.0 * self.coalesce)
                            self._last_fill = now
                        return True
                    found = reader.refill()
            except PcapError as exc:
                self._lose(opened, exc)
                return self._fill()
        self.coalescing = False
        if self.failure is not None:
            raise OSError(*self.failure)
        return False

    def _lose(self, opened, exc):
        """A capture failed while reading (its device went away): receive on without it.

        The capture stays open until :meth:`close` -- another thread may be waiting on its
        event or fd at this moment -- but it is out of the read rotation and the waiter.  When
        nothing is left, or the socket was bound to that device's address, every receive
        raises ``ENETDOWN`` from now on.
        """
        self.captures = [c for c in self.captures if c is not opened]
        self.lost.append(opened)
        self.stats.devices_lost += 1
        self._lost_drops += opened.capture.drops()      # as last known: counters stay monotonic
        bound_here = self.bound_address and any(
            address == self.bound_address for address, _m, _b in opened.device.ipv4)
        if self.captures and not bound_here:
            log.warning("stopped capturing on %s (%s); receiving goes on on %s",
                        opened.device.name, exc, ", ".join(c.device.name for c in self.captures))
            if self.waiter is not None:
                self.waiter.set_captures([c.capture for c in self.captures])
            if self.readiness is not None:
                self.readiness.watch(self.waiter, [c.capture for c in self.captures])
            return
        self.captures = []
        self.failure = (errno.ENETDOWN, "cannot receive: the capture on %s failed (%s)%s. Fix: "
                        "bind a new socket once the interface is back"
                        % (opened.device.name, exc, "" if bound_here else
                           ", and no other device is left"))
        log.warning("%s", self.failure[1])
        if self.waiter is not None:
            self.waiter.wake()          # every waiting receive returns and raises
        if self.readiness is not None:
            self.readiness.set()

    def _queue(self, opened, view, datagrams, now):
        """Apply the delivery rules to one parsed batch and queue what passes; True if any."""
        stats = self.stats
        ready = self.ready
        append = ready.append
        addresses = self._addresses
        bound = self.bound_address
        local = self.local_addresses
        check_own = opened.check_own
        queued = len(ready)
        queued_bytes = 0
        for src, dst, sport, first, last, start, buf in datagrams:
            if src is None:
                # A fragment, in its place in the batch so that datagrams are queued in the
                # order they complete, as a socket would.
                completed = self._reassemble(dst, view, now)
                if completed is None:
                    continue
                src, dst, sport, first, last, buf = completed
            # Delivery rules; the common case (incoming unicast) inline.
            if dst >> 28 == 0xE or (check_own and opened.is_own(view, start)):
                if not self._accepts_special(dst, opened, view, start):
                    continue
            elif bound:
                if dst != bound:
                    stats.not_for_us += 1
                    continue
            elif dst not in local and dst >> 24 != 127:
                stats.not_for_us += 1
                continue
            key = (src << 16) | sport
            address = addresses.get(key)
            if address is None:
                address = self._address(key, src, sport)
            queued_bytes += last - first
            append((buf, first, last, address))
        datagrams.clear()
        queued = len(ready) - queued
        if not queued:
            return False
        stats.accepted += queued
        stats.accepted_bytes += queued_bytes
        return True

    def _reassemble(self, parsed, view, now):
        """Feed one fragment; ``(src, dst, sport, first, last, buffer)`` when it completes a
        UDP datagram to our port, else None."""
        _, src, dst, ident, offset, more, first, last = parsed
        segment = self.reassembler.add(src, dst, ident, offset, more, view[first:last], now)
        if segment is None:
            return None
        udp = _packet.parse_udp(segment, src, dst, self.stats, self._verify_udp)
        if udp is None:
            return None
        if udp[4] != self.port:
            self.stats.not_for_us += 1
            return None
        return (src, dst, udp[3], udp[5], udp[6], memoryview(segment))

    def _accepts_special(self, dst, opened, buf, start):
        """Delivery rules for multicast, and for frames this host sent itself."""
        if dst >> 28 == 0xE:
            where = self.group_interfaces.get(dst)
            if where is None or (0 not in where and not opened.is_loopback
                                 and not where & opened.addresses):
                self.stats.not_for_us += 1      # not joined, or joined on another interface
                return False
            if self._own_on_egress:
                own = opened.is_own(buf, start)
            else:
                own = opened.is_loopback
            if own and not self.multicast_loopback:
                self.stats.own_multicast_dropped += 1
                return False
            return True
        self.stats.not_for_us += 1             # unicast this host sent elsewhere
        return False

    def _address(self, key, src, sport):
        if len(self._addresses) >= _ADDRESS_CACHE_LIMIT:
            self._addresses.clear()
        address = self._addresses[key] = (ip_text(src), sport)
        return address

    def capture_drops(self):
        with self.io_lock:
            return self._lost_drops + sum(c.capture.drops() for c in self.captures
                                          if c.capture.handle)

    def close(self):
        """Release captures, waiter and kernel sockets.  Idempotent."""
        for opened in self.captures + self.lost:
            try:
                opened.capture.close()
            except Exception:                    # pragma: no cover - best effort on close
                log.exception("closing capture on %s", opened.device.name)
        self.captures = []
        self.lost = []
        if self.waiter is not None:
            self.waiter.close()
            self.waiter = None
        if self.memberships is not None:
            self.memberships.close()
            self.memberships = None
        if self.port_guard is not None:
            self.port_guard.close()
            self.port_guard = None
        self.reassembler.clear()
        self.ready.clear()


def select_devices(devices, address):
    """Devices to capture on for a bind to *address* (int; 0 = any), as udpcap does.

    loopback address -> the loopback device; any -> every device with IPv4 (loopback included);
    a specific address -> the device that owns it, plus loopback.  Raises EADDRNOTAVAIL when no
    device owns the address.
    """
    loopbacks = [d for d in devices if d.loopback]
    if address >> 24 == 127:
        if not loopbacks:
            raise OSError(errno.EADDRNOTAVAIL,
                          "cannot bind to %s: no loopback capture device. Fix on Windows: %s"
                          % (ip_text(address), _fixes.REINSTALL_NPCAP_WITH_LOOPBACK))
        return loopbacks[:1]
    if address == 0:
        chosen = [d for d in devices if d.ipv4 and not d.loopback]
        return loopbacks[:1] + chosen
    owners = [d for d in devices if any(a == address for a, _m, _b in d.ipv4)]
    if not owners:
        known = sorted({ip_text(a) for d in devices for a, _m, _b in d.ipv4})
        raise OSError(errno.EADDRNOTAVAIL,
                      "cannot bind to %s: no local interface has this address (local IPv4 "
                      "addresses: %s); bind to one of them or to 0.0.0.0"
                      % (ip_text(address), ", ".join(known) or "none"))
    return [d for d in owners if not d.loopback][:1] + loopbacks[:1]
