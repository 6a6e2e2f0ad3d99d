"""Exceptions of udpcap_ctypes.

Every exception derives from :class:`UdpcapError`, itself an :class:`OSError`, so code written
for ``socket.socket`` that catches ``OSError`` keeps working.  Permission problems are raised as
the builtin :class:`PermissionError` (also an ``OSError``), timeouts as :class:`socket.timeout`
and "nothing queued" in non-blocking mode as :class:`BlockingIOError`, exactly like a socket.
"""

from __future__ import annotations

import errno


class UdpcapError(OSError):
    """Base class of every error raised by udpcap_ctypes itself."""


class CaptureUnavailableError(UdpcapError):
    """The capture library (Npcap on Windows, libpcap elsewhere) is missing or unusable.

    The message says what was tried and how to fix it.
    """


class NotBoundError(UdpcapError):
    """A receive was attempted on a socket that is not bound yet."""

    def __init__(self, message: str = ("socket is not bound: call bind((address, port)) "
                                       "before receiving")) -> None:
        super().__init__(errno.ENOTCONN, message)


class SocketClosedError(UdpcapError):
    """The socket was closed (before or during the call).  ``errno`` is ``EBADF``."""

    def __init__(self, message: str = "socket is closed") -> None:
        super().__init__(errno.EBADF, message)


class PcapError(UdpcapError):
    """A libpcap/Npcap call failed; the message carries pcap's own error text."""
