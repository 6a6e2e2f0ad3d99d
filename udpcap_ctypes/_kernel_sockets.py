"""Real kernel sockets that udpcap_ctypes may hold beside a capture -- never read from.

* :class:`MembershipHolder`: one socket per joined group, bound to an unused port, that keeps a
  kernel membership so the NIC and IGMP-snooping switches keep delivering the group.  Without it
  a capture sees a group only while some other program on the host happens to be a member.
* :class:`PortGuard`: a socket bound to the captured port, so the kernel stops answering every
  unicast datagram with ICMP port-unreachable (which halves a local sender's rate and makes a
  connected sender see ECONNREFUSED and lose datagrams).  The kernel queues datagrams into its
  tiny buffer and drops the rest: little work on POSIX, where it is on by default; on Windows it
  puts Winsock and the firewall back on the unicast path, so there it is opt-in.  One guard per
  address and port serves every socket of the process.
"""

import errno
import logging
import socket
import struct
import threading

from ._net import ip6_text, ip_text

log = logging.getLogger(__name__)

_MIN_RCVBUF = 1     # the kernel rounds this up to its minimum


class MembershipHolder:
    """Holds multicast memberships with real kernel sockets: IP_ADD_MEMBERSHIP (IGMP) on a set
    of interface addresses, or for *family* AF_INET6 IPV6_JOIN_GROUP (MLD) on a set of
    interface indexes."""

    def __init__(self, interfaces, family=socket.AF_INET):
        # IPv4: addresses as ints; IPv6: indexes; 0 means "the kernel chooses by its routes"
        self._interfaces = list(interfaces) or [0]
        self._family = family
        self._sockets = {}                 # (group, interface) -> socket

    def join(self, group, interface=0):
        """Hold *group* on *interface* (an address, or an index for IPv6), or on every
        interface when 0."""
        key = (group, interface)
        if key in self._sockets:
            return
        six = self._family != socket.AF_INET
        text = ip6_text if six else ip_text
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _MIN_RCVBUF)
            if six:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(("::" if six else "0.0.0.0", 0))   # an unused port: never our traffic
            joined = 0
            for where in ([interface] if interface else self._interfaces):
                try:
                    if six:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                                        group.to_bytes(16, "big") + struct.pack("=I", where))
                    else:
                        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                                        struct.pack("!II", group, where))
                    joined += 1
                except OSError as exc:
                    log.debug("membership %s on %s: %s", text(group),
                              where if six else ip_text(where), exc)
            if not joined:
                log.warning("could not hold a kernel membership of %s on any interface; the "
                            "group may only arrive while another program is a member",
                            text(group))
        except BaseException:
            sock.close()
            raise
        self._sockets[key] = sock

    def leave(self, group, interface=0):
        sock = self._sockets.pop((group, interface), None)
        if sock is not None:
            sock.close()        # closing drops the membership

    def close(self):
        for group, interface in list(self._sockets):
            self.leave(group, interface)


class PortGuard:
    """A never-read kernel socket on the captured port, shared by every socket of this process
    that asks for one on the same address and port (:meth:`acquire` / :meth:`close`).

    It binds only where no other socket holds the port (then that socket keeps the kernel from
    answering), never taking datagrams from it: first without any option, so the bind fails
    while the port is held; then, on POSIX, SO_REUSEADDR is set, so that a program binding the
    port later with SO_REUSEADDR still can -- and Linux gives unicast to the socket bound last,
    so the guard never takes that program's datagrams either.  Never SO_REUSEPORT, which load
    balances.  *options* are the platform's ``(level, option, value)`` options set after the
    bind (Windows: none, since SO_REUSEADDR there lets a socket take a port that is held).
    """

    _lock = threading.Lock()
    _shared = {}                   # (address, port) -> PortGuard

    def __init__(self, address, port, options, family=socket.AF_INET, scope_id=0):
        self.key = (address, port, scope_id)
        self.users = 0
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _MIN_RCVBUF)
            if family != socket.AF_INET:
                # An IPv6 guard stands for an AF_INET6 socket, which receives IPv6 only.
                self._sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                self._sock.bind((address, port, 0, scope_id))
            else:
                self._sock.bind((address, port))
            for level, option, value in options:
                self._sock.setsockopt(level, option, value)
        except BaseException:
            self._sock.close()
            raise

    @classmethod
    def acquire(cls, address, port, options, required=False, family=socket.AF_INET,
                scope_id=0):
        """The guard for *address*:*port* (text of *family*; IPv6 with the scope of a
        link-local address), or None when another socket holds the port (no guard is needed
        then).  With *required*, that is an OSError saying so."""
        with cls._lock:
            guard = cls._shared.get((address, port, scope_id))
            if guard is None:
                try:
                    guard = cls(address, port, options, family, scope_id)
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE and not required:
                        log.debug("no port guard on %s:%d: another socket holds the port",
                                  address, port)
                        return None
                    raise OSError(exc.errno, "port_guard=True: the guard socket cannot bind to "
                                  "%s:%d (%s)%s" % (address, port, exc.strerror or exc,
                                                    _GUARD_IN_USE if exc.errno ==
                                                    errno.EADDRINUSE else "")) from None
                cls._shared[guard.key] = guard
            guard.users += 1
            return guard

    def close(self):
        with self._lock:
            self.users -= 1
            if self.users > 0:
                return
            if self._shared.get(self.key) is self:
                del self._shared[self.key]
        self._sock.close()


_GUARD_IN_USE = (". Another program holds that port, so the kernel already does not answer "
                 "it with ICMP port-unreachable: pass port_guard=False")
