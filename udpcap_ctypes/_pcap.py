"""Every libpcap/Npcap function udpcap_ctypes calls, declared once, plus thin wrappers.

Style of pyusb's libusb1 backend: one table (:data:`PROTOTYPES`) gives each function its
``restype``, ``argtypes``, the platforms that export it and the errcheck that turns C return
codes into exceptions; :func:`bind_prototypes` applies it to a loaded library.  A function that
the loaded library does not export is bound to a stub that raises a clear error when called,
never an ``AttributeError`` at load time.

Source of truth for every row: Debian's ``/usr/include/pcap/pcap.h`` (libpcap 1.10), whose
``_WIN32`` branch is what Npcap's ``wpcap.dll`` exports; ``tests/test_prototypes_header.py``
checks each row against that header.  wpcap.dll is cdecl, so the library is a ``ctypes.CDLL``.
"""

import ctypes
import errno
import logging

from . import _structs
from .errors import PcapError

log = logging.getLogger(__name__)

PCAP_ERRBUF_SIZE = 256

# pcap.h return codes
PCAP_ERROR = -1
PCAP_ERROR_BREAK = -2
PCAP_ERROR_NOT_ACTIVATED = -3
PCAP_ERROR_ACTIVATED = -4
PCAP_ERROR_NO_SUCH_DEVICE = -5
PCAP_ERROR_RFMON_NOTSUP = -6
PCAP_ERROR_NOT_RFMON = -7
PCAP_ERROR_PERM_DENIED = -8
PCAP_ERROR_IFACE_NOT_UP = -9
PCAP_ERROR_CANTSET_TSTAMP_TYPE = -10
PCAP_ERROR_PROMISC_PERM_DENIED = -11
PCAP_ERROR_TSTAMP_PRECISION_NOTSUP = -12

PCAP_D_INOUT, PCAP_D_IN, PCAP_D_OUT = 0, 1, 2
PCAP_CHAR_ENC_LOCAL, PCAP_CHAR_ENC_UTF_8 = 0, 1     # pcap_init() options
PCAP_IF_LOOPBACK = 0x00000001
PCAP_IF_UP = 0x00000002
PCAP_IF_RUNNING = 0x00000004
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF

# Link types (pcap/dlt.h)
DLT_NULL = 0
DLT_EN10MB = 1
DLT_RAW = 12          # OpenBSD value 14 is DLT_RAW too; LINKTYPE_RAW is 101
DLT_RAW_BSD = 14
DLT_LOOP = 108
DLT_LINUX_SLL = 113
DLT_IPV4 = 228
DLT_LINUX_SLL2 = 276
LINKTYPE_RAW = 101

p_pcap = ctypes.c_void_p          # pcap_t *
p_dumper = ctypes.c_void_p        # pcap_dumper_t *
errbuf_t = ctypes.c_char_p        # char errbuf[PCAP_ERRBUF_SIZE] (we pass a create_string_buffer)
P_pkthdr = ctypes.POINTER(_structs.pcap_pkthdr)
P_program = ctypes.POINTER(_structs.bpf_program)
P_stat = ctypes.POINTER(_structs.pcap_stat)
# void (*pcap_handler)(u_char *user, const struct pcap_pkthdr *h, const u_char *bytes)
pcap_handler = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)


def _errcheck_status(result, func, args):
    """int-returning call on a pcap_t: negative -> exception with pcap's text."""
    if result < 0:
        raise status_error(func.__name__, result, args[0] if args else None)
    return result


def _errcheck_handle(result, func, args):
    """pcap_t*-returning call that fills an errbuf (last argument): NULL -> exception."""
    if not result:
        text = _errbuf_text(args[-1]) or "unknown error"
        raise PcapError(errno.EIO, "%s failed: %s" % (func.__name__, text))
    return result


def _errcheck_pointer(result, func, args):
    """pointer-returning call without errbuf: NULL -> exception."""
    if not result:
        raise PcapError(errno.EIO, "%s returned NULL" % func.__name__)
    return result


def _errcheck_errbuf_status(result, func, args):
    """int-returning call that fills an errbuf (last argument): -1 -> exception."""
    if result < 0:
        text = _errbuf_text(args[-1]) or "unknown error"
        raise PcapError(errno.EIO, "%s failed: %s" % (func.__name__, text))
    return result


def _errbuf_text(buf):
    if isinstance(buf, (bytes, bytearray)):
        raw = bytes(buf)
    elif hasattr(buf, "raw"):
        raw = buf.raw
    else:
        return ""
    return decode_text(raw.split(b"\0", 1)[0])


# Each row: name, restype, argtypes, errcheck, where ("all", "win", "posix").
# Rows without errcheck are either infallible or on the hot path, where the caller checks.
PROTOTYPES = [
    ("pcap_lib_version", ctypes.c_char_p, [], None, "all"),
    ("pcap_init", ctypes.c_int, [ctypes.c_uint, errbuf_t], _errcheck_errbuf_status, "all"),
    ("pcap_create", p_pcap, [ctypes.c_char_p, errbuf_t], _errcheck_handle, "all"),
    ("pcap_set_snaplen", ctypes.c_int, [p_pcap, ctypes.c_int], _errcheck_status, "all"),
    ("pcap_set_promisc", ctypes.c_int, [p_pcap, ctypes.c_int], _errcheck_status, "all"),
    ("pcap_set_immediate_mode", ctypes.c_int, [p_pcap, ctypes.c_int], _errcheck_status, "all"),
    ("pcap_set_buffer_size", ctypes.c_int, [p_pcap, ctypes.c_int], _errcheck_status, "all"),
    ("pcap_set_timeout", ctypes.c_int, [p_pcap, ctypes.c_int], _errcheck_status, "all"),
    ("pcap_activate", ctypes.c_int, [p_pcap], None, "all"),      # warnings > 0; see activate()
    ("pcap_close", None, [p_pcap], None, "all"),
    ("pcap_geterr", ctypes.c_char_p, [p_pcap], None, "all"),
    ("pcap_statustostr", ctypes.c_char_p, [ctypes.c_int], None, "all"),
    ("pcap_setnonblock", ctypes.c_int, [p_pcap, ctypes.c_int, errbuf_t],
     _errcheck_errbuf_status, "all"),
    ("pcap_compile", ctypes.c_int,
     [p_pcap, P_program, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32], _errcheck_status, "all"),
    ("pcap_setfilter", ctypes.c_int, [p_pcap, P_program], _errcheck_status, "all"),
    ("pcap_freecode", None, [P_program], None, "all"),
    ("pcap_next_ex", ctypes.c_int,
     [p_pcap, ctypes.POINTER(P_pkthdr), ctypes.POINTER(ctypes.c_void_p)], None, "all"),
    ("pcap_dispatch", ctypes.c_int, [p_pcap, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p],
     None, "all"),
    ("pcap_breakloop", None, [p_pcap], None, "all"),
    ("pcap_datalink", ctypes.c_int, [p_pcap], _errcheck_status, "all"),
    ("pcap_snapshot", ctypes.c_int, [p_pcap], _errcheck_status, "all"),
    ("pcap_datalink_val_to_name", ctypes.c_char_p, [ctypes.c_int], None, "all"),
    ("pcap_findalldevs", ctypes.c_int, [ctypes.POINTER(ctypes.c_void_p), errbuf_t],
     _errcheck_errbuf_status, "all"),
    ("pcap_freealldevs", None, [ctypes.c_void_p], None, "all"),
    ("pcap_stats", ctypes.c_int, [p_pcap, P_stat], _errcheck_status, "all"),
    ("pcap_open_offline", p_pcap, [ctypes.c_char_p, errbuf_t], _errcheck_handle, "all"),
    ("pcap_open_dead", p_pcap, [ctypes.c_int, ctypes.c_int], _errcheck_pointer, "all"),
    ("pcap_dump", None, [ctypes.c_void_p, P_pkthdr, ctypes.c_void_p], None, "all"),
    ("pcap_dump_close", None, [p_dumper], None, "all"),
    # POSIX only
    ("pcap_get_selectable_fd", ctypes.c_int, [p_pcap], None, "posix"),
    ("pcap_setdirection", ctypes.c_int, [p_pcap, ctypes.c_int], _errcheck_status, "posix"),
    ("pcap_dump_fopen", p_dumper, [p_pcap, ctypes.c_void_p], _errcheck_pointer, "posix"),
    # Windows (wpcap.dll) only
    ("pcap_getevent", ctypes.c_void_p, [p_pcap], _errcheck_pointer, "win"),
    ("pcap_setmintocopy", ctypes.c_int, [p_pcap, ctypes.c_int], _errcheck_status, "win"),
    ("pcap_setbuff", ctypes.c_int, [p_pcap, ctypes.c_int], _errcheck_status, "win"),
    ("pcap_oid_get_request", ctypes.c_int,
     [p_pcap, ctypes.c_uint32, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)],
     _errcheck_status, "win"),
]

# Packet.dll (Npcap), optional, diagnostics only.  Source: Npcap's Common/Packet32.h and
# packetWin7/Dll/Packet.def.  PacketGetInfo exists from Npcap 1.81 on.
PACKET_PROTOTYPES = [
    ("PacketGetVersion", ctypes.c_char_p, [], None, "win"),
    ("PacketGetDriverVersion", ctypes.c_char_p, [], None, "win"),
    ("PacketGetDriverName", ctypes.c_char_p, [], None, "win"),
    ("PacketIsLoopbackAdapter", ctypes.c_ubyte, [ctypes.c_char_p], None, "win"),
    ("PacketGetInfo", ctypes.c_ubyte, [ctypes.c_void_p, ctypes.c_void_p], None, "win"),
]

MINIMUM_VERSION_NOTES = {
    "pcap_init": "libpcap 1.10 / Npcap 1.20 or newer",
    "PacketGetInfo": "Npcap 1.81 or newer",
    "pcap_set_immediate_mode": "libpcap 1.5 / Npcap 0.9 or newer",
    "pcap_dump_fopen": "libpcap 0.9 or newer",
}


class MissingFunction:
    """Stands in for a function the loaded library does not export; raises when called."""

    def __init__(self, name, library_description):
        self.__name__ = name
        self.argtypes = ()
        self.restype = None
        self._library = library_description

    def __call__(self, *args):
        needs = MINIMUM_VERSION_NOTES.get(self.__name__, "a newer version of the capture library")
        raise PcapError(errno.ENOSYS, "%s is not exported by %s; it needs %s"
                        % (self.__name__, self._library, needs))

    def __bool__(self):
        return False


class Functions:
    """Namespace of bound functions: ``fns.pcap_create(...)``."""


def bind_prototypes(library, table, windows, library_description="the loaded library"):
    """Declare every row of *table* that applies to this platform on *library*.

    Returns a :class:`Functions` namespace.  Every function gets ``argtypes`` and ``restype``
    (a missing ``restype`` would truncate 64-bit pointers to int); rows the library lacks
    become :class:`MissingFunction` stubs.
    """
    fns = Functions()
    for name, restype, argtypes, errcheck, where in table:
        if where == "win" and not windows or where == "posix" and windows:
            continue
        try:
            func = getattr(library, name)
        except AttributeError:
            log.debug("%s does not export %s", library_description, name)
            setattr(fns, name, MissingFunction(name, library_description))
            continue
        func.restype = restype
        func.argtypes = argtypes
        if errcheck is not None:
            func.errcheck = errcheck
        setattr(fns, name, func)
    return fns


_fns = None   # set by set_functions() once the library is loaded
# How the loaded library encodes the strings it returns (set_functions): error texts, and the
# adapter descriptions of pcap_findalldevs (Npcap builds those in the ANSI code page, "mbcs",
# even after pcap_init(PCAP_CHAR_ENC_UTF_8)).
_text_encoding = "utf-8"
_description_encoding = "utf-8"


def set_functions(fns, text_encoding="utf-8", description_encoding="utf-8"):
    global _fns, _text_encoding, _description_encoding
    _fns = fns
    _text_encoding = text_encoding
    _description_encoding = description_encoding


def decode_text(raw):
    """A string from the capture library (errbuf, pcap_geterr, pcap_statustostr) as ``str``."""
    return raw.decode(_text_encoding, "replace") if raw else ""


def decode_description(raw):
    """An adapter description from ``pcap_findalldevs`` as ``str``."""
    return raw.decode(_description_encoding, "replace") if raw else ""


def init_utf8(fns, library_description):
    """Ask for UTF-8 strings (``pcap_init``, libpcap 1.10 / Npcap 1.20); True when granted.

    Without it wpcap.dll returns error texts in the ANSI code page (localized on a
    non-English Windows), which decoding as UTF-8 would garble.
    """
    if not fns.pcap_init:
        log.debug("%s has no pcap_init: its strings are in the ANSI code page",
                  library_description)
        return False
    errbuf = ctypes.create_string_buffer(PCAP_ERRBUF_SIZE)
    try:
        fns.pcap_init(PCAP_CHAR_ENC_UTF_8, errbuf)
    except PcapError as exc:
        log.debug("pcap_init(PCAP_CHAR_ENC_UTF_8): %s", exc)
        return False
    return True


def status_error(call, code, handle=None):
    """Build the exception for a negative pcap status *code* returned by *call*."""
    text = ""
    if _fns is not None:
        if handle and code in (PCAP_ERROR, PCAP_ERROR_PERM_DENIED, PCAP_ERROR_NO_SUCH_DEVICE,
                               PCAP_ERROR_PROMISC_PERM_DENIED, PCAP_ERROR_IFACE_NOT_UP):
            text = decode_text(_fns.pcap_geterr(handle))
        if not text:
            text = decode_text(_fns.pcap_statustostr(code))
    text = text or "pcap status %d" % code
    if code in (PCAP_ERROR_PERM_DENIED, PCAP_ERROR_PROMISC_PERM_DENIED):
        return PermissionError(errno.EPERM, "%s: %s. %s" % (call, text, permission_fix()))
    if code == PCAP_ERROR_NO_SUCH_DEVICE:
        return PcapError(errno.ENODEV, "%s: %s" % (call, text))
    return PcapError(errno.EIO, "%s: %s" % (call, text))


def permission_fix():
    """How to get the right to capture, for this platform."""
    if _structs.host_family() == _structs.WINDOWS:
        from ._win32 import ADMIN_ONLY_FIX
        return ADMIN_ONLY_FIX
    return ("Capturing needs root or the capabilities CAP_NET_RAW and CAP_NET_ADMIN: run as root, "
            "or grant them to a private copy of the interpreter (python3 -m venv --copies DIR; "
            "sudo setcap cap_net_raw,cap_net_admin+eip DIR/bin/python3), not to the system's "
            "python3, which every script shares; python3 -m udpcap_ctypes.check says more")
