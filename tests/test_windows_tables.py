"""The Windows tables and pure helpers, checked for real on Linux.

The Win32 prototype table is compiled against mingw-w64's ``windows.h`` for Win64 and Win32;
``_win32`` imports (and ``Win32Api`` constructs) without loading any library; loopback device
names are a pure function; a Cygwin Python is refused before anything is loaded.  Everything
that calls Windows runs on the emulated Windows instead (``test_windows_emulated_*.py``).
"""

import ast
import ctypes
import os
import subprocess
import sys
import textwrap

import pytest

from udpcap_ctypes import _loader, _win32
from udpcap_ctypes.errors import CaptureUnavailableError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Argument counts from the Win32 documentation (learn.microsoft.com), kept apart from the table.
DOCUMENTED_ARG_COUNTS = {
    "CreateEventW": 4, "SetEvent": 1, "ResetEvent": 1, "CloseHandle": 1,
    "WaitForSingleObject": 2, "WaitForMultipleObjects": 4, "GetCurrentProcess": 0,
    "GetSystemDirectoryW": 2,
    "OpenSCManagerW": 3, "OpenServiceW": 3, "QueryServiceStatus": 2, "CloseServiceHandle": 1,
    "OpenProcessToken": 3, "GetTokenInformation": 5,
}


def test_every_prototype_row_declares_restype_and_argtypes_with_documented_counts():
    names = [row.name for row in _win32.WIN32_PROTOTYPES]
    assert sorted(names) == sorted(DOCUMENTED_ARG_COUNTS)
    assert len(names) == len(set(names))
    for row in _win32.WIN32_PROTOTYPES:
        dll, name, restype, argtypes = row.library, row.name, row.restype, row.argtypes
        assert dll in ("kernel32", "advapi32"), name
        assert restype is not None, name
        assert isinstance(argtypes, list), name
        assert len(argtypes) == DOCUMENTED_ARG_COUNTS[name], name
        for argtype in argtypes:
            assert hasattr(argtype, "from_param"), (name, argtype)
    handle_funcs = {"CreateEventW", "GetCurrentProcess", "OpenSCManagerW", "OpenServiceW"}
    for row in _win32.WIN32_PROTOTYPES:
        if row.name in handle_funcs:
            assert row.restype is ctypes.c_void_p, row.name    # never int: 64-bit handles


def _c_checks_for_target(pointer_size, signatures=_win32.WIN32_SIGNATURES):
    """C source asserting the table (*signatures*) against the real Win32 headers for one
    target."""
    lines = ["#define WIN32_LEAN_AND_MEAN", "#include <windows.h>", "#include <stddef.h>", ""]
    signedness = {"DWORD": False, "BOOL": True}
    for c_name, ctype in sorted(_win32.C_TYPES.items()):
        pointerish = ctype in (ctypes.c_void_p, ctypes.c_wchar_p) or issubclass(
            ctype, ctypes._Pointer)
        size = pointer_size if pointerish else ctypes.sizeof(ctype)
        lines.append('_Static_assert(sizeof(%s) == %d, "size of %s");' % (c_name, size, c_name))
        if c_name in signedness:
            lines.append('_Static_assert(((%s)-1 < 0) == %d, "signedness of %s");'
                         % (c_name, int(signedness[c_name]), c_name))
    for struct, name in ((_win32.SERVICE_STATUS, "SERVICE_STATUS"),
                         (_win32.TOKEN_ELEVATION, "TOKEN_ELEVATION")):
        lines.append('_Static_assert(sizeof(%s) == %d, "%s");'
                     % (name, ctypes.sizeof(struct), name))
        for field, _ in struct._fields_:
            lines.append('_Static_assert(offsetof(%s, %s) == %d, "%s.%s");'
                         % (name, field, getattr(struct, field).offset, name, field))
    constants = {
        "INFINITE": _win32.INFINITE, "WAIT_OBJECT_0": _win32.WAIT_OBJECT_0,
        "WAIT_ABANDONED_0": _win32.WAIT_ABANDONED_0, "WAIT_TIMEOUT": _win32.WAIT_TIMEOUT,
        "WAIT_FAILED": _win32.WAIT_FAILED, "MAXIMUM_WAIT_OBJECTS": _win32.MAXIMUM_WAIT_OBJECTS,
        "SC_MANAGER_CONNECT": _win32.SC_MANAGER_CONNECT,
        "SERVICE_QUERY_STATUS": _win32.SERVICE_QUERY_STATUS, "TOKEN_QUERY": _win32.TOKEN_QUERY,
        "TokenElevation": _win32.TOKEN_ELEVATION_CLASS,
        "ERROR_ACCESS_DENIED": _win32.ERROR_ACCESS_DENIED,
        "ERROR_INVALID_HANDLE": _win32.ERROR_INVALID_HANDLE,
        "ERROR_SERVICE_DOES_NOT_EXIST": _win32.ERROR_SERVICE_DOES_NOT_EXIST,
        "SERVICE_STOPPED": 1, "SERVICE_RUNNING": 4, "SERVICE_PAUSED": 7,
    }
    for value, state in _win32.SERVICE_STATES.items():
        constants["SERVICE_" + state.upper()] = value
    for name, value in sorted(constants.items()):
        lines.append('_Static_assert((unsigned long)(%s) == %dUL, "%s");' % (name, value, name))
    for index, row in enumerate(signatures):
        # Assigning the real function to a pointer of our type fails to compile unless return
        # type, argument types, their number and the WINAPI (stdcall) convention all agree.
        lines.append("%s (WINAPI *check_%d)(%s) = %s;"
                     % (row.restype.replace("BOOL", "WINBOOL"), index,
                        ", ".join(a.replace("BOOL", "WINBOOL") for a in row.argtypes) or "void",
                        row.name))
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("compiler,pointer_size", [("x86_64-w64-mingw32-gcc", 8),
                                                   ("i686-w64-mingw32-gcc", 4)])
def test_prototypes_match_mingw_win32_headers(tmp_path, compiler, pointer_size):
    """The table compiled against mingw-w64's windows.h (Win64 and Win32)."""
    source = tmp_path / "check.c"
    source.write_text(_c_checks_for_target(pointer_size))
    try:
        result = subprocess.run(
            [compiler, "-std=c11", "-c", "-Werror", "-Wall", "-Wno-unused-variable",
             "-Werror=incompatible-pointer-types", "-o", str(tmp_path / "check.o"), str(source)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    except FileNotFoundError:
        pytest.fail("%s is missing: install gcc-mingw-w64 (apt install gcc-mingw-w64)" % compiler)
    assert result.returncode == 0, result.stdout + "\n" + source.read_text()


def test_mingw_check_rejects_a_wrong_row(tmp_path):
    """The header check can fail: one wrong argument count in a row breaks the compile."""
    rows = [r if r.name != "SetEvent" else r._replace(argtypes=("HANDLE", "DWORD"))
            for r in _win32.WIN32_SIGNATURES]
    text = _c_checks_for_target(8, rows)
    source = tmp_path / "bad.c"
    source.write_text(text)
    result = subprocess.run(
        ["x86_64-w64-mingw32-gcc", "-std=c11", "-c", "-Werror=incompatible-pointer-types",
         "-o", str(tmp_path / "bad.o"), str(source)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert result.returncode != 0
    assert "SetEvent" in result.stdout


def test_win32api_on_linux_loads_nothing_until_called():
    api = _win32.Win32Api()
    if hasattr(ctypes, "WinDLL"):
        pytest.fail("this test expects a non-Windows interpreter")
    with pytest.raises(OSError, match="Windows library"):
        api.create_event()


def test_module_imports_on_linux_without_touching_any_dll():
    """A fresh interpreter imports _win32 with every ctypes library loader booby-trapped."""
    code = textwrap.dedent("""
        import ctypes, sys
        def trap(*a, **k):
            raise SystemExit("a library was loaded at import time: %r" % (a,))
        ctypes.CDLL.__init__ = trap
        ctypes.WinDLL = ctypes.OleDLL = ctypes.PyDLL = trap
        ctypes.cdll = ctypes.LibraryLoader(ctypes.CDLL)
        import udpcap_ctypes._win32 as w
        w.Win32Api(); w.WinregReader()
        assert "winreg" not in sys.modules
        assert not [m for m in sys.modules if m.startswith("ctypes.wintypes")]
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, universal_newlines=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout
    with open(_win32.__file__) as handle:
        tree = ast.parse(handle.read())
    shared = [node.lineno for node in ast.walk(tree)
              if isinstance(node, ast.Attribute) and node.attr in ("windll", "oledll")]
    assert shared == [], "the shared ctypes.windll loader is used at lines %s" % shared


def test_loopback_names_modern_and_legacy_case_insensitive():
    modern = _win32.NpcapInstall(True, loopback_support=True)
    assert _win32.loopback_device_names(modern) == ["\\Device\\NPF_Loopback"]
    assert _win32.is_loopback_device("\\Device\\NPF_Loopback", modern)
    assert _win32.is_loopback_device("\\device\\npf_loopback", modern)
    assert _win32.is_loopback_device("\\Device\\NPF_Loopback")          # no registry at all
    assert not _win32.is_loopback_device("\\Device\\NPF_{5E4D3B2A-0000}", modern)
    assert not _win32.is_loopback_device("", modern)

    guid = "{5E4D3B2A-1F0E-4D9C-8B7A-695847362514}"
    legacy = _win32.NpcapInstall(True, loopback_adapter="\\Device\\" + guid)
    assert _win32.loopback_device_names(legacy) == ["\\Device\\NPF_Loopback",
                                                    "\\Device\\NPF_" + guid]
    assert _win32.is_loopback_device("\\Device\\NPF_" + guid.lower(), legacy)
    assert _win32.is_loopback_device("\\DEVICE\\NPF_" + guid, legacy)
    assert not _win32.is_loopback_device("\\Device\\NPF_{00000000-1F0E-4D9C-8B7A-695847362514}",
                                         legacy)
    # Already in pcap form, or a bare GUID: the same device name, never NPF_NPF_.
    for stored in ("\\Device\\NPF_" + guid, guid):
        install = _win32.NpcapInstall(True, loopback_adapter=stored)
        assert _win32.loopback_device_names(install)[1] == "\\Device\\NPF_" + guid




class _CygwinOS(_loader.LoaderOS):
    platform = "cygwin"
    environ = {}

    @staticmethod
    def load(path, use_last_error=False):
        raise AssertionError("nothing may be loaded on Cygwin, tried %s" % path)


def test_a_cygwin_python_is_refused_with_the_fix():
    with pytest.raises(CaptureUnavailableError) as info:
        _loader.load_library(_CygwinOS())
    text = str(info.value)
    assert "Cygwin/MSYS2 Python" in text and "a C long is 64-bit there" in text
    assert "native Windows Python" in text
