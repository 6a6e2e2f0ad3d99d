"""``python -m udpcap_ctypes.check``: can this machine receive with udpcap_ctypes?

Prints a short report a person can act on -- one line per check, each marked ✓ (ok),
! (warning) or ✗ (failure, followed by the fix) -- and exits 0 only when receiving works:

* the capture library: where it was loaded from, its version, Npcap / WinPcap / libpcap;
* Windows: the Npcap service, Packet.dll and driver versions, the registry options
  (LoopbackSupport, LoopbackAdapter, AdminOnly, WinPcapCompatible), elevation when AdminOnly is
  set, the loopback capture device;
* Linux/macOS: the privileges to capture (root, or CAP_NET_RAW + CAP_NET_ADMIN);
* the capture devices udpcap_ctypes would use, each opened briefly (never promiscuous);
* a live self-test: a :class:`~udpcap_ctypes.UdpcapSocket` on 127.0.0.1 receives datagrams
  that a plain socket of this process sends to it (count, bytes, order, duplicates, latency);
* with ``--multicast GROUP`` (opt-in): the same for a multicast group.

``--json`` prints everything as one JSON object; ``--verbose`` adds the BPF filters in force and
the library search attempts.

Structure: the checks are functions of an *environment* (:class:`Environment`, the machine's
operating system) that return :class:`Check` results.  :func:`main` only parses arguments,
renders and picks the exit code.
"""

import argparse
import json
import logging
import os
import socket
import struct
import sys
import threading
import time

from . import _fixes, _loader, _structs
from ._net import ip_text
from ._stats import percentile
from .errors import CaptureUnavailableError

log = logging.getLogger("udpcap_ctypes.check")   # also when run as __main__

DEFAULT_COUNT = 200
SEND_INTERVAL = 0.0005          # seconds between self-test datagrams (2000/s: nothing is lost)
RECEIVE_GRACE = 2.0             # seconds to wait for stragglers after the last send
PAYLOAD_SIZE = 64               # bytes per self-test datagram
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
NPCAP_SERVICE = "npcap"
WINPCAP_SERVICE = "npf"

# Self-test payload: magic, run nonce, sequence number, send time (perf_counter_ns).
_MAGIC = b"UCCK"
_HEADER = struct.Struct("!4sIIQ")


class Check:
    """One line of the report.

    ``ok``: False fails the run.  ``warning``: ok, but a person should know (e.g. WinPcap).
    ``fix``: what to do when not ok (or about a warning); None when nothing is to be done.
    ``data``: machine-readable details for ``--json``; ``verbose``: extra lines for
    ``--verbose``.
    """

    __slots__ = ("name", "ok", "detail", "fix", "warning", "data", "verbose")

    def __init__(self, name, ok, detail, fix=None, warning=False, data=None, verbose=None):
        self.name = name
        self.ok = bool(ok)
        self.detail = detail
        self.fix = fix
        self.warning = bool(warning) and bool(ok)
        self.data = data or {}
        self.verbose = list(verbose or [])

    def as_dict(self, verbose=False):
        out = {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix,
               "warning": self.warning}
        if self.data:
            out["data"] = self.data
        if verbose and self.verbose:
            out["verbose"] = self.verbose
        return out

    def __repr__(self):
        return "Check(%r, ok=%r, detail=%r, fix=%r)" % (self.name, self.ok, self.detail, self.fix)


class Options:
    """What to run: the self-test size, the opt-in multicast test, verbosity."""

    def __init__(self, count=DEFAULT_COUNT, multicast=None, interface=None, verbose=False,
                 self_test=True):
        self.count = count
        self.multicast = multicast
        self.interface = interface
        self.verbose = verbose
        self.self_test = self_test


# --------------------------------------------------------------------------------------------
# The environment: the machine's operating system, in one place.

class _RecordingLoaderOS(_loader.LoaderOS):
    """A :class:`~._loader.LoaderOS` that remembers every file probe and load, for --verbose."""

    def __init__(self):
        self.attempts = []

    def isfile(self, path):
        found = _loader.LoaderOS.isfile(path)
        if not found:
            self.attempts.append("%s: not found" % path)
        return found

    def find_library(self, name):
        found = _loader.LoaderOS.find_library(name)
        self.attempts.append("find_library(%r) -> %r" % (name, found))
        return found

    def load(self, path, use_last_error=False):
        try:
            library = _loader.LoaderOS.load(path, use_last_error)
        except OSError as exc:
            self.attempts.append("%s: %s" % (path, exc))
            raise
        self.attempts.append("%s: loaded" % path)
        return library


class Environment:
    """The operating system as the checks see it: the capture library, the Win32 calls and
    registry (Windows), the process's identity (POSIX), the devices and the self-test socket.
    """

    def __init__(self, platform=None, environ=None):
        self.platform = sys.platform if platform is None else platform
        self.environ = os.environ if environ is None else environ
        self._api = None

    @property
    def windows(self):
        return _structs.host_family(self.platform) == _structs.WINDOWS

    # capture library
    def load_library(self):
        """The process-wide capture library (what UdpcapSocket uses)."""
        return _loader.get_library()

    def library_attempts(self):
        """Every probe the loader makes, as text lines (loads the library once more)."""
        recorder = _RecordingLoaderOS()
        try:
            _loader.load_library(recorder)
        except CaptureUnavailableError as exc:
            recorder.attempts.append("gave up: %s" % exc)
        return recorder.attempts

    # Windows
    def win32_api(self):
        if self._api is None:
            from . import _win32
            self._api = _win32.Win32Api()
        return self._api

    def registry(self):
        from . import _win32
        return _win32.WinregReader()

    # POSIX
    def geteuid(self):
        geteuid = getattr(os, "geteuid", None)
        return geteuid() if geteuid is not None else None

    def proc_status(self):
        """The text of /proc/self/status, or None where there is none (macOS)."""
        try:
            with open("/proc/self/status") as f:
                return f.read()
        except OSError:
            return None

    def python_path(self):
        """The real path of this interpreter (setcap needs the file, not a symlink)."""
        return os.path.realpath(sys.executable or "python3")

    def interpreter_is_shared(self):
        """True when :meth:`python_path` is not this environment's own interpreter: the
        system's (or pyenv's) python, which a default venv's ``python3`` only links to.
        Capabilities given to it reach every script it runs.  ``venv --copies`` makes a
        private one."""
        executable = os.path.abspath(sys.executable or "python3")
        in_venv = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
        return not in_venv or os.path.realpath(executable) != executable

    # devices
    def find_devices(self, library):
        """The capture devices as UdpcapSocket sees them (``loopback`` decided)."""
        from ._platform import current
        return current(library).devices()

    def probe_device(self, library, device):
        """Open *device* briefly (not promiscuous); return its link type name.

        Raises ``OSError`` (``PermissionError`` when capturing is not allowed).
        """
        from ._capture import Capture
        from ._platform import current
        try:
            capture = Capture(library.fns, device.name, 256, 1 << 20, immediate=True,
                              promiscuous=False, timeout_ms=1, libc=None)
        except OSError as exc:
            raise current(library).explain_open_error(exc) from None
        try:
            linktype = capture.linktype
        finally:
            capture.close()
        raw = library.fns.pcap_datalink_val_to_name(linktype)
        name = raw.decode("ascii", "replace") if raw else None
        return name or "DLT %d" % linktype

    def udpcap_socket(self, family=socket.AF_INET):
        from .udpcap_socket import UdpcapSocket
        return UdpcapSocket(family)

    def ipv6_loopback(self):
        """None when this machine has IPv6 loopback (a kernel socket binds to ::1), else why
        not."""
        if not socket.has_ipv6:
            return "this Python was built without IPv6"
        try:
            probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        except OSError as exc:
            return "no IPv6 sockets (%s)" % (exc.strerror or exc)
        try:
            probe.bind(("::1", 0))
        except OSError as exc:
            return "::1 is not configured (%s)" % (exc.strerror or exc)
        finally:
            probe.close()
        return None


# --------------------------------------------------------------------------------------------
# Checks

def split_fix(message):
    """``("what is wrong", "how to fix it")`` from an error message of the form "... Fix: ..."."""
    text = str(message)
    head, sep, tail = text.partition(" Fix: ")
    if sep:
        return head.rstrip(" ."), tail.strip()
    return text, None


def check_library(env):
    """``(checks, library_or_None)``: load the capture library and say what it is."""
    try:
        library = env.load_library()
    except CaptureUnavailableError as exc:
        detail, fix = split_fix(exc.strerror or str(exc))
        if fix is None:
            fix = _fixes.install(env.platform)
        override = _loader.override_path(env.environ)
        if override and _loader.ENV_OVERRIDE not in fix:
            fix = "%s (%s=%r is set)" % (fix, _loader.ENV_OVERRIDE, override)
        return [Check("capture library", False, detail, fix)], None
    version = library.version
    kind = library.kind
    data = {"kind": kind, "path": library.path, "version": version}
    if _loader.override_path(env.environ):
        data["override"] = _loader.override_path(env.environ)
    source = library.path
    if data.get("override"):
        source = "%s (from %s)" % (source, _loader.ENV_OVERRIDE)
    if kind == "winpcap" or version.startswith("WinPcap"):
        return [Check("capture library", True,
                      "%s loaded from %s: WinPcap is unmaintained since 2013 and cannot capture "
                      "loopback traffic" % (version, source),
                      fix=_fixes.REPLACE_WINPCAP,
                      warning=True, data=data)], library
    label = {"npcap": "Npcap", "libpcap": "libpcap"}.get(kind, kind)
    return [Check("capture library", True, "%s: %s, loaded from %s" % (label, version, source),
                  data=data)], library


def _yes_no(value):
    return "not set" if value is None else ("1" if value else "0")


def _compat(install):
    """Does Npcap run in WinPcap API-compatible mode (its service is then npf)?"""
    return install is not None and bool(install.winpcap_compatible)


def check_windows(env, library):
    """``(checks, install)``: Npcap service, Packet.dll, registry options, elevation."""
    from . import _win32
    checks = []
    install = None
    try:
        install = _win32.read_npcap_registry(env.registry())
    except OSError as exc:
        # Not fatal: the loopback adapter is then known by its modern name only.
        checks.append(Check("Npcap registry", True,
                            "cannot read HKLM\\%s: %s" % (_win32.NPCAP_SERVICE_KEY, exc),
                            _fixes.ELEVATED_CHECK + " to see Npcap's options",
                            warning=True))
    if install is not None and not install.installed:
        detail = "Npcap is not installed (no HKLM\\%s key)" % _win32.NPCAP_SERVICE_KEY
        if install.winpcap_present:
            detail += "; only the WinPcap driver (npf) is present"
        checks.append(Check("Npcap installed", False, detail,
                            _fixes.REINSTALL_NPCAP_WITH_LOOPBACK.replace("Reinstall", "Install")
                            + (", after uninstalling WinPcap" if install.winpcap_present else "")))
    elif install is not None:
        checks.append(Check("Npcap installed", True, "Npcap service key HKLM\\%s"
                            % _win32.NPCAP_SERVICE_KEY, data={"registry": _jsonable(
                                install.as_dict())}))

    # the service
    api = None
    try:
        api = env.win32_api()
        state = _win32.service_state(api, NPCAP_SERVICE)
        if state == "missing" and install is not None and install.winpcap_compatible:
            state = _win32.service_state(api, WINPCAP_SERVICE)
        if state == "running":
            checks.append(Check("Npcap service", True, "the npcap service is running",
                                data={"state": state}))
        elif state == "missing":
            checks.append(Check("Npcap service", False, "the npcap service does not exist",
                                _fixes.REINSTALL_NPCAP_WITH_LOOPBACK.replace("Reinstall",
                                                                             "Install"),
                                data={"state": state}))
        elif state == "access_denied":
            checks.append(Check("Npcap service", True, "the service manager refused to say "
                                "whether npcap runs (access denied)",
                                _fixes.ELEVATED_CHECK + " to see the service state",
                                warning=True, data={"state": state}))
        else:
            checks.append(Check("Npcap service", False, "the npcap service is %s, not running"
                                % state.replace("_", " "), _fixes.npcap_service(_compat(install)),
                                data={"state": state}))
    except OSError as exc:
        checks.append(Check("Npcap service", True, "cannot query the npcap service: %s" % exc,
                            "Run 'sc query npcap' from an elevated prompt", warning=True))

    # Packet.dll and driver versions
    checks.append(_check_packet_dll(library))

    # registry options
    if install is not None and install.installed:
        checks.extend(_check_npcap_options(install))
        checks.append(_check_elevation(env, api, install))
    return checks, install


def _check_packet_dll(library):
    if library is None:
        return Check("Packet.dll", False, "not loaded: the capture library failed to load",
                     "See 'capture library' above")
    packet = getattr(library, "packet_fns", None)
    if packet is None:
        return Check("Packet.dll", True, "Packet.dll was not loaded next to %s: Npcap "
                     "DLL and driver versions unknown" % library.path,
                     "Install Npcap from %s (Packet.dll is part of it)" % _fixes.NPCAP_URL,
                     warning=True)
    versions = {}
    for key, name in (("dll", "PacketGetVersion"), ("driver", "PacketGetDriverVersion")):
        func = getattr(packet, name, None)
        try:
            raw = func() if func else None
        except OSError as exc:
            log.debug("%s failed: %s", name, exc)
            raw = None
        versions[key] = raw.decode("ascii", "replace") if raw else None
    detail = "Packet.dll %s (%s), driver %s" % (versions["dll"] or "unknown version",
                                               library.packet_path,
                                               versions["driver"] or "version unknown")
    if not versions["driver"]:
        return Check("Packet.dll", True, detail + ": the Npcap driver did not answer",
                     _fixes.npcap_service(), warning=True, data=versions)
    return Check("Packet.dll", True, detail, data=versions)


def _check_npcap_options(install):
    checks = []
    params = ("LoopbackSupport=%s, LoopbackAdapter=%s, AdminOnly=%s, WinPcapCompatible=%s"
              % (_yes_no(install.loopback_support), install.loopback_adapter or "not set",
                 _yes_no(install.admin_only), _yes_no(install.winpcap_compatible)))
    data = {"LoopbackSupport": install.loopback_support,
            "LoopbackAdapter": install.loopback_adapter, "AdminOnly": install.admin_only,
            "WinPcapCompatible": install.winpcap_compatible, "key": install.service_key}
    if install.loopback_support is False:
        checks.append(Check("Npcap options", False, params + ": loopback capture is off, so "
                            "127.0.0.1 and this host's own multicast cannot be received",
                            _fixes.REINSTALL_NPCAP_WITH_LOOPBACK, data=data))
    else:
        checks.append(Check("Npcap options", True, params, data=data))
    return checks


def _check_elevation(env, api, install):
    from . import _win32
    if not install.admin_only:
        return Check("elevation", True, "Npcap is not restricted to administrators "
                     "(AdminOnly=%s)" % _yes_no(install.admin_only))
    try:
        elevated = _win32.is_elevated(api if api is not None else env.win32_api())
    except OSError as exc:
        return Check("elevation", True, "Npcap is restricted to administrators (AdminOnly=1) "
                     "and this process's elevation cannot be read: %s" % exc,
                     _fixes.ADMIN_ONLY, warning=True)
    if elevated:
        return Check("elevation", True, "Npcap is restricted to administrators (AdminOnly=1) "
                     "and this process is elevated", data={"elevated": True})
    # Not a failure by itself: Npcap asks for elevation when capturing starts.  The device
    # and self-test checks below say whether that was granted.
    return Check("elevation", True, "Npcap is restricted to administrators (AdminOnly=1) and "
                 "this process is not elevated: capturing starts Npcap's helper, whose User "
                 "Account Control prompt must be accepted", _fixes.ADMIN_ONLY,
                 warning=True, data={"elevated": False})


def parse_capabilities(status_text):
    """The effective capability mask from /proc/self/status text (``CapEff:`` hex), or None."""
    for line in (status_text or "").splitlines():
        if line.startswith("CapEff:"):
            try:
                return int(line.split(":", 1)[1].strip(), 16)
            except ValueError:
                return None
    return None


def posix_permission_fix(env):
    python = env.python_path()
    fix = _fixes.permission(env.platform, python)
    if env.platform != "darwin" and env.interpreter_is_shared():
        fix += ". " + _fixes.SHARED_INTERPRETER % python
    return fix


def check_privileges(env):
    """Linux/macOS: may this process capture?"""
    euid = env.geteuid()
    if euid == 0:
        return Check("privileges", True, "running as root (euid 0)", data={"euid": 0})
    status = env.proc_status()
    caps = parse_capabilities(status)
    data = {"euid": euid, "CapEff": None if caps is None else "%016x" % caps}
    if caps is None:
        if env.platform == "darwin" or status is None:
            ok = os.access("/dev/bpf0", os.R_OK) if env.platform == "darwin" else False
            return Check("privileges", ok, "running as uid %s%s" % (
                euid, ", /dev/bpf0 is readable" if ok else ", not root"),
                None if ok else posix_permission_fix(env), data=data)
        return Check("privileges", False, "running as uid %s and /proc/self/status has no "
                     "CapEff line" % euid, posix_permission_fix(env), data=data)
    raw, admin = bool(caps >> CAP_NET_RAW & 1), bool(caps >> CAP_NET_ADMIN & 1)
    if not raw:
        missing = " and ".join(["CAP_NET_RAW"] + ([] if admin else ["CAP_NET_ADMIN"]))
        return Check("privileges", False, "running as uid %s without %s (CapEff=%016x)"
                     % (euid, missing, caps), posix_permission_fix(env), data=data)
    # CAP_NET_RAW opens packet sockets; libpcap sets promiscuous mode through the packet
    # socket too, so CAP_NET_ADMIN adds nothing here (the self-test below measures it).
    detail = "running as uid %s with CAP_NET_RAW%s" % (
        euid, " and CAP_NET_ADMIN" if admin else " (CAP_NET_ADMIN is not needed: libpcap sets "
        "promiscuous mode through the packet socket)")
    if env.interpreter_is_shared():
        python = env.python_path()
        return Check("privileges", True, detail, "The capabilities come with " + python +
                     ". " + _fixes.SHARED_INTERPRETER % python, warning=True, data=data)
    return Check("privileges", True, detail, data=data)


def _open_fix(env, exc):
    if isinstance(exc, PermissionError):
        if env.windows:
            return _fixes.ADMIN_ONLY
        return posix_permission_fix(env)
    if env.windows:
        return _fixes.npcap_service()
    return "Check that the interface exists and is up ('ip link show'); then rerun this check"


def check_devices(env, library, install=None):
    """One check per device udpcap_ctypes would open, plus the loopback device on Windows."""
    checks = []
    try:
        devices = env.find_devices(library)
    except OSError as exc:
        return [Check("devices", False, "cannot list capture devices: %s" % exc,
                      _open_fix(env, exc))]
    usable = [d for d in devices if d.ipv4 or d.loopback]
    others = [d.name for d in devices if d not in usable]
    loopbacks = [d for d in usable if d.loopback]
    if env.windows:
        from . import _win32
        names = _win32.loopback_device_names(install)
        if not loopbacks:
            checks.append(Check("loopback device", False,
                                "%s is not among the capture devices: the Npcap loopback "
                                "adapter is missing or its driver did not start"
                                % " / ".join(names),
                                _fixes.npcap_service(_compat(install)) + "; if it is still "
                                "missing: " + _fixes.REINSTALL_NPCAP_WITH_LOOPBACK,
                                data={"expected": names}))
        else:
            checks.append(Check("loopback device", True, "%s is present" % loopbacks[0].name))
    elif not loopbacks:
        checks.append(Check("loopback device", False, "no loopback capture device (lo)",
                            "Bring the loopback interface up: 'ip link set lo up'"))
    if not usable:
        checks.append(Check("devices", False, "no capture device with an IPv4 address was found",
                            _open_fix(env, OSError())))
    for device in usable:
        addresses = ", ".join(ip_text(a) for a, _m, _b in device.ipv4) or "no IPv4 address"
        desc = " (%s)" % device.description if device.description else ""
        label = "device %s" % device.name
        data = {"name": device.name, "description": device.description,
                "ipv4": [ip_text(a) for a, _m, _b in device.ipv4],
                "loopback": device.loopback}
        try:
            linktype = env.probe_device(library, device)
        except OSError as exc:
            data["error"] = str(exc)
            checks.append(Check(label, False, "%s%s; cannot be opened: %s"
                                % (addresses, desc, exc), _open_fix(env, exc),
                                data=data))
            continue
        data["linktype"] = linktype
        checks.append(Check(label, True, "%s%s, link type %s, opened"
                            % (addresses, desc, linktype), data=data))
    if others:
        checks.append(Check("other devices", True, "not used (no IPv4 address): %s"
                            % ", ".join(others), data={"names": others}))
    return checks


# --------------------------------------------------------------------------------------------
# Self-test

def summarize(count, sequences, latencies_ns, nbytes):
    """Statistics of a self-test: *sequences* in arrival order, latencies in ns."""
    seen = set()
    duplicates = 0
    for seq in sequences:
        if seq in seen:
            duplicates += 1
        seen.add(seq)
    in_order = all(a < b for a, b in zip(sequences, sequences[1:]))
    lat = sorted(latencies_ns)
    p50 = percentile(lat, 0.50)
    p99 = percentile(lat, 0.99)
    return {"sent": count, "received": len(seen), "missing": count - len(seen & set(
        range(count))), "duplicates": duplicates, "in_order": in_order, "bytes": nbytes,
        "latency_p50_us": None if p50 is None else round(p50 / 1000.0, 1),
        "latency_p99_us": None if p99 is None else round(p99 / 1000.0, 1)}


def _sender(address, count, nonce, interval, errors, multicast_if=None,
            family=socket.AF_INET):
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if multicast_if is not None:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
                if multicast_if:
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                                    socket.inet_aton(multicast_if))
            pad = b"\0" * (PAYLOAD_SIZE - _HEADER.size)
            next_time = time.perf_counter()
            for seq in range(count):
                delay = next_time - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                next_time += interval
                sock.sendto(_HEADER.pack(_MAGIC, nonce, seq, time.perf_counter_ns()) + pad,
                            address)
        finally:
            sock.close()
    except OSError as exc:
        errors.append(exc)


def run_self_test(env, bind_host, dest_host, count, group=None, multicast_if=None,
                  interval=SEND_INTERVAL, grace=RECEIVE_GRACE, family=socket.AF_INET):
    """Send *count* datagrams to a UdpcapSocket of this process; return a result dict.

    The dict has the :func:`summarize` keys plus ``port``, ``filters``, ``statistics`` and
    ``error`` (the exception text when the socket could not be opened or sending failed).
    """
    result = {"port": None, "filters": {}, "readers": {}, "statistics": {}, "error": None,
              "error_type": None}
    nonce = int.from_bytes(os.urandom(4), "big")
    sequences, latencies = [], []
    nbytes = 0
    sock = None
    try:
        sock = env.udpcap_socket(family)
        if group:
            sock.join_multicast_group(group)
        sock.bind((bind_host, 0))                # port 0: a free port, as with a socket
        port = sock.getsockname()[1]
        result["port"] = port
        result["filters"] = sock.filter_expressions()
        result["readers"] = sock.capture_readers()
        errors = []
        sender = threading.Thread(target=_sender, name="udpcap-check-sender",
                                  args=((dest_host, port), count, nonce, interval, errors,
                                        multicast_if if group else None, family),
                                  daemon=True)
        buf = bytearray(65536)
        sender.start()
        deadline = None
        while len(sequences) < count:
            if deadline is None and not sender.is_alive():
                deadline = time.monotonic() + grace
            timeout = 0.05 if deadline is None else deadline - time.monotonic()
            if timeout <= 0:
                break
            sock.settimeout(timeout)
            try:
                n, _ = sock.recvfrom_into(buf)
            except socket.timeout:
                continue
            now = time.perf_counter_ns()
            if n < _HEADER.size:
                continue
            magic, their_nonce, seq, sent = _HEADER.unpack_from(buf)
            if magic != _MAGIC or their_nonce != nonce:
                continue
            sequences.append(seq)
            latencies.append(now - sent)
            nbytes += n
        sender.join(5)
        if errors:
            result["error"] = "sending failed: %s" % errors[0]
            result["error_type"] = type(errors[0]).__name__
        result["statistics"] = sock.statistics()
    except OSError as exc:
        result["error"] = str(exc)
        result["error_type"] = type(exc).__name__
    finally:
        if sock is not None:
            sock.close()
    result.update(summarize(count, sequences, latencies, nbytes))
    return result


def _self_test_fix(env, result, multicast=False):
    error_type = result.get("error_type")
    if error_type == "PermissionError":
        return _open_fix(env, PermissionError())
    if error_type == "CaptureUnavailableError":
        return split_fix(result["error"])[1] or _fixes.install(env.platform)
    drops = result.get("statistics", {}).get("capture_drops", 0)
    if drops:
        return ("The capture buffer overflowed (%d frames dropped): close other capture "
                "programs and rerun; a busy machine may need a larger receive buffer "
                "(set_receive_buffer_size)" % drops)
    if env.windows:
        return ("Check that Npcap was installed with 'Support loopback traffic' and that "
                "\\Device\\NPF_Loopback opens (see above); " + _fixes.npcap_service())
    if multicast:
        return ("Check that the interface has a multicast route ('ip route add 224.0.0.0/4 "
                "dev IFACE') and pass its address with --interface")
    return ("Check that lo is up ('ip link set lo up') and that no other capture tool or "
            "firewall rule drops loopback traffic; rerun with --verbose and report the output")


def check_self_test(env, count, bind_host="127.0.0.1", dest_host="127.0.0.1", group=None,
                    multicast_if=None, name="self-test"):
    result = run_self_test(env, bind_host, dest_host, count, group=group,
                           multicast_if=multicast_if)
    return self_test_check(env, result, name=name, target=group or dest_host,
                           multicast=group is not None)


def check_self_test6(env, count, name="IPv6 self-test"):
    """The self-test over IPv6 loopback (::1).  A machine without IPv6 gets a warning on this
    line, not a failure: IPv4 receiving does not need it."""
    missing = env.ipv6_loopback()
    if missing:
        return Check(name, True, "not run: %s" % missing,
                     "Only needed for UdpcapSocket(AF_INET6): enable IPv6 on the loopback "
                     "interface", warning=True)
    result = run_self_test(env, "::1", "::1", count, family=socket.AF_INET6)
    return self_test_check(env, result, name=name, target="[::1]")


def self_test_check(env, result, name="self-test", target="127.0.0.1", multicast=False):
    """The :class:`Check` for a :func:`run_self_test` result."""
    port = result.get("port")
    where = "%s:%s" % (target, port) if port else target
    verbose = ["BPF filter on %s: %s" % item for item in sorted(result["filters"].items())]
    verbose += ["reader on %s: %s" % item
                for item in sorted((result.get("readers") or {}).items())]
    stats = result.get("statistics") or {}
    if stats:
        verbose.append("statistics: frames %d, delivered %d, not for us %d, malformed %d, "
                       "capture drops %d" % (stats.get("frames", 0), stats.get("delivered", 0),
                                             stats.get("not_for_us", 0),
                                             stats.get("malformed_total", 0),
                                             stats.get("capture_drops", 0)))
    data = {key: value for key, value in result.items() if key != "statistics"}
    data["statistics"] = stats
    if result["error"] and not result["received"]:
        return Check(name, False, "cannot receive on %s: %s" % (where, result["error"]),
                     _self_test_fix(env, result, multicast), data=data, verbose=verbose)
    text = "%d/%d datagrams received on %s (%d bytes), %s, %d duplicates" % (
        result["received"], result["sent"], where, result["bytes"],
        "in order" if result["in_order"] else "OUT OF ORDER", result["duplicates"])
    if result["latency_p50_us"] is not None:
        text += ", latency p50 %.0f µs, p99 %.0f µs" % (result["latency_p50_us"],
                                                       result["latency_p99_us"])
    ok = (result["missing"] == 0 and result["duplicates"] == 0 and result["error"] is None)
    if ok:
        return Check(name, True, text, data=data, verbose=verbose)
    if result["missing"]:
        text += "; %d missing" % result["missing"]
    if result["error"]:
        text += "; %s" % result["error"]
    if result["duplicates"] and not result["missing"]:
        fix = ("Each datagram must arrive once: duplicates mean a device is captured twice; "
               "rerun with --verbose and report the output")
    else:
        fix = _self_test_fix(env, result, multicast)
    return Check(name, False, text, fix, data=data, verbose=verbose)


# --------------------------------------------------------------------------------------------
# Everything together

def _guard(name, func, *args):
    """Run one check function; turn an unexpected exception into a failing check."""
    try:
        return func(*args)
    except Exception as exc:          # a diagnostic tool never ends in a traceback
        log.debug("check %s failed", name, exc_info=True)
        return Check(name, False, "the check itself failed: %s: %s" % (type(exc).__name__, exc),
                     "Rerun with --verbose and report the output to the udpcap_ctypes "
                     "maintainers")


def run_checks(env=None, options=None):
    """Every check for this machine, in report order (a list of :class:`Check`)."""
    env = env or Environment()
    options = options or Options()
    checks = []
    lib_checks, library = check_library(env)
    checks.extend(lib_checks)
    if options.verbose:
        attempts = _guard("library search", env.library_attempts)
        if isinstance(attempts, Check):
            checks.append(attempts)
        else:
            checks[0].verbose.extend("library search: %s" % line for line in attempts)
    install = None
    if env.windows:
        result = _guard("Npcap", check_windows, env, library)
        if isinstance(result, Check):
            checks.append(result)
        else:
            checks.extend(result[0])
            install = result[1]
    else:
        checks.append(_guard("privileges", check_privileges, env))
    if library is None:
        checks.append(Check("self-test", False, "not run: no capture library",
                            "See 'capture library' above"))
        return checks
    devices = _guard("devices", check_devices, env, library, install)
    checks.extend([devices] if isinstance(devices, Check) else devices)
    if options.self_test:
        checks.append(_guard("self-test", check_self_test, env, options.count))
        checks.append(_guard("IPv6 self-test", check_self_test6, env, options.count))
        if options.multicast:
            bind = options.interface or "0.0.0.0"
            checks.append(_guard("multicast self-test", check_self_test, env, options.count,
                                 bind, options.multicast, options.multicast,
                                 options.interface or "", "multicast self-test"))
    return checks


def overall_ok(checks):
    return bool(checks) and all(check.ok for check in checks)


# --------------------------------------------------------------------------------------------
# CLI

SYMBOLS = {"ok": "✓", "warn": "!", "fail": "✗"}
ASCII_SYMBOLS = {"ok": "[ok]", "warn": "[warn]", "fail": "[FAIL]"}


def symbols_for(stream):
    """✓/✗ when *stream* can encode them, else [ok]/[FAIL]."""
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        ("".join(SYMBOLS.values()) + "µ").encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return ASCII_SYMBOLS
    return SYMBOLS


def render_text(checks, verbose=False, symbols=SYMBOLS):
    """The report as lines of text."""
    lines = ["udpcap_ctypes check (Python %s, %s)" % (sys.version.split()[0], sys.platform)]
    for check in checks:
        state = "fail" if not check.ok else ("warn" if check.warning else "ok")
        lines.append("%s %s: %s" % (symbols[state], check.name, check.detail))
        if check.fix and state != "ok":
            lines.append("    fix: %s" % check.fix)
        if verbose:
            lines.extend("    %s" % line for line in check.verbose)
    failed = [check.name for check in checks if not check.ok]
    if failed:
        lines.append("%s receiving does NOT work here: fix %s (see above)"
                     % (symbols["fail"], ", ".join(failed)))
    else:
        lines.append("%s receiving works on this machine" % symbols["ok"])
    if symbols is ASCII_SYMBOLS:
        lines = [line.replace("µs", "us") for line in lines]
    return lines


def render_json(checks, verbose=False):
    from . import __version__
    return json.dumps({"ok": overall_ok(checks), "udpcap_ctypes": __version__,
                       "python": sys.version.split()[0], "platform": sys.platform,
                       "executable": sys.executable,
                       "checks": [check.as_dict(verbose) for check in checks]},
                      indent=2, sort_keys=False, default=str)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m udpcap_ctypes.check",
        description="Check whether this machine can receive UDP with udpcap_ctypes: capture "
                    "library, Npcap state (Windows), privileges, devices, and a live loopback "
                    "self-test.  Exits 0 only when receiving works.")
    parser.add_argument("--count", type=_positive, default=DEFAULT_COUNT,
                        help="datagrams in the self-test (default %d)" % DEFAULT_COUNT)
    parser.add_argument("--multicast", metavar="GROUP",
                        help="also run a multicast self-test on GROUP (e.g. 239.255.0.1)")
    parser.add_argument("--interface", metavar="ADDR",
                        help="with --multicast: the local interface address to send and "
                             "receive on (default: bind 0.0.0.0, route decides)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="add BPF filters and library search attempts; debug logging")
    return parser


def _validate(parser, args):
    if args.interface and not args.multicast:
        parser.error("--interface needs --multicast GROUP")
    for value, what in ((args.multicast, "--multicast"), (args.interface, "--interface")):
        if value is None:
            continue
        try:
            packed = socket.inet_aton(value)
        except OSError:
            parser.error("%s %r is not an IPv4 address" % (what, value))
        if what == "--multicast" and not 224 <= packed[0] <= 239:
            parser.error("--multicast %s is not a multicast address (224.0.0.0/4)" % value)


def main(argv=None, env=None, stdout=None):
    """Run the checks, print the report; return the exit code (0: receiving works)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _validate(parser, args)
    stdout = stdout or sys.stdout
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                            format="%(name)s: %(message)s")
    options = Options(count=args.count, multicast=args.multicast, interface=args.interface,
                      verbose=args.verbose)
    try:
        checks = run_checks(env, options)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:          # last resort: never a traceback
        log.debug("check failed", exc_info=True)
        checks = [Check("check", False, "%s: %s" % (type(exc).__name__, exc),
                        "Rerun with --verbose and report the output")]
    if args.json:
        print(render_json(checks, args.verbose), file=stdout)      # ensure_ascii: any stdout
    else:
        symbols = symbols_for(stdout)
        encoding = getattr(stdout, "encoding", None) or "ascii"
        for line in render_text(checks, args.verbose, symbols):
            if symbols is ASCII_SYMBOLS:       # e.g. a cp1252 console: never UnicodeEncodeError
                line = line.encode(encoding, "replace").decode(encoding)
            print(line, file=stdout)
    stdout.flush()
    return 0 if overall_ok(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
