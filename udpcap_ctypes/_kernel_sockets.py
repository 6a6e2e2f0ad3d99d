"""Real kernel sockets that udpcap_ctypes may hold beside a capture -- never read from.

* :class:`MembershipHolder`: one socket per joined group, bound to an unused port, that keeps a
  kernel membership so the NIC and IGMP-snooping switches keep delivering the group.  Without it
  a capture sees a group only while some other program on the host happens to be a member.
* :class:`PortGuard`: an opt-in socket bound to the captured port, so the kernel stops answering
  every unicast datagram with ICMP port-unreachable (which halves a local sender's rate and makes
  a connected sender see ECONNREFUSED).  The kernel queues datagrams into its tiny buffer and
  drops the rest; on Windows that puts Winsock back in the path, which is why it is opt-in.
  One guard per address and port serves every socket of the process.
"""

import errno
import logging
import socket
import struct
import threading

log = logging.getLogger("udpcap_ctypes")

_MIN_RCVBUF = 1     # the kernel rounds this up to its minimum


def _ip(addr_int):
    return socket.inet_ntoa(struct.pack("!I", addr_int))


class MembershipHolder:
    """Holds IP_ADD_MEMBERSHIP for groups on a set of interface addresses."""

    def __init__(self, interface_addresses):
        # ints; 0 means "let the kernel choose the interface by its routes"
        self._interfaces = list(interface_addresses) or [0]
        self._sockets = {}

    def join(self, group):
        if group in self._sockets:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _MIN_RCVBUF)
            sock.bind(("0.0.0.0", 0))        # an unused port: it never sees our traffic
            joined = 0
            for interface in self._interfaces:
                mreq = struct.pack("!II", group, interface)
                try:
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
                    joined += 1
                except OSError as exc:
                    log.debug("membership %s on %s: %s", _ip(group), _ip(interface), exc)
            if not joined:
                log.warning("could not hold a kernel membership of %s on any interface; the "
                            "group may only arrive while another program is a member",
                            _ip(group))
        except BaseException:
            sock.close()
            raise
        self._sockets[group] = sock

    def leave(self, group):
        sock = self._sockets.pop(group, None)
        if sock is not None:
            sock.close()        # closing drops the membership

    def close(self):
        for group in list(self._sockets):
            self.leave(group)


class PortGuard:
    """A never-read kernel socket on the captured port, shared by every socket of this process
    that asks for one on the same address and port (:meth:`acquire` / :meth:`close`).

    *options* are the platform's ``(level, option, value)`` socket options: POSIX shares the
    port with SO_REUSEADDR; Windows binds without options, because SO_REUSEADDR there lets a
    socket take a port from the program that holds it.
    """

    _lock = threading.Lock()
    _shared = {}                   # (address, port) -> PortGuard

    def __init__(self, address, port, options):
        self.key = (address, port)
        self.users = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for level, option, value in options:
                self._sock.setsockopt(level, option, value)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _MIN_RCVBUF)
            self._sock.bind((address, port))
        except OSError as exc:
            self._sock.close()
            raise OSError(exc.errno, "port_guard=True: the guard socket cannot bind to %s:%d "
                          "(%s)%s" % (address, port, exc.strerror or exc,
                                      _GUARD_IN_USE if exc.errno == errno.EADDRINUSE else ""),
                          ) from None
        except BaseException:
            self._sock.close()
            raise

    @classmethod
    def acquire(cls, address, port, options):
        with cls._lock:
            guard = cls._shared.get((address, port))
            if guard is None:
                guard = cls._shared[(address, port)] = cls(address, port, options)
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
