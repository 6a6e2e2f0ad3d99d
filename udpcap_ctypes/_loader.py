"""The one place that finds and loads the capture library (Npcap/WinPcap or libpcap).

Loading happens on first use (``UdpcapSocket()`` or ``check``), once per process, under a lock;
importing the package never touches a native library.

Windows: Npcap lives in ``System32\\Npcap``, with System32 found by ``GetSystemDirectoryW``
(as Npcap's guide and its own Packet.dll do; ``%SystemRoot%`` may be scrubbed or wrong).  We
load ``Packet.dll`` and then ``wpcap.dll`` from there by absolute path inside
``os.add_dll_directory`` -- never by changing the process-wide DLL search path -- and fall back
to ``System32\\wpcap.dll`` (Npcap's "WinPcap API-compatible mode"; a legacy WinPcap found
there loads too, unsupported: ``check`` warns that it cannot capture loopback traffic).
Strings from wpcap.dll are UTF-8 once ``pcap_init(PCAP_CHAR_ENC_UTF_8)`` succeeds (Npcap 1.20
and newer), in the ANSI code page otherwise; adapter descriptions always are in the ANSI code
page.  Cygwin/MSYS2 Pythons are refused: they are not Windows to ctypes (a C ``long`` is 64-bit
there) and have no ``winreg`` or ``_winapi``.  Elsewhere: ``ctypes.util.find_library`` and the
usual sonames.  ``UDPCAP_CTYPES_LIBPCAP`` overrides all of it with one path (set but empty, it
counts as unset).

The file-system and DLL calls go through a small OS layer (:class:`LoaderOS`).
"""

import ctypes
import ctypes.util
import logging
import os
import sys
import threading

from . import _fixes, _pcap, _structs
from ._bind import bind
from .errors import CaptureUnavailableError

log = logging.getLogger(__name__)

ENV_OVERRIDE = "UDPCAP_CTYPES_LIBPCAP"
POSIX_SONAMES = ("libpcap.so.1", "libpcap.so.0.8", "libpcap.so", "libpcap.A.dylib",
                 "libpcap.dylib")


class LoaderOS:
    """The real operating system, as the loader sees it (subclassed by ``check`` to record
    every probe)."""

    platform = sys.platform
    environ = os.environ

    @staticmethod
    def isfile(path):
        return os.path.isfile(path)

    @staticmethod
    def find_library(name):
        return ctypes.util.find_library(name)

    @staticmethod
    def load(path, use_last_error=False):
        """Load a cdecl library (``ctypes.CDLL``); *use_last_error* for one whose failures
        are told by the thread's last error (Packet.dll)."""
        return ctypes.CDLL(path, use_last_error=use_last_error)

    @staticmethod
    def system_directory():
        """Windows: the System32 directory (``GetSystemDirectoryW``)."""
        from ._win32 import Win32Api
        return Win32Api().system_directory()

    @staticmethod
    def dll_directory(path):
        """Context manager that adds *path* to the DLL search path of this load only."""
        add = getattr(os, "add_dll_directory", None)
        if add is None:
            return _NullContext()
        return add(path)


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class CaptureLibrary:
    """A loaded capture library: bound functions plus where they came from."""

    def __init__(self, kind, path, fns, packet_path=None, packet_fns=None, windows=False):
        self.kind = kind                # "npcap", "winpcap", "libpcap"
        self.path = path                # what was loaded
        self.fns = fns                  # _bind.Table of _pcap.PROTOTYPES (and its encodings)
        self.packet_path = packet_path  # Packet.dll (Windows) or None
        self.packet_fns = packet_fns
        self.windows = windows
        raw = fns.pcap_lib_version()
        self.version = raw.decode("ascii", "replace") if raw else "unknown"
        if self.version.startswith("WinPcap"):
            self.kind = "winpcap"

    def __repr__(self):
        return "<CaptureLibrary %s %r from %s>" % (self.kind, self.version, self.path)


def override_path(environ):
    """The library path ``UDPCAP_CTYPES_LIBPCAP`` names, or None (unset or empty)."""
    return environ.get(ENV_OVERRIDE) or None


def windows_candidates(oslayer):
    """Ordered ``(kind, wpcap_path, packet_path_or_None, dll_dir)`` tuples to try on Windows."""
    system32 = oslayer.system_directory().rstrip("\\/")
    npcap_dir = system32 + "\\Npcap"
    return [
        ("npcap", npcap_dir + "\\wpcap.dll", npcap_dir + "\\Packet.dll", npcap_dir),
        ("npcap", system32 + "\\wpcap.dll", system32 + "\\Packet.dll", system32),
    ]


def posix_candidates(oslayer):
    names = []
    found = oslayer.find_library("pcap")
    if found:
        names.append(found)
    names.extend(n for n in POSIX_SONAMES if n not in names)
    return names


def load_library(oslayer=None):
    """Find, load and declare the capture library.  Raises :class:`CaptureUnavailableError`."""
    oslayer = oslayer or LoaderOS()
    family = _structs.host_family(oslayer.platform)
    if family == _structs.CYGWIN:
        raise CaptureUnavailableError(
            "a Cygwin/MSYS2 Python (sys.platform %r) cannot use Npcap: to ctypes it is not "
            "Windows (a C long is 64-bit there, 32-bit in wpcap.dll) and it has no winreg. "
            "Fix: %s" % (oslayer.platform, _fixes.install(oslayer.platform)))
    windows = family == _structs.WINDOWS
    tried = []
    override = override_path(oslayer.environ)
    if override is not None:
        return _load_one(oslayer, "override", override, None, None, windows, tried,
                         fix="%s=%r is set: point it at a capture library or unset it"
                             % (ENV_OVERRIDE, override))
    if windows:
        try:
            candidates = windows_candidates(oslayer)
        except OSError as exc:
            raise CaptureUnavailableError(
                "cannot find the System32 directory (%s). Fix: %s"
                % (exc, _fixes.install(oslayer.platform))) from exc
        for kind, wpcap, packet, dll_dir in candidates:
            if not oslayer.isfile(wpcap):
                tried.append("%s: not found" % wpcap)
                continue
            try:
                return _load_one(oslayer, kind, wpcap, packet, dll_dir, windows, tried)
            except CaptureUnavailableError:
                continue
    else:
        for name in posix_candidates(oslayer):
            try:
                return _load_one(oslayer, "libpcap", name, None, None, windows, tried)
            except CaptureUnavailableError:
                continue
    raise CaptureUnavailableError(
        "no capture library could be loaded (tried: %s). Fix: %s"
        % ("; ".join(tried), _fixes.install(oslayer.platform)))


def _load_one(oslayer, kind, path, packet_path, dll_dir, windows, tried, fix=None):
    packet = packet_fns = None
    try:
        if dll_dir is not None:
            with oslayer.dll_directory(dll_dir):
                if packet_path and oslayer.isfile(packet_path):
                    packet = oslayer.load(packet_path, use_last_error=True)
                lib = oslayer.load(path)
        else:
            lib = oslayer.load(path)
    except OSError as exc:
        tried.append("%s: %s" % (path, exc))
        if fix:
            raise CaptureUnavailableError("cannot load the capture library %s: %s. Fix: %s"
                                          % (path, exc, fix)) from exc
        raise CaptureUnavailableError(str(exc)) from exc
    fns = _pcap.bind_library(lib, windows, path)
    missing = [name for name in ("pcap_create", "pcap_activate", "pcap_next_ex", "pcap_compile")
               if not getattr(fns, name)]
    if missing:
        tried.append("%s: lacks %s" % (path, ", ".join(missing)))
        raise CaptureUnavailableError(
            "%s is not a usable capture library (lacks %s). Fix: %s"
            % (path, ", ".join(missing), fix or _fixes.install(oslayer.platform)))
    if packet is not None:
        packet_fns = bind(packet, _pcap.PACKET_PROTOTYPES, windows, packet_path)
    if windows:
        fns.text_encoding = fns.description_encoding = "mbcs"      # the ANSI code page
        if _pcap.init_utf8(fns):
            fns.text_encoding = "utf-8"
    library = CaptureLibrary(kind if kind != "override" else ("npcap" if windows else "libpcap"),
                             path, fns, packet_path if packet else None, packet_fns, windows)
    log.debug("loaded %r", library)
    return library


_lock = threading.Lock()
_library = None


def get_library():
    """The process-wide capture library, loaded on first call (thread-safe)."""
    global _library
    if _library is None:
        with _lock:
            if _library is None:
                _library = load_library()
    return _library


def loaded_library():
    """The capture library if it was already loaded, else None (never loads)."""
    return _library
