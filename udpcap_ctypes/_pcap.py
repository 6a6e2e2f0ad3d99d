"""Every libpcap/Npcap function udpcap_ctypes calls, declared once, plus thin wrappers.

:data:`PROTOTYPES` (wpcap.dll / libpcap) and :data:`PACKET_PROTOTYPES` (Packet.dll) are
:class:`~._bind.Prototype` records: each function's ``restype``, ``argtypes``, the errcheck that
turns its C return codes into exceptions, the platforms that export it and the version that
added it.  :func:`bind_library` binds them (see ``_bind``); a function the loaded library lacks
is a stub that raises a clear error when called.

Source of truth for every row: Debian's ``/usr/include/pcap/pcap.h`` (libpcap 1.10), whose
``_WIN32`` branch is what Npcap's ``wpcap.dll`` exports; ``tests/test_prototypes_header.py``
checks each row against that header.  wpcap.dll is cdecl, so the library is a ``ctypes.CDLL``.
"""

import ctypes
import errno
import logging

from . import _fixes, _structs
from ._bind import ALL, POSIX, WINDOWS, Prototype, Table, bind
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


# Errcheck factories (see _bind): each takes the bound table, so that it decodes texts in
# the library's own encoding and reads pcap_geterr from the same library.

def status_check(fns):
    """int-returning call on a pcap_t: negative -> exception with pcap's text."""
    def errcheck(result, func, args):
        if result < 0:
            raise status_error(fns, func.__name__, result, args[0] if args else None)
        return result
    return errcheck


def errbuf_check(fns):
    """Call that fills an errbuf (its last argument) on failure: a NULL pointer or a negative
    int -> exception with that text."""
    def errcheck(result, func, args):
        if not result if not isinstance(result, int) else result < 0:
            raise PcapError(errno.EIO, "%s failed: %s"
                            % (func.__name__, _errbuf_text(fns, args[-1]) or "unknown error"))
        return result
    return errcheck


def pointer_check(fns):
    """Pointer-returning call without errbuf: NULL -> exception."""
    def errcheck(result, func, args):
        if not result:
            raise PcapError(errno.EIO, "%s returned NULL" % func.__name__)
        return result
    return errcheck


def _errbuf_text(fns, buf):
    if isinstance(buf, (bytes, bytearray)):
        raw = bytes(buf)
    elif hasattr(buf, "raw"):
        raw = buf.raw
    else:
        return ""
    return decode_text(fns, raw.split(b"\0", 1)[0])


def _p(name, restype, argtypes, errcheck=None, platforms=ALL, since=None):
    return Prototype(name, restype, argtypes, errcheck, platforms, since)


# Rows without errcheck are either infallible or on the hot path, where the caller checks.
PROTOTYPES = [
    _p("pcap_lib_version", ctypes.c_char_p, []),
    _p("pcap_init", ctypes.c_int, [ctypes.c_uint, errbuf_t], errbuf_check,
       since="libpcap 1.10 / Npcap 1.20 or newer"),
    _p("pcap_create", p_pcap, [ctypes.c_char_p, errbuf_t], errbuf_check),
    _p("pcap_set_snaplen", ctypes.c_int, [p_pcap, ctypes.c_int], status_check),
    _p("pcap_set_promisc", ctypes.c_int, [p_pcap, ctypes.c_int], status_check),
    _p("pcap_set_immediate_mode", ctypes.c_int, [p_pcap, ctypes.c_int], status_check,
       since="libpcap 1.5 / Npcap 0.9 or newer"),
    _p("pcap_set_buffer_size", ctypes.c_int, [p_pcap, ctypes.c_int], status_check),
    _p("pcap_set_timeout", ctypes.c_int, [p_pcap, ctypes.c_int], status_check),
    _p("pcap_activate", ctypes.c_int, [p_pcap]),      # warnings > 0: see Capture
    _p("pcap_close", None, [p_pcap]),
    _p("pcap_geterr", ctypes.c_char_p, [p_pcap]),
    _p("pcap_statustostr", ctypes.c_char_p, [ctypes.c_int]),
    _p("pcap_setnonblock", ctypes.c_int, [p_pcap, ctypes.c_int, errbuf_t], errbuf_check),
    _p("pcap_compile", ctypes.c_int,
       [p_pcap, P_program, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32], status_check),
    _p("pcap_setfilter", ctypes.c_int, [p_pcap, P_program], status_check),
    _p("pcap_freecode", None, [P_program]),
    _p("pcap_next_ex", ctypes.c_int,
       [p_pcap, ctypes.POINTER(P_pkthdr), ctypes.POINTER(ctypes.c_void_p)]),
    _p("pcap_dispatch", ctypes.c_int, [p_pcap, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]),
    _p("pcap_breakloop", None, [p_pcap]),
    _p("pcap_datalink", ctypes.c_int, [p_pcap], status_check),
    _p("pcap_snapshot", ctypes.c_int, [p_pcap], status_check),
    _p("pcap_datalink_val_to_name", ctypes.c_char_p, [ctypes.c_int]),
    _p("pcap_findalldevs", ctypes.c_int, [ctypes.POINTER(ctypes.c_void_p), errbuf_t],
       errbuf_check),
    _p("pcap_freealldevs", None, [ctypes.c_void_p]),
    _p("pcap_stats", ctypes.c_int, [p_pcap, P_stat], status_check),
    _p("pcap_open_offline", p_pcap, [ctypes.c_char_p, errbuf_t], errbuf_check),
    _p("pcap_open_dead", p_pcap, [ctypes.c_int, ctypes.c_int], pointer_check),
    _p("pcap_dump", None, [ctypes.c_void_p, P_pkthdr, ctypes.c_void_p]),
    _p("pcap_dump_close", None, [p_dumper]),
    # POSIX only
    _p("pcap_get_selectable_fd", ctypes.c_int, [p_pcap], platforms=POSIX),
    _p("pcap_setdirection", ctypes.c_int, [p_pcap, ctypes.c_int], status_check,
       platforms=POSIX),
    _p("pcap_dump_fopen", p_dumper, [p_pcap, ctypes.c_void_p], pointer_check, platforms=POSIX,
       since="libpcap 0.9 or newer"),
    # Windows (wpcap.dll) only
    _p("pcap_getevent", ctypes.c_void_p, [p_pcap], pointer_check, platforms=WINDOWS),
    _p("pcap_setmintocopy", ctypes.c_int, [p_pcap, ctypes.c_int], status_check,
       platforms=WINDOWS),
    _p("pcap_setbuff", ctypes.c_int, [p_pcap, ctypes.c_int], status_check, platforms=WINDOWS),
    _p("pcap_oid_get_request", ctypes.c_int,
       [p_pcap, ctypes.c_uint32, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)],
       status_check, platforms=WINDOWS),
]

def last_error_check(fns):
    """Packet.dll call that returns FALSE or NULL on failure and sets the thread's last error
    (the DLL is loaded with ``use_last_error``): -> ``OSError`` with ``winerror`` set."""
    def errcheck(result, func, args):
        if not result:
            from ._win32 import win_error
            raise win_error(func.__name__, ctypes.get_last_error())
        return result
    return errcheck


# Packet.dll (Npcap): diagnostics, and the batch reader of _npf.  Source: Npcap's
# Common/Packet32.h and packetWin7/Dll/Packet.def; every row has been exported since WinPcap 4
# except PacketGetInfo.  BOOLEAN is a UCHAR; LPADAPTER, LPPACKET and HANDLE are pointers.
P_bpf_program = P_program
PACKET_PROTOTYPES = [
    _p("PacketGetVersion", ctypes.c_char_p, [], platforms=WINDOWS),
    _p("PacketGetDriverVersion", ctypes.c_char_p, [], platforms=WINDOWS),
    _p("PacketGetDriverName", ctypes.c_char_p, [], platforms=WINDOWS),
    _p("PacketIsLoopbackAdapter", ctypes.c_ubyte, [ctypes.c_char_p], platforms=WINDOWS),
    _p("PacketGetInfo", ctypes.c_ubyte, [ctypes.c_void_p, ctypes.c_void_p], platforms=WINDOWS,
       since="Npcap 1.81 or newer"),
    # The capture path of _npf.PacketCapture (what libpcap's pcap-npf.c calls).
    _p("PacketOpenAdapter", ctypes.c_void_p, [ctypes.c_char_p], last_error_check,
       platforms=WINDOWS),
    _p("PacketCloseAdapter", None, [ctypes.c_void_p], platforms=WINDOWS),
    _p("PacketGetNetType", ctypes.c_ubyte, [ctypes.c_void_p, ctypes.c_void_p], last_error_check,
       platforms=WINDOWS),
    _p("PacketSetHwFilter", ctypes.c_ubyte, [ctypes.c_void_p, ctypes.c_uint32],
       last_error_check, platforms=WINDOWS),
    _p("PacketSetBuff", ctypes.c_ubyte, [ctypes.c_void_p, ctypes.c_int], last_error_check,
       platforms=WINDOWS),
    _p("PacketSetMinToCopy", ctypes.c_ubyte, [ctypes.c_void_p, ctypes.c_int], last_error_check,
       platforms=WINDOWS),
    _p("PacketSetReadTimeout", ctypes.c_ubyte, [ctypes.c_void_p, ctypes.c_int],
       last_error_check, platforms=WINDOWS),
    _p("PacketSetBpf", ctypes.c_ubyte, [ctypes.c_void_p, P_bpf_program], last_error_check,
       platforms=WINDOWS),
    _p("PacketGetReadEvent", ctypes.c_void_p, [ctypes.c_void_p], platforms=WINDOWS),
    _p("PacketInitPacket", None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint],
       platforms=WINDOWS),
    # Hot path: the caller checks the result and reads the last error itself.
    _p("PacketReceivePacket", ctypes.c_ubyte, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ubyte],
       platforms=WINDOWS),
    _p("PacketGetStats", ctypes.c_ubyte, [ctypes.c_void_p, ctypes.c_void_p], last_error_check,
       platforms=WINDOWS),
    _p("PacketRequest", ctypes.c_ubyte, [ctypes.c_void_p, ctypes.c_ubyte, ctypes.c_void_p],
       last_error_check, platforms=WINDOWS),
]

# Packet32.h / ntddndis.h values used by _npf.
NDIS_PACKET_TYPE_DIRECTED = 0x01
NDIS_PACKET_TYPE_MULTICAST = 0x02
NDIS_PACKET_TYPE_BROADCAST = 0x08
NDIS_PACKET_TYPE_PROMISCUOUS = 0x20
NDIS_PACKET_TYPE_ALL_LOCAL = 0x80
NDIS_MEDIUM_802_3 = 0                   # NdisMedium802_3
NDIS_MEDIUM_NULL = 0xFFFFFFFF           # NdisMediumNull (-1 in a UINT): the loopback adapter


def bind_library(library, windows, description, prototypes=PROTOTYPES):
    """The pcap functions of *library* as a :class:`~._bind.Table` that also knows how the
    library encodes its strings (``text_encoding``, ``description_encoding``: UTF-8 until
    :func:`init_utf8` or the Windows loader says otherwise)."""
    table = Table(description)
    table.text_encoding = table.description_encoding = "utf-8"
    return bind(library, prototypes, windows, description, table)


def decode_text(fns, raw):
    """A string from the capture library (errbuf, pcap_geterr, pcap_statustostr) as ``str``."""
    return raw.decode(fns.text_encoding, "replace") if raw else ""


def decode_description(fns, raw):
    """An adapter description from ``pcap_findalldevs`` as ``str`` (Npcap builds these in the
    ANSI code page, "mbcs", even after pcap_init(PCAP_CHAR_ENC_UTF_8))."""
    return raw.decode(fns.description_encoding, "replace") if raw else ""


def init_utf8(fns):
    """Ask for UTF-8 strings (``pcap_init``, libpcap 1.10 / Npcap 1.20); True when granted.

    Without it wpcap.dll returns error texts in the ANSI code page (localized on a
    non-English Windows), which decoding as UTF-8 would garble.
    """
    if not fns.pcap_init:
        log.debug("%s has no pcap_init: its strings are in the ANSI code page",
                  fns.description)
        return False
    errbuf = ctypes.create_string_buffer(PCAP_ERRBUF_SIZE)
    try:
        fns.pcap_init(PCAP_CHAR_ENC_UTF_8, errbuf)
    except PcapError as exc:
        log.debug("pcap_init(PCAP_CHAR_ENC_UTF_8): %s", exc)
        return False
    return True


def status_error(fns, call, code, handle=None):
    """The exception for a negative pcap status *code* returned by *call* of library *fns*."""
    text = ""
    if handle and code in (PCAP_ERROR, PCAP_ERROR_PERM_DENIED, PCAP_ERROR_NO_SUCH_DEVICE,
                           PCAP_ERROR_PROMISC_PERM_DENIED, PCAP_ERROR_IFACE_NOT_UP):
        text = decode_text(fns, fns.pcap_geterr(handle))
    if not text:
        text = decode_text(fns, fns.pcap_statustostr(code))
    text = text or "pcap status %d" % code
    if code in (PCAP_ERROR_PERM_DENIED, PCAP_ERROR_PROMISC_PERM_DENIED):
        return PermissionError(errno.EPERM, "%s: %s. %s" % (call, text, _fixes.permission()))
    if code == PCAP_ERROR_NO_SUCH_DEVICE:
        return PcapError(errno.ENODEV, "%s: %s" % (call, text))
    return PcapError(errno.EIO, "%s: %s" % (call, text))
