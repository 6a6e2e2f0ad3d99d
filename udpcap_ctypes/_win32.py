"""Windows platform glue: Win32 calls, the Npcap registry, the loopback device, waiting.

Nothing here loads a DLL or imports ``winreg`` at import time, so the module imports (and is
tested) on any platform.  The OS is always reached through an object that is passed in:

* :class:`Win32Api` -- kernel32/advapi32 functions, declared from one table
  (:data:`WIN32_SIGNATURES`, in the C headers' own type names, turned into ctypes types in
  :data:`WIN32_PROTOTYPES`).  It creates *private* ``ctypes.WinDLL(..., use_last_error=True)``
  objects on first use, never the shared ``ctypes.windll.*`` (another library may declare other
  argtypes there).
* :class:`WinregReader` -- ``HKEY_LOCAL_MACHINE`` values through the stdlib ``winreg``.
* the ``socket`` module, for :func:`loopback_kickstart`.

Facts used here (Npcap developer guide, ``docs/npcap-api.xml``, the Win32 headers): the Npcap
service key is ``HKLM\\SYSTEM\\CurrentControlSet\\Services\\npcap``, its options live under
``...\\npcap\\Parameters`` (directly under the service key before Npcap 0.93); WinPcap's service
was ``npf``.  The loopback device is ``\\Device\\NPF_Loopback`` since Npcap 0.9983; older
installs name a legacy adapter ``\\Device\\{GUID}`` in the ``LoopbackAdapter`` value, whose
pcap device is ``\\Device\\NPF_{GUID}``.
"""

import ctypes
import errno
import logging
import math
import socket
import threading
import time
from typing import NamedTuple, Optional, Tuple

from ._bind import WINDOWS, Prototype, bind

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Win32 constants (winbase.h, winnt.h, winsvc.h, winerror.h)

INFINITE = 0xFFFFFFFF
WAIT_OBJECT_0 = 0x00000000
WAIT_ABANDONED_0 = 0x00000080
WAIT_TIMEOUT = 0x00000102
WAIT_FAILED = 0xFFFFFFFF
MAXIMUM_WAIT_OBJECTS = 64
#: Device handles per wait.  With the waiter's wake and notify events that is 62 handles: the
#: most that ``_winapi.WaitForMultipleObjects`` accepts on every Python (62 before 3.9.7,
#: bpo-40263; 63 after), which adds the Ctrl-C event itself on the main thread -- at most 63
#: of the 64 (MAXIMUM_WAIT_OBJECTS) a wait can take.
WAIT_CHUNK = 60
#: With more than :data:`WAIT_CHUNK` device handles, each chunk is waited on for this long in
#: turn (milliseconds).  Each wait blocks (no CPU is used); the price is up to
#: ``(chunks - 1) * WAIT_SLICE_MS`` extra latency for a device in a later chunk.
WAIT_SLICE_MS = 10
_MAX_FINITE_MS = 0xFFFFFFFE           # INFINITE - 1: the longest finite wait

SC_MANAGER_CONNECT = 0x0001
SERVICE_QUERY_STATUS = 0x0004
TOKEN_QUERY = 0x0008
TOKEN_ELEVATION_CLASS = 20            # TOKEN_INFORMATION_CLASS TokenElevation

ERROR_FILE_NOT_FOUND = 2
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_HANDLE = 6
ERROR_SERVICE_DOES_NOT_EXIST = 1060


SERVICE_STATES = {
    1: "stopped",            # SERVICE_STOPPED
    2: "start_pending",      # SERVICE_START_PENDING
    3: "stop_pending",       # SERVICE_STOP_PENDING
    4: "running",            # SERVICE_RUNNING
    5: "continue_pending",   # SERVICE_CONTINUE_PENDING
    6: "pause_pending",      # SERVICE_PAUSE_PENDING
    7: "paused",             # SERVICE_PAUSED
}

# pcap / NDIS
OID_802_3_CURRENT_ADDRESS = 0x01010102
LOOPBACK_DEVICE = "\\Device\\NPF_Loopback"
KICKSTART_PORT = 62000       # the port eclipse-ecal/udpcap sends its kickstart datagrams to


class SERVICE_STATUS(ctypes.Structure):
    """winsvc.h ``SERVICE_STATUS``: seven DWORDs."""
    _fields_ = [("dwServiceType", ctypes.c_uint32),
                ("dwCurrentState", ctypes.c_uint32),
                ("dwControlsAccepted", ctypes.c_uint32),
                ("dwWin32ExitCode", ctypes.c_uint32),
                ("dwServiceSpecificExitCode", ctypes.c_uint32),
                ("dwCheckPoint", ctypes.c_uint32),
                ("dwWaitHint", ctypes.c_uint32)]


class TOKEN_ELEVATION(ctypes.Structure):
    """winnt.h ``TOKEN_ELEVATION``: one DWORD, non-zero when the token is elevated."""
    _fields_ = [("TokenIsElevated", ctypes.c_uint32)]


# --------------------------------------------------------------------------------------------
# The one table of Win32 functions.  Types are the headers' own names (mingw-w64 / Windows SDK:
# synchapi.h, handleapi.h, processthreadsapi.h, winsvc.h, securitybaseapi.h);
# tests/test_windows_tables.py compiles every row against the mingw-w64 headers for Win64 and
# Win32.  kernel32/advapi32 are stdcall (WINAPI): ctypes.WinDLL.

#: C type name -> ctypes type.
C_TYPES = {
    "HANDLE": ctypes.c_void_p,
    "SC_HANDLE": ctypes.c_void_p,
    "DWORD": ctypes.c_uint32,
    "UINT": ctypes.c_uint32,
    "BOOL": ctypes.c_int,
    "LPCWSTR": ctypes.c_wchar_p,
    "LPWSTR": ctypes.c_wchar_p,
    "LPVOID": ctypes.c_void_p,
    "LPSECURITY_ATTRIBUTES": ctypes.c_void_p,
    "TOKEN_INFORMATION_CLASS": ctypes.c_int,          # a C enum
    "const HANDLE *": ctypes.POINTER(ctypes.c_void_p),
    "PHANDLE": ctypes.POINTER(ctypes.c_void_p),
    "PDWORD": ctypes.POINTER(ctypes.c_uint32),
    "LPSERVICE_STATUS": ctypes.POINTER(SERVICE_STATUS),
}

class Win32Signature(NamedTuple):
    """One Win32 function in the C headers' own type names -- the source of truth that the
    mingw-w64 test compiles against <windows.h> and :data:`WIN32_PROTOTYPES` binds."""
    dll: str
    name: str
    restype: str
    argtypes: Tuple[str, ...]
    #: what a failure returns: "null" (a NULL handle), "false" (FALSE), "wait" (WAIT_FAILED),
    #: "zero" (0), or None (cannot fail)
    failure: Optional[str]


WIN32_SIGNATURES = [Win32Signature(*row) for row in [
    ("kernel32", "CreateEventW", "HANDLE", ("LPSECURITY_ATTRIBUTES", "BOOL", "BOOL", "LPCWSTR"),
     "null"),
    ("kernel32", "SetEvent", "BOOL", ("HANDLE",), "false"),
    ("kernel32", "ResetEvent", "BOOL", ("HANDLE",), "false"),
    ("kernel32", "CloseHandle", "BOOL", ("HANDLE",), "false"),
    ("kernel32", "WaitForSingleObject", "DWORD", ("HANDLE", "DWORD"), "wait"),
    ("kernel32", "WaitForMultipleObjects", "DWORD", ("DWORD", "const HANDLE *", "BOOL", "DWORD"),
     "wait"),
    ("kernel32", "GetCurrentProcess", "HANDLE", (), None),
    ("kernel32", "GetSystemDirectoryW", "UINT", ("LPWSTR", "UINT"), "zero"),
    ("advapi32", "OpenSCManagerW", "SC_HANDLE", ("LPCWSTR", "LPCWSTR", "DWORD"), "null"),
    ("advapi32", "OpenServiceW", "SC_HANDLE", ("SC_HANDLE", "LPCWSTR", "DWORD"), "null"),
    ("advapi32", "QueryServiceStatus", "BOOL", ("SC_HANDLE", "LPSERVICE_STATUS"), "false"),
    ("advapi32", "CloseServiceHandle", "BOOL", ("SC_HANDLE",), "false"),
    ("advapi32", "OpenProcessToken", "BOOL", ("HANDLE", "DWORD", "PHANDLE"), "false"),
    ("advapi32", "GetTokenInformation", "BOOL",
     ("HANDLE", "TOKEN_INFORMATION_CLASS", "LPVOID", "DWORD", "PDWORD"), "false"),
]]


def _last_error_check(failed):
    """Errcheck factory: when *failed(result)*, raise :func:`win_error` with the thread's last
    error (ctypes' private copy: the DLLs are loaded with ``use_last_error=True``)."""
    def factory(table):
        def errcheck(result, func, args):
            if failed(result):
                raise win_error(func.__name__, ctypes.get_last_error())
            return result
        return errcheck
    return factory


_FAILURES = {
    "null": _last_error_check(lambda result: not result),
    "false": _last_error_check(lambda result: not result),
    "zero": _last_error_check(lambda result: result == 0),
    "wait": _last_error_check(lambda result: result == WAIT_FAILED),
    None: None,
}

#: The same functions as :class:`~._bind.Prototype` records (ctypes types, errchecks).
WIN32_PROTOTYPES = [Prototype(s.name, C_TYPES[s.restype], [C_TYPES[arg] for arg in s.argtypes],
                              _FAILURES[s.failure], WINDOWS, None, s.dll)
                    for s in WIN32_SIGNATURES]


# Win32 errors -> the OSError subclass and errno CPython gives them (PC/errmap.h).
_ERROR_CLASSES = {ERROR_FILE_NOT_FOUND: (FileNotFoundError, errno.ENOENT),
                  ERROR_ACCESS_DENIED: (PermissionError, errno.EACCES),
                  ERROR_INVALID_HANDLE: (OSError, errno.EBADF)}


def win_error(call, code):
    """The ``OSError`` for Win32 error *code* from *call*, with ``winerror`` set: the subclass
    CPython would pick (``PermissionError`` for ERROR_ACCESS_DENIED), on every platform."""
    format_error = getattr(ctypes, "FormatError", None)      # Windows-only in ctypes
    text = format_error(code).strip() if format_error is not None else ""
    message = "%s failed: %s (Windows error %d)" % (call, text or "error", code)
    cls, number = _ERROR_CLASSES.get(code, (OSError, errno.EINVAL))
    exc = cls(number, message)
    exc.winerror = code
    return exc


class Win32Api:
    """The kernel32/advapi32 functions udpcap_ctypes uses; a failure raises ``OSError`` (the
    errchecks of :data:`WIN32_PROTOTYPES`).

    *kernel32* and *advapi32* default to private ``ctypes.WinDLL(name, use_last_error=True)``
    objects, created on first use, so constructing this class never loads anything.
    """

    def __init__(self, kernel32=None, advapi32=None):
        self._dlls = {"kernel32": kernel32, "advapi32": advapi32}
        self._tables = {}

    def _fn(self, dll_name, name):
        table = self._tables.get(dll_name)
        if table is None:
            dll = self._dlls[dll_name]
            if dll is None:
                windll = getattr(ctypes, "WinDLL", None)
                if windll is None:
                    raise OSError("%s is a Windows library; it cannot be loaded on this "
                                  "platform" % dll_name)
                dll = self._dlls[dll_name] = windll(dll_name, use_last_error=True)
            table = self._tables[dll_name] = bind(
                dll, [p for p in WIN32_PROTOTYPES if p.library == dll_name], True, dll_name)
        return getattr(table, name)

    # kernel32 -------------------------------------------------------------------------------
    def create_event(self, manual_reset=True, initial_state=False):
        return self._fn("kernel32", "CreateEventW")(None, int(bool(manual_reset)),
                                                    int(bool(initial_state)), None)

    def set_event(self, handle):
        self._fn("kernel32", "SetEvent")(handle)

    def reset_event(self, handle):
        self._fn("kernel32", "ResetEvent")(handle)

    def close_handle(self, handle):
        self._fn("kernel32", "CloseHandle")(handle)

    def wait_for_single_object(self, handle, milliseconds):
        return self._fn("kernel32", "WaitForSingleObject")(handle, milliseconds)

    def wait_for_multiple_objects(self, handles, wait_all, milliseconds):
        """*handles*: a sequence of HANDLEs or a prebuilt ``(c_void_p * n)`` array (n <= 64)."""
        if not isinstance(handles, ctypes.Array):
            handles = (ctypes.c_void_p * len(handles))(*handles)
        count = len(handles)
        if not 0 < count <= MAXIMUM_WAIT_OBJECTS:
            raise ValueError("WaitForMultipleObjects takes 1 to %d handles, not %d"
                             % (MAXIMUM_WAIT_OBJECTS, count))
        return self._fn("kernel32", "WaitForMultipleObjects")(count, handles,
                                                              int(bool(wait_all)), milliseconds)

    def get_current_process(self):
        return self._fn("kernel32", "GetCurrentProcess")()

    def system_directory(self):
        """The path of System32 (``GetSystemDirectoryW``), as Npcap's own loader finds it."""
        get = self._fn("kernel32", "GetSystemDirectoryW")
        size = 260                                    # MAX_PATH
        while True:
            buffer = ctypes.create_unicode_buffer(size)
            length = get(buffer, size)
            if length < size:                         # the path's length, without the NUL
                return buffer.value
            size = length                             # the size it needs, with the NUL

    # advapi32 -------------------------------------------------------------------------------
    def open_sc_manager(self, access=SC_MANAGER_CONNECT):
        return self._fn("advapi32", "OpenSCManagerW")(None, None, access)

    def open_service(self, manager, name, access=SERVICE_QUERY_STATUS):
        return self._fn("advapi32", "OpenServiceW")(manager, name, access)

    def query_service_status(self, service):
        status = SERVICE_STATUS()
        self._fn("advapi32", "QueryServiceStatus")(service, ctypes.byref(status))
        return status

    def close_service_handle(self, handle):
        self._fn("advapi32", "CloseServiceHandle")(handle)

    def open_process_token(self, process, access=TOKEN_QUERY):
        token = ctypes.c_void_p()
        self._fn("advapi32", "OpenProcessToken")(process, access, ctypes.byref(token))
        return token.value

    def token_elevation(self, token):
        elevation = TOKEN_ELEVATION()
        returned = ctypes.c_uint32(0)
        self._fn("advapi32", "GetTokenInformation")(
            token, TOKEN_ELEVATION_CLASS, ctypes.byref(elevation), ctypes.sizeof(elevation),
            ctypes.byref(returned))
        return elevation.TokenIsElevated


def service_state(api, name):
    """State of the Windows service *name*: ``"running"``, ``"stopped"``, ``"missing"``, ...

    ``"missing"`` when the service does not exist, ``"access_denied"`` when the service
    manager refuses to answer; any other failure raises ``OSError``.  Values besides those are
    the :data:`SERVICE_STATES` names (``"start_pending"``, ``"paused"``, ...).
    """
    try:
        manager = api.open_sc_manager(SC_MANAGER_CONNECT)
    except OSError as exc:
        if getattr(exc, "winerror", None) == ERROR_ACCESS_DENIED:
            return "access_denied"
        raise
    try:
        try:
            service = api.open_service(manager, name, SERVICE_QUERY_STATUS)
        except OSError as exc:
            code = getattr(exc, "winerror", None)
            if code == ERROR_SERVICE_DOES_NOT_EXIST:
                return "missing"
            if code == ERROR_ACCESS_DENIED:
                return "access_denied"
            raise
        try:
            state = api.query_service_status(service).dwCurrentState
        finally:
            api.close_service_handle(service)
    finally:
        api.close_service_handle(manager)
    return SERVICE_STATES.get(state, "unknown(%d)" % state)


def is_elevated(api):
    """True when this process runs elevated ("Run as administrator"), from its token."""
    token = api.open_process_token(api.get_current_process(), TOKEN_QUERY)
    try:
        return bool(api.token_elevation(token))
    finally:
        api.close_handle(token)


# --------------------------------------------------------------------------------------------
# Registry

SERVICES_KEY = "SYSTEM\\CurrentControlSet\\Services"
NPCAP_SERVICE_KEY = SERVICES_KEY + "\\npcap"
NPCAP_PARAMETERS_KEY = NPCAP_SERVICE_KEY + "\\Parameters"
WINPCAP_SERVICE_KEY = SERVICES_KEY + "\\npf"
NPCAP_OPTIONS = ("AdminOnly", "LoopbackSupport", "LoopbackAdapter", "DltNull", "Dot11Support",
                 "WinPcapCompatible", "VlanSupport")


class WinregReader:
    """Reads the values of a ``HKEY_LOCAL_MACHINE`` subkey with the stdlib ``winreg``.

    *winreg_module* defaults to ``winreg``, imported on first use (it exists only on Windows).
    """

    def __init__(self, winreg_module=None):
        self._winreg = winreg_module

    def read_values(self, subkey):
        """``{value name: data}`` of *subkey*, or None when the key does not exist."""
        winreg = self._winreg
        if winreg is None:
            import winreg  # Windows only; imported here so the module imports anywhere
            self._winreg = winreg
        try:
            key = winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, subkey, 0, winreg.KEY_READ)
        except FileNotFoundError:
            return None
        with key:
            count = winreg.QueryInfoKey(key)[1]
            values = {}
            for index in range(count):
                name, data, _kind = winreg.EnumValue(key, index)
                values[name] = data
            return values


class NpcapInstall:
    """What the registry says about Npcap (and a leftover WinPcap) on this machine."""

    def __init__(self, installed, service_key=None, parameters=None, admin_only=None,
                 loopback_support=None, winpcap_compatible=None, loopback_adapter=None,
                 winpcap_present=False):
        self.installed = installed                    # the npcap service key exists
        self.service_key = service_key                # the key the options were read from
        self.parameters = dict(parameters or {})      # every value found there
        self.admin_only = admin_only                  # bool, or None when not recorded
        self.loopback_support = loopback_support
        self.winpcap_compatible = winpcap_compatible
        self.loopback_adapter = loopback_adapter      # legacy "\Device\{GUID}" or None
        self.winpcap_present = winpcap_present        # the npf service key exists

    _FIELDS = ("installed", "service_key", "parameters", "admin_only", "loopback_support",
               "winpcap_compatible", "loopback_adapter", "winpcap_present")

    def as_dict(self):
        return {name: getattr(self, name) for name in self._FIELDS}

    def __eq__(self, other):
        return isinstance(other, NpcapInstall) and self.as_dict() == other.as_dict()

    def __repr__(self):
        return "NpcapInstall(%s)" % ", ".join("%s=%r" % item for item in self.as_dict().items())


def _flag(value):
    """A REG_DWORD option as bool; None when absent or unreadable."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip(), 0)
        except ValueError:
            return None
    if isinstance(value, int):
        return value != 0
    return None


def read_npcap_registry(reg):
    """Read the Npcap install from *reg* (an object with ``read_values(subkey) -> dict|None``)."""
    winpcap_present = reg.read_values(WINPCAP_SERVICE_KEY) is not None
    service = reg.read_values(NPCAP_SERVICE_KEY)
    if service is None:
        return NpcapInstall(False, winpcap_present=winpcap_present)
    key, params = NPCAP_PARAMETERS_KEY, reg.read_values(NPCAP_PARAMETERS_KEY)
    has_options = params is not None and any(name in params for name in NPCAP_OPTIONS)
    if not has_options and any(name in service for name in NPCAP_OPTIONS):
        key, params = NPCAP_SERVICE_KEY, service       # Npcap < 0.93 layout
    params = params or {}
    adapter = params.get("LoopbackAdapter")
    adapter = adapter.strip() if isinstance(adapter, str) and adapter.strip() else None
    return NpcapInstall(True, key, params,
                        admin_only=_flag(params.get("AdminOnly")),
                        loopback_support=_flag(params.get("LoopbackSupport")),
                        winpcap_compatible=_flag(params.get("WinPcapCompatible")),
                        loopback_adapter=adapter,
                        winpcap_present=winpcap_present)


# --------------------------------------------------------------------------------------------
# Loopback device

def loopback_device_names(install=None):
    """The pcap device names that denote Npcap's loopback capture device.

    Always ``\\Device\\NPF_Loopback``; plus, for old installs whose registry names a legacy
    loopback adapter ``\\Device\\{GUID}``, that adapter's pcap name ``\\Device\\NPF_{GUID}``.
    """
    names = [LOOPBACK_DEVICE]
    adapter = getattr(install, "loopback_adapter", None)
    if adapter:
        prefix = "\\Device\\"
        rest = adapter[len(prefix):] if adapter.lower().startswith(prefix.lower()) else adapter
        rest = rest.lstrip("\\")
        if not rest.upper().startswith("NPF_"):
            rest = "NPF_" + rest
        legacy = prefix + rest
        if legacy.lower() != LOOPBACK_DEVICE.lower():
            names.append(legacy)
    return names


def is_loopback_device(name, install=None):
    """True when the pcap device *name* is the loopback capture device (case-insensitive)."""
    if not name:
        return False
    wanted = name.lower()
    return any(wanted == candidate.lower() for candidate in loopback_device_names(install))


# --------------------------------------------------------------------------------------------
# Own MAC address, for the "not ether src" filter clause

def adapter_mac(fns, handle):
    """The adapter's current MAC (6 bytes) via ``pcap_oid_get_request``, or None.

    None when the call is unavailable or fails (e.g. the loopback device has no MAC) or when
    the driver returns something other than six non-zero bytes.
    """
    request = getattr(fns, "pcap_oid_get_request", None)
    if not request:
        return None
    buf = ctypes.create_string_buffer(6)
    length = ctypes.c_size_t(6)
    try:
        status = request(handle, OID_802_3_CURRENT_ADDRESS, buf, ctypes.byref(length))
    except OSError as exc:
        log.debug("pcap_oid_get_request(OID_802_3_CURRENT_ADDRESS) failed: %s", exc)
        return None
    if status is not None and status < 0 or length.value != 6:
        return None
    mac = buf.raw[:6]
    return None if mac == b"\0" * 6 else mac


# --------------------------------------------------------------------------------------------
# Waiting on capture events

def _milliseconds(seconds):
    """Seconds -> a finite Win32 timeout, rounded up (a wait never ends before *seconds*)."""
    if seconds <= 0:
        return 0
    return min(int(math.ceil(seconds * 1000.0)), _MAX_FINITE_MS)


def _import_winapi():
    try:
        import _winapi  # CPython's own Windows calls (Windows only)
    except ImportError:
        return None
    return _winapi


class EventWaiter:
    """Waits until a capture device has data, :meth:`wake` is called, or a timeout passes.

    The device handles are the events from ``pcap_getevent`` (owned by pcap: never closed
    here), set with :meth:`set_captures`.  The waiter adds two manual-reset events of its own,
    wake (permanent: ``close()``) and notify (another socket's thread queued datagrams for
    this one: :meth:`notify`, :meth:`clear_notify`), so one wait covers up to
    :data:`WAIT_CHUNK` devices.  With more, the handles are split into
    chunks and each chunk (plus the wake event) is waited on in turn for
    :data:`WAIT_SLICE_MS`: every wait blocks, so idle costs no CPU, and :meth:`wake` still ends
    the wait at once; a device in a later chunk may be noticed up to
    ``(chunks - 1) * WAIT_SLICE_MS`` late.

    *interval* (seconds, or None): the longest a wait may last before it returns True anyway,
    for captures whose event is not signalled for every frame (Npcap without immediate mode).

    Ctrl-C: on the main thread the wait goes through ``_winapi.WaitForMultipleObjects``, which
    adds CPython's Ctrl-C event (a plain ctypes wait would never return to the interpreter, so
    KeyboardInterrupt could not be raised); other threads wait through ctypes.
    Timeouts are never early: the waiter loops until a monotonic deadline has passed.
    Thread use: :meth:`wake` may be called from any thread; :meth:`close` only when no thread
    is inside :meth:`wait` (wake the waiter first).
    """

    def __init__(self, api, handles=(), clock=time.monotonic, interval=None, winapi=None):
        """*handles*: the device handles to start with (see :meth:`set_captures`)."""
        self._api = api
        self._clock = clock
        self._closed = False
        self._interval_ms = None if interval is None else max(1, int(interval * 1000.0))
        self._winapi = winapi if winapi is not None else _import_winapi()
        self._main_thread = threading.main_thread().ident
        self._wake = api.create_event(manual_reset=True, initial_state=False)
        try:
            self._notify = api.create_event(manual_reset=True, initial_state=False)
        except BaseException:
            api.close_handle(self._wake)
            raise
        self.notified = False           # a notice is pending (read without the lock)
        self._notify_lock = threading.Lock()
        self._groups = []
        self._set_handles(handles)

    def set_captures(self, captures):
        """Wait on these captures' read events from now on (a thread already waiting finishes
        its wait on the old set).  Bit *i* of a :meth:`wait` mask stands for ``captures[i]``."""
        self._set_handles([capture.event_handle() for capture in captures])

    def _set_handles(self, handles):
        handles = tuple(handles)
        if any(not handle for handle in handles):
            raise ValueError("a NULL event handle cannot be waited on")
        self._handles = handles
        self._all = (1 << len(handles)) - 1
        self._masked = {}
        self._groups = self._make_groups(handles)

    def _make_groups(self, handles):
        """Arrays of at most WAIT_CHUNK device handles, each with the wake and notify events."""
        groups = []
        own = (self._wake, self._notify)
        for start in range(0, len(handles), WAIT_CHUNK):
            chunk = handles[start:start + WAIT_CHUNK] + own
            groups.append(((ctypes.c_void_p * len(chunk))(*chunk), chunk))
        if not groups:
            groups.append(((ctypes.c_void_p * len(own))(*own), own))
        return groups

    def _groups_for(self, mask):
        if mask is None or mask == self._all:
            return self._groups
        groups = self._masked.get(mask)
        if groups is None:
            groups = self._masked[mask] = self._make_groups(
                tuple(h for i, h in enumerate(self._handles) if mask >> i & 1))
        return groups

    def wait(self, timeout=None, mask=None):
        """Block until an event is signalled (True) or *timeout* seconds passed (False).

        ``timeout=None`` waits without limit; ``0`` polls once.  *mask*: the devices to wait
        on (bit *i* for the *i*-th of :meth:`set_captures`; None: all); wake and notify always
        count.  With an *interval*, True also when that much time passed.  After
        :meth:`close`, returns True at once.
        """
        if self._closed:
            return True
        groups = self._groups_for(mask)
        single = len(groups) == 1
        interval = self._interval_ms
        step = WAIT_SLICE_MS if not single else interval      # None: one wait, no limit
        if interval is not None and step is not None:
            step = min(step, interval)
        deadline = None if timeout is None else self._clock() + max(0.0, float(timeout))
        read_by = None if interval is None else self._clock() + interval / 1000.0
        main = self._winapi is not None and threading.get_ident() == self._main_thread
        while True:
            for array, handles in groups:
                if deadline is None:
                    ms = INFINITE if step is None else step
                else:
                    ms = _milliseconds(deadline - self._clock())
                    if step is not None:
                        ms = min(ms, step)
                if main:
                    try:
                        result = self._winapi.WaitForMultipleObjects(handles, False, ms)
                    except InterruptedError:
                        # Ctrl-C: the pending handler raises KeyboardInterrupt as soon as the
                        # interpreter runs again; a handler that returns lets the wait go on.
                        continue
                else:
                    result = self._api.wait_for_multiple_objects(array, False, ms)
                if result == WAIT_TIMEOUT:
                    continue
                if (WAIT_OBJECT_0 <= result < WAIT_OBJECT_0 + len(handles)
                        or WAIT_ABANDONED_0 <= result < WAIT_ABANDONED_0 + len(handles)):
                    return True
                raise OSError("WaitForMultipleObjects returned the unexpected value 0x%x"
                              % result)
            now = self._clock()
            if deadline is not None and now >= deadline:
                return False
            if read_by is not None and now >= read_by:
                return True

    def wake(self):
        """Make the current and every later :meth:`wait` return True (``close()``)."""
        if not self._closed:
            self._api.set_event(self._wake)

    def notify(self):
        """Make waits return until :meth:`clear_notify` (any thread): another socket's thread
        read a shared capture and queued datagrams for this socket."""
        with self._notify_lock:
            if not self.notified and not self._closed:
                self.notified = True
                self._api.set_event(self._notify)

    def clear_notify(self):
        """The receiver is about to look at its queue: later notifications count again."""
        if self.notified:
            with self._notify_lock:
                if self.notified and not self._closed:
                    self.notified = False
                    self._api.reset_event(self._notify)

    def close(self):
        """Close the wake and notify events (idempotent).  The device handles belong to
        pcap."""
        with self._notify_lock:
            if self._closed:
                return
            self._closed = True
        self._groups = []
        self._api.close_handle(self._wake)
        self._api.close_handle(self._notify)


# --------------------------------------------------------------------------------------------
# Loopback kickstart

def loopback_kickstart(groups, port=KICKSTART_PORT, socket_module=socket):
    """Make Windows loop locally sent multicast for *groups* to the Npcap loopback adapter.

    Windows hands this host's own multicast datagrams to the loopback adapter only once a local
    socket is a member of the group.  As eclipse-ecal/udpcap does: one UDP socket with
    IP_MULTICAST_LOOP=1 and IP_MULTICAST_TTL=0 (nothing leaves the host), bound to an ephemeral
    port (Winsock refuses IP_ADD_MEMBERSHIP on an unbound socket), joins every group on
    INADDR_ANY, sends one empty datagram to each ``(group, port)``, and is closed.
    Raises ``ValueError`` for a non-multicast group, ``OSError`` when a socket call fails.
    """
    groups = list(groups)
    for group in groups:
        packed = socket_module.inet_aton(group)
        if not 224 <= packed[0] <= 239:
            raise ValueError("%s is not an IPv4 multicast address (224.0.0.0/4)" % group)
    if not groups:
        return
    sock = socket_module.socket(socket_module.AF_INET, socket_module.SOCK_DGRAM,
                                socket_module.IPPROTO_UDP)
    try:
        sock.bind(("0.0.0.0", 0))
        sock.setsockopt(socket_module.IPPROTO_IP, socket_module.IP_MULTICAST_LOOP, 1)
        sock.setsockopt(socket_module.IPPROTO_IP, socket_module.IP_MULTICAST_TTL, 0)
        any_address = socket_module.inet_aton("0.0.0.0")
        for group in groups:
            sock.setsockopt(socket_module.IPPROTO_IP, socket_module.IP_ADD_MEMBERSHIP,
                            socket_module.inet_aton(group) + any_address)
        for group in groups:
            log.debug("loopback kickstart: empty datagram to %s:%d", group, port)
            sock.sendto(b"", (group, port))
    finally:
        sock.close()
