"""Check every row of udpcap_ctypes._pcap.PROTOTYPES against Debian's real pcap headers.

``/usr/include/pcap/pcap.h`` (libpcap 1.10) is the same header Npcap ships for wpcap.dll; its
``#ifdef _WIN32`` branches declare what only wpcap.dll exports.  The parser below reads every
``PCAP_API <ret> <name>(<args>);`` declaration together with the ``_WIN32`` state of the
preprocessor at that point (an approximate tracker of #if/#ifdef/#ifndef/#elif/#else/#endif:
enough for these headers, and it refuses a _WIN32 condition it does not understand).

Packet.dll has no header on this machine: its rows are checked against a table copied by hand
from Npcap's ``Common/Packet32.h`` (see PACKET32_H below).
"""

import ctypes
import os
import re

import pytest

from udpcap_ctypes import _pcap, _structs

HEADERS = ["/usr/include/pcap/pcap.h", "/usr/include/pcap/bpf.h"]

# Return/argument C types that are pointers although they have no '*': typedefs of pointers.
POINTER_TYPEDEFS = {"HANDLE", "pcap_handler", "PAirpcapHandle"}
# C scalar type -> the ctypes types that have the same size and signedness on every platform.
SCALARS = {
    "int": (ctypes.c_int,),
    "u_int": (ctypes.c_uint,),
    "unsigned int": (ctypes.c_uint,),
    "bpf_u_int32": (ctypes.c_uint32,),
    "long": (ctypes.c_long,),
    "int64_t": (ctypes.c_int64,),
    "intptr_t": (ctypes.c_ssize_t,),
    "size_t": (ctypes.c_size_t,),
    # typedef enum { PCAP_D_INOUT, PCAP_D_IN, PCAP_D_OUT } pcap_direction_t: an enum is an int
    # for gcc, clang and MSVC.
    "pcap_direction_t": (ctypes.c_int,),
}


class Declaration:
    def __init__(self, name, ret, args, win, path, line):
        self.name = name
        self.ret = ret            # normalised return type text, e.g. "pcap_t *"
        self.args = args          # list of normalised argument texts
        self.win = win            # True: inside _WIN32; False: inside !_WIN32; None: both
        self.path = path
        self.line = line

    def where(self):
        return "%s:%d" % (self.path, self.line)


def _strip_comments(text):
    """Remove /* */ and // comments, keeping newlines so line numbers stay right."""
    def blank(match):
        return "\n" * match.group(0).count("\n") + " "
    text = re.sub(r"/\*.*?\*/", blank, text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


_TYPE_QUALIFIERS = {"struct", "const", "unsigned", "signed", "volatile"}
_BASE_TYPES = {"int", "long", "char", "short", "void"}


def _normalise(text, parameter=False):
    """Canonical type text: ``const char *``, ``pcap_if_t **``; with *parameter*, a parameter
    name (``pcap_t *p``, ``int dim``) is dropped.  Function-pointer parameters are kept as
    written (they contain parentheses and are pointers)."""
    text = re.sub(r"\s+", " ", text).strip()
    if "(" in text:
        return text
    tokens = re.findall(r"\w+|\*|\S", text)
    if parameter and len(tokens) >= 2 and re.match(r"\w+$", tokens[-1]) \
            and tokens[-1] not in _BASE_TYPES and tokens[-2] not in _TYPE_QUALIFIERS:
        tokens = tokens[:-1]
    result = ""
    for token in tokens:
        if token == "*":
            result += ("" if result.endswith("*") else " ") + "*"
        else:
            result += (" " if result else "") + token
    return result


def _split_args(text):
    """Split an argument list at top-level commas; '(void)' and '()' give []."""
    args, depth, current = [], 0, ""
    for char in text:
        if char == "," and depth == 0:
            args.append(current)
            current = ""
            continue
        depth += char == "("
        depth -= char == ")"
        current += char
    args.append(current)
    args = [_normalise(a, parameter=True) for a in args]
    if args in ([""], ["void"]):
        return []
    return args


_WIN_COND = {
    "defined(_WIN32)": True, "defined _WIN32": True,
    "!defined(_WIN32)": False, "!defined _WIN32": False,
}


def _condition(directive, expression):
    """_WIN32 meaning of one #if/#ifdef/#ifndef/#elif condition: True, False or None."""
    expression = re.sub(r"\s+", " ", expression).strip()
    if directive == "ifdef":
        return True if expression == "_WIN32" else None
    if directive == "ifndef":
        return False if expression == "_WIN32" else None
    if "_WIN32" not in expression:
        return None
    if expression in _WIN_COND:
        return _WIN_COND[expression]
    raise AssertionError("the header tracker does not understand #%s %s" % (directive, expression))


def _join_continuations(lines):
    """Join backslash-continued lines (multi-line #define) onto their first line; the
    continuation lines become empty so line numbers stay right."""
    out = []
    pending = None
    for line in lines:
        if pending is not None:
            out[pending] = out[pending].rstrip()[:-1] + " " + line
            out.append("")
        else:
            out.append(line)
            pending = len(out) - 1
        if not out[pending].rstrip().endswith("\\"):
            pending = None
    return out


def parse_header(path):
    """Every PCAP_API declaration of *path*, with its _WIN32 state."""
    with open(path) as handle:
        text = _strip_comments(handle.read())
    lines = _join_continuations(text.split("\n"))
    declarations = []
    stack = []        # frames: {"branch": True/False/None, "seen_true": bool, "seen_false": bool}
    buffer, start_line, start_state = "", 0, None
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        match = re.match(r"#\s*(\w+)\s*(.*)", line)
        if match:
            directive, rest = match.group(1), match.group(2)
            if directive in ("if", "ifdef", "ifndef"):
                branch = _condition(directive, rest)
                stack.append({"branch": branch, "seen_true": branch is True,
                              "seen_false": branch is False})
            elif directive == "elif":
                frame = stack[-1]
                explicit = _condition("elif", rest)
                # an earlier "#if _WIN32" branch means every later branch is !_WIN32, and
                # an earlier "#if !_WIN32" that every later one is _WIN32.
                inherited = (False if frame["seen_true"] else
                             True if frame["seen_false"] else None)
                frame["branch"] = explicit if inherited is None else inherited
                frame["seen_true"] |= explicit is True
                frame["seen_false"] |= explicit is False
            elif directive == "else":
                frame = stack[-1]
                frame["branch"] = (False if frame["seen_true"] else
                                   True if frame["seen_false"] else None)
            elif directive == "endif":
                stack.pop()
            continue
        if not line:
            continue
        state = None
        for frame in stack:
            if frame["branch"] is not None:
                state = frame["branch"]
        if "PCAP_API" in line and "PCAP_API" not in buffer:
            buffer = line[line.index("PCAP_API"):]
            start_line, start_state = number, state
        elif buffer:
            buffer += " " + line
        if buffer and ";" in buffer:
            decl = buffer[:buffer.index(";")]
            buffer = ""
            found = re.match(r"PCAP_API\s+(.+?)\b(\w+)\s*\((.*)\)\s*$", decl, flags=re.S)
            assert found, "cannot parse %s:%d: %s" % (path, start_line, decl)
            declarations.append(Declaration(found.group(2), _normalise(found.group(1)),
                                            _split_args(found.group(3)), start_state,
                                            path, start_line))
    assert not stack, "unbalanced #if/#endif in %s" % path
    return declarations


@pytest.fixture(scope="module")
def declarations():
    missing = [p for p in HEADERS if not os.path.isfile(p)]
    if missing:
        pytest.skip("pcap headers %s are missing: apt-get install libpcap-dev" % missing)
    found = {}
    for path in HEADERS:
        for decl in parse_header(path):
            found.setdefault(decl.name, []).append(decl)
    return found


# --------------------------------------------------------------------------------------------
# The parser itself
# --------------------------------------------------------------------------------------------

def test_parser_on_known_declarations(declarations):
    """Spot checks that prove the parser and its _WIN32 tracker work on the real header."""
    assert len(declarations) > 80          # pcap.h declares ~110 functions
    (compile_,) = declarations["pcap_compile"]                 # spans two lines
    assert compile_.args == ["pcap_t *", "struct bpf_program *", "const char *", "int",
                             "bpf_u_int32"]
    assert compile_.win is None and compile_.ret == "int"
    (getevent,) = declarations["pcap_getevent"]                # inside #if defined(_WIN32)
    assert getevent.win is True and getevent.ret == "HANDLE"
    (selectable,) = declarations["pcap_get_selectable_fd"]     # #else of #if _WIN32/#elif MSDOS
    assert selectable.win is False
    (set_wait,) = declarations["pcap_set_wait"]                # the MSDOS branch: not _WIN32
    assert set_wait.win is False and len(set_wait.args) == 3   # has a function-pointer argument
    assert {d.win for d in declarations["pcap_fileno"]} == {True, False}   # both branches
    assert declarations["pcap_lib_version"][0].args == []      # (void)
    assert declarations["bpf_filter"][0].path.endswith("bpf.h")


def test_parser_tracks_nested_conditions(tmp_path):
    header = tmp_path / "t.h"
    header.write_text(
        "#ifndef GUARD\n"
        "PCAP_API int a(void);\n"
        "#ifdef _WIN32\n"
        "  #ifndef BUILDING\n"
        "    PCAP_API int b(int, /* comment, with comma */ char *);\n"
        "  #endif\n"
        "#else\n"
        "PCAP_API void c(void (*cb)(int, int), int);\n"
        "#endif\n"
        "#if !defined(_WIN32)\n"
        "PCAP_API const char *\n"
        "    d(int);\n"
        "#elif defined(MSDOS)\n"
        "#else\n"
        "PCAP_API int e(void);\n"
        "#endif\n"
        "#endif\n")
    got = {d.name: d for d in parse_header(str(header))}
    assert (got["a"].win, got["b"].win, got["c"].win, got["d"].win, got["e"].win) == \
        (None, True, False, False, True)
    assert got["b"].args == ["int", "char *"]
    assert len(got["c"].args) == 2 and got["c"].ret == "void"
    assert got["d"].ret == "const char *" and got["d"].line == 11


# --------------------------------------------------------------------------------------------
# Each PROTOTYPES row against the header
# --------------------------------------------------------------------------------------------

def _is_pointer_c(c_type):
    return "*" in c_type or c_type.replace("const ", "") in POINTER_TYPEDEFS


def _is_pointer_ctypes(ctype):
    return (ctype in (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_wchar_p)
            or (isinstance(ctype, type) and issubclass(ctype, (ctypes._Pointer,
                                                               ctypes._CFuncPtr))))


def _check_type(c_type, ctype, what):
    if _is_pointer_c(c_type):
        assert _is_pointer_ctypes(ctype), "%s is %r in C but %r in the table" % (what, c_type,
                                                                                  ctype)
        if re.fullmatch(r"(const )?char \*", c_type):
            assert ctype in (ctypes.c_char_p, ctypes.c_void_p), what
        pointee = re.fullmatch(r"(?:const )?(\w+) \*", c_type)
        if pointee and pointee.group(1) in SCALARS and issubclass(ctype, ctypes._Pointer):
            assert ctype._type_ in SCALARS[pointee.group(1)], (
                "%s is %r in C but a pointer to %r in the table" % (what, c_type, ctype._type_))
        return
    bare = c_type.replace("const ", "")
    assert bare in SCALARS, "%s: no rule for C type %r" % (what, c_type)
    assert ctype in SCALARS[bare], "%s is %r in C but %r in the table" % (what, c_type, ctype)


ROWS = list(_pcap.PROTOTYPES)


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_prototype_row_matches_header(declarations, row):
    name, restype, argtypes, errcheck, where = (row.name, row.restype, row.argtypes,
                                                row.errcheck, row.platforms)
    assert name in declarations, "%s is not declared in %s" % (name, HEADERS)
    decls = declarations[name]
    states = {d.win for d in decls}
    for decl in decls:
        assert len(decl.args) == len(argtypes), (
            "%s: header %s has %d arguments %r, the table %d" % (name, decl.where(),
                                                                len(decl.args), decl.args,
                                                                len(argtypes)))
        for index, (c_type, ctype) in enumerate(zip(decl.args, argtypes)):
            _check_type(c_type, ctype, "%s argument %d (%s)" % (name, index, decl.where()))
        if decl.ret == "void":
            assert restype is None, "%s returns void (%s)" % (name, decl.where())
        else:
            _check_type(decl.ret, restype, "%s return type (%s)" % (name, decl.where()))
    if where == "windows":
        assert states == {True}, "%s is marked windows but declared outside _WIN32 at %s" % (
            name, [d.where() for d in decls])
    elif where == "posix":
        assert True not in states and states, "%s is marked posix but declared in _WIN32" % name
    else:
        assert where == "all", "%s: unknown platform marker %r" % (name, where)
        assert None in states or states == {True, False}, (
            "%s is marked all but the header restricts it: %s" % (name, decls[0].where()))
    assert errcheck is None or callable(errcheck)


def test_oid_get_request_takes_a_size_t_pointer(declarations):
    """pcap_oid_get_request(pcap_t *, bpf_u_int32, void *, size_t *): the length is a size_t
    (64-bit on Win64), so a c_uint pointer would let Npcap write 8 bytes into 4."""
    (decl,) = declarations["pcap_oid_get_request"]
    assert decl.args[3] == "size_t *"
    row = [r for r in _pcap.PROTOTYPES if r.name == "pcap_oid_get_request"][0]
    argtype = row.argtypes[3]
    assert issubclass(argtype, ctypes._Pointer) and argtype._type_ is ctypes.c_size_t
    assert row.argtypes[1] is ctypes.c_uint32 and decl.args[1] == "bpf_u_int32"


def test_table_has_no_duplicates():
    names = [row.name for row in _pcap.PROTOTYPES + _pcap.PACKET_PROTOTYPES]
    assert len(names) == len(set(names))


# --------------------------------------------------------------------------------------------
# Packet.dll (no header on this machine)
# --------------------------------------------------------------------------------------------

# Copied by hand from Npcap's Common/Packet32.h (nmap/npcap; NPCAP-NOTES.md), C type -> ctypes:
# PCHAR/LPCSTR/PCCH -> c_char_p, BOOLEAN (UCHAR) -> c_ubyte, LPADAPTER/PPACKET_OID_DATA -> c_void_p.
# The capture rows are Packet32.h's declarations verbatim (nmap/npcap at eb5b852), SAL
# annotations included: _Success_(return) / _Ret_maybenull_ mark the functions that report a
# failure by their result, with the reason in the thread's last error.  ULONG is 32-bit on
# Windows (c_uint32, never c_ulong); LPPACKET, NetType*, struct bpf_stat* -> c_void_p (the
# caller passes byref); struct bpf_program* -> POINTER(bpf_program), as wpcap's rows.
P_BPF_PROGRAM = ctypes.POINTER(_structs.bpf_program)
PACKET32_H = {
    "PacketGetVersion": ("PCHAR PacketGetVersion(void)", ctypes.c_char_p, []),
    "PacketGetDriverVersion": ("PCHAR PacketGetDriverVersion(void)", ctypes.c_char_p, []),
    "PacketGetDriverName": ("PCHAR PacketGetDriverName(void)", ctypes.c_char_p, []),
    "PacketIsLoopbackAdapter": ("BOOLEAN PacketIsLoopbackAdapter(PCHAR AdapterName)",
                                ctypes.c_ubyte, [ctypes.c_char_p]),
    "PacketGetInfo": ("BOOLEAN PacketGetInfo(LPADAPTER, PPACKET_OID_DATA)  /* Npcap >= 1.81 */",
                      ctypes.c_ubyte, [ctypes.c_void_p, ctypes.c_void_p]),
    "PacketOpenAdapter": (
        "_Ret_maybenull_ LPADAPTER PacketOpenAdapter(_In_ PCCH AdapterName);",
        ctypes.c_void_p, [ctypes.c_char_p]),
    "PacketCloseAdapter": (
        "VOID PacketCloseAdapter(_In_ _Post_invalid_ LPADAPTER lpAdapter);",
        None, [ctypes.c_void_p]),
    "PacketGetNetType": (
        "_Success_(return) BOOLEAN PacketGetNetType(_In_ LPADAPTER AdapterObject, "
        "_Out_ NetType* type);",
        ctypes.c_ubyte, [ctypes.c_void_p, ctypes.c_void_p]),
    "PacketSetHwFilter": (
        "_Success_(return) BOOLEAN PacketSetHwFilter(_In_ LPADAPTER AdapterObject, "
        "_In_ ULONG Filter);",
        ctypes.c_ubyte, [ctypes.c_void_p, ctypes.c_uint32]),
    "PacketSetBuff": (
        "_Success_(return) BOOLEAN PacketSetBuff(_In_ LPADAPTER AdapterObject, _In_ int dim);",
        ctypes.c_ubyte, [ctypes.c_void_p, ctypes.c_int]),
    "PacketSetMinToCopy": (
        "_Success_(return) BOOLEAN PacketSetMinToCopy(_In_ LPADAPTER AdapterObject, "
        "_In_ int nbytes);",
        ctypes.c_ubyte, [ctypes.c_void_p, ctypes.c_int]),
    "PacketSetReadTimeout": (
        "_Success_(return) BOOLEAN PacketSetReadTimeout(_In_ LPADAPTER AdapterObject, "
        "_In_ int timeout);",
        ctypes.c_ubyte, [ctypes.c_void_p, ctypes.c_int]),
    "PacketSetBpf": (
        "_Success_(return) BOOLEAN PacketSetBpf(_In_ LPADAPTER AdapterObject, "
        "_In_ struct bpf_program* fp);",
        ctypes.c_ubyte, [ctypes.c_void_p, P_BPF_PROGRAM]),
    "PacketGetReadEvent": (
        "HANDLE PacketGetReadEvent(_In_ LPADAPTER AdapterObject);",
        ctypes.c_void_p, [ctypes.c_void_p]),
    "PacketInitPacket": (
        "VOID PacketInitPacket(_Out_ LPPACKET lpPacket, _In_reads_bytes_(Length) PVOID  Buffer, "
        "_In_ UINT  Length);",
        None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint]),
    "PacketReceivePacket": (
        "_Success_(return) BOOLEAN PacketReceivePacket(_In_ LPADAPTER AdapterObject, "
        "_Inout_updates_bytes_(lpPacket->Length) LPPACKET lpPacket, _In_ BOOLEAN Sync);",
        ctypes.c_ubyte, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ubyte]),
    "PacketGetStats": (
        "_Success_(return) BOOLEAN PacketGetStats(_In_ LPADAPTER AdapterObject, "
        "_Out_ struct bpf_stat* s);",
        ctypes.c_ubyte, [ctypes.c_void_p, ctypes.c_void_p]),
    "PacketRequest": (
        "_Success_(return) BOOLEAN PacketRequest(_In_ LPADAPTER  AdapterObject, "
        "_In_ BOOLEAN Set, _Inout_updates_bytes_(PACKET_OID_DATA_LENGTH(OidData->Length)) "
        "PPACKET_OID_DATA  OidData);",
        ctypes.c_ubyte, [ctypes.c_void_p, ctypes.c_ubyte, ctypes.c_void_p]),
}

# Packet32.h's C types -> the ctypes type a row must use for them (see above).
PACKET32_TYPES = {
    "VOID": None, "PCHAR": ctypes.c_char_p, "LPCSTR": ctypes.c_char_p, "PCCH": ctypes.c_char_p,
    "BOOLEAN": ctypes.c_ubyte, "int": ctypes.c_int, "UINT": ctypes.c_uint,
    "ULONG": ctypes.c_uint32, "HANDLE": ctypes.c_void_p, "PVOID": ctypes.c_void_p,
    "LPADAPTER": ctypes.c_void_p, "LPPACKET": ctypes.c_void_p,
    "PPACKET_OID_DATA": ctypes.c_void_p, "NetType *": ctypes.c_void_p,
    "struct bpf_stat *": ctypes.c_void_p, "struct bpf_program *": P_BPF_PROGRAM,
}

# Functions that report failure by their result (_Success_(return), _Ret_maybenull_) but are
# bound without the last-error errcheck, because their caller checks the result itself.
CALLER_CHECKS = {"PacketReceivePacket": "the batch reader's hot path (_npf)"}


def _packet32_parts(signature):
    """(return type, name, [argument types]) of one copied declaration: comments, SAL
    annotations and parameter names dropped, '*' spaced as 'T *'."""
    text = re.sub(r"/\*.*?\*/", " ", signature)
    text = re.sub(r"\b_[A-Z][A-Za-z_]*_(\((?:[^()]|\([^()]*\))*\))?", " ", text)
    match = re.match(r"\s*(.+?)\b(Packet\w+)\s*\((.*)\)\s*;?\s*$", text)
    ret, name, args = match.groups()

    def c_type(text, named):
        words = text.replace("*", " * ").split()
        if named and len(words) > 1 and words[-1] != "*":
            words = words[:-1]                        # the parameter name
        return " ".join(words)
    arg_types = [] if args.strip() in ("", "void") else [
        c_type(arg, True) for arg in args.split(",")]
    return c_type(ret, False), name, arg_types


@pytest.mark.parametrize("name", sorted(PACKET32_H))
def test_packet32_h_table_spells_its_c_types_in_ctypes(name):
    """The ctypes columns of PACKET32_H are what the copied declaration says."""
    signature, restype, argtypes = PACKET32_H[name]
    c_ret, c_name, c_args = _packet32_parts(signature)
    assert c_name == name
    assert PACKET32_TYPES[c_ret] is restype, (name, c_ret)
    assert [PACKET32_TYPES[arg] for arg in c_args] == argtypes, (name, c_args)


@pytest.mark.parametrize("row", _pcap.PACKET_PROTOTYPES,
                         ids=[r.name for r in _pcap.PACKET_PROTOTYPES])
def test_packet_dll_row_matches_packet32_h(row):
    assert row.name in PACKET32_H, "%s is not in the Packet32.h table of this test" % row.name
    signature, expected_restype, expected_args = PACKET32_H[row.name]
    assert row.restype is expected_restype, row.name
    assert list(row.argtypes) == expected_args, row.name
    assert row.platforms == "windows"
    # A failure told by the result and the last error raises it (last_error_check); nothing
    # else has that errcheck, and every other such function is named in CALLER_CHECKS.
    reports_failure = "_Success_(return)" in signature or "_Ret_maybenull_" in signature
    if row.errcheck is not None:
        assert row.errcheck is _pcap.last_error_check and reports_failure, row.name
    elif reports_failure:
        assert row.name in CALLER_CHECKS, row.name


def test_every_packet32_h_row_is_bound():
    assert set(PACKET32_H) == {row.name for row in _pcap.PACKET_PROTOTYPES}


def test_every_row_newer_than_the_oldest_libraries_says_which_version_added_it():
    since = {row.name: row.since for row in _pcap.PROTOTYPES + _pcap.PACKET_PROTOTYPES}
    assert "1.81" in since["PacketGetInfo"]
    assert "libpcap 1.5" in since["pcap_set_immediate_mode"]
    assert "Npcap 1.20" in since["pcap_init"]
