"""Small address helpers, one home each: IPv4 ints as text, MACs as text, a free UDP port."""

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


def mac_text(mac: bytes) -> str:
    """``"01:23:45:67:89:ab"`` for a 6-byte MAC address."""
    mac = bytes(mac)
    if len(mac) != 6:
        raise ValueError("a MAC address has 6 bytes, not %d" % len(mac))
    return ":".join("%02x" % byte for byte in mac)


def free_udp_port(host: str = "127.0.0.1") -> int:
    """An ephemeral UDP port that no kernel socket uses on *host* right now (bind(port=0);
    the tests' free ports too)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
    finally:
        probe.close()
