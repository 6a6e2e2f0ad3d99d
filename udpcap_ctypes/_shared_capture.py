"""One capture per device per process, shared by every socket that needs it.

A kernel socket costs next to nothing until data arrives; a capture costs a ring, a batch
buffer and, on Npcap, a BPF program run on every frame in the driver.  So the sockets of one
process that capture on the same device with the same settings share one
:class:`SharedCapture`, as the kernel shares one receive path among its sockets:

* its BPF filter is the union of its subscribers' filters (:func:`union_filter`);
* a batch is read and parsed once, by whichever receiving thread gets the capture's lock, and
  every datagram goes to the queue of each subscriber whose delivery rules accept it (several
  sockets on one port each get it, as on a kernel socket);
* IPv4 fragments are reassembled once, for every subscriber;
* frame-level counters (frames, malformed, fragments, reassembly, capture drops) are the
  capture's: a socket reports what its captures counted since it subscribed.

While a capture has one subscriber, datagrams are queued as views into its batch buffer (the
payload is copied once, into the caller's buffer), as before sharing.  With more, every
datagram is copied out of the batch when it is queued: another socket's thread may refill the
batch buffer while this socket's datagrams wait, and an unread socket must not hold the batch
for everyone.  The moment a second subscriber arrives, the reader switches to a fresh buffer
(``BatchReader.renew``), so views queued before stay valid.

The registry (:class:`CaptureRegistry`) maps a key -- platform, device, capture settings -- to
the open :class:`SharedCapture`; the last unsubscriber closes it.  After ``os.fork()`` the
child forgets every capture without closing it (closing would tear down the parent's ring)
and opens its own for the sockets it creates.

Locking: a capture's ``lock`` is held while it is read, parsed, delivered from, drained or
re-filtered.  A receiver takes its own ``io_lock`` before a capture's lock, never after; the
registry's lock comes before a capture's lock.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import weakref

from . import _packet, _pcap
from ._reassembly import MAX_PAYLOAD6, Reassembler
from ._stats import Statistics

log = logging.getLogger(__name__)



class SharedCapture:
    """A capture on one device and everything read from it that does not depend on the
    socket: link parsing, the batch walk, reassembly, frame counters.

    *own* is the platform's ``OwnFrames`` for the device; *own_on_egress* says whether this
    host's multicast shows up as outgoing frames on the sending device (Linux) rather than on
    the loopback device (Npcap).  *reassembly_limits*: ``Reassembler`` keyword arguments
    (``max_bytes``, ``max_datagrams``) other than its defaults.
    """

    # Captures of this process with more than one subscriber.  While there are none, no
    # receiving thread keeps the watch books (see watch): a lone socket's wake-up stays as
    # cheap as before sharing.  Changed under the registry's lock (add and remove are).
    crowded = 0

    def __init__(self, capture, device, own, own_on_egress, verify=False,
                 reassembly_timeout=30.0, key=None, reassembly_limits=None):
        self.capture = capture
        self.device = device
        self.key = key
        self.lock = threading.Lock()
        self.addresses = frozenset(address for address, _m, _b in device.ipv4)
        # The interface index of the device: what IPv6 memberships name, and the scope id of
        # link-local sources (Device.scope_id; on POSIX the index by name when it has none).
        self.ifindex = device_index(device)
        self.is_loopback = device.loopback
        self.own = own
        self.is_own = _packet.make_outgoing_test(capture.linktype, own.macs)
        # Must a frame's direction be asked before delivering unicast?  (See Receiver._queue.)
        self.check_own = own_on_egress and (bool(own.macs) or capture.linktype in (
            _pcap.DLT_LINUX_SLL, _pcap.DLT_LINUX_SLL2))
        self.parse_batch = _packet.make_batch_parser(capture.linktype,
                                                     records=capture.reader.records)
        self.reader = capture.reader
        self.stats = Statistics()
        self.verify = verify
        self.reassembler = Reassembler(self.stats, max_age=reassembly_timeout,
                                       wanted=self._wanted, **(reassembly_limits or {}))
        self.subscriptions = ()         # replaced, never mutated: readers iterate without a lock
        self.ports = frozenset()
        self.by_port = {}               # port -> (subscription, ...)
        self.filter_text = None
        self.failure = None             # the PcapError that ended reading, once it has
        self.closed = False
        self.watch_lock = threading.Lock()
        self.watcher = None             # the receiver whose blocked thread waits on the device
        self.followers = {}             # thread ident -> receiver, blocked on its notify only

    def __repr__(self):
        return "<SharedCapture %s, %d subscribers>" % (self.device.name,
                                                      len(self.subscriptions))

    # -- subscribers (caller holds self.lock) -----------------------------------------------

    def add(self, subscription):
        """Add a subscriber.  The second one switches deliveries to copies, and the batch
        reader to a fresh buffer that no queued view points into."""
        self.subscriptions = self.subscriptions + (subscription,)
        if len(self.subscriptions) == 2:
            self.reader.renew()
            SharedCapture.crowded += 1
        self._index()

    def remove(self, subscription):
        before = len(self.subscriptions)
        self.subscriptions = tuple(s for s in self.subscriptions if s is not subscription)
        if before >= 2 > len(self.subscriptions):
            SharedCapture.crowded -= 1
        self._index()
        receiver = subscription.receiver
        with self.watch_lock:
            for ident in [i for i, r in self.followers.items() if r is receiver]:
                del self.followers[ident]
            if self.watcher is receiver:
                self._hand_over()

    def _index(self):
        by_port = {}
        for sub in self.subscriptions:
            by_port.setdefault(sub.receiver.port_key, []).append(sub)
        self.by_port = {port: tuple(subs) for port, subs in by_port.items()}
        self.ports = frozenset(by_port)

    def _wanted(self, udp_header):
        return ((udp_header[2] << 8) | udp_header[3]) in self.ports

    # -- who waits on the device (any thread, without self.lock) ------------------------------
    #
    # Of the threads blocked in receives on this capture's sockets, one waits on the device's
    # fd or event: the watcher.  The others (followers) wait on their own notify only, and the
    # watcher's read wakes those it queued datagrams for -- as the kernel wakes only the
    # sockets a datagram is for.  Were every thread to wait on the device, each frame would
    # wake them all (1,000/s to ten sockets on one stream: 130 context switches a datagram,
    # against 24 for ten kernel sockets).  A watcher that leaves its wait hands the watch to a
    # follower, so that no follower sleeps on frames nobody waits for.  A capture with one
    # subscriber keeps no books: its only socket always watches; and while no capture of the
    # process has two (SharedCapture.crowded), receivers do not call these at all.

    def watch(self, receiver, ident):
        """Should the thread *ident* of *receiver*, about to block, wait on the device?  True
        makes the receiver the watcher (threads of one socket share the watch); False records
        the thread as a follower until :meth:`unwatch`."""
        watcher = self.watcher
        if watcher is receiver or (watcher is None and len(self.subscriptions) < 2):
            return True
        with self.watch_lock:
            watcher = self.watcher
            if watcher is None or watcher is receiver:
                self.watcher = receiver
                self.followers.pop(ident, None)
                return True
            self.followers[ident] = receiver
            return False

    def unwatch(self, receiver, ident):
        """The thread *ident* of *receiver* leaves its receive: give up the watch, to a
        follower if any (also when it was handed here and not taken up)."""
        if self.watcher is not receiver and ident not in self.followers:
            return
        with self.watch_lock:
            self.followers.pop(ident, None)
            if self.watcher is receiver or self.watcher is None:
                self._hand_over()

    def _hand_over(self):
        # caller holds watch_lock; the woken follower takes the watch on its next wait, or
        # hands it on when it leaves instead
        self.watcher = None
        for follower in self.followers.values():
            follower.take_watch()
            break

    # -- filtering (caller holds self.lock) ---------------------------------------------------

    def change(self, now, add=None, remove=None, terms=None):
        """Add or remove a subscriber and/or install the union of the subscribers' filters
        (*terms*: ``{receiver: filter terms}`` for receivers whose rules are about to
        change -- the others' current terms are asked for; what the capture holds is then
        delivered under the old rules even when the filter stays the same).

        The new filter is compiled first; then what the capture holds is delivered under the
        rules and to the subscribers in force until now, and the filter installed right after:
        Npcap discards what its driver holds when the filter changes, so the gap between the
        drain and the new filter is kept as short as it can be (microseconds; frames arriving
        in it are lost on Npcap, and stay in the ring for the next read on Linux, where the
        kernel swaps the filter at once).  A new subscriber is added between the two, so it
        gets nothing that arrived before it bound.  Raises PcapError.
        """
        if remove is not None:
            self.remove(remove)
        subscriptions = self.subscriptions + ((add,) if add is not None else ())
        terms = terms or {}
        text = union_filter([terms[s.receiver] if s.receiver in terms
                             else s.receiver.filter_terms(self) for s in subscriptions])
        if text == self.filter_text:
            if terms and self.subscriptions and self.failure is None:
                self.drain(now)                 # rules change: what is here, under the old
            if add is not None:
                self.add(add)
            return
        program = self.capture.compile_filter(text)
        try:
            if self.subscriptions and self.failure is None:
                self.drain(now)
            if add is not None:
                self.add(add)
            try:
                self.capture.install_filter(program)
            except BaseException:
                if add is not None:
                    self.remove(add)
                raise
            self.filter_text = text
        finally:
            self.capture.free_filter(program)

    def drain(self, now):
        """Deliver what the capture holds now, under the delivery rules in force.

        Called before the filter changes: Npcap discards pending frames when the filter
        changes, libpcap on Linux filters frames still in the ring with the new filter, and a
        socket delivers what was queued before the change.  The frames are copied out
        (``pending_records``), because queued datagrams may still point into the batch
        reader's buffer.
        """
        records, end = self.capture.pending_records()
        if end:
            view = memoryview(records)
            datagrams = []
            self.parse_batch(view, 0, end, self.ports, self.stats, self.verify, datagrams)
            if datagrams:
                self.deliver(view, datagrams, now, None)

    # -- reading (caller holds self.lock) -----------------------------------------------------

    def read(self, now, reading):
        """Read one batch and deliver its datagrams to every subscriber; the number of frames
        read (0: the capture is empty; at least 1 when a batch was read).  *reading* is the
        receiver whose thread reads: the others are told that datagrams are waiting for them.
        Raises PcapError."""
        reader = self.reader
        end = reader.refill()
        if not end:
            return 0
        stats = self.stats
        walked = stats.frames
        view = reader.view
        datagrams = []
        self.parse_batch(view, reader.start, end, self.ports, stats, self.verify, datagrams)
        if datagrams:
            subscriptions = self.subscriptions
            if len(subscriptions) == 1:
                # The common case, inline: one socket gets views into the batch.
                only = subscriptions[0]
                only.receiver.queue_views(self, only, view, datagrams, now)
            else:
                self.deliver(view, datagrams, now, reading)
        # A batch whose first record lied walked no frame, but the capture may hold more.
        return stats.frames - walked or 1

    def deliver(self, view, datagrams, now, reading):
        """Queue parsed *datagrams* for every subscriber that accepts them: views for a single
        subscriber (fragments completed inline), copies for several."""
        subscriptions = self.subscriptions
        if len(subscriptions) == 1:
            subscriptions[0].receiver.queue_views(self, subscriptions[0], view, datagrams, now)
            return
        if not subscriptions:
            return
        # Shared: complete fragments once, in their place, then group by port.
        by_port = self.by_port
        groups = {}
        for entry in datagrams:
            if entry[0] is None:
                entry = self.reassemble(entry[1], view, now, entry[6])
                if entry is None:
                    continue
            group = groups.get(entry[3])
            if group is None:
                group = groups[entry[3]] = []
            group.append(entry)
        for port, group in groups.items():
            for sub in by_port.get(port, ()):
                receiver = sub.receiver
                own_read = receiver is reading
                if receiver.queue_copies(self, sub, view, group, own_read) and not own_read:
                    receiver.notify()

    def reassemble(self, fragment, view, now, start):
        """Feed one fragment; a batch entry ``(src, dst, sport, dport, first, last, start,
        buffer)`` when it completes a UDP datagram to one of the ports, else None.

        *fragment* is the walker's IPv4 ``(FRAGMENT, src, dst, ident, offset, more, first,
        last)`` or IPv6 ``(FRAGMENT6, src6, dst6, ident32, offset, more, first, last,
        next_header)``; an IPv6 entry's dport is its port key, ``dport | PORT6``.  Both
        families share the one reassembler (its caps bound them together); IPv6 keys carry
        ``src6 | V6_TAG`` so they never meet IPv4 keys."""
        if fragment[0] != _packet.FRAGMENT:
            return self._reassemble6(fragment, view, now, start)
        _, src, dst, ident, offset, more, first, last = fragment
        segment = self.reassembler.add(src, dst, ident, offset, more, view[first:last], now)
        if segment is None:
            return None
        udp = _packet.parse_udp(segment, src, dst, self.stats, self.verify)
        if udp is None:
            return None
        if udp[4] not in self.ports:
            self.stats.not_for_us += 1
            return None
        return (src, dst, udp[3], udp[4], udp[5], udp[6], start, memoryview(segment))

    def _reassemble6(self, fragment, view, now, start):
        # RFC 8200 4.5 with RFC 5722: strict (an overlap drops the datagram, an exact duplicate
        # is ignored), the fragmentable part ends by 65535.  The first fragment holds the rest
        # of the header chain and the UDP header (RFC 7112): wanted() looks past the extension
        # headers, and only the first fragment's Next Header counts (later ones may differ),
        # so the reassembler keeps it with the datagram (tag -> completed_tag).
        _, src, dst, ident, offset, more, first, last, next_header = fragment
        data = view[first:last]
        header = _packet.udp_header_after_extensions(data, next_header) if offset == 0 else 0
        reassembler = self.reassembler
        segment = reassembler.add(src | _packet.V6_TAG, dst, ident, offset, more, data, now,
                                  strict=True, max_payload=MAX_PAYLOAD6, header_offset=header,
                                  wanted=self._wanted6, tag=next_header)
        if segment is None:
            return None
        udp = _packet.parse_udp6_segment(segment, reassembler.completed_tag, src, dst,
                                         self.stats, self.verify)
        if udp is None:
            return None
        port = udp[4] | _packet.PORT6
        if port not in self.ports:
            self.stats.not_for_us += 1
            return None
        return (src, dst, udp[3], port, udp[5], udp[6], start, memoryview(segment))

    def _wanted6(self, udp_header):
        return (((udp_header[2] << 8) | udp_header[3]) | _packet.PORT6) in self.ports

    def fail(self, exc):
        """Reading failed (the device went away): every subscriber is told, and each drops
        this capture when it next reads."""
        self.failure = exc
        for sub in self.subscriptions:
            sub.receiver.notify()

    def close(self):
        self.closed = True
        self.reassembler.clear()
        self.capture.close()
        # Let the batch buffer (MiBs) go now: this object sits in a reference cycle (the
        # reassembler's wanted() is a bound method), which only the garbage collector frees.
        self.reader = None
        self.subscriptions = ()
        self.by_port = {}


# At most this many port ranges in one filter clause.  pcap_compile's optimizer grows faster
# than the square of the clauses (64 `dst port` clauses: 17 ms, 200: 420 ms, per device and per
# bind), so beyond this the closest ranges are merged: the filter then also passes UDP to the
# ports in the merged gaps, which the parser drops in user space (counted as not_for_us).
MAX_PORT_RANGES = 32


def port_ranges(ports, limit=MAX_PORT_RANGES):
    """*ports* as at most *limit* sorted ``(first, last)`` ranges covering every port: runs
    of consecutive ports make one range, then the smallest gaps are closed until *limit*."""
    ranges = []
    for port in sorted(set(ports)):
        if ranges and port == ranges[-1][1] + 1:
            ranges[-1][1] = port
        else:
            ranges.append([port, port])
    if len(ranges) > limit:
        # keep the limit - 1 widest gaps open, close the rest
        gaps = sorted(range(1, len(ranges)),
                      key=lambda i: (ranges[i][0] - ranges[i - 1][1], i))[-(limit - 1):]
        kept = [0] + sorted(gaps) if limit > 1 else [0]
        ranges = [[ranges[start][0], ranges[end - 1][1]]
                  for start, end in zip(kept, kept[1:] + [len(ranges)])]
    return [tuple(r) for r in ranges]


def port_clause(ports, field="udp[2:2]"):
    """BPF text that passes UDP to any of *ports* (see :func:`port_ranges`), read from
    *field*: ``udp[2:2]``, IPv4's UDP destination port, which libpcap compiles several times
    faster than ``dst port`` (that also tests IPv6 and the fragment offset for every clause);
    ``ip6[42:2]`` for IPv6, the destination port of UDP right after the base header."""
    terms = []
    for first, last in port_ranges(ports):
        if first == last:
            terms.append("%s = %d" % (field, first))
        else:
            terms.append("(%s >= %d and %s <= %d)" % (field, first, field, last))
    return " or ".join(terms)


def device_index(device):
    """The interface index of a capture device: the scope id of its link-local addresses,
    else (POSIX) the index of the interface of that name, else 0."""
    if device.scope_id:
        return device.scope_id
    try:
        return socket.if_nametoindex(device.name)
    except (OSError, AttributeError, ValueError):   # Windows' NPF names are no interface names
        return 0


# IPv6 next headers that may stand between the base header and UDP (hop-by-hop, routing,
# fragment, destination options): such packets pass the filter whatever their port, and the
# parser walks the chain (fragments carry no port in later pieces anyway).
_IP6_EXTENSIONS = "ip6[6] = 0 or ip6[6] = 43 or ip6[6] = 44 or ip6[6] = 60"


def union_filter(terms):
    """One BPF expression that passes what any of *terms* passes.

    Each term is ``(own_clause or None, destinations, port, IP version)`` (see
    ``Receiver.filter_terms``); IPv4 and IPv6 terms make clauses of their own.  Terms that
    differ only in their port are merged, so that a hundred sockets on ten ports make ten
    port tests in one clause, not a hundred clauses.

    Every IPv4 fragment to the destinations passes (``ip[6:2] & 0x3fff``: more-fragments or
    an offset), whatever its port: later fragments carry no UDP header, and the first one of
    a datagram for another port must reach the reassembler too, which then lets that
    datagram's fragments go at once (``fragments_unwanted``).  Without it, the later
    fragments of another port's fragmented stream on the same group would be held until age
    or the memory caps evicted them.
    """
    merged = {}
    for own, destinations, port, family in terms:
        merged.setdefault((own, destinations, family), set()).add(port)
    clauses = []
    for (own, destinations, family), ports in sorted(merged.items(),
                                                     key=lambda item: repr(item[0])):
        if family == 6:
            text = ("ip6 and (%s) and ((ip6[6] = 17 and (%s)) or %s)"
                    % (destinations, port_clause(ports, "ip6[42:2]"), _IP6_EXTENSIONS))
        else:
            text = ("ip and udp and (%s) and (%s or ip[6:2] & 0x3fff != 0)"
                    % (destinations, port_clause(ports)))
        if own:
            text = "(%s) and %s" % (own, text)
        clauses.append(text)
    if not clauses:
        # a capture without subscribers closes; libpcap refuses a filter that passes nothing
        raise ValueError("a union filter needs at least one subscriber's terms")
    if len(clauses) == 1:
        return clauses[0]
    return " or ".join("(%s)" % clause for clause in clauses)


class CaptureRegistry:
    """The process's open shared captures, by key (see the module doc)."""

    def __init__(self):
        self.lock = threading.RLock()
        self._captures = {}
        SharedCapture.crowded = 0
        self._receivers = weakref.WeakSet()     # every receiver with subscriptions

    def find(self, key):
        """The open, healthy capture for *key*, or None.  Caller holds :attr:`lock`."""
        shared = self._captures.get(key)
        if shared is None or shared.failure is not None or shared.closed:
            return None
        return shared

    def register(self, key, shared):
        self._captures[key] = shared

    def forget(self, shared):
        """Drop *shared* from the registry (it is closing).  Caller holds :attr:`lock`."""
        if self._captures.get(shared.key) is shared:
            del self._captures[shared.key]

    def track(self, receiver):
        self._receivers.add(receiver)

    def open_count(self):
        return len(self._captures)

    def _after_fork_in_child(self):
        # Runs in the child with only the forking thread alive: a lock another thread held
        # at the fork would never be released, so start over with fresh ones.  Inherited
        # captures are dropped without pcap_close, which would take down the parent's ring.
        self.lock = threading.RLock()
        self._captures = {}
        receivers, self._receivers = list(self._receivers), weakref.WeakSet()
        for receiver in receivers:
            receiver.inherited_by_fork()


REGISTRY = CaptureRegistry()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=REGISTRY._after_fork_in_child)
