"""The private implementation behind :class:`~udpcap_ctypes.UdpcapSocket`.

A :class:`Receiver` owns, for one bound socket: the open captures (one per device), their BPF
filters, the waiter, the reassembler, the kernel helper sockets, and the rules that decide which
parsed datagram is delivered.  The public socket adds argument checking, timeouts and the
socket-shaped surface.

Locking: ``io_lock`` is held while frames are read or filters are swapped, never while waiting,
so ``join``/``leave``/``set_multicast_loopback`` from other threads wait at most one batch.
"""

import errno
import logging
import socket
import struct
import threading
import time

from . import _capture, _packet
from ._kernel_sockets import MembershipHolder, PortGuard
from ._reassembly import Reassembler

log = logging.getLogger("udpcap_ctypes")

UDP = _packet.UDP
_u16 = struct.Struct("!H")
_ADDRESS_CACHE_LIMIT = 4096


def is_multicast(address):
    return address >> 28 == 0xE


def ip_text(address):
    return socket.inet_ntoa(struct.pack("!I", address))


class _OpenCapture:
    """A capture plus what the delivery rules need to know about its device."""

    __slots__ = ("capture", "device", "parse_link", "is_own", "is_loopback", "own_macs",
                 "filter_text")

    def __init__(self, capture, device, is_loopback, own_macs):
        self.capture = capture
        self.device = device
        self.is_loopback = is_loopback
        self.own_macs = own_macs
        self.parse_link = _packet.make_link_parser(capture.linktype)
        self.is_own = _packet.make_outgoing_test(capture.linktype, own_macs)
        self.filter_text = None


class Receiver:
    """Captures and delivery rules of one bound socket."""

    def __init__(self, platform, stats, options):
        self.platform = platform
        self.stats = stats
        self.options = options
        self.io_lock = threading.Lock()
        self.captures = []
        self.waiter = None
        self.port = 0
        self.bound_address = 0          # int; 0 = any
        self.local_addresses = frozenset()
        self.groups = frozenset()
        self.multicast_loopback = True
        self.memberships = None
        self.port_guard = None
        self._addresses = {}
        self._rr = 0
        self.reassembler = Reassembler(stats, max_age=options.reassembly_timeout,
                                       wanted=self._wanted_first_fragment)
        self._verify_udp = options.verify_udp_checksum
        self._own_on_egress = platform.own_multicast_seen_on == "egress"

    # -- opening -----------------------------------------------------------------------------

    def open(self, address, port, buffer_size, groups, multicast_loopback):
        """Select devices for *address* (int, 0 = any), open and filter them."""
        devices = [d for d in self.platform.devices() if d.ipv4 or self.platform.is_loopback(d)]
        chosen = select_devices(devices, address, self.platform.is_loopback)
        self.port = port
        self.bound_address = address
        self.groups = frozenset(groups)
        self.multicast_loopback = multicast_loopback
        local = set()
        for device in devices:
            for addr, _mask, broadcast in device.ipv4:
                local.add(addr)
                if broadcast:
                    local.add(broadcast)
        local.add(0xFFFFFFFF)
        self.local_addresses = frozenset(local)
        try:
            for device in chosen:
                capture = _capture.Capture(
                    self.platform.fns, device.name, self.platform.snaplen_for(device),
                    buffer_size, immediate=self.options.immediate,
                    promiscuous=self.options.promiscuous, libc=self.platform.libc)
                try:
                    prepare = getattr(self.platform, "prepare", None)
                    if prepare is not None:
                        prepare(capture)
                    is_loopback = self.platform.is_loopback(device)
                    own_macs = () if is_loopback else self.platform.own_macs(device, capture)
                    opened = _OpenCapture(capture, device, is_loopback, own_macs)
                except BaseException:
                    capture.close()
                    raise
                self.captures.append(opened)
                self._apply_filter(opened)
            self.waiter = self.platform.make_waiter([c.capture for c in self.captures])
            hold = self.options.hold_memberships
            if hold is None:
                hold = self.platform.hold_memberships_default()
            if hold:
                interfaces = ([address] if address and not (address >> 24 == 127) else
                              [a for d in chosen if not self.platform.is_loopback(d)
                               for a, _m, _b in d.ipv4])
                self.memberships = MembershipHolder(interfaces)
                for group in self.groups:
                    self.memberships.join(group)
            if self.options.port_guard:
                self.port_guard = PortGuard(ip_text(address), port)
        except BaseException:
            self.close()
            raise
        log.debug("bound %s:%d on %s", ip_text(address), port,
                  ", ".join(c.device.name for c in self.captures))

    def filter_expression(self, opened):
        """The BPF filter for one capture (also shown by ``check --verbose``)."""
        port = self.port
        groups = sorted(self.groups)
        group_terms = ["dst host %s" % ip_text(g) for g in groups]
        if self.bound_address:
            destinations = ["dst host %s" % ip_text(self.bound_address)] + group_terms
        else:
            # Any unicast (the parser keeps only local addresses) and joined groups only.
            destinations = ["not dst net 224.0.0.0/4"] + group_terms
        text = ("udp and (%s) and (dst port %d or ip[6:2] & 0x1fff != 0)"
                % (" or ".join(destinations), port))
        extra = self.platform.extra_filter(opened.device, opened.own_macs,
                                           self.multicast_loopback)
        if extra and not opened.is_loopback:
            text = "(%s) and %s" % (extra, text)
        return text

    def _apply_filter(self, opened):
        text = self.filter_expression(opened)
        if text != opened.filter_text:
            opened.capture.set_filter(text)
            opened.filter_text = text

    def update(self, groups=None, multicast_loopback=None):
        """Swap groups and/or the loopback flag; refilter every capture (any thread)."""
        with self.io_lock:
            if groups is not None:
                old = self.groups
                self.groups = frozenset(groups)
                if self.memberships is not None:
                    for group in self.groups - old:
                        self.memberships.join(group)
                    for group in old - self.groups:
                        self.memberships.leave(group)
            if multicast_loopback is not None:
                self.multicast_loopback = multicast_loopback
            for opened in self.captures:
                self._apply_filter(opened)

    # -- receiving ---------------------------------------------------------------------------

    def _wanted_first_fragment(self, udp_header):
        return _u16.unpack_from(udp_header, 2)[0] == self.port

    def _accepts(self, dst, opened, buf, start):
        """Delivery rules for a datagram to *dst* captured by *opened* (frame at *start*)."""
        if dst >> 28 == 0xE:
            if dst not in self.groups:
                self.stats.not_for_us += 1
                return False
            if self._own_on_egress:
                own = opened.is_own(buf, start)
            else:
                own = opened.is_loopback
            if own and not self.multicast_loopback:
                self.stats.own_multicast_dropped += 1
                return False
            return True
        if self._own_on_egress and opened.is_own(buf, start):
            self.stats.not_for_us += 1         # unicast this host sent elsewhere
            return False
        if self.bound_address:
            ok = dst == self.bound_address
        else:
            ok = dst in self.local_addresses or dst >> 24 == 127
        if not ok:
            self.stats.not_for_us += 1
        return ok

    def _address(self, src, sport):
        host = self._addresses.get(src)
        if host is None:
            if len(self._addresses) >= _ADDRESS_CACHE_LIMIT:
                self._addresses.clear()
            host = self._addresses[src] = socket.inet_ntoa(struct.pack("!I", src))
        return (host, sport)

    def poll(self, target, nbytes):
        """Read frames until one datagram is delivered.  Caller holds ``io_lock``.

        Returns ``(payload_or_count, address)`` or None when every capture is empty.  With a
        *target* (writable byte memoryview) the payload is copied into it, at most *nbytes*;
        otherwise a new ``bytes`` of at most *nbytes* is returned.
        """
        captures = self.captures
        count = len(captures)
        stats = self.stats
        port = self.port
        parse_ipv4 = _packet.parse_ipv4
        verify = self._verify_udp
        for turn in range(count):
            opened = captures[(self._rr + turn) % count]
            read = opened.capture.reader.read
            parse_link = opened.parse_link
            while True:
                frame = read()
                if frame is None:
                    break
                stats.frames += 1
                buf, start, end = frame
                ip = parse_link(buf, start, end, stats)
                if ip < 0:
                    continue
                parsed = parse_ipv4(buf, ip, end, stats, verify)
                if parsed is None:
                    continue
                if parsed[0] == UDP:
                    _, src, dst, sport, dport, first, last = parsed
                    if dport != port:
                        stats.not_for_us += 1
                        continue
                else:
                    _, src, dst, ident, offset, more, first, last = parsed
                    segment = self.reassembler.add(src, dst, ident, offset, more,
                                                   buf[first:last], time.monotonic())
                    if segment is None:
                        continue
                    parsed = _packet.parse_udp(segment, src, dst, stats, verify)
                    if parsed is None:
                        continue
                    _, src, dst, sport, dport, first, last = parsed
                    if dport != port:
                        stats.not_for_us += 1
                        continue
                    buf = memoryview(segment)
                if not self._accepts(dst, opened, frame[0], start):
                    continue
                self._rr = (self._rr + turn + 1) % count
                size = last - first
                stats.delivered += 1
                stats.delivered_bytes += size
                if size > nbytes:
                    stats.truncated_deliveries += 1
                    size = nbytes
                if target is None:
                    return (bytes(buf[first:first + size]), self._address(src, sport))
                target[:size] = buf[first:first + size]
                return (size, self._address(src, sport))
        return None

    def capture_drops(self):
        with self.io_lock:
            return sum(c.capture.drops() for c in self.captures if c.capture.handle)

    def close(self):
        """Release captures, waiter and kernel sockets.  Idempotent."""
        for opened in self.captures:
            try:
                opened.capture.close()
            except Exception:                    # pragma: no cover - best effort on close
                log.exception("closing capture on %s", opened.device.name)
        self.captures = []
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


def select_devices(devices, address, is_loopback):
    """Devices to capture on for a bind to *address* (int; 0 = any), as udpcap does.

    loopback address -> the loopback device; any -> every device with IPv4 (loopback included);
    a specific address -> the device that owns it, plus loopback.  Raises EADDRNOTAVAIL when no
    device owns the address.
    """
    loopbacks = [d for d in devices if is_loopback(d)]
    if address >> 24 == 127:
        if not loopbacks:
            raise OSError(errno.EADDRNOTAVAIL,
                          "cannot bind to %s: no loopback capture device. On Windows install "
                          "Npcap with 'Support loopback traffic'" % ip_text(address))
        return loopbacks[:1]
    if address == 0:
        chosen = [d for d in devices if d.ipv4 and not is_loopback(d)]
        return loopbacks[:1] + chosen
    owners = [d for d in devices if any(a == address for a, _m, _b in d.ipv4)]
    if not owners:
        known = sorted({ip_text(a) for d in devices for a, _m, _b in d.ipv4})
        raise OSError(errno.EADDRNOTAVAIL,
                      "cannot bind to %s: no local interface has this address (local IPv4 "
                      "addresses: %s); bind to one of them or to 0.0.0.0"
                      % (ip_text(address), ", ".join(known) or "none"))
    return [d for d in owners if not is_loopback(d)][:1] + loopbacks[:1]
