"""udpcap_ctypes: receive UDP datagrams without opening a socket.

Captures frames with Npcap (Windows) or libpcap (Linux, macOS) through ctypes and re-implements
the receive side of IPv4/UDP in user space, behind a ``socket.socket``-shaped class.
Importing this package loads no native library; ``UdpcapSocket()`` does, once per process.
``create_datagram_endpoint`` (asyncio) imports asyncio on first use, not with the package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
                     CaptureUnavailableError,
                     NotBoundError,
                     PcapError,
                     SocketClosedError,
                     UdpcapError,
)
from .udpcap_socket import UdpcapSocket

if TYPE_CHECKING:
    from ._asyncio import create_datagram_endpoint

__version__ = "0.1.0"

__all__ = ["UdpcapSocket", "UdpcapError", "CaptureUnavailableError", "NotBoundError",
           "SocketClosedError", "PcapError", "create_datagram_endpoint", "__version__"]


def __getattr__(name: str) -> Any:
    # PEP 562: the asyncio endpoint (and asyncio itself) is imported when first asked for.
    if name == "create_datagram_endpoint":
        from ._asyncio import create_datagram_endpoint
        globals()[name] = create_datagram_endpoint
        return create_datagram_endpoint
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
