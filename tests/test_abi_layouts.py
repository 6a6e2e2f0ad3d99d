"""Prove the struct layouts of udpcap_ctypes for Windows (x64 and x86) and Linux x86_64.

Chain of proof, all on this Linux machine:

1. ``tests/abi_layout.py`` computes offsets/sizes from the layout *data* in ``_structs.py``.
2. On the host, those numbers equal what ``ctypes`` builds from the same data (so the calculator
   follows ctypes' rules), including with the Windows scalar sizes substituted.
3. The same numbers, for win64 / win32 / linux64, are compiled as ``_Static_assert``s by
   x86_64-w64-mingw32-gcc / i686-w64-mingw32-gcc / gcc against a copy of Debian's real
   ``pcap/pcap.h`` (whose ``_WIN32`` branch is the one Npcap ships), so the C compiler for each
   target agrees byte for byte.  A negative control proves the compiler does reject a wrong one.
   The Windows-only structs of Packet.dll's API are checked against Npcap's own declarations
   (restated in NPCAP_DECLARATIONS: there is no Npcap SDK here) and, for OVERLAPPED, against
   mingw-w64's ``minwinbase.h`` itself.
"""

import ctypes
import os
import platform
import shutil
import subprocess
import sys

import pytest

import abi_layout  # tests/abi_layout.py, a helper module, not a test
from udpcap_ctypes import _structs

# (abi, compiler, layout family, apt package that provides the compiler)
TARGETS = [
    ("win64", "x86_64-w64-mingw32-gcc", _structs.WINDOWS, "gcc-mingw-w64-x86-64"),
    ("win32", "i686-w64-mingw32-gcc", _structs.WINDOWS, "gcc-mingw-w64-i686"),
    ("linux64", "gcc", _structs.LINUX, "gcc"),
]

# Scalar C type names of _structs.py spelled as C, for asserting the ABI table itself.
C_SCALARS = {
    "u_int": "u_int", "int": "int", "bpf_u_int32": "bpf_u_int32", "long": "long",
    "time_t": "time_t", "suseconds_t": "suseconds_t", "u_short": "u_short", "u_char": "u_char",
    "ptr": "void *", "u_int64": "unsigned long long",
}

# Spec names that are typedef names in C, not struct tags: Packet32.h's "typedef struct NetType
# {...} NetType", "typedef struct _PACKET {...} PACKET", npcap-defs.h's "typedef struct
# _PACKET_OID_DATA PACKET_OID_DATA" and minwinbase.h's "typedef struct _OVERLAPPED {...}
# OVERLAPPED".  Every other spec name is a tag: "struct <name>".
C_TYPEDEF_NAMES = {"NetType", "PACKET", "PACKET_OID_DATA", "OVERLAPPED"}

# Npcap's declarations of the Packet.dll structs that udpcap_ctypes lays out, in Npcap's own
# words (nmap/npcap at eb5b852: Common/npcap-bpf.h for struct bpf_stat and struct bpf_hdr,
# Common/Packet32.h for NetType and PACKET, Common/npcap-defs.h for PACKET_OID_DATA), minus
# doc comments, SAL and deprecation attributes.  The Windows types (UINT, USHORT, ULONGLONG,
# HANDLE, OVERLAPPED, PVOID, DWORD, BOOLEAN, ULONG, UCHAR) and struct timeval come from
# windows.h/winsock2.h; npcap-bpf.h's bpf_program and bpf_insn, which pcap/bpf.h already
# declares, are left out, as npcap-bpf.h itself does after pcap/bpf.h (#ifndef lib_pcap_bpf_h).
NPCAP_DECLARATIONS = """
/* Common/npcap-bpf.h */
struct bpf_stat
{
	UINT bs_recv;
	UINT bs_drop;
	UINT ps_ifdrop;
	UINT bs_capt;
};
struct bpf_hdr
{
	struct timeval bh_tstamp;
	UINT bh_caplen;
	UINT bh_datalen;
	USHORT bh_hdrlen;
};
/* Common/Packet32.h */
typedef struct NetType
{
	UINT LinkType;
	ULONGLONG LinkSpeed;
}NetType;
typedef struct _PACKET
{
	HANDLE hEvent;
	OVERLAPPED OverLapped;
	PVOID Buffer;
	UINT Length;
	DWORD ulBytesReceived;
	BOOLEAN bIoComplete;
}  PACKET, * LPPACKET;
/* Common/npcap-defs.h */
struct _PACKET_OID_DATA
{
	ULONG Oid;
	ULONG Length;
	UCHAR Data[1];
};
typedef struct _PACKET_OID_DATA PACKET_OID_DATA, * PPACKET_OID_DATA;
"""

PCAP_HEADERS = "/usr/include/pcap"

# The one place where the spec deliberately differs from C: sockaddr_in.sin_addr is a
# ``struct in_addr`` (a 4-byte, 4-aligned integer wrapper) in C and ``u_char[4]`` in the spec, so
# C aligns struct sockaddr_in to 4 and ctypes to 2.  Offsets and sizes are identical; the
# alignment only matters when the struct is embedded or put in an array, which never happens
# (test_sockaddr_in_is_never_embedded) -- it is only reached through pointers that libpcap fills.
C_ALIGN_OVERRIDES = {"sockaddr_in": 4}


def _used_scalars(specs):
    used = set()
    for fields in specs.values():
        for _, c_type in fields:
            base = c_type.split("[", 1)[0]
            if base not in specs:
                used.add(base)
    return used


# --------------------------------------------------------------------------------------------
# The calculator itself
# --------------------------------------------------------------------------------------------

def test_calculator_hand_computed_padding_rules():
    """Known answers for natural alignment, inner padding, tail padding, arrays, nesting."""
    specs = {
        "a": [("c", "u_char"), ("i", "u_int")],                 # 1 + 3 pad + 4
        "b": [("i", "u_int"), ("c", "u_char")],                 # 4 + 1 + 3 tail pad
        "c": [("s", "u_short"), ("arr", "u_char[3]"), ("p", "ptr")],
        "d": [("c", "u_char"), ("inner", "c"), ("t", "u_char")],
    }
    lay = abi_layout.compute_layouts(specs, "win64")
    assert (lay["a"].size, lay["a"].align, lay["a"].offsets) == (8, 4, {"c": 0, "i": 4})
    assert (lay["b"].size, lay["b"].offsets) == (8, {"i": 0, "c": 4})
    assert (lay["c"].size, lay["c"].align, lay["c"].offsets) == (16, 8, {"s": 0, "arr": 2, "p": 8})
    assert lay["c"].field_sizes["arr"] == 3
    assert (lay["d"].size, lay["d"].offsets) == (32, {"c": 0, "inner": 8, "t": 24})
    lay32 = abi_layout.compute_layouts(specs, "win32")
    assert (lay32["c"].size, lay32["c"].align, lay32["c"].offsets["p"]) == (12, 4, 8)
    assert (lay32["d"].size, lay32["d"].offsets) == (20, {"c": 0, "inner": 4, "t": 16})


def test_calculator_rejects_unknown_types():
    with pytest.raises(KeyError, match="nosuch"):
        abi_layout.compute_layouts({"x": [("f", "nosuch")]}, "linux64")


def test_calculator_packet_oid_data_is_12_bytes():
    """Npcap's struct _PACKET_OID_DATA { ULONG Oid; ULONG Length; UCHAR Data[1]; } is 12 bytes
    (NPCAP-NOTES.md; Common/Packet32.h) -- ULONG is 32-bit on Windows, so 'long' here."""
    specs = {"oid": [("Oid", "long"), ("Length", "long"), ("Data", "u_char[1]")]}
    for abi in ("win64", "win32"):
        lay = abi_layout.compute_layouts(specs, abi)["oid"]
        assert (lay.size, lay.offsets["Data"]) == (12, 8)


def test_known_packet_dll_layouts():
    """Known answers for Packet.dll's structs: bpf_hdr is 18 bytes of members and 20 with tail
    padding (NPF_Read's bh_hdrlen) on both; NetType is 16 bytes on Win32 too, because the MS
    ABI aligns its ULONGLONG to 8 (i386 SysV would give 12); PACKET_OID_DATA is 12
    (npcap-defs.h's C_ASSERT); PACKET follows the pointer size."""
    win = _structs.struct_specs(_structs.WINDOWS)
    for abi, packet_size, buffer_offset in (("win64", 64, 40), ("win32", 40, 24)):
        lay = abi_layout.compute_layouts(win, abi)
        assert (lay["bpf_hdr"].size, lay["bpf_hdr"].offsets["bh_hdrlen"]) == (20, 16), abi
        assert (lay["NetType"].size, lay["NetType"].offsets["LinkSpeed"]) == (16, 8), abi
        assert (lay["PACKET_OID_DATA"].size, lay["PACKET_OID_DATA"].offsets["Data"]) == (12, 8)
        assert lay["bpf_stat"].size == 16
        assert (lay["PACKET"].size, lay["PACKET"].offsets["Buffer"]) == (packet_size,
                                                                          buffer_offset), abi
    i386_sysv = dict(abi_layout.ABIS["win32"], u_int64=(8, 4))
    assert abi_layout.compute_layouts(win, i386_sysv)["NetType"].size == 12
    for family in (_structs.LINUX, _structs.BSD):
        assert "PACKET" not in _structs.struct_specs(family)         # Windows only


def test_known_pcap_pkthdr_sizes():
    """The classic trap: Windows' timeval is two 32-bit longs even on x64 (16-byte header);
    Linux x86_64's is two 64-bit fields (24-byte header)."""
    win = _structs.struct_specs(_structs.WINDOWS)
    lin = _structs.struct_specs(_structs.LINUX)
    assert abi_layout.compute_layouts(win, "win64")["pcap_pkthdr"].size == 16
    assert abi_layout.compute_layouts(win, "win32")["pcap_pkthdr"].size == 16
    assert abi_layout.compute_layouts(lin, "linux64")["pcap_pkthdr"].size == 24
    assert abi_layout.compute_layouts(win, "win64")["pcap_stat"].size == 24   # 6 u_int
    assert abi_layout.compute_layouts(lin, "linux64")["pcap_stat"].size == 12


def test_sockaddr_in_is_never_embedded():
    """Justifies C_ALIGN_OVERRIDES: the spec's sockaddr_in (alignment 2, C has 4) is never
    embedded by value, so only its offsets and size matter, and those are compiler-checked."""
    for family in (_structs.WINDOWS, _structs.LINUX, _structs.BSD):
        specs = _structs.struct_specs(family)
        for name, fields in specs.items():
            for field, c_type in fields:
                assert c_type.split("[", 1)[0] not in C_ALIGN_OVERRIDES, (family, name, field)
        for abi in ("win64", "win32", "linux64"):
            lay = abi_layout.compute_layouts(specs, abi)["sockaddr_in"]
            assert lay.size == 16 and lay.size % C_ALIGN_OVERRIDES["sockaddr_in"] == 0


def test_abi_tables_cover_every_type_used():
    for family in (_structs.WINDOWS, _structs.LINUX, _structs.BSD):
        used = _used_scalars(_structs.struct_specs(family))
        for abi, table in abi_layout.ABIS.items():
            assert used <= set(table), (family, abi, used - set(table))
        assert used <= set(_structs._HOST_SCALARS), used - set(_structs._HOST_SCALARS)


# --------------------------------------------------------------------------------------------
# Calculator == ctypes on this host
# --------------------------------------------------------------------------------------------

def _assert_ctypes_matches(classes, layouts):
    assert set(classes) == set(layouts)
    for name, cls in classes.items():
        lay = layouts[name]
        assert ctypes.sizeof(cls) == lay.size, name
        assert ctypes.alignment(cls) == lay.align, name
        assert [f for f, _ in cls._fields_] == list(lay.offsets), name
        for field, offset in lay.offsets.items():
            descriptor = getattr(cls, field)
            assert descriptor.offset == offset, (name, field)
            assert descriptor.size == lay.field_sizes[field], (name, field)


def test_host_is_linux_x86_64_lp64():
    """The linux64 ABI table agrees with this interpreter's ctypes scalar sizes."""
    assert sys.platform.startswith("linux") and platform.machine() in ("x86_64", "aarch64")
    table = abi_layout.ABIS["linux64"]
    for c_type, ctype in _structs._HOST_SCALARS.items():
        assert (ctypes.sizeof(ctype), ctypes.alignment(ctype)) == table[c_type], c_type


def test_calculator_matches_ctypes_on_host_linux64():
    classes = _structs.build_structs(_structs.LINUX)
    layouts = abi_layout.compute_layouts(_structs.struct_specs(_structs.LINUX), "linux64")
    _assert_ctypes_matches(classes, layouts)
    # and the module-level classes the package really uses are these layouts
    assert ctypes.sizeof(_structs.pcap_pkthdr) == layouts["pcap_pkthdr"].size
    assert _structs.pcap_if.flags.offset == layouts["pcap_if"].offsets["flags"]


@pytest.mark.parametrize("abi,ptr_type", [("win64", ctypes.c_void_p), ("win32", ctypes.c_uint32)])
def test_ctypes_builder_lays_out_windows_with_a_32_bit_long(monkeypatch, abi, ptr_type):
    """The Windows layouts never use this interpreter's ``c_long`` (8 bytes here, as in a
    64-bit Cygwin Python): built on this LP64 host they already match the compiler-proven
    Win64 layout.  For Win32 only the pointer size is substituted."""
    assert ctypes.sizeof(ctypes.c_long) == 8
    monkeypatch.setitem(_structs._WINDOWS_SCALARS, "ptr", ptr_type)
    classes = _structs.build_structs(_structs.WINDOWS)
    layouts = abi_layout.compute_layouts(_structs.struct_specs(_structs.WINDOWS), abi)
    _assert_ctypes_matches(classes, layouts)
    assert ctypes.sizeof(classes["pcap_pkthdr"]) == 16


def test_only_win32_is_the_windows_family_and_cygwin_is_its_own():
    assert _structs.host_family("win32") == _structs.WINDOWS
    for name in ("cygwin", "msys"):
        assert _structs.host_family(name) == _structs.CYGWIN


# --------------------------------------------------------------------------------------------
# Calculator == real C compilers against the real pcap headers
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pcap_include(tmp_path_factory):
    """A private copy of Debian's pcap headers (so a cross compiler sees them without seeing
    the host's glibc headers in /usr/include)."""
    if not os.path.isfile(os.path.join(PCAP_HEADERS, "pcap.h")):
        pytest.skip("Debian's pcap headers are missing: apt-get install libpcap-dev")
    root = tmp_path_factory.mktemp("pcap-include")
    os.mkdir(str(root / "pcap"))
    for name in os.listdir(PCAP_HEADERS):
        if name.endswith(".h"):
            shutil.copy(os.path.join(PCAP_HEADERS, name), str(root / "pcap" / name))
    shutil.copy("/usr/include/pcap.h", str(root / "pcap.h"))
    return str(root)


def _c_prelude(abi):
    if abi.startswith("win"):
        return ("#include <winsock2.h>\n#include <ws2tcpip.h>\n#include <windows.h>\n"
                "#include <stddef.h>\n#include <pcap/pcap.h>\n"
                "#ifndef _WIN32\n#error not a Windows compiler\n#endif\n"
                + NPCAP_DECLARATIONS)
    return ("#include <stddef.h>\n#include <sys/types.h>\n#include <sys/socket.h>\n"
            "#include <netinet/in.h>\n#include <sys/time.h>\n#include <pcap/pcap.h>\n"
            "#ifdef _WIN32\n#error not a Linux compiler\n#endif\n")


def _assertions(family, abi):
    """Lines of _Static_assert for every scalar type used (size, alignment, signedness) and every
    struct (size, alignment) and field (offset, size)."""
    specs = _structs.struct_specs(family)
    layouts = abi_layout.compute_layouts(specs, abi)
    table = abi_layout.ABIS[abi]
    lines = []
    for c_type in sorted(_used_scalars(specs)):
        size, align = table[c_type]
        c_name = C_SCALARS[c_type]
        lines.append('_Static_assert(sizeof(%s) == %d, "sizeof(%s) %s");'
                     % (c_name, size, c_type, abi))
        lines.append('_Static_assert(_Alignof(%s) == %d, "_Alignof(%s) %s");'
                     % (c_name, align, c_type, abi))
        if c_type != "ptr":
            # signedness of the ctypes type the builder uses == signedness of the C type
            signed = _structs._HOST_SCALARS[c_type](-1).value < 0
            lines.append('_Static_assert((((%s)-1) < 0) == %d, "signedness of %s %s");'
                         % (c_name, signed, c_type, abi))
    for name, lay in layouts.items():
        tag = name if name in C_TYPEDEF_NAMES else "struct %s" % name
        lines.append('_Static_assert(sizeof(%s) == %d, "sizeof(%s) %s");'
                     % (tag, lay.size, tag, abi))
        lines.append('_Static_assert(_Alignof(%s) == %d, "_Alignof(%s) %s");'
                     % (tag, C_ALIGN_OVERRIDES.get(name, lay.align), tag, abi))
        for field, offset in lay.offsets.items():
            lines.append('_Static_assert(offsetof(%s, %s) == %d, "offsetof(%s, %s) %s");'
                         % (tag, field, offset, tag, field, abi))
            lines.append('_Static_assert(sizeof(((%s *)0)->%s) == %d, "sizeof %s.%s %s");'
                         % (tag, field, lay.field_sizes[field], tag, field, abi))
    return lines


def _compile(compiler, package, include, source, tmpdir):
    exe = shutil.which(compiler)
    if exe is None:
        pytest.skip("%s is not installed: apt-get install %s" % (compiler, package))
    path = os.path.join(str(tmpdir), "layout_check.c")
    with open(path, "w") as handle:
        handle.write(source)
    return subprocess.run([exe, "-std=gnu11", "-fsyntax-only", "-I", include, path],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120)


@pytest.mark.parametrize("abi,compiler,family,package", TARGETS, ids=[t[0] for t in TARGETS])
def test_layouts_compile_with_real_compiler(pcap_include, tmp_path, abi, compiler, family,
                                            package):
    lines = _assertions(family, abi)
    # every struct, every field of the spec is asserted (offset + size each)
    specs = _structs.struct_specs(family)
    n_fields = sum(len(f) for f in specs.values())
    assert sum(1 for line in lines if "offsetof(" in line) == n_fields
    source = _c_prelude(abi) + "\n".join(lines) + "\n"
    result = _compile(compiler, package, pcap_include, source, tmp_path)
    assert result.returncode == 0, "%s rejected the %s layout:\n%s" % (compiler, abi,
                                                                       result.stderr)


@pytest.mark.parametrize("abi,compiler,family,package", TARGETS, ids=[t[0] for t in TARGETS])
def test_negative_control_compiler_rejects_a_wrong_assert(pcap_include, tmp_path, abi, compiler,
                                                          family, package):
    """Same file plus one deliberately wrong offset: the compiler must fail on exactly it."""
    lay = abi_layout.compute_layouts(_structs.struct_specs(family), abi)["pcap_pkthdr"]
    wrong = ('_Static_assert(offsetof(struct pcap_pkthdr, caplen) == %d, '
             '"deliberately wrong");' % (lay.offsets["caplen"] + 4))
    source = _c_prelude(abi) + "\n".join(_assertions(family, abi)) + "\n" + wrong + "\n"
    result = _compile(compiler, package, pcap_include, source, tmp_path)
    assert result.returncode != 0
    assert "deliberately wrong" in result.stderr
    assert result.stderr.count("static assertion failed") == 1, result.stderr


WINDOWS_TARGETS = [t for t in TARGETS if t[2] == _structs.WINDOWS]


@pytest.mark.parametrize("abi,compiler,family,package", WINDOWS_TARGETS,
                         ids=[t[0] for t in WINDOWS_TARGETS])
def test_negative_control_npcap_declarations_are_compiled(pcap_include, tmp_path, abi, compiler,
                                                          family, package):
    """The Packet.dll structs are really checked: a PACKET.Buffer offset 4 bytes off and
    NetType with the i386 SysV size (12, ULONGLONG aligned to 4) are both rejected."""
    lay = abi_layout.compute_layouts(_structs.struct_specs(family), abi)["PACKET"]
    wrong = ['_Static_assert(offsetof(PACKET, Buffer) == %d, "wrong PACKET");'
             % (lay.offsets["Buffer"] + 4),
             '_Static_assert(sizeof(NetType) == 12, "wrong NetType");']
    source = _c_prelude(abi) + "\n".join(_assertions(family, abi) + wrong) + "\n"
    result = _compile(compiler, package, pcap_include, source, tmp_path)
    assert result.returncode != 0
    assert "wrong PACKET" in result.stderr and "wrong NetType" in result.stderr
    assert result.stderr.count("static assertion failed") == 2, result.stderr
