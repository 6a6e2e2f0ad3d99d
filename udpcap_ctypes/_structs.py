"""C struct layouts of the libpcap/Npcap API, written once as data.

Each struct is a list of ``(field, c_type)`` pairs in the C header's own words.  The host builds
its ``ctypes.Structure`` classes from this table (:func:`build_structs`); the test suite feeds the
same table to a layout calculator for Win64 (LLP64) and Win32 (ILP32) and proves the resulting
offsets with ``_Static_assert`` under the mingw-w64 cross compilers against the real pcap
headers.  Keeping the layout as data is what lets a Linux machine prove the Windows ABI.

C type names used here:
  ``u_int``/``int``/``bpf_u_int32``  32-bit
  ``long``                           C ``long``: 32-bit on Windows (LLP64, Win32 and Win64 alike),
                                     pointer-sized elsewhere -- never ``ctypes.c_long`` for the
                                     Windows layouts, which is 8 bytes in a 64-bit Cygwin Python
  ``time_t``/``suseconds_t``         the host's ``struct timeval`` members
  ``u_short``/``u_char``             16/8-bit
  ``u_int64``                        64-bit (``ULONGLONG``)
  ``ptr``                            any data pointer
  ``T[n]``                           fixed array of n elements of T
  any other name                     a struct from this table, embedded by value
"""

import ctypes
import sys

# Platform families that differ in these layouts.
WINDOWS = "windows"
LINUX = "linux"
BSD = "bsd"          # macOS and the BSDs: sockaddr starts with sa_len
CYGWIN = "cygwin"    # Cygwin/MSYS2 Pythons: POSIX C types, no Winsock/winreg; not supported


def host_family(platform=None):
    """The layout family of *platform* (default: this interpreter's ``sys.platform``)."""
    platform = sys.platform if platform is None else platform
    if platform == "win32":
        return WINDOWS
    if platform.startswith(("cygwin", "msys")):
        return CYGWIN
    if platform.startswith(("darwin", "freebsd", "openbsd", "netbsd", "dragonfly")):
        return BSD
    return LINUX


def struct_specs(family):
    """Return ``{struct_name: [(field, c_type), ...]}`` for one platform family.

    Names are the C tag names (``struct pcap_pkthdr`` -> ``"pcap_pkthdr"``).
    """
    if family == WINDOWS:
        # winsock2.h: struct timeval { long tv_sec; long tv_usec; } -- 32-bit even on Win64.
        timeval = [("tv_sec", "long"), ("tv_usec", "long")]
    elif family == BSD:
        timeval = [("tv_sec", "time_t"), ("tv_usec", "int")]   # __darwin_suseconds_t is int32
    else:
        timeval = [("tv_sec", "time_t"), ("tv_usec", "suseconds_t")]
    if family == BSD:
        sockaddr_head = [("sa_len", "u_char"), ("sa_family", "u_char")]
        sin_head = [("sin_len", "u_char"), ("sin_family", "u_char")]
        sin6_head = [("sin6_len", "u_char"), ("sin6_family", "u_char")]
    else:
        sockaddr_head = [("sa_family", "u_short")]
        sin_head = [("sin_family", "u_short")]
        sin6_head = [("sin6_family", "u_short")]
    pcap_stat = [("ps_recv", "u_int"), ("ps_drop", "u_int"), ("ps_ifdrop", "u_int")]
    if family == WINDOWS:
        # pcap/pcap.h: three more counters under #ifdef _WIN32.
        pcap_stat += [("ps_capt", "u_int"), ("ps_sent", "u_int"), ("ps_netdrop", "u_int")]
    specs = {
        "timeval": timeval,
        "pcap_pkthdr": [("ts", "timeval"), ("caplen", "bpf_u_int32"), ("len", "bpf_u_int32")],
        "pcap_stat": pcap_stat,
        "bpf_insn": [("code", "u_short"), ("jt", "u_char"), ("jf", "u_char"), ("k", "bpf_u_int32")],
        "bpf_program": [("bf_len", "u_int"), ("bf_insns", "ptr")],
        "sockaddr": sockaddr_head + [("sa_data", "u_char[14]")],
        "sockaddr_in": sin_head + [("sin_port", "u_short"), ("sin_addr", "u_char[4]"),
                                   ("sin_zero", "u_char[8]")],
        # struct in6_addr is spelt as its bytes: same size and offset everywhere (C aligns
        # it to 4 on Linux and BSD, to 2 on Windows; the u_int before it aligns it anyway).
        "sockaddr_in6": sin6_head + [("sin6_port", "u_short"), ("sin6_flowinfo", "u_int"),
                                     ("sin6_addr", "u_char[16]"), ("sin6_scope_id", "u_int")],
        "pcap_addr": [("next", "ptr"), ("addr", "ptr"), ("netmask", "ptr"),
                      ("broadaddr", "ptr"), ("dstaddr", "ptr")],
        "pcap_if": [("next", "ptr"), ("name", "ptr"), ("description", "ptr"),
                    ("addresses", "ptr"), ("flags", "bpf_u_int32")],
    }
    if family == WINDOWS:
        specs.update(_packet_dll_specs())
    return specs


def _packet_dll_specs():
    """The structs of Npcap's Packet.dll API, which only Windows has (the batch reader of
    ``_npf``).  Sources: Npcap's ``Common/npcap-bpf.h`` (bpf_hdr, bpf_stat) and
    ``Common/Packet32.h`` (NetType, PACKET with its OVERLAPPED from minwinbase.h)."""
    return {
        # What NPF_Read writes before every frame; 18 bytes of members, 20 with tail padding:
        # bh_hdrlen is sizeof(struct bpf_hdr), and records start Packet_WORDALIGN'ed.
        "bpf_hdr": [("bh_tstamp", "timeval"), ("bh_caplen", "u_int"), ("bh_datalen", "u_int"),
                    ("bh_hdrlen", "u_short")],
        "bpf_stat": [("bs_recv", "u_int"), ("bs_drop", "u_int"), ("ps_ifdrop", "u_int"),
                     ("bs_capt", "u_int")],
        "NetType": [("LinkType", "u_int"), ("LinkSpeed", "u_int64")],
        # OVERLAPPED's union { struct { DWORD Offset, OffsetHigh; }; PVOID Pointer; } is spelt
        # as its struct member: same size and offsets on Win32 and Win64 (pointer-aligned by
        # the ULONG_PTR before it).  Packet.dll ignores it ("deprecated").
        "OVERLAPPED": [("Internal", "ptr"), ("InternalHigh", "ptr"), ("Offset", "u_int"),
                       ("OffsetHigh", "u_int"), ("hEvent", "ptr")],
        "PACKET": [("hEvent", "ptr"), ("OverLapped", "OVERLAPPED"), ("Buffer", "ptr"),
                   ("Length", "u_int"), ("ulBytesReceived", "u_int"), ("bIoComplete", "u_char")],
        # struct _PACKET_OID_DATA { ULONG Oid; ULONG Length; UCHAR Data[1]; } (12 bytes): the
        # caller allocates Data as long as the OID's answer.
        "PACKET_OID_DATA": [("Oid", "u_int"), ("Length", "u_int"), ("Data", "u_char[1]")],
    }


# ctypes equivalents of the C type names, on the host.
_HOST_SCALARS = {
    "u_int": ctypes.c_uint, "int": ctypes.c_int, "bpf_u_int32": ctypes.c_uint32,
    "long": ctypes.c_long, "time_t": ctypes.c_long, "suseconds_t": ctypes.c_long,
    "u_short": ctypes.c_ushort, "u_char": ctypes.c_ubyte, "ptr": ctypes.c_void_p,
    "u_int64": ctypes.c_uint64,
}
# Windows is LLP64: a C long is 32 bits whatever ctypes.c_long is in this interpreter.
_WINDOWS_SCALARS = dict(_HOST_SCALARS, long=ctypes.c_int32)


def build_structs(family=None):
    """Build the host's ``ctypes.Structure`` classes from :func:`struct_specs`.

    Pointer fields are declared ``c_void_p`` on purpose: the code casts them where it follows
    them, which keeps every struct independent of the order of definition.
    """
    family = host_family() if family is None else family
    scalars = _WINDOWS_SCALARS if family == WINDOWS else _HOST_SCALARS
    built = {}
    for name, fields in struct_specs(family).items():
        ctypes_fields = [(field, _host_type(c_type, built, scalars)) for field, c_type in fields]
        built[name] = type(name, (ctypes.Structure,), {"_fields_": ctypes_fields})
    return built


def _host_type(c_type, built, scalars):
    if c_type.endswith("]"):
        base, count = c_type[:-1].split("[")
        return _host_type(base, built, scalars) * int(count)
    if c_type in scalars:
        return scalars[c_type]
    return built[c_type]


_S = build_structs()
timeval = _S["timeval"]
pcap_pkthdr = _S["pcap_pkthdr"]
pcap_stat = _S["pcap_stat"]
bpf_insn = _S["bpf_insn"]
bpf_program = _S["bpf_program"]
sockaddr = _S["sockaddr"]
sockaddr_in = _S["sockaddr_in"]
sockaddr_in6 = _S["sockaddr_in6"]
pcap_addr = _S["pcap_addr"]
pcap_if = _S["pcap_if"]
# Packet.dll's structs: Windows only (None elsewhere).
bpf_hdr = _S.get("bpf_hdr")
bpf_stat = _S.get("bpf_stat")
NetType = _S.get("NetType")
PACKET = _S.get("PACKET")
PACKET_OID_DATA = _S.get("PACKET_OID_DATA")
del _S
