"""Windows glue (udpcap_ctypes._win32, the Windows branch of _loader) proven with stand-ins.

Windows cannot run here, so every test in this file replaces the Windows OS layer with a
*standin*: recorded registry values, a stand-in kernel32/advapi32 that records calls and answers
from a script, a stand-in LoaderOS, a recording socket module.  What can be checked for real is
checked for real: the prototype table is compiled against the mingw-w64 Win32 headers for Win64
and Win32, and the import test runs a fresh interpreter.
"""

import ast
import ctypes
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from udpcap_ctypes import _loader, _pcap, _win32
from udpcap_ctypes.errors import CaptureUnavailableError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ==========================================================================================
# Stand-in DLLs


class StandinFunc:
    """A stand-in foreign function: accepts argtypes/restype/errcheck, records its calls."""

    def __init__(self, name, impl, calls):
        self.__name__ = name
        self._impl = impl
        self._calls = calls
        self.argtypes = None
        self.restype = "undeclared"

    def __call__(self, *args):
        self._calls.append((self.__name__,) + args)
        return self._impl(*args)


class StandinDLL:
    """Attributes are the given functions only; anything else is AttributeError like ctypes."""

    def __init__(self, impls, calls=None):
        self.calls = [] if calls is None else calls
        self._funcs = {name: StandinFunc(name, impl, self.calls) for name, impl in impls.items()}

    def __getattr__(self, name):
        try:
            return self.__dict__["_funcs"][name]
        except KeyError:
            raise AttributeError(name)


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


class StandinKernel32(StandinDLL):
    """Events with real set/reset semantics; WaitForMultipleObjects answers from *script* first
    (ints or callables), else from the event states, "sleeping" on the fake clock on timeout.

    *early_ms*: a timed-out wait advances the clock by that much less than asked, the way a
    Windows wait may end up to a timer tick early.
    """

    def __init__(self, clock, early_ms=0.0):
        self.clock = clock
        self.early_ms = early_ms
        self.script = []
        self.signalled = set()
        self.manual = {}
        self.next_handle = 0x1000
        self.waits = []           # (count, [handles], wait_all, ms)
        self.last_error = 0
        super().__init__({
            "CreateEventW": self._create_event, "SetEvent": self._set_event,
            "ResetEvent": self._reset_event, "CloseHandle": self._close_handle,
            "WaitForSingleObject": self._wait_single,
            "WaitForMultipleObjects": self._wait_multiple,
            "GetCurrentProcess": lambda: 0xFFFFFFFFFFFFFFFF,
        })

    def _create_event(self, attributes, manual_reset, initial_state, name):
        assert attributes is None and name is None
        self.next_handle += 4
        self.manual[self.next_handle] = bool(manual_reset)
        if initial_state:
            self.signalled.add(self.next_handle)
        return self.next_handle

    def _set_event(self, handle):
        self.signalled.add(handle)
        return 1

    def _reset_event(self, handle):
        self.signalled.discard(handle)
        return 1

    def _close_handle(self, handle):
        return 1

    def _wait_single(self, handle, ms):
        return _win32.WAIT_OBJECT_0 if handle in self.signalled else _win32.WAIT_TIMEOUT

    def _wait_multiple(self, count, handles, wait_all, ms):
        handles = [handles[i] for i in range(count)]
        self.waits.append((count, handles, wait_all, ms))
        assert len(self.waits) < 10000, "the waiter spins"
        if self.script:
            step = self.script.pop(0)
            return step(count, handles, wait_all, ms) if callable(step) else step
        for index, handle in enumerate(handles):
            if handle in self.signalled:
                if not self.manual.get(handle, True):
                    self.signalled.discard(handle)
                return _win32.WAIT_OBJECT_0 + index
        assert ms != _win32.INFINITE, "an INFINITE wait with nothing signalled never returns"
        self.clock.now += max(ms - self.early_ms, ms / 2.0) / 1000.0
        return _win32.WAIT_TIMEOUT


def make_api(clock=None, early_ms=0.0, advapi32=None):
    kernel32 = StandinKernel32(clock or FakeClock(), early_ms)
    api = _win32.Win32Api(kernel32=kernel32, advapi32=advapi32 or StandinDLL({}),
                          get_last_error=lambda: kernel32.last_error)
    return api, kernel32


# ==========================================================================================
# The prototype table


# Argument counts from the Win32 documentation (learn.microsoft.com), kept apart from the table.
DOCUMENTED_ARG_COUNTS = {
    "CreateEventW": 4, "SetEvent": 1, "ResetEvent": 1, "CloseHandle": 1,
    "WaitForSingleObject": 2, "WaitForMultipleObjects": 4, "GetCurrentProcess": 0,
    "GetSystemDirectoryW": 2,
    "OpenSCManagerW": 3, "OpenServiceW": 3, "QueryServiceStatus": 2, "CloseServiceHandle": 1,
    "OpenProcessToken": 3, "GetTokenInformation": 5,
}


def test_standin_every_prototype_row_declares_restype_and_argtypes_with_documented_counts():
    """(No stand-in needed: the table is data.)  Every function the standin tests exercise."""
    names = [row[1] for row in _win32.WIN32_PROTOTYPES]
    assert sorted(names) == sorted(DOCUMENTED_ARG_COUNTS)
    assert len(names) == len(set(names))
    for dll, name, restype, argtypes in _win32.WIN32_PROTOTYPES:
        assert dll in ("kernel32", "advapi32"), name
        assert restype is not None, name
        assert isinstance(argtypes, list), name
        assert len(argtypes) == DOCUMENTED_ARG_COUNTS[name], name
        for argtype in argtypes:
            assert hasattr(argtype, "from_param"), (name, argtype)
    handle_funcs = {"CreateEventW", "GetCurrentProcess", "OpenSCManagerW", "OpenServiceW"}
    for dll, name, restype, argtypes in _win32.WIN32_PROTOTYPES:
        if name in handle_funcs:
            assert restype is ctypes.c_void_p, name     # never the default int: 64-bit handles


def _c_checks_for_target(pointer_size):
    """C source asserting the table against the real Win32 headers for one target."""
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
    for index, (dll, name, ret, args) in enumerate(_win32.WIN32_SIGNATURES):
        # Assigning the real function to a pointer of our type fails to compile unless return
        # type, argument types, their number and the WINAPI (stdcall) convention all agree.
        lines.append("%s (WINAPI *check_%d)(%s) = %s;"
                     % (ret.replace("BOOL", "WINBOOL"), index,
                        ", ".join(a.replace("BOOL", "WINBOOL") for a in args) or "void", name))
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("compiler,pointer_size", [("x86_64-w64-mingw32-gcc", 8),
                                                   ("i686-w64-mingw32-gcc", 4)])
def test_standin_prototypes_match_mingw_win32_headers(tmp_path, compiler, pointer_size):
    """Not a stand-in: the table compiled against mingw-w64's windows.h (Win64 and Win32)."""
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


def test_standin_mingw_check_rejects_a_wrong_row(tmp_path):
    """The header check can fail: one wrong argument count in a row breaks the compile."""
    rows = list(_win32.WIN32_SIGNATURES)
    try:
        _win32.WIN32_SIGNATURES[:] = [r if r[1] != "SetEvent" else
                                      (r[0], r[1], r[2], ("HANDLE", "DWORD")) for r in rows]
        text = _c_checks_for_target(8)
    finally:
        _win32.WIN32_SIGNATURES[:] = rows
    source = tmp_path / "bad.c"
    source.write_text(text)
    result = subprocess.run(
        ["x86_64-w64-mingw32-gcc", "-std=c11", "-c", "-Werror=incompatible-pointer-types",
         "-o", str(tmp_path / "bad.o"), str(source)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert result.returncode != 0
    assert "SetEvent" in result.stdout


def test_standin_win32api_binds_table_types_lazily():
    """Stand-in DLLs get exactly the table's restype/argtypes, and only when first used."""
    api, kernel32 = make_api()
    assert kernel32.calls == [] and kernel32.CreateEventW.restype == "undeclared"
    handle = api.create_event()
    assert handle and kernel32.calls == [("CreateEventW", None, 1, 0, None)]
    table = {name: (restype, argtypes) for _dll, name, restype, argtypes in
             _win32.WIN32_PROTOTYPES}
    for name in ("CreateEventW", "SetEvent", "ResetEvent", "CloseHandle",
                 "WaitForSingleObject", "WaitForMultipleObjects", "GetCurrentProcess"):
        func = getattr(kernel32, name)
        assert (func.restype, func.argtypes) == table[name], name


def test_standin_win32api_failure_raises_oserror_with_winerror():
    api, kernel32 = make_api()
    kernel32.script.append(_win32.WAIT_FAILED)
    kernel32.last_error = _win32.ERROR_INVALID_HANDLE
    with pytest.raises(OSError) as info:
        api.wait_for_multiple_objects([0x10], False, 0)
    assert info.value.winerror == _win32.ERROR_INVALID_HANDLE
    assert "WaitForMultipleObjects failed" in str(info.value)
    assert "6" in str(info.value)


def test_standin_win32api_on_linux_loads_nothing_until_called():
    api = _win32.Win32Api()
    if hasattr(ctypes, "WinDLL"):
        pytest.fail("this test expects a non-Windows interpreter")
    with pytest.raises(OSError, match="Windows library"):
        api.create_event()


def test_standin_module_imports_on_linux_without_touching_any_dll():
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


# ==========================================================================================
# Service state and elevation


def _advapi32_standin(kernel32, services):
    """*services*: {name: state or None(missing)}; records handles opened and closed."""
    opened, closed = [], []

    def open_scm(machine, database, access):
        assert (machine, database, access) == (None, None, _win32.SC_MANAGER_CONNECT)
        opened.append(0x500)
        return 0x500

    def open_service(manager, name, access):
        assert manager == 0x500 and access == _win32.SERVICE_QUERY_STATUS
        if services.get(name) is None:
            kernel32.last_error = _win32.ERROR_SERVICE_DOES_NOT_EXIST
            return None
        opened.append(0x600)
        return 0x600

    def query(service, status_ref):
        status_ref._obj.dwCurrentState = services_by_handle[service]
        return 1

    def close(handle):
        closed.append(handle)
        return 1

    def open_token(process, access, token_ref):
        assert process == 0xFFFFFFFFFFFFFFFF and access == _win32.TOKEN_QUERY
        token_ref._obj.value = 0x700
        return 1

    def token_info(token, cls, buf_ref, size, returned_ref):
        assert (token, cls, size) == (0x700, 20, 4)
        buf_ref._obj.TokenIsElevated = services.get("__elevated__", 0)
        returned_ref._obj.value = 4
        return 1

    services_by_handle = {}
    advapi32 = StandinDLL({"OpenSCManagerW": open_scm, "OpenServiceW": open_service,
                           "QueryServiceStatus": query, "CloseServiceHandle": close,
                           "OpenProcessToken": open_token, "GetTokenInformation": token_info})
    return advapi32, opened, closed, services_by_handle


def test_standin_service_state_running_stopped_missing_and_handles_closed():
    kernel32 = StandinKernel32(FakeClock())
    services = {"npcap": 4, "npf": None}
    advapi32, opened, closed, by_handle = _advapi32_standin(kernel32, services)
    api = _win32.Win32Api(kernel32, advapi32, get_last_error=lambda: kernel32.last_error)
    by_handle[0x600] = 4
    assert _win32.service_state(api, "npcap") == "running"
    assert sorted(closed) == sorted(opened) == [0x500, 0x600]
    by_handle[0x600] = 1
    assert _win32.service_state(api, "npcap") == "stopped"
    del opened[:], closed[:]
    assert _win32.service_state(api, "npf") == "missing"
    assert closed == opened == [0x500]
    types = {name: (getattr(advapi32, name).restype, getattr(advapi32, name).argtypes)
             for name in ("OpenSCManagerW", "OpenServiceW", "QueryServiceStatus")}
    assert types["OpenServiceW"] == (ctypes.c_void_p,
                                     [ctypes.c_void_p, ctypes.c_wchar_p, ctypes.c_uint32])


def test_standin_is_elevated_reads_token_and_closes_it():
    kernel32 = StandinKernel32(FakeClock())
    services = {"__elevated__": 1}
    advapi32, _, _, _ = _advapi32_standin(kernel32, services)
    api = _win32.Win32Api(kernel32, advapi32, get_last_error=lambda: kernel32.last_error)
    assert _win32.is_elevated(api) is True
    assert ("CloseHandle", 0x700) in kernel32.calls
    services["__elevated__"] = 0
    assert _win32.is_elevated(api) is False


# ==========================================================================================
# Registry

NPCAP = _win32.NPCAP_SERVICE_KEY
PARAMS = _win32.NPCAP_PARAMETERS_KEY
NPF = _win32.WINPCAP_SERVICE_KEY


class RecordedRegistry:
    """Stand-in registry: recorded HKLM values by subkey; records which keys were read."""

    def __init__(self, keys):
        self.keys = keys
        self.read = []

    def read_values(self, subkey):
        self.read.append(subkey)
        values = self.keys.get(subkey)
        return None if values is None else dict(values)


# Recorded from an Npcap 1.79 install (loopback support on, admin-only off, compat mode off).
MODERN = {
    NPCAP: {"Type": 1, "Start": 1, "ErrorControl": 1, "ImagePath": r"System32\DRIVERS\npcap.sys",
            "DisplayName": "Npcap Packet Driver (NPCAP)"},
    PARAMS: {"AdminOnly": 0, "DltNull": 1, "Dot11Support": 0, "LoopbackAdapter": "",
             "LoopbackSupport": 1, "VlanSupport": 0, "WinPcapCompatible": 0,
             "TimestampMode": 0},
}


def test_standin_registry_modern_parameters_key():
    reg = RecordedRegistry(MODERN)
    install = _win32.read_npcap_registry(reg)
    assert install.installed is True
    assert install.service_key == PARAMS
    assert install.admin_only is False and install.loopback_support is True
    assert install.winpcap_compatible is False
    assert install.loopback_adapter is None           # empty string means none
    assert install.winpcap_present is False
    assert install.parameters["DltNull"] == 1
    assert set(reg.read) == {NPCAP, PARAMS, NPF}


def test_standin_registry_pre_093_layout_in_service_key():
    service = dict(MODERN[NPCAP], AdminOnly=1, LoopbackSupport=1, WinPcapCompatible=1,
                   LoopbackAdapter="\\Device\\{5E4D3B2A-1F0E-4D9C-8B7A-695847362514}")
    install = _win32.read_npcap_registry(RecordedRegistry({NPCAP: service, NPF: {"Type": 1}}))
    assert install.installed and install.service_key == NPCAP
    assert install.admin_only is True and install.winpcap_compatible is True
    assert install.loopback_adapter == "\\Device\\{5E4D3B2A-1F0E-4D9C-8B7A-695847362514}"
    assert install.winpcap_present is True            # old compat mode also had npf


def test_standin_registry_npcap_absent_and_winpcap_only():
    none = _win32.read_npcap_registry(RecordedRegistry({}))
    assert none == _win32.NpcapInstall(False)
    assert none.installed is False and none.winpcap_present is False
    assert none.admin_only is None and none.parameters == {}
    winpcap = _win32.read_npcap_registry(RecordedRegistry({NPF: {"Type": 1, "Start": 3}}))
    assert winpcap.installed is False and winpcap.winpcap_present is True
    assert winpcap.loopback_support is None


def test_standin_registry_loopback_adapter_absent_or_none():
    params = dict(MODERN[PARAMS])
    del params["LoopbackAdapter"]
    install = _win32.read_npcap_registry(RecordedRegistry({NPCAP: MODERN[NPCAP],
                                                           PARAMS: params}))
    assert install.loopback_adapter is None and install.loopback_support is True
    params["LoopbackAdapter"] = None
    install = _win32.read_npcap_registry(RecordedRegistry({NPCAP: MODERN[NPCAP],
                                                           PARAMS: params}))
    assert install.loopback_adapter is None
    # Options missing entirely: installed, options unknown (None), never invented.
    bare = _win32.read_npcap_registry(RecordedRegistry({NPCAP: {"Type": 1}, PARAMS: {}}))
    assert bare.installed and bare.admin_only is None and bare.loopback_support is None


class StandinWinreg:
    """Stand-in for the stdlib winreg module over recorded keys."""
    HKEY_LOCAL_MACHINE = 0x80000002
    KEY_READ = 0x20019

    class Key:
        def __init__(self, values):
            self.values = list(values.items())
            self.closed = False

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.closed = True

    def __init__(self, keys):
        self.keys = keys
        self.opened = []

    def OpenKey(self, root, subkey, reserved, access):
        assert (root, reserved, access) == (self.HKEY_LOCAL_MACHINE, 0, self.KEY_READ)
        if subkey not in self.keys:
            raise FileNotFoundError(2, "The system cannot find the file specified")
        key = self.Key(self.keys[subkey])
        self.opened.append(key)
        return key

    def QueryInfoKey(self, key):
        return (0, len(key.values), 0)

    def EnumValue(self, key, index):
        name, data = key.values[index]
        return (name, data, 4 if isinstance(data, int) else 1)


def test_standin_winreg_reader_reads_values_and_closes_keys():
    winreg = StandinWinreg(MODERN)
    reader = _win32.WinregReader(winreg)
    assert reader.read_values(PARAMS) == MODERN[PARAMS]
    assert reader.read_values(NPF) is None
    assert all(key.closed for key in winreg.opened) and len(winreg.opened) == 1
    install = _win32.read_npcap_registry(reader)
    assert install.installed and install.loopback_support is True


# ==========================================================================================
# Loopback device names


def test_standin_loopback_names_modern_and_legacy_case_insensitive():
    modern = _win32.read_npcap_registry(RecordedRegistry(MODERN))
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


# ==========================================================================================
# Own MAC


class StandinFns:
    def __init__(self, mac=None, status=0, raises=None, length=6):
        self.mac, self.status, self.raises, self.length = mac, status, raises, length
        self.calls = []

    def pcap_oid_get_request(self, handle, oid, buf, lenp):
        self.calls.append((handle, oid, ctypes.sizeof(buf), lenp._obj.value))
        if self.raises:
            raise self.raises
        if self.mac is not None:
            ctypes.memmove(buf, self.mac, len(self.mac))
        lenp._obj.value = self.length
        return self.status


def test_standin_adapter_mac_and_filter_clause():
    mac = bytes([0x01, 0x23, 0x45, 0x67, 0x89, 0xAB])
    fns = StandinFns(mac)
    assert _win32.adapter_mac(fns, 0xCAFE) == mac
    assert fns.calls == [(0xCAFE, 0x01010102, 6, 6)]
    assert _win32.mac_filter_clause(mac) == "not ether src 01:23:45:67:89:ab"
    with pytest.raises(ValueError):
        _win32.mac_filter_clause(b"\x01\x02")


def test_standin_adapter_mac_none_on_error():
    from udpcap_ctypes.errors import PcapError
    assert _win32.adapter_mac(StandinFns(raises=PcapError(5, "oid failed")), 1) is None
    assert _win32.adapter_mac(StandinFns(b"\x02" * 6, status=-1), 1) is None
    assert _win32.adapter_mac(StandinFns(b"\x02" * 6, length=0), 1) is None
    assert _win32.adapter_mac(StandinFns(b"\0" * 6), 1) is None        # loopback: no MAC
    assert _win32.adapter_mac(_pcap.Functions(), 1) is None             # not exported
    missing = _pcap.Functions()
    missing.pcap_oid_get_request = _pcap.MissingFunction("pcap_oid_get_request", "wpcap.dll")
    assert _win32.adapter_mac(missing, 1) is None


# ==========================================================================================
# EventWaiter


def test_standin_eventwaiter_signalled_index_and_infinite_wait():
    api, kernel32 = make_api()
    waiter = _win32.EventWaiter(api, [0x10, 0x20], clock=kernel32.clock)
    wake = waiter.wake_handle
    assert kernel32.manual[wake] is True and wake not in kernel32.signalled
    kernel32.script.append(_win32.WAIT_OBJECT_0 + 1)
    assert waiter.wait(None) is True
    assert kernel32.waits == [(3, [0x10, 0x20, wake], 0, _win32.INFINITE)]


def test_standin_eventwaiter_wake_reset_and_close():
    api, kernel32 = make_api()
    waiter = _win32.EventWaiter(api, [0x10], clock=kernel32.clock)
    wake = waiter.wake_handle
    assert waiter.woken() is False
    waiter.wake()
    assert ("SetEvent", wake) in kernel32.calls
    assert waiter.wait(None) is True and waiter.wait(5) is True    # manual reset: stays set
    assert waiter.woken() is True
    waiter.reset_wake()
    assert ("ResetEvent", wake) in kernel32.calls
    start = kernel32.clock.now
    assert waiter.wait(0.05) is False and kernel32.clock.now >= start + 0.05
    waiter.close()
    waiter.close()
    assert [c for c in kernel32.calls if c[0] == "CloseHandle"] == [("CloseHandle", wake)]
    assert 0x10 not in [c[1] for c in kernel32.calls if c[0] == "CloseHandle"]  # pcap's
    count = len(kernel32.waits)
    assert waiter.wait(None) is True and len(kernel32.waits) == count


def test_standin_eventwaiter_device_signal_and_timeout_zero_polls_once():
    api, kernel32 = make_api()
    waiter = _win32.EventWaiter(api, [0x10, 0x20], clock=kernel32.clock)
    assert waiter.wait(0) is False
    assert [w[3] for w in kernel32.waits] == [0]
    kernel32.signalled.add(0x20)
    assert waiter.wait(0) is True


def test_standin_eventwaiter_timeout_never_early_even_if_windows_wakes_early():
    """The stand-in ends each timed wait 7 ms early; the waiter must wait again to its deadline."""
    clock = FakeClock()
    api, kernel32 = make_api(clock, early_ms=7)
    waiter = _win32.EventWaiter(api, [0x10], clock=clock)
    start = clock.now
    assert waiter.wait(0.05) is False
    assert clock.now >= start + 0.05
    timeouts = [w[3] for w in kernel32.waits]
    assert timeouts[0] == 50 and len(timeouts) > 1
    assert all(ms > 0 for ms in timeouts)               # every wait blocks: no busy polling
    # Sub-millisecond timeouts round up, never down to a 0 ms poll loop.
    kernel32.waits[:] = []
    assert waiter.wait(0.0004) is False and kernel32.waits[0][3] == 1


def test_standin_eventwaiter_unexpected_result_raises():
    api, kernel32 = make_api()
    waiter = _win32.EventWaiter(api, [0x10], clock=kernel32.clock)
    kernel32.script.append(0xC0)          # WAIT_IO_COMPLETION: never expected here
    with pytest.raises(OSError, match="0xc0"):
        waiter.wait(1)


def test_standin_eventwaiter_more_than_63_handles_chunks_with_slices():
    clock = FakeClock()
    api, kernel32 = make_api(clock)
    handles = [0x100 + 4 * i for i in range(130)]
    waiter = _win32.EventWaiter(api, handles, clock=clock)
    wake = waiter.wake_handle
    # Nothing signalled: every wait is one chunk + wake, at most 64 handles, blocking a slice.
    start = clock.now
    assert waiter.wait(0.1) is False
    assert clock.now >= start + 0.1
    counts = [w[0] for w in kernel32.waits]
    assert counts[:3] == [64, 64, 5]
    assert all(w[1][-1] == wake for w in kernel32.waits)
    assert [h for w in kernel32.waits[:3] for h in w[1][:-1]] == handles
    timeouts = [w[3] for w in kernel32.waits]
    assert all(0 <= ms <= _win32.WAIT_SLICE_MS for ms in timeouts)
    # Blocking slices until the deadline; then at most one 0 ms look at the remaining chunks.
    polls = len(timeouts) - len([ms for ms in timeouts if ms > 0])
    assert polls <= 2 and all(ms > 0 for ms in timeouts[:len(timeouts) - polls])
    # A device in the third chunk is found; the wake event ends the wait from any chunk.
    kernel32.waits[:] = []
    kernel32.signalled.add(handles[128])
    assert waiter.wait(None) is True
    assert [w[0] for w in kernel32.waits] == [64, 64, 5]
    assert all(w[3] == _win32.WAIT_SLICE_MS for w in kernel32.waits)   # never INFINITE
    kernel32.signalled.discard(handles[128])
    kernel32.waits[:] = []
    waiter.wake()
    assert waiter.wait(None) is True and len(kernel32.waits) == 1
    # Exactly 63 devices still fit in one INFINITE wait.
    kernel32.waits[:] = []
    waiter.reset_wake()
    waiter.set_handles(handles[:63])
    kernel32.script.append(_win32.WAIT_OBJECT_0 + 63)    # the wake event's index
    assert waiter.wait(None) is True
    assert kernel32.waits == [(64, handles[:63] + [wake], 0, _win32.INFINITE)]


def test_standin_eventwaiter_no_devices_waits_on_wake_only():
    api, kernel32 = make_api()
    waiter = _win32.EventWaiter(api, [], clock=kernel32.clock)
    assert waiter.wait(0.01) is False
    assert all(w[:2] == (1, [waiter.wake_handle]) for w in kernel32.waits)
    with pytest.raises(ValueError):
        waiter.set_handles([0x10, None])


# ==========================================================================================
# Loopback kickstart


class RecordingSocketModule:
    """Stand-in socket module with Windows (ws2ipdef.h) option numbers; sends nothing."""
    AF_INET, SOCK_DGRAM, IPPROTO_UDP, IPPROTO_IP = 2, 2, 17, 0
    IP_MULTICAST_TTL, IP_MULTICAST_LOOP, IP_ADD_MEMBERSHIP = 10, 11, 12
    inet_aton = staticmethod(socket.inet_aton)

    def __init__(self):
        self.calls = []

    def socket(self, family, kind, proto=0):
        self.calls.append(("socket", family, kind, proto))
        module = self

        class Sock:
            def __getattr__(self, name):
                return lambda *args: module.calls.append((name,) + args)

        return Sock()


def test_standin_kickstart_call_sequence():
    sock = RecordingSocketModule()
    _win32.loopback_kickstart(["239.0.0.1", "239.255.1.2"], socket_module=sock)
    membership = lambda g: socket.inet_aton(g) + b"\0\0\0\0"   # noqa: E731
    assert sock.calls == [
        ("socket", 2, 2, 17),
        ("bind", ("0.0.0.0", 0)),
        ("setsockopt", 0, 11, 1),
        ("setsockopt", 0, 10, 0),
        ("setsockopt", 0, 12, membership("239.0.0.1")),
        ("setsockopt", 0, 12, membership("239.255.1.2")),
        ("sendto", b"", ("239.0.0.1", _win32.KICKSTART_PORT)),
        ("sendto", b"", ("239.255.1.2", _win32.KICKSTART_PORT)),
        ("close",),
    ]
    sock.calls[:] = []
    _win32.loopback_kickstart(["239.0.0.1"], port=14000, socket_module=sock)
    assert ("sendto", b"", ("239.0.0.1", 14000)) in sock.calls
    sock.calls[:] = []
    _win32.loopback_kickstart([], socket_module=sock)
    assert sock.calls == []
    with pytest.raises(ValueError, match="not an IPv4 multicast"):
        _win32.loopback_kickstart(["127.0.0.1"], socket_module=sock)
    assert sock.calls == []


# ==========================================================================================
# _loader's Windows branch


NPCAP_VERSION = b"Npcap version 1.79, based on libpcap version 1.10.4"
WINPCAP_VERSION = (b"WinPcap version 4.1.3 (packet.dll version 4.1.0.2980), based on libpcap "
                   b"version 1.0 branch 1_0_rel0b (20091008)")
SYS32 = "C:\\Windows\\System32"
NPCAP_DIR = SYS32 + "\\Npcap"


class FakeLib:
    """A loaded DLL stand-in exporting the given names; pcap_lib_version returns *version*."""

    def __init__(self, path, names, version=None):
        self.path = path
        self._funcs = {}
        for name in names:
            impl = (lambda: version) if name == "pcap_lib_version" else (lambda *a: 0)
            self._funcs[name] = StandinFunc(name, impl, [])

    def __getattr__(self, name):
        try:
            return self.__dict__["_funcs"][name]
        except KeyError:
            raise AttributeError(name)


PCAP_NAMES = [row[0] for row in _pcap.PROTOTYPES]
PACKET_NAMES = [row[0] for row in _pcap.PACKET_PROTOTYPES]


class StandinLoaderOS:
    platform = "win32"

    def __init__(self, files, version=NPCAP_VERSION, failing=()):
        self.environ = {"SystemRoot": "C:\\Windows"}
        self.files = set(files)
        self.version = version
        self.failing = set(failing)
        self.dirs = []
        self.events = []

    def isfile(self, path):
        return path in self.files

    def find_library(self, name):
        raise AssertionError("find_library is not used on Windows")

    def load(self, path):
        self.events.append(("load", path, tuple(self.dirs)))
        if path in self.failing or path not in self.files:
            raise OSError("[WinError 126] The specified module could not be found")
        if path.lower().endswith("packet.dll"):
            return FakeLib(path, PACKET_NAMES)
        return FakeLib(path, PCAP_NAMES, self.version)

    def dll_directory(self, path):
        layer = self

        class Ctx:
            def __enter__(self):
                layer.dirs.append(path)
                layer.events.append(("enter", path))

            def __exit__(self, *exc):
                layer.dirs.remove(path)
                layer.events.append(("exit", path))
                return False

        return Ctx()


def test_standin_loader_prefers_npcap_dir_packet_before_wpcap():
    oslayer = StandinLoaderOS({NPCAP_DIR + "\\wpcap.dll", NPCAP_DIR + "\\Packet.dll",
                               SYS32 + "\\wpcap.dll", SYS32 + "\\Packet.dll"})
    library = _loader.load_library(oslayer)
    assert oslayer.events == [
        ("enter", NPCAP_DIR),
        ("load", NPCAP_DIR + "\\Packet.dll", (NPCAP_DIR,)),
        ("load", NPCAP_DIR + "\\wpcap.dll", (NPCAP_DIR,)),
        ("exit", NPCAP_DIR),
    ]
    assert library.kind == "npcap" and library.windows is True
    assert library.path == NPCAP_DIR + "\\wpcap.dll"
    assert library.packet_path == NPCAP_DIR + "\\Packet.dll"
    assert library.version == NPCAP_VERSION.decode()
    assert library.fns.pcap_getevent.restype is ctypes.c_void_p       # Windows rows bound
    assert not hasattr(library.fns, "pcap_get_selectable_fd")          # POSIX rows skipped
    assert library.packet_fns.PacketGetDriverVersion.restype is ctypes.c_char_p


def test_standin_loader_falls_back_to_system32_compat_mode():
    oslayer = StandinLoaderOS({SYS32 + "\\wpcap.dll", SYS32 + "\\Packet.dll"})
    library = _loader.load_library(oslayer)
    assert library.kind == "npcap" and library.path == SYS32 + "\\wpcap.dll"
    assert [e for e in oslayer.events if e[0] == "load"] == [
        ("load", SYS32 + "\\Packet.dll", (SYS32,)), ("load", SYS32 + "\\wpcap.dll", (SYS32,))]
    # Npcap dir present but its DLL fails to load: System32 is still tried.
    oslayer = StandinLoaderOS({NPCAP_DIR + "\\wpcap.dll", SYS32 + "\\wpcap.dll"},
                              failing={NPCAP_DIR + "\\wpcap.dll"})
    library = _loader.load_library(oslayer)
    assert library.path == SYS32 + "\\wpcap.dll" and library.packet_path is None
    assert oslayer.dirs == []                                          # every dir removed


def test_standin_loader_nothing_installed_says_how_to_fix():
    oslayer = StandinLoaderOS(set())
    with pytest.raises(CaptureUnavailableError) as info:
        _loader.load_library(oslayer)
    message = str(info.value)
    assert "npcap.com" in message and "Support loopback traffic" in message
    assert NPCAP_DIR + "\\wpcap.dll" in message and SYS32 + "\\wpcap.dll" in message
    assert [e for e in oslayer.events if e[0] == "load"] == []


def test_standin_loader_winpcap_version_gives_kind_winpcap():
    oslayer = StandinLoaderOS({SYS32 + "\\wpcap.dll", SYS32 + "\\Packet.dll"},
                              version=WINPCAP_VERSION)
    library = _loader.load_library(oslayer)
    assert library.kind == "winpcap"
    assert library.version.startswith("WinPcap version 4.1.3")
