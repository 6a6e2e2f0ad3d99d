"""Make this interpreter an emulated Windows, then run a command in it.

    python boot.py call /path/test_x.py:function '{"kwarg": ...}'   -> prints WINEMU-RESULT:{json}
    python boot.py -m udpcap_ctypes.check [args...]                 -> runs the module

Environment: WINEMU_DIR (the compiled shims), WINEMU_PROFILE (the machine profile, read by
the shims) and LD_PRELOAD=$WINEMU_DIR/ws2_32.so, as set by ``winemu.Machine``.

What "Windows" means here, at each boundary udpcap_ctypes crosses:

* ``sys.platform`` is ``"win32"`` (stdlib modules that choose an implementation from it at
  import time are imported first, so they keep their POSIX selves).
* ctypes: ``WinDLL("kernel32"/"advapi32", use_last_error=...)`` loads the shims; ctypes'
  private last-error copy is emulated with its private errno copy (``use_errno``), which the
  shims set exactly as Windows sets the last error.  So ``CDLL(..., use_last_error=True)``
  (Packet.dll: cdecl, failures told by the last error) also gets ``use_errno``.
  ``FormatError`` knows the messages of the Win32 errors the shims produce.
* ``os.add_dll_directory``: checks the directory exists, as Windows does, and records it.
* ``winreg``: the stdlib module rebuilt over advapi32's RegOpenKeyExW / RegQueryInfoKeyW /
  RegEnumValueW / RegCloseKey (recorded values in the profile).
* ``_winapi.WaitForMultipleObjects`` / ``WaitForSingleObject``: as in CPython's
  ``Modules/_winapi.c``: at most 63 handles (62 before 3.9.7, bpo-40263); on the main thread,
  with ``wait_flag`` false, the console's Ctrl-C event is added, reset just before the wait,
  and a wake-up by it raises ``InterruptedError`` (the KeyboardInterrupt follows from the
  pending signal handler).  The Ctrl-C event is set by a shim thread that reads CPython's
  signal wakeup fd, as CPython's own SIGINT handler sets it on Windows.
* the ``mbcs`` codec: the ANSI code page of the emulated machine, cp1252.
"""

# Imported before sys.platform changes: they pick their implementation at import time.
import asyncio  # noqa: F401  (each picks its implementation at import)
import codecs
import ctypes
import ctypes.util  # noqa: F401
import errno
import importlib.util
import inspect
import json
import os
import runpy
import selectors  # noqa: F401
import signal
import socket  # noqa: F401
import subprocess  # noqa: F401
import sys
import threading
import traceback
import types

SHIMS = os.environ["WINEMU_DIR"]
RESULT_MARK = "WINEMU-RESULT:"

# The emulation's own handles on the shims (the package makes its own, with its own types).
_kernel32 = ctypes.CDLL(os.path.join(SHIMS, "kernel32.so"), use_errno=True)
_kernel32.WaitForMultipleObjects.restype = ctypes.c_uint32
_kernel32.WaitForMultipleObjects.argtypes = [ctypes.c_uint32, ctypes.POINTER(ctypes.c_void_p),
                                             ctypes.c_int, ctypes.c_uint32]
_kernel32.ResetEvent.argtypes = [ctypes.c_void_p]
_kernel32.winemu_sigint_event.restype = ctypes.c_void_p
_kernel32.winemu_sigint_wakeup_fd.restype = ctypes.c_int
_advapi32 = ctypes.CDLL(os.path.join(SHIMS, "advapi32.so"))
_advapi32.RegOpenKeyExW.argtypes = [ctypes.c_void_p, ctypes.c_wchar_p, ctypes.c_uint32,
                                    ctypes.c_uint32, ctypes.POINTER(ctypes.c_void_p)]
_advapi32.RegOpenKeyExW.restype = ctypes.c_int32
_advapi32.RegCloseKey.argtypes = [ctypes.c_void_p]
_advapi32.RegCloseKey.restype = ctypes.c_int32
_DWORD_P = ctypes.POINTER(ctypes.c_uint32)
_advapi32.RegQueryInfoKeyW.argtypes = ([ctypes.c_void_p, ctypes.c_wchar_p] + [_DWORD_P] * 9
                                       + [ctypes.c_void_p])
_advapi32.RegQueryInfoKeyW.restype = ctypes.c_int32
_advapi32.RegEnumValueW.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_wchar_p,
                                    _DWORD_P, _DWORD_P, _DWORD_P, ctypes.c_void_p, _DWORD_P]
_advapi32.RegEnumValueW.restype = ctypes.c_int32

# FormatMessage for the errors the shims produce (English Windows).
SYSTEM_MESSAGES = {
    0: "The operation completed successfully.",
    1: "Incorrect function.",
    2: "The system cannot find the file specified.",
    5: "Access is denied.",
    6: "The handle is invalid.",
    8: "Not enough memory resources are available to process this command.",
    20: "The system cannot find the device specified.",
    31: "A device attached to the system is not functioning.",
    50: "The request is not supported.",
    87: "The parameter is incorrect.",
    122: "The data area passed to a system call is too small.",
    123: "The filename, directory name, or volume label syntax is incorrect.",
    234: "More data is available.",
    259: "No more data is available.",
    1060: "The specified service does not exist as an installed service.",
    1450: "Insufficient system resources exist to complete the requested service.",
    1617: "The device has been removed.",
}
_ERRNO_OF = {2: (FileNotFoundError, errno.ENOENT), 5: (PermissionError, errno.EACCES),
             6: (OSError, errno.EBADF), 8: (MemoryError, errno.ENOMEM)}


def format_error(code=None):
    if code is None:
        code = ctypes.get_errno()
    return SYSTEM_MESSAGES.get(code, "<no description>")


def windows_error(code, filename=None):
    """The OSError CPython raises on Windows for Win32 error *code* (PyErr_SetFromWindowsErr)."""
    cls, number = _ERRNO_OF.get(code, (OSError, errno.EINVAL))
    if cls is MemoryError:
        cls = OSError
    exc = cls(number, format_error(code)) if filename is None else cls(
        number, format_error(code), filename)
    exc.winerror = code
    return exc


# --------------------------------------------------------------------------------------------
# ctypes and os

def WinDLL(name, mode=ctypes.DEFAULT_MODE, handle=None, use_errno=False, use_last_error=False,
           winmode=None):
    base = os.path.basename(str(name)).lower()
    if base.endswith(".dll"):
        base = base[:-4]
    if base in ("kernel32", "advapi32"):
        return ctypes.CDLL(os.path.join(SHIMS, base + ".so"), mode, handle,
                           use_errno=use_errno or use_last_error)
    raise FileNotFoundError(errno.ENOENT, "Could not find module '%s' (or one of its "
                                          "dependencies). Try using the full path with "
                                          "constructor syntax." % name)


_REAL_CDLL = ctypes.CDLL
_CDLL_SIGNATURE = inspect.signature(_REAL_CDLL.__init__)


class CDLL(_REAL_CDLL):
    """``ctypes.CDLL`` whose ``use_last_error=True`` also means ``use_errno=True``: the copy
    of the last error that ``ctypes.get_last_error`` (here ``get_errno``) returns.  Every
    argument, ``use_last_error`` included, is passed on as given."""

    def __init__(self, *args, **kwargs):
        bound = _CDLL_SIGNATURE.bind(self, *args, **kwargs)
        if bound.arguments.get("use_last_error"):
            bound.arguments["use_errno"] = True
        super().__init__(*bound.args[1:], **bound.kwargs)


ADDED_DLL_DIRECTORIES = []


class _AddedDllDirectory:
    def __init__(self, path):
        self.path = path
        ADDED_DLL_DIRECTORIES.append(path)

    def close(self):
        if self.path in ADDED_DLL_DIRECTORIES:
            ADDED_DLL_DIRECTORIES.remove(self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def add_dll_directory(path):
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise windows_error(2, path)
    return _AddedDllDirectory(path)


# --------------------------------------------------------------------------------------------
# winreg (PC/winreg.c semantics for the calls udpcap_ctypes makes)

def _build_winreg():
    winreg = types.ModuleType("winreg")
    winreg.HKEY_LOCAL_MACHINE = 0x80000002
    winreg.KEY_READ = 0x20019
    winreg.KEY_QUERY_VALUE = 0x0001
    winreg.REG_SZ = 1
    winreg.REG_EXPAND_SZ = 2
    winreg.REG_BINARY = 3
    winreg.REG_DWORD = 4
    winreg.error = OSError

    class HKEYType:
        def __init__(self, handle):
            self.handle = handle

        def Close(self):
            if self.handle:
                _advapi32.RegCloseKey(self.handle)
                self.handle = 0

        def __int__(self):
            return self.handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.Close()
            return False

    def _check(code):
        if code:
            raise windows_error(code)

    def OpenKey(key, sub_key, reserved=0, access=winreg.KEY_READ):
        result = ctypes.c_void_p()
        _check(_advapi32.RegOpenKeyExW(int(key), sub_key, reserved, access,
                                       ctypes.byref(result)))
        return HKEYType(result.value)

    def QueryInfoKey(key):
        subkeys, values = ctypes.c_uint32(), ctypes.c_uint32()
        last_write = ctypes.c_uint64()
        _check(_advapi32.RegQueryInfoKeyW(int(key), None, None, None, ctypes.byref(subkeys),
                                          None, None, ctypes.byref(values), None, None, None,
                                          ctypes.byref(last_write)))
        return subkeys.value, values.value, last_write.value

    def EnumValue(key, index):
        size = 256
        while True:
            name = ctypes.create_unicode_buffer(16384)
            name_size = ctypes.c_uint32(16384)
            kind = ctypes.c_uint32()
            data = ctypes.create_string_buffer(size)
            data_size = ctypes.c_uint32(size)
            code = _advapi32.RegEnumValueW(int(key), index, name, ctypes.byref(name_size), None,
                                           ctypes.byref(kind), data, ctypes.byref(data_size))
            if code == 234:            # ERROR_MORE_DATA
                size *= 4
                continue
            _check(code)
            raw = data.raw[:data_size.value]
            if kind.value == winreg.REG_DWORD:
                value = int.from_bytes(raw[:4], "little")
            elif kind.value in (winreg.REG_SZ, winreg.REG_EXPAND_SZ):
                value = raw.decode("utf-16-le").split("\0", 1)[0]
            else:
                value = raw
            return name.value, value, kind.value

    winreg.HKEYType = HKEYType
    winreg.OpenKey = winreg.OpenKeyEx = OpenKey
    winreg.QueryInfoKey = QueryInfoKey
    winreg.EnumValue = EnumValue
    winreg.CloseKey = lambda key: key.Close()
    return winreg


# --------------------------------------------------------------------------------------------
# _winapi (Modules/_winapi.c)

def _build_winapi():
    winapi = types.ModuleType("_winapi")
    winapi.INFINITE = 0xFFFFFFFF
    winapi.WAIT_OBJECT_0 = 0
    winapi.WAIT_ABANDONED_0 = 0x80
    winapi.WAIT_TIMEOUT = 0x102
    limit = 62 if sys.version_info < (3, 9, 7) else 63      # bpo-40263

    def WaitForMultipleObjects(handle_seq, wait_flag, milliseconds=winapi.INFINITE):
        handles = [h if isinstance(h, int) else int(h) for h in handle_seq]
        count = len(handles)
        if count > limit:
            raise ValueError("need at most 63 handles, got a sequence of length %d" % count)
        sigint = None
        if not wait_flag and threading.current_thread() is threading.main_thread():
            sigint = _kernel32.winemu_sigint_event()
            handles.append(sigint)
        array = (ctypes.c_void_p * len(handles))(*handles)
        if sigint is not None:
            _kernel32.ResetEvent(sigint)
        result = _kernel32.WaitForMultipleObjects(len(handles), array, int(bool(wait_flag)),
                                                  milliseconds)
        if result == 0xFFFFFFFF:
            raise windows_error(ctypes.get_errno())
        if sigint is not None and result == count:
            raise InterruptedError(errno.EINTR, os.strerror(errno.EINTR))
        return result

    def WaitForSingleObject(handle, milliseconds):
        array = (ctypes.c_void_p * 1)(handle)
        result = _kernel32.WaitForMultipleObjects(1, array, 0, milliseconds)
        if result == 0xFFFFFFFF:
            raise windows_error(ctypes.get_errno())
        return result

    winapi.WaitForMultipleObjects = WaitForMultipleObjects
    winapi.WaitForSingleObject = WaitForSingleObject
    return winapi


# --------------------------------------------------------------------------------------------

def install():
    """Turn this interpreter into the emulated Windows (once, before udpcap_ctypes loads)."""
    sys.platform = "win32"
    ctypes.CDLL = CDLL
    ctypes.WinDLL = WinDLL
    ctypes.get_last_error = ctypes.get_errno
    ctypes.set_last_error = ctypes.set_errno
    ctypes.FormatError = format_error
    os.add_dll_directory = add_dll_directory
    sys.modules["winreg"] = _build_winreg()
    sys.modules["_winapi"] = _build_winapi()
    codecs.register(lambda name: codecs.lookup("cp1252") if name == "mbcs" else None)
    # CPython's SIGINT handler writes to the wakeup fd; the shim turns that into the event.
    signal.set_wakeup_fd(_kernel32.winemu_sigint_wakeup_fd(), warn_on_full_buffer=False)


def _call(target, kwargs):
    path, function = target.rsplit(":", 1)
    spec = importlib.util.spec_from_file_location("winemu_target", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["winemu_target"] = module
    spec.loader.exec_module(module)
    try:
        result = {"result": getattr(module, function)(**kwargs), "error": None}
    except BaseException:
        result = {"result": None, "error": traceback.format_exc()}
    sys.stdout.write("\n" + RESULT_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if result["error"] is None else 1


def main(argv):
    install()
    if argv[:1] == ["call"]:
        return _call(argv[1], json.loads(argv[2]) if len(argv) > 2 else {})
    if argv[:1] == ["-m"]:
        sys.argv = [argv[1]] + argv[2:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return 0
    raise SystemExit("usage: boot.py call FILE:FUNCTION [JSON] | boot.py -m MODULE [ARGS]")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
