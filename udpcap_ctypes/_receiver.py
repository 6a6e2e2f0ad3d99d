"""The private implementation behind :class:`~udpcap_ctypes.UdpcapSocket`.

A :class:`Receiver` owns, for one bound socket: its subscriptions to the process's shared
captures (one per device, see ``_shared_capture``), its part of their BPF filters, the waiter,
the kernel helper sockets, the rules that decide which parsed datagram is delivered to it, its
queue, and receiving itself -- waiting, interrupt moderation and the close handshake.  The
public socket adds argument checking, the socket-shaped surface and the lock-free fast path
for datagrams already queued.

Setting up is two steps: :meth:`Receiver.configure` (pure: the rules for a bind over a list of
devices) and :meth:`Receiver.open` (the captures, the waiter, the helper sockets).

Locking: ``io_lock`` is held while this socket reads its captures or changes its filters,
never while waiting, so ``join``/``leave``/``set_multicast_loopback`` from other threads wait
at most one batch.  A capture's own lock comes after ``io_lock``.  Another socket's thread
reading a shared capture appends to :attr:`Receiver.ready` (deque appends are atomic) and
wakes this socket's waiter (:meth:`Receiver.notify`).
"""

import collections
import errno
import logging
import socket
import threading
import time

from . import _fixes, _packet
from ._kernel_sockets import MembershipHolder, PortGuard
from ._net import ip_text
from ._platform import capture_reader
from ._shared_capture import REGISTRY, SharedCapture
from .errors import PcapError, SocketClosedError

log = logging.getLogger(__name__)

_monotonic = time.monotonic
_ADDRESS_CACHE_LIMIT = 4096
_CLOSE_WAIT = 2.0       # how long shutdown() waits for woken receivers to leave their wait
_OPEN_READ_BATCHES = 16  # batches open() reads of what a capture took before its filter
# What a queued datagram costs beyond its payload, for the queue limit: the 4-tuple (72
# bytes) and the bytes object's header (33), rounded up, as a kernel counts an skb's truesize.
ENTRY_OVERHEAD = 128
# Interrupt moderation (Receiver._moderate): pause only where at least this many frames are
# expected within the budget, and no longer than it takes this many to arrive.
MODERATE_FROM = 2.0
MODERATE_BATCH = 64
_RATE_WEIGHT = 0.25     # of each fill's rate in the moving average

# The socket's counters that its subscriptions keep (see settle_stats) ...
SUBSCRIPTION_COUNTERS = ("accepted", "accepted_bytes", "own_multicast_dropped",
                         "queue_dropped")
# ... those its captures keep, reported as counted since the socket subscribed ...
CAPTURE_COUNTERS = ("frames", "not_for_us", "fragments", "reassembled", "reassembly_timeouts",
                    "reassembly_evictions", "fragments_unwanted")
# ... and the reassembly gauges of its captures, reported as they are now.
CAPTURE_GAUGES = ("pending_datagrams", "pending_bytes")


def is_multicast(address):
    return address >> 28 == 0xE


def moderation_pause(rate, budget):
    """Seconds to let frames collect before the next read, for an arrival *rate* (frames/s)
    and a latency *budget* (seconds; 0: never): 0 where fewer than MODERATE_FROM frames would
    arrive within the budget (a lone datagram pays no added latency), otherwise the budget, or
    less where MODERATE_BATCH frames arrive sooner (bigger batches save little more, and a
    short pause keeps the ring from filling)."""
    if rate * budget < MODERATE_FROM:
        return 0.0
    return min(budget, MODERATE_BATCH / rate)


class Subscription:
    """One receiver's place in one :class:`~._shared_capture.SharedCapture`, with the
    counters of what it accepted there (written by whichever thread reads the capture, under
    the capture's lock) and the capture's counters when it subscribed."""

    __slots__ = ("receiver", "shared", "accepted", "accepted_bytes", "not_for_us",
                 "own_multicast_dropped", "queue_dropped", "base", "malformed_base",
                 "drops_base")

    def __init__(self, receiver, shared):
        self.receiver = receiver
        self.shared = shared
        self.accepted = 0
        self.accepted_bytes = 0
        self.not_for_us = 0
        self.own_multicast_dropped = 0
        self.queue_dropped = 0
        stats = shared.stats
        self.base = {name: getattr(stats, name) for name in CAPTURE_COUNTERS}
        self.malformed_base = dict(stats.malformed)
        self.drops_base = shared.capture.drops() if shared.capture.handle else 0

    @property
    def capture(self):
        return self.shared.capture

    @property
    def device(self):
        return self.shared.device

    @property
    def filter_text(self):
        """The filter in force on the shared capture (the union of its subscribers')."""
        return self.shared.filter_text

    def drops(self):
        """Capture drops since this subscription began (shared: every subscriber sees them)."""
        capture = self.shared.capture
        return capture.drops() - self.drops_base if capture.handle else 0


class Receiver:
    """Captures, delivery rules and receiving of one bound socket."""

    def __init__(self, platform, stats, options, queue_limit=None, ring_size=None,
                 registry=REGISTRY):
        """*queue_limit*: bytes of datagrams other sockets' reads may queue here (None: no
        limit); *ring_size*: the capture buffer to ask for (None: the platform's default for
        each device)."""
        self.platform = platform
        self.stats = stats
        self.options = options
        self.registry = registry
        self.queue_limit = queue_limit
        self.ring_size = ring_size
        self.io_lock = threading.Lock()
        self.captures = []              # Subscriptions, in read order (rotated for fairness)
        self.chosen = []                # the devices to open (configure)
        self.waiter = None
        self.waited = ()                # subscriptions in the waiter's order (its wait masks)
        self.fd_of = {}                 # subscription -> ring fd, where a wait names ready fds
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
        # Admission of copies queued by any thread (see _admit): an upper bound of the bytes
        # queued, made exact only when it reaches the limit.
        self._queue_lock = threading.Lock()
        self._queued_bound = 0
        self._full_at = None
        self._verify_udp = options.verify_udp_checksum
        self.reader = capture_reader(options.reader)
        self._own_on_egress = platform.own_multicast_seen_on == "egress"
        # Read the captures before every wait?  Needed where the wait cannot see frames the
        # capture library already holds: Npcap (its event is not signalled again for them)
        # and TPACKET_V3 blocks that libpcap has started.  With immediate mode on Linux the
        # ring's fd is readable exactly while unread frames remain, so the wait itself tells,
        # and an idle receiver makes one native call per datagram instead of two.
        self.drain_before_wait = platform.drain_before_wait or not options.immediate
        # Interrupt moderation (Options.coalesce, the latency budget): _fill estimates the
        # arrival rate and decides, the wait loop sleeps self.pause.
        self.coalesce = (platform.coalesce_default(options.immediate)
                         if options.coalesce is None else options.coalesce)
        self.coalescing = False
        self.pause = 0.0
        self.rate = 0.0                 # frames/s seen by _fill (moving average)
        self._last_fill = 0.0
        self.lost = []                  # subscriptions whose capture failed (kept for counts)
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

    def open(self, readiness=None):
        """Subscribe to a shared capture on every chosen device (see :meth:`configure`),
        opening the ones this process does not have yet, then make the waiter and the
        helper sockets.

        A device that fails to open is logged, counted (``devices_failed``) and left out when
        the socket can do without it: any device of a bind to 0.0.0.0, the loopback device of
        a bind to an interface address.  Opening fails only when nothing opens.
        """
        address, port = self.bound_address, self.port
        try:
            failure = None
            for device in self.chosen:
                try:
                    subscription = self._subscribe(device)
                except OSError as exc:
                    if not self._can_do_without(device):
                        raise
                    self.stats.devices_failed += 1
                    log.warning("not capturing on %s%s: %s", device.name,
                                " (%s)" % device.description if device.description else "",
                                exc)
                    failure = failure or exc
                    continue
                self.captures.append(subscription)
            if not self.captures:
                raise failure or OSError(errno.ENODEV, "no capture device could be opened")
            self.waiter = self.platform.make_waiter([c.capture for c in self.captures],
                                                    self.options.immediate)
            self._set_waited()
            # Between activation and the filter, the ring took whatever the device carried; on a
            # busy loopback that can fill it and drop the first datagrams for us.  libpcap runs
            # the new filter over those frames in user space, so reading them now keeps what is
            # ours (queued) and frees the ring.  Bounded: under a stream the ring never empties.
            with self.io_lock:
                now = _monotonic()
                for subscription in self.captures:
                    shared = subscription.shared
                    with shared.lock:
                        for _ in range(_OPEN_READ_BATCHES):
                            if not shared.read(now, self) or shared.reader.exhausted:
                                break
            if readiness is not None:
                self.attach_readiness(readiness)
            self._groups_joined(self.groups)
            hold = self.options.hold_memberships
            if hold is None:
                hold = self.platform.hold_memberships_default()
            if hold:
                self.memberships = self._membership_holder()
                for group, interface in self.membership_pairs:
                    self.memberships.join(group, interface)
            guard = self.options.port_guard
            if guard is None:
                guard = self.platform.port_guard_default()
            if guard:
                self.port_guard = PortGuard.acquire(
                    self.address_text(address), port, self.platform.port_guard_options,
                    required=self.options.port_guard is True, family=self.family,
                    scope_id=self.bound_scope)
        except BaseException:
            self.close()
            raise
        log.debug("bound %s:%d on %s", self.address_text(address), port,
                  ", ".join(c.device.name for c in self.captures))

    # -- what differs between the families (Receiver6 overrides) -----------------------------

    family = socket.AF_INET
    ip_version = 4
    bound_scope = 0

    @property
    def port_key(self):
        """What a shared capture routes this socket's datagrams by: the port (IPv6 sockets:
        the port | PORT6, so the families never see each other's datagrams)."""
        return self.port

    @staticmethod
    def address_text(address):
        return ip_text(address)

    def _can_do_without(self, device):
        """May a bind go on without *device* when it fails to open?  Any device of a bind to
        0.0.0.0; the loopback device of a bind to an interface address."""
        address = self.bound_address
        return address == 0 or address >> 24 != 127 and device.loopback

    def _groups_joined(self, groups):
        """Tell the platform about newly joined *groups* (Windows' loopback kickstart)."""
        self.platform.groups_joined(groups, [c.shared for c in self.captures],
                                    self.multicast_loopback)

    def _membership_holder(self):
        address = self.bound_address
        interfaces = ([address] if address and not (address >> 24 == 127) else
                      [a for d in self.chosen if not d.loopback for a, _m, _b in d.ipv4])
        return MembershipHolder(interfaces)

    def _set_waited(self):
        """The waiter waits on :attr:`captures` in this order from now on.  Where its waits
        name the ready fds and nothing is held outside the kernel ring (Linux immediate
        mode), a wake-up reads only the captures whose fd was ready (see :meth:`_fill`)."""
        self.waited = tuple(self.captures)
        fds = getattr(self.waiter, "capture_fds", None)
        self.fd_of = {} if fds is None or self.drain_before_wait else {
            subscription: fd for subscription, fd in zip(self.waited, fds) if fd >= 0}

    def _subscribe(self, device):
        """Join the process's shared capture on *device* (opening it when there is none with
        this socket's settings): a :class:`Subscription`, with the union filter installed."""
        options = self.options
        key = (id(self.platform), self.platform.network_namespace(), device.name,
               self.ring_size, options.immediate, options.promiscuous, self._verify_udp,
               options.reassembly_timeout, self.reader)
        registry = self.registry
        with registry.lock:
            shared = registry.find(key)
            if shared is None:
                shared = self._open_shared(device, key)
                registry.register(key, shared)
            subscription = Subscription(self, shared)
            with shared.lock:
                try:
                    shared.change(_monotonic(), add=subscription)
                except BaseException:
                    if not shared.subscriptions:
                        registry.forget(shared)
                        shared.close()
                    raise
            registry.track(self)
        return subscription

    def _open_shared(self, device, key):
        """Open a capture on *device* through the platform: a :class:`SharedCapture` with no
        subscriber and no filter yet.

        A device that refuses promiscuous mode is opened again without it, with a warning
        (multicast may then arrive only for groups some local socket has joined).
        """
        platform = self.platform
        options = self.options
        promiscuous = options.promiscuous
        ring = self.ring_size
        if ring is None:
            ring = platform.default_ring(device, options.immediate)
        while True:
            try:
                capture = platform.open_capture(device, ring, options.immediate, promiscuous,
                                                self.reader)
                break
            except OSError as exc:
                if (not promiscuous or isinstance(exc, PermissionError)
                        or exc.errno == errno.ENODEV):
                    raise
                log.warning("%s: %s; opening it again without promiscuous mode", device.name,
                            exc)
                promiscuous = False
        try:
            return SharedCapture(capture, device, platform.own_frames(device, capture),
                                 self._own_on_egress, self._verify_udp,
                                 options.reassembly_timeout, key)
        except _packet.UnsupportedLinkType as exc:
            capture.close()
            raise OSError(errno.EPROTONOSUPPORT, "cannot capture on %s: %s"
                          % (device.name, exc)) from None
        except BaseException:
            capture.close()
            raise

    def _unsubscribe(self, subscription):
        """Leave a shared capture; the last subscriber closes it.  Those that remain get
        what it holds under the old filter, then the narrower one."""
        shared = subscription.shared
        registry = self.registry
        with registry.lock:
            with shared.lock:
                if shared.subscriptions == (subscription,) or shared.failure is not None:
                    shared.remove(subscription)
                    if not shared.subscriptions:
                        registry.forget(shared)
                        shared.close()
                    return
                try:
                    shared.change(_monotonic(), remove=subscription)
                except PcapError as exc:
                    log.debug("re-filtering %s after a subscriber left: %s",
                              shared.device.name, exc)

    def filter_terms(self, shared, pairs=None, multicast_loopback=None):
        """This socket's part of *shared*'s filter: ``(own-frames clause or None,
        destinations, port)`` (see ``_shared_capture.union_filter``), for its rules in force
        or for the memberships *pairs* and loopback flag it is about to have."""
        if pairs is None:
            group_interfaces = self.group_interfaces
        else:
            group_interfaces = _group_interfaces(pairs)
        if multicast_loopback is None:
            multicast_loopback = self.multicast_loopback
        groups = sorted(_groups_for(shared, group_interfaces))
        group_terms = ["dst host %s" % ip_text(g) for g in groups]
        if self.bound_address:
            destinations = ["dst host %s" % ip_text(self.bound_address)] + group_terms
        else:
            # Any unicast (the parser keeps only local addresses) and joined groups only.
            destinations = ["not dst net 224.0.0.0/4"] + group_terms
        return (shared.own.clause(multicast_loopback), " or ".join(destinations), self.port,
                self.ip_version)

    def _set_memberships(self, memberships):
        pairs = frozenset(memberships)
        self.membership_pairs = pairs
        self.group_interfaces = _group_interfaces(pairs)
        self.groups = frozenset(self.group_interfaces)

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

    def update(self, memberships=None, multicast_loopback=None):
        """Swap the memberships (``(group, interface)`` pairs) and/or the loopback flag, and
        re-filter every capture (any thread).

        What the captures hold is delivered first, under the rules in force until now (see
        ``SharedCapture.change``).  Another socket's thread may read a capture between its
        new filter and this socket's new rules, so the rules widen before the filters change
        (new groups are accepted at once) and narrow after (left groups and the loopback
        flag change once every filter has).
        """
        with self.io_lock:
            now = _monotonic()
            old_pairs = self.membership_pairs
            new_pairs = old_pairs if memberships is None else frozenset(memberships)
            new_loopback = (self.multicast_loopback if multicast_loopback is None
                            else bool(multicast_loopback))
            self._set_memberships(old_pairs | new_pairs)
            if self.memberships is not None:
                for group, interface in new_pairs - old_pairs:
                    self.memberships.join(group, interface)
            for subscription in list(self.captures):
                shared = subscription.shared
                try:
                    with shared.lock:
                        if shared.failure is not None:
                            raise shared.failure
                        shared.change(now, terms={
                            self: self.filter_terms(shared, new_pairs, new_loopback)})
                except PcapError as exc:
                    self._lose(subscription, exc)
            old_groups = frozenset(_group_interfaces(old_pairs))
            self._set_memberships(new_pairs)
            self.multicast_loopback = new_loopback
            if self.memberships is not None:
                for group, interface in old_pairs - new_pairs:
                    self.memberships.leave(group, interface)
            fresh = (self.groups - old_groups if multicast_loopback is None else self.groups)
            self._groups_joined(fresh)

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

    def receive_batch(self, limit, nbytes, timeout):
        """Up to *limit* ``(bytes, address)`` pairs: the first as :meth:`receive` waits for
        it, then what :meth:`poll` hands out without waiting (queued, or read from the
        captures now)."""
        batch = [self.receive(None, nbytes, timeout)]
        if limit > 1:
            append = batch.append
            poll = self.poll
            with self.io_lock:
                if not self.closing:
                    for _ in range(limit - 1):
                        result = poll(None, nbytes)
                        if result is None:
                            break
                        append(result)
        return batch

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
        ident = None                         # set once this thread keeps the watch books
        try:
            if self.closing:
                raise SocketClosedError()
            wait = self.waiter.wait          # shutdown() leaves the waiter to us from here on
            poll = self.poll
            io_lock = self.io_lock
            named = bool(self.fd_of)         # waits name the ready fds (see _set_waited)
            while True:
                ready_fds = None
                mask = None                  # every device
                if SharedCapture.crowded:
                    # Which devices to wait on: those no other socket's thread is waiting on
                    # (see SharedCapture.watch); the rest wake us through notify.
                    if ident is None:
                        ident = threading.get_ident()
                    mask = 0
                    bit = 1
                    for subscription in self.waited:
                        if subscription.shared.watch(self, ident):
                            mask |= bit
                        bit <<= 1
                if self.coalescing:
                    # Frames arrive faster than wake-ups pay off: let some collect first.
                    delay = self.pause
                    if deadline is not None:
                        delay = min(delay, deadline - _monotonic())
                    if delay > 0:
                        time.sleep(delay)
                    self.stats.coalesced_waits += 1
                elif deadline is None:
                    events = wait(None, mask)
                    if named:
                        ready_fds = dict(events)
                else:
                    remaining = deadline - _monotonic()
                    if remaining <= 0:
                        raise socket.timeout("timed out")
                    events = wait(remaining, mask)
                    if named:
                        ready_fds = dict(events)
                with io_lock:
                    if self.closing:
                        raise SocketClosedError()
                    result = poll(target, nbytes, ready_fds)
                if result is not None:
                    return result
        finally:
            if ident is not None:
                for subscription in self.waited:
                    subscription.shared.unwatch(self, ident)
                for subscription in self.lost:
                    subscription.shared.unwatch(self, ident)
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

    def poll(self, target, nbytes, ready_fds=None):
        """Hand out the next deliverable datagram.  Caller holds ``io_lock``.

        Returns ``(payload_or_count, address)`` or None.  With a *target* (a ``bytearray`` or
        a writable byte ``memoryview``) the payload is copied into it, at most *nbytes*;
        otherwise a new ``bytes`` of at most *nbytes* is returned.  Datagrams come from
        :attr:`ready`; when it is empty, the captures are read (:meth:`_fill`, *ready_fds*).
        ``stats.delivered`` is settled from the queue length (see :meth:`settle_stats`), so
        handing out costs no counter update.
        """
        ready = self.ready
        if not ready and not self._fill(ready_fds):
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
        """Bring the socket's counters up to date: what its subscriptions accepted, what its
        captures counted since it subscribed, and ``delivered``/``delivered_bytes`` for the
        datagrams handed out (accepted minus still queued)."""
        with self.io_lock:
            stats = self.stats
            subscriptions = self.captures + self.lost
            for name in SUBSCRIPTION_COUNTERS:
                setattr(stats, name, sum(getattr(s, name) for s in subscriptions))
            for name in CAPTURE_COUNTERS:
                total = sum(getattr(s.shared.stats, name) - s.base[name] for s in subscriptions)
                if name == "not_for_us":
                    total += sum(s.not_for_us for s in subscriptions)
                setattr(stats, name, total)
            for name in CAPTURE_GAUGES:
                setattr(stats, name, sum(getattr(s.shared.reassembler, name)
                                         for s in self.captures))
            for reason in stats.malformed:
                stats.malformed[reason] = sum(s.shared.stats.malformed[reason]
                                              - s.malformed_base[reason] for s in subscriptions)
            ready = list(self.ready)
            stats.delivered = stats.accepted - len(ready)
            stats.delivered_bytes = stats.accepted_bytes - sum(
                last - first for _b, first, last, _a in ready)

    def _fill(self, ready_fds=None):
        """Read batches from the captures, round robin, until this socket has a datagram
        (True) or every capture is empty (False).  Caller holds ``io_lock``.  *ready_fds*
        (a container of fds, from a wait that names them): skip the captures of
        :attr:`fd_of` whose ring fd is not in it -- their rings were empty (saves a native
        read per idle device and wake-up: a socket bound to 0.0.0.0 has several).

        Each batch goes to every subscriber of its capture (``SharedCapture.read``); other
        sockets' threads may also have queued datagrams here meanwhile.  A batch stays valid
        until the next refill of its capture, which for an unshared capture happens only once
        :attr:`ready` is empty again.  It runs once per wake-up, so it is written for few
        bytecodes: at low rates its cost is latency.
        """
        ready = self.ready
        waiter = self.waiter
        if waiter is not None and waiter.notified:
            waiter.clear_notify()       # looking at the queue now: later notices count again
        if self.readiness is not None:
            self.readiness.clear()      # reading everything now: the fds speak from here on
        if ready:
            return True                 # queued by another socket's read
        now = _monotonic()
        captures = self.captures
        fd_of = self.fd_of
        for turn, subscription in enumerate(captures):
            if ready_fds is not None:
                fd = fd_of.get(subscription)
                if fd is not None and fd not in ready_fds:
                    continue
            # Drain this capture until a batch yields something or it is empty: on Windows the
            # read event is not signalled again for frames libpcap already holds, so waiting
            # with frames left behind could sleep on data that has arrived.
            shared = subscription.shared
            try:
                with shared.lock:
                    if shared.failure is not None:
                        raise shared.failure
                    found = shared.read(now, self)
                    while found:
                        if ready:
                            if len(captures) > 1:    # the next fill starts with the next one
                                self.captures = captures[turn + 1:] + captures[:turn + 1]
                            if self.coalesce:
                                self._moderate(found, now, shared.reader.exhausted)
                            return True
                        found = shared.read(now, self)
            except PcapError as exc:
                if shared.failure is None:
                    shared.fail(exc)
                self._lose(subscription, exc)
                return self._fill()
        self.coalescing = False
        if ready:
            return True
        if self.failure is not None:
            raise OSError(*self.failure)
        return False

    def _moderate(self, found, now, exhausted):
        """Interrupt moderation that adapts to the rate, as NICs and Linux's net DIM do: after
        a fill that read *found* frames, update the arrival rate (a moving average of frames
        over the time since the previous fill) and pause before the next read as
        :func:`moderation_pause` says for the budget (``coalesce``).  Never with frames left
        in the capture: the next read comes at once."""
        elapsed = now - self._last_fill
        self._last_fill = now
        if elapsed > 0.0:
            self.rate += (found / elapsed - self.rate) * _RATE_WEIGHT
        self.pause = moderation_pause(self.rate, self.coalesce) if exhausted else 0.0
        self.coalescing = self.pause > 0.0

    def take_watch(self):
        """A thread that waited on a shared device left its receive: this socket's blocked
        thread is to wait on the device from its next wait on (see SharedCapture.watch)."""
        waiter = self.waiter
        if waiter is not None:
            waiter.notify()

    def notify(self):
        """Another socket's thread queued datagrams here: wake a waiting receive, and make
        ``fileno()`` readable (any thread)."""
        waiter = self.waiter
        if waiter is not None:
            waiter.notify()
        readiness = self.readiness
        if readiness is not None:
            readiness.set()

    def _lose(self, subscription, exc):
        """A capture failed while reading (its device went away): receive on without it.

        The capture stays open until its last subscriber leaves -- another thread may be
        waiting on its event or fd at this moment -- but it is out of the read rotation and
        the waiter.  When nothing is left, or the socket was bound to that device's address,
        every receive raises ``ENETDOWN`` from now on.
        """
        if subscription not in self.captures:
            return
        self.captures = [c for c in self.captures if c is not subscription]
        self.lost.append(subscription)
        self.stats.devices_lost += 1
        device = subscription.device
        bound_here = self.bound_address and any(
            address == self.bound_address for address, _m, _b in device.ipv4)
        if self.captures and not bound_here:
            log.warning("stopped capturing on %s (%s); receiving goes on on %s",
                        device.name, exc, ", ".join(c.device.name for c in self.captures))
            if self.waiter is not None:
                self.waiter.set_captures([c.capture for c in self.captures])
                self._set_waited()
            if self.readiness is not None:
                self.readiness.watch(self.waiter, [c.capture for c in self.captures])
            return
        self.lost.extend(self.captures)   # released by close() with the rest
        self.captures = []
        self.failure = (errno.ENETDOWN, "cannot receive: the capture on %s failed (%s)%s. Fix: "
                        "bind a new socket once the interface is back"
                        % (device.name, exc, "" if bound_here else
                           ", and no other device is left"))
        log.warning("%s", self.failure[1])
        if self.waiter is not None:
            self.waiter.wake()          # every waiting receive returns and raises
        if self.readiness is not None:
            self.readiness.set()

    def queue_views(self, shared, subscription, view, datagrams, now):
        """Apply the delivery rules to one parsed batch of a capture that only this socket
        reads, and queue what passes as views into the batch.  Called under the capture's
        lock by the reading thread; fragments are completed in their place in the batch, so
        datagrams are queued in the order they complete, as a socket would."""
        append = self.ready.append
        addresses = self._addresses
        bound = self.bound_address
        local = self.local_addresses
        check_own = shared.check_own
        # Count what is left out, not what is queued: the common datagram costs no counter.
        skipped = queued_bytes = 0
        for src, dst, sport, _dport, first, last, start, buf in datagrams:
            if src is None:
                completed = shared.reassemble(dst, view, now, start)
                if completed is None:
                    skipped += 1
                    continue
                src, dst, sport, _dport, first, last, start, buf = completed
            # Delivery rules; the common case (incoming unicast) inline (see _accepts).
            if dst >> 28 == 0xE or (check_own and shared.is_own(view, start)):
                if not self._accepts_special(dst, shared, subscription, view, start):
                    skipped += 1
                    continue
            elif bound:
                if dst != bound:
                    subscription.not_for_us += 1
                    skipped += 1
                    continue
            elif dst not in local and dst >> 24 != 127:
                subscription.not_for_us += 1
                skipped += 1
                continue
            key = (src << 16) | sport
            address = addresses.get(key)
            if address is None:
                address = self._address(key, src, sport)
            queued_bytes += last - first
            append((buf, first, last, address))
        queued = len(datagrams) - skipped
        if queued:
            subscription.accepted += queued
            subscription.accepted_bytes += queued_bytes

    def queue_copies(self, shared, subscription, view, datagrams, own_read):
        """Apply the delivery rules to datagrams for this socket's port from a shared
        capture's batch, and queue copies of what passes.  Called under the capture's lock by
        whichever thread reads it.  What another socket's read queues stays within
        :attr:`queue_limit` (``queue_dropped`` counts the rest); what this socket's own read
        (*own_read*) queues is not capped: it reads because its queue is empty, and takes
        one batch.  True when anything was queued."""
        append = self.ready.append
        queued = queued_bytes = 0
        for src, dst, sport, _dport, first, last, start, buf in datagrams:
            if not self._accepts(dst, shared, subscription, view, start):
                continue
            size = last - first
            if not self._admit(size, own_read):
                subscription.queue_dropped += 1
                continue
            if buf is view:
                # Out of the batch buffer, which the next read of the capture -- by any
                # socket's thread -- may overwrite while this datagram waits.
                buf = bytes(view[first:last])
                first, last = 0, size
            address = self._source(src, sport, shared)
            queued += 1
            queued_bytes += size
            append((buf, first, last, address))
        if not queued:
            return False
        subscription.accepted += queued
        subscription.accepted_bytes += queued_bytes
        return True

    def _admit(self, size, always=False):
        """May a datagram of *size* bytes join the queue without passing :attr:`queue_limit`?

        Each queued datagram counts its payload plus ENTRY_OVERHEAD (the tuple and the bytes
        object), as a kernel counts an skb's truesize.  The bound grows with every admission
        and is recomputed from the queue only when it reaches the limit; a queue found full
        is not recounted until it got shorter, so an unread socket costs O(1) a datagram.
        """
        limit = self.queue_limit
        if limit is None:
            return True
        cost = size + ENTRY_OVERHEAD
        with self._queue_lock:
            bound = self._queued_bound + cost
            if bound > limit and not always:
                queued = list(self.ready)            # a consistent snapshot (made in C)
                if self._full_at is not None and len(queued) >= self._full_at:
                    return False
                bound = cost + sum(last - first + ENTRY_OVERHEAD
                                   for _b, first, last, _a in queued)
                if bound > limit:
                    self._full_at = len(queued)
                    self._queued_bound = bound - cost
                    return False
                self._full_at = None
            self._queued_bound = bound
            return True

    def _accepts(self, dst, shared, subscription, view, start):
        """The delivery rules for one datagram on *shared* (see ``queue_views``, which has
        the common case inline)."""
        if dst >> 28 == 0xE or (shared.check_own and shared.is_own(view, start)):
            return self._accepts_special(dst, shared, subscription, view, start)
        if self.bound_address:
            if dst == self.bound_address:
                return True
        elif dst in self.local_addresses or dst >> 24 == 127:
            return True
        subscription.not_for_us += 1
        return False

    def _accepts_special(self, dst, shared, subscription, buf, start):
        """Delivery rules for multicast, and for frames this host sent itself."""
        if dst >> 28 == 0xE:
            where = self.group_interfaces.get(dst)
            if where is None or (0 not in where and not shared.is_loopback
                                 and not where & shared.addresses):
                subscription.not_for_us += 1   # not joined, or joined on another interface
                return False
            if self._own_on_egress:
                own = shared.is_own(buf, start)
            else:
                own = shared.is_loopback
            if own and not self.multicast_loopback:
                subscription.own_multicast_dropped += 1
                return False
            return True
        subscription.not_for_us += 1            # unicast this host sent elsewhere
        return False

    def _address(self, key, src, sport):
        if len(self._addresses) >= _ADDRESS_CACHE_LIMIT:
            self._addresses.clear()
        address = self._addresses[key] = (ip_text(src), sport)
        return address

    def _source(self, src, sport, shared):
        """The ``(host, port)`` a datagram from *src*:*sport* is reported from (cached)."""
        key = (src << 16) | sport
        address = self._addresses.get(key)
        return address if address is not None else self._address(key, src, sport)

    def capture_drops(self):
        """Frames the captures of this socket dropped since it subscribed (a shared
        capture's drops count for every socket that uses it)."""
        with self.io_lock:
            return sum(c.drops() for c in self.captures + self.lost)

    def inherited_by_fork(self):
        """Called in a child process after ``os.fork()``: the captures belong to the parent.
        Drop them without closing (closing would take down the parent's ring); every receive
        raises from now on."""
        self.captures = []
        self.lost = []
        self.ready.clear()
        self.waiter = None
        self.waited = ()
        self.drain_before_wait = True         # read (and raise) instead of waiting
        self.failure = (errno.EBADF, "this UdpcapSocket was created before os.fork(): its "
                        "captures belong to the parent process. Fix: create UdpcapSocket "
                        "objects in the child, after the fork")

    def close(self):
        """Leave the shared captures and release the waiter and kernel sockets.  Idempotent."""
        subscriptions = self.captures + self.lost
        self.captures = []
        self.lost = []
        for subscription in subscriptions:
            try:
                self._unsubscribe(subscription)
            except Exception:                    # pragma: no cover - best effort on close
                log.exception("leaving the capture on %s", subscription.device.name)
        self.waited = ()
        if self.waiter is not None:
            self.waiter.close()
            self.waiter = None
        if self.memberships is not None:
            self.memberships.close()
            self.memberships = None
        if self.port_guard is not None:
            self.port_guard.close()
            self.port_guard = None
        self.ready.clear()


def _group_interfaces(pairs):
    """``{group: frozenset(interface addresses, 0 = any)}`` of ``(group, interface)`` pairs."""
    interfaces = {}
    for group, interface in pairs:
        interfaces.setdefault(group, set()).add(interface)
    return {group: frozenset(where) for group, where in interfaces.items()}


def _groups_for(shared, group_interfaces):
    """The groups a capture may deliver: those joined on any interface or on one of its
    device's addresses (the loopback device carries this host's own multicast, whichever
    interface it was sent on)."""
    if shared.is_loopback:
        return list(group_interfaces)
    return [group for group, where in group_interfaces.items()
            if 0 in where or where & shared.addresses]


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
