"""An emulated Windows under the real package: Npcap's and Win32's semantics on Linux.

Windows cannot run here, so the Windows code path of udpcap_ctypes runs *unchanged* in a
child interpreter that looks like Windows at every boundary the package touches:

* C shims compiled at test time with gcc (``tests/winemu/c``, never shipped) export the
  Windows names with their C signatures: ``kernel32`` (events, waits, handles, last error,
  ``GetSystemDirectoryW``), ``advapi32`` (registry, service manager, token), ``Packet.dll``,
  ``wpcap.dll`` (Npcap's libpcap, over an emulated NPF driver that captures the namespace's
  real interfaces with the real libpcap) and a preloaded ``ws2_32`` that tells the emulated
  kernel about multicast joins.  The package binds them with its own prototype tables, so
  every ``argtypes``/``restype``/errcheck conversion runs for real.
* :mod:`winemu.boot` turns the child into "Windows" before the package is imported:
  ``sys.platform = "win32"``, the Windows-only parts of ctypes (``WinDLL``,
  ``get_last_error``, ``FormatError``), ``os.add_dll_directory``, and the stdlib modules
  ``winreg`` and ``_winapi`` rebuilt over the shims, plus the ``mbcs`` codec (cp1252).
* A :class:`Machine` is one emulated install: a System32 directory holding ``wpcap.dll`` and
  ``Packet.dll`` where Npcap puts them, and a profile of recorded registry values, service
  states, elevation and adapter quirks.  The child runs inside a test network namespace
  (``ip netns exec``), whose interfaces become ``\\Device\\NPF_{GUID}`` adapters and whose
  ``lo`` becomes ``\\Device\\NPF_Loopback``.

Use :func:`shims` (built once per session) and :meth:`Machine.call` to run a function of a test
module inside the emulated Windows and get its JSON-able result back.
"""

import json
import os
import shutil
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = os.path.join(HERE, "c")
TESTS = os.path.dirname(HERE)
REPO = os.path.dirname(TESTS)
RESULT_MARK = "WINEMU-RESULT:"

# Registry paths (under HKLM) of an Npcap install (Npcap's developer guide).
NPCAP_KEY = r"SYSTEM\CurrentControlSet\Services\npcap"
NPCAP_PARAMETERS = NPCAP_KEY + r"\Parameters"
NPF_KEY = r"SYSTEM\CurrentControlSet\Services\npf"

SERVICE_STOPPED = 1
SERVICE_RUNNING = 4

# shim -> (sources, extra gcc arguments, shims it links against)
_SHIMS = [
    ("kernel32.so", ["kernel32.c"], [], []),
    ("advapi32.so", ["advapi32.c"], [], ["kernel32.so"]),
    ("libnpf.so", ["npf.c"], ["-ldl"], ["kernel32.so"]),
    ("packet.so", ["packet.c"], [], ["libnpf.so", "kernel32.so"]),
    ("wpcap.so", ["wpcap.c"], ["-Wl,-Bsymbolic"], ["libnpf.so", "kernel32.so"]),
    ("wpcap_noinit.so", ["wpcap.c"], ["-Wl,-Bsymbolic", "-DNO_PCAP_INIT"],
     ["libnpf.so", "kernel32.so"]),
    ("ws2_32.so", ["ws2_32.c"], ["-ldl"], ["kernel32.so"]),
]

_build_lock = threading.Lock()
_built = {}


class ShimBuildError(RuntimeError):
    pass


def unavailable_reason():
    """Why the emulation cannot be built here, or None."""
    if shutil.which("gcc") is None:
        return "gcc is missing: apt-get install gcc"
    if not os.path.exists("/usr/include/pcap/pcap.h"):
        return "the libpcap headers are missing: apt-get install libpcap-dev"
    return None


def shims(directory):
    """Compile the shims into *directory* once per process; returns the directory."""
    with _build_lock:
        if directory in _built:
            return directory
        os.makedirs(directory, exist_ok=True)
        for output, sources, extra, links in _SHIMS:
            argv = (["gcc", "-shared", "-fPIC", "-O1", "-g", "-Wall", "-Wextra",
                     "-Wno-unused-parameter", "-fvisibility=hidden", "-pthread",
                     "-Wl,-soname," + output, "-Wl,-rpath," + directory,
                     "-Wl,--no-undefined", "-I" + SOURCES, "-o", os.path.join(directory, output)]
                    + [os.path.join(SOURCES, s) for s in sources]
                    + ["-L" + directory] + ["-l:" + lib for lib in links] + extra)
            proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  universal_newlines=True)
            if proc.returncode != 0 or "warning" in proc.stdout:
                raise ShimBuildError("building %s failed:\n%s\n%s"
                                     % (output, " ".join(argv), proc.stdout))
        _built[directory] = True
        return directory


class Machine:
    """One emulated Windows install.

    Keyword settings (all optional; the defaults are a healthy Npcap 1.87 with loopback
    support, not admin-only, an elevated process):

    ``npcap``: "installed" (System32\\Npcap only), "compat" (also System32, WinPcap
    API-compatible mode), "winpcap" (a legacy WinPcap 4.1.3: System32 only, service npf, no
    npcap key), or "missing" (no DLLs, no registry key, no service).
    ``packet``: False leaves Packet.dll out of the Npcap folder.
    ``registry_layout``: "pre-0.93" puts the options directly under the service key.
    ``service``: the npcap service state (4 running, 1 stopped).
    ``admin_only``, ``elevated``: the AdminOnly option and this process's elevation.
    ``uac``: what the user answers to Packet.dll's UAC prompt in admin-only mode: "accept",
    "decline" (ERROR_ACCESS_DENIED, current Npcap) or "decline_bad_unit" (older Packet.dll).
    ``loopback_support``: the LoopbackSupport option.  ``legacy_loopback``: a GUID; the loopback
    adapter then has the pre-0.9983 name \\Device\\NPF_{GUID}, recorded in LoopbackAdapter.
    ``pcap_init``: False for an Npcap older than 1.20 (wpcap.dll without pcap_init).
    ``reader``: the package's capture reader in this install (UDPCAP_CTYPES_READER): "batch"
    (Packet.dll's PacketReceivePacket per batch, the default) or "next_ex" (wpcap.dll's
    pcap_next_ex per frame).
    ``locale``: "de" for German system messages.  ``adapters``: {ifname: {"description": ...,
    "promisc_error": win32 code, "open_error": win32 code}}.  ``extra``: raw profile lines.
    """

    def __init__(self, root, shim_dir, npcap="installed", service=SERVICE_RUNNING,
                 admin_only=False, elevated=True, uac="accept", loopback_support=True,
                 legacy_loopback=None, pcap_init=True, locale=None, adapters=None,
                 winpcap_service=False, registry_denied=False, scm_denied=False, packet=True,
                 registry_layout="modern", extra=(), reader=None):
        self.root = root
        self.reader = reader
        self.shim_dir = shim_dir
        os.makedirs(root, exist_ok=True)
        # System32 as the package will spell it: "<root>/System32", then "\Npcap\wpcap.dll"
        # appended with backslashes.  On Linux such a path is one file name with backslashes
        # in it, inside <root>: that is where the DLLs go.
        self.system32 = os.path.join(root, "System32")
        lines = ["system32=" + self.system32]
        wpcap = "wpcap.so" if pcap_init else "wpcap_noinit.so"
        if npcap == "winpcap":
            self._install(self.system32, "wpcap_noinit.so", packet)
            lines += ["lib_version=WinPcap version 4.1.3 (packet.dll version 4.1.0.2980)",
                      "packet_version=4.1.0.2980", "loopback_support=0"]
            winpcap_service = True
        elif npcap != "missing":
            self._install(self.system32 + "\\Npcap", wpcap, packet)
            if npcap == "compat":
                self._install(self.system32, wpcap, packet)
            lines += ["service.npcap=%d" % service, "regkey=" + NPCAP_KEY]
            parameters = {"AdminOnly": (4, int(admin_only)),
                          "LoopbackSupport": (4, int(loopback_support)),
                          "WinPcapCompatible": (4, int(npcap == "compat")),
                          "DltNull": (4, 1), "Dot11Support": (4, 0), "VlanSupport": (4, 0)}
            if legacy_loopback:
                parameters["LoopbackAdapter"] = (1, "\\Device\\" + legacy_loopback)
                lines.append("loopback_device=\\Device\\NPF_" + legacy_loopback)
            key = NPCAP_KEY if registry_layout == "pre-0.93" else NPCAP_PARAMETERS
            for name, (kind, value) in sorted(parameters.items()):
                lines.append("regval=%s|%s|%d|%s" % (key, name, kind, value))
            lines.append("admin_only=%d" % int(admin_only))
            lines.append("loopback_support=%d" % int(loopback_support))
        if winpcap_service:
            lines += ["service.npf=%d" % SERVICE_RUNNING, "regkey=" + NPF_KEY]
        lines += ["elevated=%d" % int(elevated), "uac=" + uac]
        if locale:
            lines.append("locale=" + locale)
        if registry_denied:
            lines.append("registry_denied=1")
        if scm_denied:
            lines.append("scm=denied")
        for ifname, quirks in sorted((adapters or {}).items()):
            for key, value in sorted(quirks.items()):
                lines.append("adapter.%s.%s=%s" % (ifname, key, value))
        lines.extend(extra)
        self.profile = os.path.join(root, "profile.txt")
        with open(self.profile, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    def _install(self, directory, wpcap, packet=True):
        os.makedirs(directory, exist_ok=True)     # for os.add_dll_directory
        shutil.copy(os.path.join(self.shim_dir, wpcap), directory + "\\wpcap.dll")
        if packet:
            shutil.copy(os.path.join(self.shim_dir, "packet.so"), directory + "\\Packet.dll")

    def environ(self, extra=None):
        env = dict(os.environ)
        env.pop("UDPCAP_CTYPES_LIBPCAP", None)
        env["WINEMU_DIR"] = self.shim_dir
        env["WINEMU_PROFILE"] = self.profile
        env["LD_PRELOAD"] = os.path.join(self.shim_dir, "ws2_32.so")
        env["PYTHONPATH"] = os.pathsep.join([REPO, TESTS])
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONIOENCODING"] = "utf-8"
        env["PYTHONFAULTHANDLER"] = "1"
        env.pop("UDPCAP_CTYPES_READER", None)
        if self.reader:
            env["UDPCAP_CTYPES_READER"] = self.reader
        if extra:
            env.update(extra)
        return env

    def argv(self, namespace, args):
        prefix = namespace.exec_argv([]) if namespace is not None else []
        return prefix + [sys.executable, os.path.join(HERE, "boot.py")] + list(args)

    def popen(self, namespace, args, env=None, **kwargs):
        """Start the emulated interpreter with *args* (``boot.py`` arguments)."""
        return subprocess.Popen(self.argv(namespace, args), env=self.environ(env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                universal_newlines=True, cwd=REPO, **kwargs)

    def run(self, namespace, args, env=None, timeout=60):
        """Run ``boot.py args`` to the end: a CompletedProcess."""
        return subprocess.run(self.argv(namespace, args), env=self.environ(env),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, cwd=REPO, timeout=timeout)

    def call(self, namespace, function, timeout=60, env=None, **kwargs):
        """Run ``function(**kwargs)`` (a module-level function of a test module) inside the
        emulated Windows, in *namespace*; return what it returned (JSON round trip).  An
        exception in the child fails the calling test with the child's traceback."""
        target = "%s:%s" % (sys.modules[function.__module__].__file__, function.__name__)
        proc = self.run(namespace, ["call", target, json.dumps(kwargs)], env=env,
                        timeout=timeout)
        return parse_result(proc)


class EmulatedFailure(AssertionError):
    pass


def parse_result(proc):
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            payload = json.loads(line[len(RESULT_MARK):])
            if payload.get("error"):
                raise EmulatedFailure("in the emulated Windows:\n%s\n--- stderr\n%s"
                                      % (payload["error"], proc.stderr[-4000:]))
            return payload["result"]
    raise EmulatedFailure("the emulated Windows ended without a result (exit %s)\n--- stdout\n"
                          "%s\n--- stderr\n%s" % (proc.returncode, proc.stdout[-4000:],
                                                  proc.stderr[-6000:]))


# --------------------------------------------------------------------------------------------
# Helpers for the functions that run inside the emulated Windows

def send_udp(namespace_name, destination, payloads, interval=0.0, multicast_interface=None,
             connect=False):
    """Send *payloads* to *destination* from a plain socket created in namespace
    *namespace_name* (another "host"), or in this process's own namespace when None."""
    import time

    from test_socket_support import udp_socket
    sock = udp_socket(namespace_name, multicast_if=multicast_interface)
    with sock:
        if connect:
            sock.connect(destination)
        for payload in payloads:
            if connect:
                sock.send(payload)
            else:
                sock.sendto(payload, destination)
            if interval:
                time.sleep(interval)


def receive_all(sock, count, timeout=2.0, bufsize=65536):
    """Up to *count* ``(payload, address)`` pairs; stops at the first receive timeout."""
    import socket
    out = []
    sock.settimeout(timeout)
    while len(out) < count:
        try:
            data, address = sock.recvfrom(bufsize)
        except socket.timeout:
            break
        out.append((data, address))
    return out


def numbered(count, size=64, tag=b"W"):
    """*count* distinct payloads of *size* bytes: tag, sequence number, padding."""
    return [(tag + b"%08d" % i).ljust(size, b".") for i in range(count)]
