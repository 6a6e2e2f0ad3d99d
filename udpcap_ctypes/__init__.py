"""udpcap_ctypes: receive UDP datagrams without opening a socket.

Captures frames with Npcap (Windows) or libpcap (Linux, macOS) through ctypes and re-implements
the receive side of IPv4/UDP in user space, behind a ``socket.socket``-shaped class.
Importing this package loads no native library; ``UdpcapSocket()`` does, once per process.
"""

from __future__ import annotations

from .errors import (
                     CaptureUnavailableError,
                     NotBoundError,
                     PcapError,
                     SocketClosedError,
                     UdpcapError,
)
from .udpcap_socket import UdpcapSocket

__version__ = "0.1.0"

__all__ = ["UdpcapSocket", "UdpcapError", "CaptureUnavailableError", "NotBoundError",
           "SocketClosedError", "PcapError", "__version__"]

