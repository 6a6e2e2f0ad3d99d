"""Small address helpers, one home each: IPv4 and IPv6 ints as text, MACs as text, a free UDP
port.  The receiver keeps addresses as ints: 32 bits for IPv4, 128 for IPv6."""

from __future__ import annotations

import socket
import struct

_U32 = struct.Struct("!I")


def ip_text(address: int) -> str:
    """An IPv4 address held as an int (network order value), as dotted text."""
    return socket.inet_ntoa(_U32.pack(address))


def ip_int(text: str) -> int:
    """Dotted text as the int the receiver keeps addresses as."""
    return int(_U32.unpack(socket.inet_aton(text))[0])


def ip6_text(address: int) -> str:
    """An IPv6 address held as a 128-bit int, as text (RFC 5952, ``inet_ntop``)."""
    return socket.inet_ntop(socket.AF_INET6, address.to_bytes(16, "big"))


def ip6_int(text: str) -> int:
    """IPv6 text (no ``%scope``) as the int the receiver keeps addresses as."""
    return int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")


def is_multicast6(address: int) -> bool:
    """ff00::/8."""
    return address >> 120 == 0xFF


def is_link_local6(address: int) -> bool:
    """Addresses whose meaning depends on the link, so that a socket reports them with a
    scope id: unicast fe80::/10, and link-local (ff02::/16) and interface-local (ff01::/16)
    multicast."""
    return address >> 118 == 0x3FA or (address >> 120 == 0xFF
                                        and (address >> 112) & 0xF in (1, 2))


LOOPBACK6 = 1             # ::1


def mac_text(mac: bytes) -> str:
    """``"01:23:45:67:89:ab"`` for a 6-byte MAC address."""
    mac = bytes(mac)
    if len(mac) != 6:
        raise ValueError("a MAC address has 6 bytes, not %d" % len(mac))
    return ":".join("%02x" % byte for byte in mac)


def free_udp_port(host: str = "127.0.0.1", family: int = socket.AF_INET,
                  scope_id: int = 0) -> int:
    """An ephemeral UDP port that no kernel socket uses on *host* right now (bind(port=0);
    the tests' free ports too).  *family* AF_INET6 takes an IPv6 host (and its scope)."""
    probe = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind((host, 0, 0, scope_id))
        else:
            probe.bind((host, 0))
        return int(probe.getsockname()[1])
    finally:
        probe.close()
