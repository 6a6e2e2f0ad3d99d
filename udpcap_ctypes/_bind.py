"""One record type for every foreign function udpcap_ctypes calls, and one binder.

In the style of py-sdl2's ``SDLFunc``/``bind_function``: each :class:`Prototype` carries the
function's name, ``restype``, ``argtypes``, the errcheck that turns its C return codes into
exceptions, the platforms that export it and the version that added it.  :func:`bind` applies a
list of them to a loaded library and returns a :class:`Table` of bound functions.  A function the
library lacks becomes a :class:`Missing` stub, which raises a clear ``OSError(ENOSYS)`` naming the
version that has it when called, and is false in a boolean test -- never an ``AttributeError``
at load time.

Errchecks are *factories*: ``errcheck(table)`` returns the errcheck, so that it can use other
functions of the same table (``pcap_geterr`` for a failed ``pcap_activate``) instead of a module
global.  The tables are ``_pcap.PROTOTYPES`` and ``PACKET_PROTOTYPES`` (wpcap.dll/libpcap and
Packet.dll), ``_win32.WIN32_PROTOTYPES`` (kernel32, advapi32) and ``_platform.LIBC_PROTOTYPES``;
the tests check them against the real C headers.
"""

from __future__ import annotations

import errno
from typing import Any, Callable, NamedTuple, Optional, Sequence

# Where a prototype applies (Prototype.platforms).
ALL = "all"
WINDOWS = "windows"
POSIX = "posix"


class Prototype(NamedTuple):
    """One foreign function: what :func:`bind` needs to declare it."""

    name: str
    restype: Any
    argtypes: Sequence[Any]
    errcheck: Optional[Callable[["Table"], Callable[..., Any]]] = None
    platforms: str = ALL          # ALL, WINDOWS or POSIX
    since: Optional[str] = None   # the library version that added it, for the Missing message
    library: Optional[str] = None  # which DLL of a set (kernel32, advapi32); None: the only one

    def applies(self, windows: bool) -> bool:
        return self.platforms == ALL or (self.platforms == WINDOWS) == windows


class Table:
    """The bound functions of one library, as attributes (``fns.pcap_create(...)``)."""

    def __init__(self, description: str) -> None:
        self.description = description

    def __repr__(self) -> str:
        return "<Table of %s>" % self.description


class Missing:
    """Stands in for a function the loaded library does not export; raises when called."""

    def __init__(self, prototype: Prototype, library_description: str) -> None:
        self.__name__ = prototype.name
        self.argtypes = ()
        self.restype = None
        self._prototype = prototype
        self._library = library_description

    def __call__(self, *args: Any) -> Any:
        raise OSError(errno.ENOSYS, "%s is not exported by %s; it needs %s"
                      % (self.__name__, self._library,
                         self._prototype.since or "a newer version of the library"))

    def __bool__(self) -> bool:
        return False


def bind(library: Any, prototypes: Sequence[Prototype], windows: bool,
         description: str = "the loaded library", table: Optional[Table] = None) -> Table:
    """Declare every prototype that applies to this platform on *library* (a ctypes library).

    Each bound function gets ``argtypes``, ``restype`` (a missing one would truncate 64-bit
    pointers to int) and its errcheck; prototypes the library lacks become :class:`Missing`.
    The functions go into *table* (a new :class:`Table` by default), which is returned.
    """
    table = table if table is not None else Table(description)
    for prototype in prototypes:
        if not prototype.applies(windows):
            continue
        try:
            func = getattr(library, prototype.name)
        except AttributeError:
            setattr(table, prototype.name, Missing(prototype, description))
            continue
        func.restype = prototype.restype
        func.argtypes = list(prototype.argtypes)
        if prototype.errcheck is not None:
            func.errcheck = prototype.errcheck(table)
        setattr(table, prototype.name, func)
    return table
