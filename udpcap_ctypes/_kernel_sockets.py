"""Real kernel sockets that udpcap_ctypes may hold beside a capture -- never read from.

* :class:`MembershipHolder`: one socket per joined group, bound to an unused port, that keeps a
  kernel membership so the NIC and IGMP-snooping switches keep delivering the group.  Without it
  a capture sees a group only while some other program on the host happens to be a member.
* :class:`PortGuard`: an opt-in socket bound to the captured port, so the kernel stops answering
  every unicast datagram with ICMP port-unreachable (which halves a local sender's rate and makes
  a connected sender see ECONNREFUSED).  The kernel queues datagrams into its tiny buffer and
  drops the rest; on Windows that puts Winsock back in the path, which is why it is opt-in.
"""

import logging
import socket
import struct

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
    """A shared (SO_REUSEADDR), never-read socket on the captured port."""

    def __init__(self, address, port):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _MIN_RCVBUF)
            self._sock.bind((address, port))
        except BaseException:
            self._sock.close()
            raise

    def close(self):
        self._sock.close()
