"""The ctypes bindings as actually applied to Debian's libpcap, and the loader's promises.

* every function the loader binds has exactly the table's ``argtypes``/``restype``/``errcheck``
  (catches ``.argtype =`` / ``.retype =`` typos, which ctypes silently accepts);
* every "all"/"posix" row is really exported by Debian's libpcap;
* a function the library lacks becomes a stub that raises a clear error when called;
* the package and tools parse as Python 3.8;
* importing the package loads no native library; ``get_library()`` loads it once, even when
  8 threads race for it;
* a bad ``UDPCAP_CTYPES_LIBPCAP`` gives an error naming the path and the variable.
"""

import ast
import ctypes
import ctypes.util
import errno
import glob
import json
import os
import subprocess
import sys
import textwrap
import types

import pytest

from udpcap_ctypes import _bind, _loader, _pcap
from udpcap_ctypes.errors import CaptureUnavailableError, PcapError, UdpcapError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def library():
    try:
        return _loader.get_library()
    except CaptureUnavailableError as exc:
        pytest.skip("libpcap cannot be loaded (%s): apt-get install libpcap0.8" % exc)


# --------------------------------------------------------------------------------------------
# The real library, as bound by the loader
# --------------------------------------------------------------------------------------------

def test_every_bound_function_has_the_declared_types(library):
    assert not library.windows and library.kind == "libpcap"
    assert "libpcap version" in library.version
    fns = {name: value for name, value in vars(library.fns).items()
           if name.startswith("pcap_")}
    expected = {row.name for row in _pcap.PROTOTYPES if row.applies(windows=False)}
    assert set(fns) == expected, "bound functions differ from the non-Windows table rows"
    for row in _pcap.PROTOTYPES:
        if not row.applies(windows=False):
            continue
        func = fns[row.name]
        assert isinstance(func, ctypes._CFuncPtr), "%s is not a real function: %r" % (row.name,
                                                                                      func)
        assert func.restype is row.restype, "%s.restype is %r, table says %r" % (
            row.name, func.restype, row.restype)
        assert func.argtypes is not None, "%s.argtypes was never set" % row.name
        assert tuple(func.argtypes) == tuple(row.argtypes), row.name
        if row.errcheck is None:
            assert getattr(func, "errcheck", None) is None, row.name
        else:                                   # the factory's closure over this table
            assert func.errcheck.__qualname__.startswith(row.errcheck.__name__), row.name


def test_every_all_and_posix_row_is_exported_by_debian_libpcap(library):
    raw = ctypes.CDLL(library.path)          # a fresh handle: nothing declared on it
    missing = [row.name for row in _pcap.PROTOTYPES
               if row.applies(windows=False) and not hasattr(raw, row.name)]
    assert missing == []


def test_bound_functions_work_on_the_real_library(library):
    """A few calls that need no privileges, through the declared types and errchecks."""
    fns = library.fns
    assert fns.pcap_lib_version().startswith(b"libpcap version")
    perm = fns.pcap_statustostr(_pcap.PCAP_ERROR_PERM_DENIED)
    assert isinstance(perm, bytes) and b"permission" in perm.lower()
    dead = fns.pcap_open_dead(_pcap.DLT_EN10MB, 65535)     # a pcap_t* is 64-bit: not truncated
    try:
        assert fns.pcap_datalink(dead) == _pcap.DLT_EN10MB
        assert fns.pcap_snapshot(dead) == 65535
        program = _pcap.P_program._type_()
        assert fns.pcap_compile(dead, ctypes.byref(program), b"udp port 5000", 1,
                                _pcap.PCAP_NETMASK_UNKNOWN) == 0
        assert program.bf_len > 0 and program.bf_insns
        fns.pcap_freecode(ctypes.byref(program))
        with pytest.raises(PcapError, match="pcap_compile"):
            fns.pcap_compile(dead, ctypes.byref(program), b"this is not a filter", 1,
                             _pcap.PCAP_NETMASK_UNKNOWN)
    finally:
        fns.pcap_close(dead)


# --------------------------------------------------------------------------------------------
# binding a table with functions the library lacks
# --------------------------------------------------------------------------------------------

def test_windows_rows_against_the_real_linux_libpcap_become_stubs(library):
    """Binding the table for Windows against Debian's libpcap (which lacks the wpcap.dll
    extensions) yields stubs, not an AttributeError; calling one explains what is missing."""
    raw = ctypes.CDLL(library.path)
    fns = _pcap.bind_library(raw, True, "Debian libpcap (test)")
    for name in ("pcap_getevent", "pcap_setmintocopy", "pcap_setbuff", "pcap_oid_get_request"):
        stub = getattr(fns, name)
        assert isinstance(stub, _bind.Missing) and not stub
        with pytest.raises(OSError) as info:
            stub(None, 0)
        assert info.value.errno == errno.ENOSYS
        assert name in str(info.value) and "Debian libpcap (test)" in str(info.value)
    assert not hasattr(fns, "pcap_get_selectable_fd")        # posix rows skipped on Windows
    assert fns.pcap_lib_version().startswith(b"libpcap")     # "all" rows really bound


def test_fake_old_library_lacking_a_function_gets_a_stub_naming_the_version(library):
    """Stand-in for an old libpcap (< 1.5) and for a Packet.dll older than Npcap 1.81: objects
    that lack a function.  Such libraries cannot exist on this machine, hence the fake."""
    raw = ctypes.CDLL(library.path)
    old_libpcap = types.SimpleNamespace(pcap_lib_version=raw.pcap_lib_version,
                                        pcap_create=raw.pcap_create)
    table = [row for row in _pcap.PROTOTYPES
             if row.name in ("pcap_lib_version", "pcap_create", "pcap_set_immediate_mode")]
    fns = _pcap.bind_library(old_libpcap, False, "old libpcap", table)
    assert fns.pcap_lib_version.restype is ctypes.c_char_p
    assert fns.pcap_lib_version().startswith(b"libpcap")
    with pytest.raises(OSError, match=r"pcap_set_immediate_mode is not exported by old "
                                      r"libpcap; it needs libpcap 1\.5"):
        fns.pcap_set_immediate_mode(None, 1)

    old_packet_dll = types.SimpleNamespace()
    packet = _bind.bind(old_packet_dll, _pcap.PACKET_PROTOTYPES, True, "Packet.dll")
    with pytest.raises(OSError, match=r"PacketGetInfo .*Npcap 1\.81 or newer"):
        packet.PacketGetInfo(None, None)
    assert not packet.PacketGetVersion


# --------------------------------------------------------------------------------------------
# Python 3.8 compatibility of the sources
# --------------------------------------------------------------------------------------------

# Attribute names that only exist from Python 3.9 on (str, pathlib, int, functools, asyncio).
NEWER_ATTRIBUTES = {"removeprefix", "removesuffix", "is_relative_to", "with_stem", "bit_count",
                    "to_thread", "readlink", "cache", "randbytes", "waitstatus_to_exitcode"}
NEWER_MODULES = {"zoneinfo", "graphlib", "tomllib"}
BUILTIN_GENERICS = {"list", "dict", "tuple", "set", "frozenset", "type"}


def _python_sources():
    files = []
    for folder in ("udpcap_ctypes", "tools"):
        files.extend(glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True))
    return sorted(files)


def _py39_problems(tree):
    """Runtime uses of 3.9+ features that ast.parse(feature_version=(3, 8)) cannot see."""
    future_annotations = any(isinstance(node, ast.ImportFrom) and node.module == "__future__"
                             and any(a.name == "annotations" for a in node.names)
                             for node in tree.body)
    lazy = set()
    if future_annotations:
        for node in ast.walk(tree):
            for ann in _annotations_of(node):
                lazy.update(id(n) for n in ast.walk(ann))
    problems = []
    for node in ast.walk(tree):
        if id(node) in lazy:
            continue
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) \
                and node.value.id in BUILTIN_GENERICS:
            problems.append("line %d: %s[...] needs Python 3.9" % (node.lineno, node.value.id))
        elif isinstance(node, ast.Attribute) and node.attr in NEWER_ATTRIBUTES:
            problems.append("line %d: .%s needs Python 3.9+" % (node.lineno, node.attr))
        elif isinstance(node, ast.Import):
            problems.extend("line %d: module %s needs Python 3.9+" % (node.lineno, a.name)
                            for a in node.names if a.name.split(".")[0] in NEWER_MODULES)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] \
                in NEWER_MODULES:
            problems.append("line %d: module %s needs Python 3.9+" % (node.lineno, node.module))
    for node in ast.walk(tree):
        for ann in _annotations_of(node):
            if id(ann) not in lazy and any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr)
                                           for n in ast.walk(ann)):
                problems.append("line %d: X | Y annotation needs Python 3.10" % ann.lineno)
    return problems


def _annotations_of(node):
    if isinstance(node, ast.arg) and node.annotation is not None:
        yield node.annotation
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
        yield node.returns
    elif isinstance(node, ast.AnnAssign):
        yield node.annotation


def test_sources_parse_as_python_3_8():
    files = _python_sources()
    assert any(f.endswith(os.path.join("udpcap_ctypes", "_pcap.py")) for f in files)
    problems = []
    for path in files:
        with open(path, encoding="utf-8") as handle:
            source = handle.read()
        try:
            tree = ast.parse(source, filename=path, feature_version=(3, 8))
        except SyntaxError as exc:
            problems.append("%s:%s: not Python 3.8 syntax: %s" % (path, exc.lineno, exc.msg))
            continue
        problems.extend("%s: %s" % (path, p) for p in _py39_problems(tree))
    assert problems == []


def test_python_3_8_checks_can_fail():
    """The checks above do reject newer code."""
    with pytest.raises(SyntaxError):
        ast.parse("match x:\n    case 1:\n        pass\n", feature_version=(3, 8))
    with pytest.raises(SyntaxError):
        ast.parse("if (n := 1):\n    pass\n", feature_version=(3, 7))
    code = ("import zoneinfo\n"
            "def f(a: list[int]) -> int | None:\n    return 'x'.removeprefix('y')\n")
    assert len(_py39_problems(ast.parse(code))) == 4
    assert _py39_problems(ast.parse("from __future__ import annotations\n"
                                    "def f(a: list[int]) -> int | None: pass\n")) == []


# --------------------------------------------------------------------------------------------
# Loading: not at import, once, thread-safe
# --------------------------------------------------------------------------------------------

def _run_python(code):
    env = dict(os.environ)
    env.pop(_loader.ENV_OVERRIDE, None)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


MAPS_HELPER = """
import json, os, sys, sysconfig
def mapped_libraries():
    found = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(None, 5)
            if len(parts) == 6 and ".so" in parts[5]:
                found.add(parts[5].strip())
    return found
"""


def test_import_loads_no_native_library_and_get_library_does():
    result = _run_python(MAPS_HELPER + """
    import ctypes, ctypes.util, errno, logging, threading   # stdlib the package itself uses
    before = mapped_libraries()
    import udpcap_ctypes
    import udpcap_ctypes.errors, udpcap_ctypes._structs, udpcap_ctypes._pcap
    import udpcap_ctypes._loader, udpcap_ctypes._stats
    after_import = mapped_libraries()
    dynload = sysconfig.get_paths()["platstdlib"]
    new = sorted(p for p in after_import - before if not p.startswith(dynload))
    loaded_before = udpcap_ctypes._loader.loaded_library() is not None
    library = udpcap_ctypes._loader.get_library()
    after_load = mapped_libraries()
    print(json.dumps({
        "new_at_import": new,
        "pcap_at_import": [p for p in after_import if "libpcap" in p],
        "loaded_before": loaded_before,
        "pcap_after_load": [p for p in after_load if "libpcap" in p],
        "same_again": udpcap_ctypes._loader.get_library() is library,
    }))
    """.replace("\n    ", "\n"))
    assert result["pcap_at_import"] == []
    assert result["new_at_import"] == [], "importing the package mapped native libraries"
    assert result["loaded_before"] is False
    assert result["pcap_after_load"], "get_library() did not map libpcap"
    assert result["same_again"] is True


def test_get_library_from_8_threads_loads_once():
    """8 threads call get_library() at the same moment in a fresh process.  load_library is
    wrapped to count calls and to sleep, widening the race window; the real loader runs."""
    result = _run_python("""
    import json, threading, time
    from udpcap_ctypes import _loader
    real_load = _loader.load_library
    calls = []
    def counting_load(*args, **kwargs):
        calls.append(threading.get_ident())
        time.sleep(0.3)
        return real_load(*args, **kwargs)
    _loader.load_library = counting_load
    barrier = threading.Barrier(8)
    results = [None] * 8
    def worker(index):
        barrier.wait()
        results[index] = _loader.get_library()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    print(json.dumps({"calls": len(calls), "distinct": len({id(r) for r in results}),
                      "none": results.count(None)}))
    """)
    assert result == {"calls": 1, "distinct": 1, "none": 0}


# --------------------------------------------------------------------------------------------
# The override variable
# --------------------------------------------------------------------------------------------

def _env_os(value):
    class EnvOS(_loader.LoaderOS):
        """The real OS and file system, with a private environment (a dict)."""
        platform = "linux"
        environ = {_loader.ENV_OVERRIDE: value}
    return EnvOS()


def test_override_with_a_missing_path_names_the_path_and_the_variable(tmp_path):
    missing = str(tmp_path / "no-such-dir" / "libpcap.so.42")
    with pytest.raises(CaptureUnavailableError) as info:
        _loader.load_library(_env_os(missing))
    message = str(info.value)
    assert missing in message and _loader.ENV_OVERRIDE in message
    assert "unset it" in message
    assert isinstance(info.value, UdpcapError) and isinstance(info.value, OSError)


def test_override_with_a_library_that_is_not_libpcap():
    libc = ctypes.util.find_library("c")
    assert libc
    with pytest.raises(CaptureUnavailableError) as info:
        _loader.load_library(_env_os(libc))
    message = str(info.value)
    assert "not a usable capture library" in message and "pcap_create" in message
    assert libc in message and _loader.ENV_OVERRIDE in message


def test_override_with_the_real_libpcap_loads_it(library):
    loaded = _loader.load_library(_env_os(library.path))
    assert loaded.path == library.path and loaded.kind == "libpcap"
    assert loaded.version == library.version
