"""The receive side of an AF_INET6 socket: :class:`Receiver6`, the IPv6 rules over the same
captures, waiting and queue as :class:`._receiver.Receiver`.

What differs from IPv4, and nothing else, lives here:

* addresses are 128-bit ints; a bind names an address and, for a link-local one, a scope (the
  interface index); ``recvfrom`` hands out ``(host, port, flowinfo, scope_id)`` as a socket
  does, the scope id set for link-local sources (fe80::/10, ff01::/16, ff02::/16) -- the
  index of the device the datagram was captured on -- and flowinfo 0 (a socket reports it
  only with IPV6_FLOWINFO);
* the socket is IPV6_V6ONLY, as on Windows by default: the captures it shares with AF_INET
  sockets route datagrams by *port key* (``port | _packet.PORT6`` for IPv6), so neither family
  sees the other's datagrams and nothing is tested per datagram;
* memberships are ``(group, interface index or 0)``, held with MLD by a kernel socket where the
  platform holds IGMP for IPv4 (``_kernel_sockets.MembershipHolder``);
* the filter terms are IPv6's (``_shared_capture.union_filter``).

Devices come with their IPv6 addresses and scope ids from ``pcap_findalldevs``
(``Device.ipv6``).  ``::`` opens every device with an IPv6 address plus loopback; ``::1`` the
loopback device; another address its device plus loopback; anything no device has is
``EADDRNOTAVAIL`` at once.
"""

from __future__ import annotations

import errno
import socket

from . import _fixes, _packet
from ._kernel_sockets import MembershipHolder
from ._net import LOOPBACK6, ip6_text, is_link_local6, is_multicast6
from ._receiver import _ADDRESS_CACHE_LIMIT, Receiver, _group_interfaces
from ._shared_capture import device_index


class Receiver6(Receiver):
    """A bound AF_INET6 socket's receive side (see the module doc)."""

    family = socket.AF_INET6
    ip_version = 6
    bound_scope = 0
    own_scopes = {}

    @property
    def port_key(self):
        return self.port | _packet.PORT6

    @staticmethod
    def address_text(address):
        return ip6_text(address)

    # -- setting up --------------------------------------------------------------------------

    def configure(self, devices, address, port, memberships=(), multicast_loopback=True,
                  scope_id=0):
        """As :meth:`Receiver.configure`, for an IPv6 *address* (int, 0 = any) with the
        *scope_id* a link-local address needs; memberships are ``(group, interface index or
        0)``."""
        devices = [d for d in devices if d.ipv6 or d.loopback]
        self.chosen = select_devices6(devices, address, scope_id)
        self.port = port
        self.bound_address = address
        self.bound_scope = scope_id
        self.multicast_loopback = multicast_loopback
        self.local_addresses = frozenset(
            [LOOPBACK6] + [a for d in devices for a, _scope in d.ipv6])
        self.interface_addresses = frozenset(device_index(d) for d in devices) - {0}
        # This host's own link-local addresses and their scopes: datagrams between them travel
        # over the loopback device, and a socket reports the scope of the address's interface.
        self.own_scopes = {}
        for device in devices:
            for own, scope in device.ipv6:
                if scope:
                    self.own_scopes.setdefault(own, scope)
        for _group, interface in memberships:
            if interface:
                self.check_interface(interface)
        self._set_memberships(memberships)

    def check_interface(self, interface):
        """OSError unless *interface* (an index) is one of a capture device's."""
        if interface not in self.interface_addresses:
            raise OSError(errno.ENODEV, "no capture device has the interface index %d (the "
                          "devices' indexes: %s)" % (interface, ", ".join(
                              str(i) for i in sorted(self.interface_addresses)) or "none"))

    def _can_do_without(self, device):
        address = self.bound_address
        return address == 0 or address != LOOPBACK6 and device.loopback

    def _membership_holder(self):
        bound = [d for d in self.chosen if not d.loopback] if self.bound_address else []
        indexes = [device_index(d) for d in (bound or self.chosen) if not d.loopback]
        return MembershipHolder([i for i in indexes if i], socket.AF_INET6)

    def _groups_joined(self, groups):
        # Windows' kickstart (IPv4: a local member makes Windows loop its own multicast to the
        # Npcap loopback adapter) is not made for IPv6 groups: neither udpcap nor Npcap's
        # documentation describes such a need, and it cannot be observed here.
        return None

    def filter_terms(self, shared, pairs=None, multicast_loopback=None):
        group_interfaces = (self.group_interfaces if pairs is None
                            else _group_interfaces(pairs))
        if multicast_loopback is None:
            multicast_loopback = self.multicast_loopback
        group_terms = ["dst host %s" % ip6_text(g)
                       for g in sorted(groups_for6(shared, group_interfaces))]
        if self.bound_address:
            destinations = ["dst host %s" % ip6_text(self.bound_address)] + group_terms
        else:
            destinations = ["not dst net ff00::/8"] + group_terms
        return (shared.own.clause(multicast_loopback), " or ".join(destinations), self.port, 6)

    # -- delivering --------------------------------------------------------------------------

    def queue_views(self, shared, subscription, view, datagrams, now):
        """As :meth:`Receiver.queue_views`, with the IPv6 rules (see :meth:`_accepts`)."""
        append = self.ready.append
        skipped = queued_bytes = 0
        for src, dst, sport, _key, first, last, start, buf in datagrams:
            if src is None:
                completed = shared.reassemble(dst, view, now, start)
                if completed is None:
                    skipped += 1
                    continue
                src, dst, sport, _key, first, last, start, buf = completed
            if not self._accepts(dst, shared, subscription, view, start):
                skipped += 1
                continue
            queued_bytes += last - first
            append((buf, first, last, self._source(src, sport, shared)))
        queued = len(datagrams) - skipped
        if queued:
            subscription.accepted += queued
            subscription.accepted_bytes += queued_bytes

    def _accepts(self, dst, shared, subscription, view, start):
        """Joined groups on this capture's interface (this host's own only with multicast
        loopback, exactly once); unicast to the bound address, or with ``::`` to any local
        address; frames this host sent elsewhere never."""
        if dst >> 120 == 0xFF:
            where = self.group_interfaces.get(dst)
            if where is None or (0 not in where and not shared.is_loopback
                                 and shared.ifindex not in where):
                subscription.not_for_us += 1
                return False
            own = shared.is_own(view, start) if self._own_on_egress else shared.is_loopback
            if own and not self.multicast_loopback:
                subscription.own_multicast_dropped += 1
                return False
            return True
        if shared.check_own and shared.is_own(view, start):
            subscription.not_for_us += 1           # unicast this host sent elsewhere
            return False
        if dst == self.bound_address if self.bound_address else dst in self.local_addresses:
            return True
        subscription.not_for_us += 1
        return False

    def _source(self, src, sport, shared):
        """``(host, port, flowinfo, scope_id)`` of a datagram's source (cached)."""
        scope = 0
        if is_link_local6(src):
            scope = (self.own_scopes.get(src, shared.ifindex) if shared.is_loopback
                     else shared.ifindex)
        key = (src, sport, scope)
        address = self._addresses.get(key)
        if address is None:
            if len(self._addresses) >= _ADDRESS_CACHE_LIMIT:
                self._addresses.clear()
            address = self._addresses[key] = (ip6_text(src), sport, 0, scope)
        return address


def groups_for6(shared, group_interfaces):
    """The groups a capture may deliver: joined on any interface or on its device's index
    (the loopback device carries this host's own multicast, whichever interface sent it)."""
    if shared.is_loopback:
        return list(group_interfaces)
    return [group for group, where in group_interfaces.items()
            if 0 in where or shared.ifindex in where]


def select_devices6(devices, address, scope_id=0):
    """Devices to capture on for a bind to the IPv6 *address* (int; 0 = any) with *scope_id*.

    ``::1`` -> the loopback device; ``::`` -> every device with IPv6 plus loopback; a
    link-local address -> the device of its scope; another address -> the device that has
    it, plus loopback.  Raises EADDRNOTAVAIL when no device has it, or a link-local address
    comes without a scope.
    """
    loopbacks = [d for d in devices if d.loopback]
    if address == LOOPBACK6:
        if not loopbacks:
            raise OSError(errno.EADDRNOTAVAIL,
                          "cannot bind to ::1: no loopback capture device. Fix on Windows: %s"
                          % _fixes.REINSTALL_NPCAP_WITH_LOOPBACK)
        return loopbacks[:1]
    if address == 0:
        return loopbacks[:1] + [d for d in devices if d.ipv6 and not d.loopback]
    if is_multicast6(address):
        raise OSError(errno.EADDRNOTAVAIL, "cannot bind to multicast address %s: bind to :: "
                      "and join the group" % ip6_text(address))
    if is_link_local6(address):
        if not scope_id:
            raise OSError(errno.EINVAL, "cannot bind to the link-local address %s without a "
                          "scope: name the interface (\"%s%%eth0\") or pass (host, port, 0, "
                          "scope_id)" % (ip6_text(address), ip6_text(address)))
        owners = [d for d in devices
                  if (address, scope_id) in d.ipv6 or
                  (device_index(d) == scope_id and any(a == address for a, _s in d.ipv6))]
    else:
        owners = [d for d in devices if any(a == address for a, _s in d.ipv6)]
    if not owners:
        known = sorted({ip6_text(a) + ("%%%d" % s if s else "")
                        for d in devices for a, s in d.ipv6})
        raise OSError(errno.EADDRNOTAVAIL,
                      "cannot bind to %s%s: no local interface has this address (local IPv6 "
                      "addresses: %s); bind to one of them or to ::"
                      % (ip6_text(address), "%%%d" % scope_id if scope_id else "",
                         ", ".join(known) or "none"))
    return [d for d in owners if not d.loopback][:1] + loopbacks[:1]
