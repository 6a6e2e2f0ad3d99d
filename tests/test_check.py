"""``python -m udpcap_ctypes.check``: live runs on this machine, and the Windows branches.

Live tests (marker ``live``) run the real command as a subprocess: as root (exit 0, the
self-test line with counts, ``--json``), with a broken ``UDPCAP_CTYPES_LIBPCAP``, as user
``nobody`` without capabilities (non-zero, the PermissionError text naming setcap) and with only
CAP_NET_RAW+CAP_NET_ADMIN (exit 0), and ``--multicast`` inside test network namespaces only.

Tests named ``standin`` run the Windows branches on Linux against a stand-in OS layer: recorded
registry values read through the real ``_win32.read_npcap_registry``, a stand-in Win32 API
answering the service-manager and token calls made by the real ``_win32.service_state`` and
``_win32.is_elevated``, a stand-in capture library object, and recorded device lists.
"""

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

import netns as nslib
from udpcap_ctypes import CaptureUnavailableError, _loader, _win32
from udpcap_ctypes import check
from udpcap_ctypes._capture import Device

REPO = nslib.REPO
NOBODY = 65534
SETPRIV = ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups"]
SELF_TEST_RE = re.compile(r"self-test: (\d+)/(\d+) datagrams received on 127\.0\.0\.1:\d+ "
                          r"\((\d+) bytes\), in order, 0 duplicates, latency p50 \d+ µs, "
                          r"p99 \d+ µs")


def run_check(args=(), env_extra=None, timeout=60, python=None, cwd=REPO, prefix=()):
    env = dict(os.environ)
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop(_loader.ENV_OVERRIDE, None)
    if env_extra:
        env.update(env_extra)
    argv = list(prefix) + [python or sys.executable, "-m", "udpcap_ctypes.check"] + list(args)
    return subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout)


def _describe(proc):
    return "exit %d\n--- stdout\n%s\n--- stderr\n%s" % (proc.returncode, proc.stdout,
                                                        proc.stderr)


# --------------------------------------------------------------------------------------------
# Live: the real command, run inside a test-created namespace so that its device probe sees only
# that namespace's own lo, never the machine's real interfaces.

@pytest.mark.live
def test_check_live_exit_0_with_self_test_counts(netns):
    proc = run_check(prefix=netns.exec_argv([]))
    assert proc.returncode == 0, _describe(proc)
    match = SELF_TEST_RE.search(proc.stdout)
    assert match, _describe(proc)
    received, sent, nbytes = map(int, match.groups())
    assert received == sent == check.DEFAULT_COUNT
    assert nbytes == sent * check.PAYLOAD_SIZE
    assert "✓ capture library: libpcap: libpcap version" in proc.stdout
    assert "✓ privileges: running as root (euid 0)" in proc.stdout
    assert re.search(r"✓ device lo: 127\.0\.0\.1, link type \w+, opened", proc.stdout)
    assert proc.stdout.rstrip().endswith("✓ receiving works on this machine")
    assert "✗" not in proc.stdout and "Traceback" not in proc.stderr


@pytest.mark.live
def test_check_live_json_ok_with_count_and_verbose_filters(netns):
    proc = run_check(["--json", "--count", "50", "--verbose"], prefix=netns.exec_argv([]))
    assert proc.returncode == 0, _describe(proc)
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    by_name = {c["name"]: c for c in report["checks"]}
    for entry in report["checks"]:
        assert set(entry) >= {"name", "ok", "detail", "fix"}
        assert entry["ok"] is True, entry
    selftest = by_name["self-test"]["data"]
    assert (selftest["sent"], selftest["received"], selftest["missing"],
            selftest["duplicates"], selftest["in_order"]) == (50, 50, 0, 0, True)
    assert selftest["bytes"] == 50 * check.PAYLOAD_SIZE
    assert 0 < selftest["latency_p50_us"] <= selftest["latency_p99_us"]
    port = selftest["port"]
    verbose = "\n".join(by_name["self-test"]["verbose"])
    assert "BPF filter on lo: " in verbose and "dst port %d" % port in verbose
    assert any("loaded" in line for line in by_name["capture library"]["verbose"])


@pytest.mark.live
def test_check_live_python_m_package_is_the_check(netns):
    proc = subprocess.run(netns.exec_argv([sys.executable, "-m", "udpcap_ctypes", "--json",
                                           "--count", "20"]),
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60)
    assert proc.returncode == 0, _describe(proc)
    assert json.loads(proc.stdout)["ok"] is True


@pytest.mark.live
def test_check_live_ascii_stdout_falls_back_to_ok_fail_words(netns):
    proc = run_check(["--count", "20"], env_extra={"PYTHONIOENCODING": "ascii"},
                     prefix=netns.exec_argv([]))
    assert proc.returncode == 0, _describe(proc)
    assert "[ok] self-test: 20/20 datagrams received" in proc.stdout
    assert "✓" not in proc.stdout and " us, p99 " in proc.stdout


def test_check_broken_library_override_exits_nonzero_naming_variable_and_fix():
    proc = run_check(env_extra={_loader.ENV_OVERRIDE: "/nonexistent/libpcap.so"})
    assert proc.returncode != 0, _describe(proc)
    out = proc.stdout
    assert "✗ capture library: cannot load the capture library /nonexistent/libpcap.so" in out
    assert ("    fix: UDPCAP_CTYPES_LIBPCAP='/nonexistent/libpcap.so' is set: point it at a "
            "capture library or unset it") in out
    assert "✗ self-test: not run: no capture library" in out
    assert "Traceback" not in proc.stderr
    proc = run_check(["--json"], env_extra={_loader.ENV_OVERRIDE: "/nonexistent/libpcap.so"})
    report = json.loads(proc.stdout)
    assert proc.returncode != 0 and report["ok"] is False
    library = report["checks"][0]
    assert library["name"] == "capture library" and library["ok"] is False
    assert "UDPCAP_CTYPES_LIBPCAP" in library["fix"]


# --- unprivileged runs as user nobody -------------------------------------------------------

def _nobody_can_run(python, cwd):
    probe = subprocess.run(SETPRIV + ["--inh-caps=-all", python, "-c",
                                      "import ctypes, json, argparse, threading"],
                           cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=30)
    return probe.returncode == 0


@pytest.fixture
def nobody_tree():
    """``(python, directory)``: a copy of udpcap_ctypes that user nobody can read and a Python
    that nobody can execute (the repository may live under an unreadable /root)."""
    if os.geteuid() != 0:
        pytest.skip("switching to user nobody needs root")
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv is missing: apt-get install util-linux")
    directory = tempfile.mkdtemp(prefix="udpcap-check-")
    try:
        os.chmod(directory, 0o755)
        shutil.copytree(os.path.join(REPO, "udpcap_ctypes"),
                        os.path.join(directory, "udpcap_ctypes"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        for root, dirs, files in os.walk(directory):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)
        candidates = [os.path.realpath(sys.executable), "/usr/bin/python3",
                      "/usr/local/bin/python3"]
        for python in candidates:
            if os.path.exists(python) and _nobody_can_run(python, directory):
                yield python, directory
                return
        pytest.fail("no Python interpreter that user nobody can execute (tried %s): install "
                    "Debian's python3 (apt-get install python3)" % ", ".join(candidates))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.live
def test_check_as_nobody_without_capabilities_fails_with_permission_error_and_setcap(
        nobody_tree, netns):
    python, directory = nobody_tree
    prefix = netns.exec_argv(SETPRIV + ["--inh-caps=-all"])
    extra = {"PYTHONPATH": directory}
    proc = run_check(["--count", "20"], env_extra=extra, python=python, cwd=directory,
                     prefix=prefix)
    assert proc.returncode != 0, _describe(proc)
    out = proc.stdout
    real_python = os.path.realpath(python)
    assert re.search(r"✗ privileges: running as uid 65534 without CAP_NET_RAW and "
                     r"CAP_NET_ADMIN \(CapEff=0+\)", out), out
    assert "fix: Run as root (sudo), or grant the interpreter the capabilities once: sudo " \
           "setcap cap_net_raw,cap_net_admin+eip %s" % real_python in out
    assert re.search(r"✗ device lo: 127\.0\.0\.1; cannot be opened: .*Operation not "
                     r"permitted.*setcap cap_net_raw,cap_net_admin\+eip", out), out
    assert re.search(r"✗ self-test: cannot receive on 127\.0\.0\.1: .*setcap", out), out
    assert "Traceback" not in proc.stderr

    proc = run_check(["--json", "--count", "20"], env_extra=extra, python=python,
                     cwd=directory, prefix=prefix)
    report = json.loads(proc.stdout)
    assert proc.returncode != 0 and report["ok"] is False
    selftest = [c for c in report["checks"] if c["name"] == "self-test"][0]
    assert selftest["data"]["error_type"] == "PermissionError"
    assert "setcap" in selftest["data"]["error"] and "setcap" in selftest["fix"]


@pytest.mark.live
def test_check_as_nobody_with_only_net_raw_and_net_admin_capabilities_passes(nobody_tree,
                                                                             netns):
    python, directory = nobody_tree
    caps = "+net_raw,+net_admin"
    proc = run_check(["--count", "50"], env_extra={"PYTHONPATH": directory}, python=python,
                     cwd=directory, prefix=netns.exec_argv(
                         SETPRIV + ["--inh-caps=" + caps, "--ambient-caps=" + caps]))
    assert proc.returncode == 0, _describe(proc)
    assert "✓ privileges: running as uid 65534 with CAP_NET_RAW and CAP_NET_ADMIN" \
        in proc.stdout
    assert "self-test: 50/50 datagrams received" in proc.stdout


# --- multicast: only inside test-created namespaces ------------------------------------------

@pytest.mark.live
def test_check_multicast_self_test_inside_namespace_pair(netpair):
    ns = netpair.a
    argv = [sys.executable, "-m", "udpcap_ctypes.check", "--count", "100", "--json",
            "--multicast", "239.255.0.1", "--interface", netpair.addr_a]
    proc = ns.run(argv, timeout=60, check=False, env=nslib.python_env())
    assert proc.returncode == 0, _describe(proc)
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["device veth-a"]["ok"] is True
    data = by_name["multicast self-test"]["data"]
    assert (data["sent"], data["received"], data["missing"], data["duplicates"]) == \
        (100, 100, 0, 0)
    assert "239.255.0.1:" in by_name["multicast self-test"]["detail"]
    assert "eth0" not in proc.stdout          # the namespace sees only its own interfaces


@pytest.mark.live
def test_check_multicast_text_without_interface_inside_namespace_pair(netpair):
    argv = [sys.executable, "-m", "udpcap_ctypes.check", "--count", "50",
            "--multicast", "239.255.0.1"]
    proc = netpair.b.run(argv, timeout=60, check=False, env=nslib.python_env())
    assert proc.returncode == 0, _describe(proc)
    assert re.search(r"✓ multicast self-test: 50/50 datagrams received on "
                     r"239\.255\.0\.1:\d+ \(3200 bytes\), in order, 0 duplicates",
                     proc.stdout), proc.stdout


def test_check_rejects_bad_multicast_arguments_without_running():
    for args in (["--multicast", "10.0.0.1"], ["--interface", "127.0.0.1"],
                 ["--multicast", "nonsense"], ["--count", "0"]):
        proc = run_check(args)
        assert proc.returncode == 2, _describe(proc)
        assert "Traceback" not in proc.stderr and "error:" in proc.stderr


# --------------------------------------------------------------------------------------------
# Pure pieces

def test_parse_capabilities_reads_cap_eff_hex_mask():
    text = "Name:\tpython3\nCapInh:\t0000000000000000\nCapEff:\t0000000000003000\n"
    caps = check.parse_capabilities(text)
    assert caps == 0x3000
    assert caps >> check.CAP_NET_RAW & 1 and caps >> check.CAP_NET_ADMIN & 1
    only_raw = check.parse_capabilities("CapEff:\t0000000000002000\n")
    assert only_raw >> check.CAP_NET_RAW & 1 and not only_raw >> check.CAP_NET_ADMIN & 1
    assert check.parse_capabilities("Name: x\n") is None
    assert check.parse_capabilities("CapEff:\tzz\n") is None


def test_parse_capabilities_on_this_process_as_root_has_both():
    with open("/proc/self/status") as f:
        caps = check.parse_capabilities(f.read())
    assert caps is not None
    if os.geteuid() == 0:
        assert caps >> check.CAP_NET_RAW & 1 and caps >> check.CAP_NET_ADMIN & 1


def test_summarize_counts_missing_duplicates_order_and_percentiles():
    result = check.summarize(5, [0, 2, 1, 2], [1000, 2000, 3000, 100000], 256)
    assert result["received"] == 3 and result["missing"] == 2
    assert result["duplicates"] == 1 and result["in_order"] is False
    assert result["bytes"] == 256
    assert result["latency_p50_us"] == 2.0 and result["latency_p99_us"] == 100.0
    clean = check.summarize(3, [0, 1, 2], [5000, 5000, 5000], 192)
    assert (clean["missing"], clean["duplicates"], clean["in_order"]) == (0, 0, True)
    empty = check.summarize(3, [], [], 0)
    assert empty["missing"] == 3 and empty["latency_p50_us"] is None


def test_self_test_check_fails_on_missing_with_fix():
    result = dict(check.summarize(10, list(range(7)), [1000] * 7, 448), port=5000,
                  filters={}, statistics={"capture_drops": 3}, error=None, error_type=None)
    verdict = check.self_test_check(check.Environment(platform="linux"), result)
    assert verdict.ok is False
    assert "7/10 datagrams received" in verdict.detail and "3 missing" in verdict.detail
    assert "3 frames dropped" in verdict.fix


def test_split_fix_separates_problem_and_fix():
    assert check.split_fix("x is wrong. Fix: do y") == ("x is wrong", "do y")
    assert check.split_fix("no fix here") == ("no fix here", None)


# --------------------------------------------------------------------------------------------
# Windows branches against a stand-in OS layer

class StandinRegistry:
    """Recorded HKLM values: ``{subkey: {name: data}}``; absent subkeys read as None."""

    def __init__(self, keys):
        self.keys = keys

    def read_values(self, subkey):
        values = self.keys.get(subkey)
        return None if values is None else dict(values)


class StandinWin32Api:
    """Answers the calls of ``_win32.service_state`` / ``_win32.is_elevated``."""

    def __init__(self, services, elevated):
        self.services = services            # name -> dwCurrentState
        self.elevated = elevated
        self.open_handles = set()

    def open_sc_manager(self, access):
        self.open_handles.add("scm")
        return "scm"

    def open_service(self, manager, name, access):
        if name not in self.services:
            raise _win32.win_error("OpenServiceW(%r)" % name,
                                   _win32.ERROR_SERVICE_DOES_NOT_EXIST)
        self.open_handles.add(name)
        return name

    def query_service_status(self, service):
        status = _win32.SERVICE_STATUS()
        status.dwCurrentState = self.services[service]
        return status

    def close_service_handle(self, handle):
        self.open_handles.discard(handle)

    def get_current_process(self):
        return "process"

    def open_process_token(self, process, access):
        self.open_handles.add("token")
        return "token"

    def token_elevation(self, token):
        return 1 if self.elevated else 0

    def close_handle(self, handle):
        self.open_handles.discard(handle)


class StandinPacketFns:
    def __init__(self, dll=b"1.79", driver=b"13.0.79"):
        self._dll, self._driver = dll, driver

    def PacketGetVersion(self):
        return self._dll

    def PacketGetDriverVersion(self):
        return self._driver


class StandinFns:
    """``pcap_lib_version`` only: the real CaptureLibrary constructor reads it."""

    def __init__(self, version):
        self._version = version

    def pcap_lib_version(self):
        return self._version


NPCAP_DIR = "C:\\Windows\\System32\\Npcap"
LOOPBACK = Device("\\Device\\NPF_Loopback", "Adapter for loopback traffic capture", 0x7, [])
ETHERNET = Device("\\Device\\NPF_{D4E3F0C2-1111-2222-3333-444455556666}", "Intel(R) Ethernet",
                  0x6, [(0xC0A8010A, 0xFFFFFF00, 0xC0A801FF)])


def standin_library(version=b"Npcap version 1.79, based on libpcap version 1.10.4",
                    packet=True):
    return _loader.CaptureLibrary("npcap", NPCAP_DIR + "\\wpcap.dll", StandinFns(version),
                                  NPCAP_DIR + "\\Packet.dll" if packet else None,
                                  StandinPacketFns() if packet else None, windows=True)


def npcap_registry(admin_only=0, loopback=1, compat=0, adapter=None, installed=True,
                   winpcap=False):
    keys = {}
    if installed:
        keys[_win32.NPCAP_SERVICE_KEY] = {"Start": 1}
        params = {"AdminOnly": admin_only, "LoopbackSupport": loopback,
                  "WinPcapCompatible": compat}
        if adapter is not None:
            params["LoopbackAdapter"] = adapter
        keys[_win32.NPCAP_PARAMETERS_KEY] = params
    if winpcap:
        keys[_win32.WINPCAP_SERVICE_KEY] = {"Start": 1}
    return keys


class StandinWindows(check.Environment):
    """A Windows machine as the checks see it (stand-in OS layer)."""

    def __init__(self, library=None, load_error=None, registry=None, services=None,
                 elevated=False, devices=(LOOPBACK, ETHERNET), probe_errors=None):
        super().__init__(platform="win32", environ={"SystemRoot": "C:\\Windows"})
        self.library = library if library is not None or load_error else standin_library()
        self.load_error = load_error
        self.keys = npcap_registry() if registry is None else registry
        self.api = StandinWin32Api({"npcap": 4} if services is None else services, elevated)
        self.devices = list(devices)
        self.probe_errors = probe_errors or {}
        self.probed = []

    def load_library(self):
        if self.load_error is not None:
            raise self.load_error
        return self.library

    def library_attempts(self):
        return ["%s: loaded" % self.library.path]

    def win32_api(self):
        return self.api

    def registry(self):
        return StandinRegistry(self.keys)

    def geteuid(self):
        raise AssertionError("the Windows branch must not ask for a POSIX euid")

    def find_devices(self, library):
        return list(self.devices)

    def probe_device(self, library, device):
        self.probed.append(device.name)
        error = self.probe_errors.get(device.name)
        if error is not None:
            raise error
        return "NULL" if "Loopback" in device.name else "EN10MB"

    def udpcap_socket(self):
        raise CaptureUnavailableError("stand-in: no Windows capture in this test")


def _checks(env, **kwargs):
    return check.run_checks(env, check.Options(self_test=False, **kwargs))


def _by_name(checks):
    return {c.name: c for c in checks}


def test_standin_windows_npcap_healthy_reports_versions_options_and_loopback():
    env = StandinWindows()
    checks = _checks(env)
    named = _by_name(checks)
    assert check.overall_ok(checks), checks
    assert named["capture library"].detail == (
        "Npcap: Npcap version 1.79, based on libpcap version 1.10.4, loaded from "
        "C:\\Windows\\System32\\Npcap\\wpcap.dll")
    assert named["Npcap service"].detail == "the npcap service is running"
    assert "Packet.dll 1.79" in named["Packet.dll"].detail
    assert "driver 13.0.79" in named["Packet.dll"].detail
    assert named["Npcap options"].detail == ("LoopbackSupport=1, LoopbackAdapter=not set, "
                                            "AdminOnly=0, WinPcapCompatible=0")
    assert named["loopback device"].detail == "\\Device\\NPF_Loopback is present"
    assert "link type NULL, opened" in named["device \\Device\\NPF_Loopback"].detail
    assert "192.168.1.10" in named["device " + ETHERNET.name].detail
    assert "privileges" not in named
    assert env.probed == [LOOPBACK.name, ETHERNET.name]
    assert env.api.open_handles == set()          # service and token handles closed
    lines = check.render_text(checks)
    assert lines[-1] == "✓ receiving works on this machine"


def test_standin_windows_npcap_absent_says_install_npcap():
    err = None
    try:
        _loader.load_library(_StandinLoaderOS())
    except CaptureUnavailableError as exc:
        err = exc
    assert err is not None
    env = StandinWindows(load_error=err, registry=npcap_registry(installed=False),
                         services={})
    checks = _checks(env)
    named = _by_name(checks)
    assert not check.overall_ok(checks)
    assert named["capture library"].ok is False
    assert "https://npcap.com/" in named["capture library"].fix
    assert "Support loopback traffic" in named["capture library"].fix
    assert named["Npcap installed"].ok is False
    assert "Npcap is not installed" in named["Npcap installed"].detail
    assert named["Npcap service"].detail == "the npcap service does not exist"
    assert named["self-test"].ok is False
    text = "\n".join(check.render_text(checks))
    assert "✗ Npcap installed:" in text and "fix: Install Npcap from https://npcap.com/" in text


def test_standin_windows_winpcap_only_mentions_uninstalling_it():
    env = StandinWindows(registry=npcap_registry(installed=False, winpcap=True), services={})
    named = _by_name(_checks(env))
    assert "only the WinPcap driver (npf) is present" in named["Npcap installed"].detail
    assert named["Npcap installed"].fix.endswith("after uninstalling WinPcap")


class _StandinLoaderOS(_loader.LoaderOS):
    """A Windows machine with no wpcap.dll anywhere (for the real loader)."""

    platform = "win32"
    environ = {"SystemRoot": "C:\\Windows"}

    @staticmethod
    def isfile(path):
        return False


def test_standin_windows_admin_only_without_elevation_fails_with_run_as_administrator():
    env = StandinWindows(registry=npcap_registry(admin_only=1), elevated=False)
    checks = _checks(env)
    elevation = _by_name(checks)["elevation"]
    assert elevation.ok is False and not check.overall_ok(checks)
    assert "AdminOnly=1" in elevation.detail and "not elevated" in elevation.detail
    assert "elevated prompt (Run as administrator)" in elevation.fix
    assert env.api.open_handles == set()


def test_standin_windows_admin_only_with_elevation_passes():
    env = StandinWindows(registry=npcap_registry(admin_only=1), elevated=True)
    checks = _checks(env)
    assert check.overall_ok(checks), checks
    assert "this process is elevated" in _by_name(checks)["elevation"].detail


def test_standin_windows_service_stopped_gives_sc_start_fix():
    env = StandinWindows(services={"npcap": 1})
    checks = _checks(env)
    service = _by_name(checks)["Npcap service"]
    assert service.ok is False and not check.overall_ok(checks)
    assert service.detail == "the npcap service is stopped, not running"
    assert "sc stop npcap, then sc start npcap" in service.fix
    assert "elevated prompt" in service.fix


def test_standin_windows_loopback_device_missing_gives_udpcap_hint():
    env = StandinWindows(devices=[ETHERNET], registry=npcap_registry(compat=1))
    checks = _checks(env)
    loop = _by_name(checks)["loopback device"]
    assert loop.ok is False and not check.overall_ok(checks)
    assert "\\Device\\NPF_Loopback is not among the capture devices" in loop.detail
    assert "elevated prompt" in loop.fix
    assert "sc stop npcap, then sc start npcap" in loop.fix
    assert "sc stop npf / sc start npf" in loop.fix          # WinPcap-compat mode
    assert "Support loopback traffic" in loop.fix


def test_standin_windows_legacy_loopback_adapter_from_registry_is_recognised():
    legacy = Device("\\Device\\NPF_{A1B2C3D4-0000-0000-0000-000000000001}", "Npcap Loopback",
                    0x6, [])
    env = StandinWindows(devices=[legacy, ETHERNET],
                         registry=npcap_registry(
                             adapter="\\Device\\{A1B2C3D4-0000-0000-0000-000000000001}"))
    named = _by_name(_checks(env))
    assert named["loopback device"].ok is True
    assert legacy.name in named["loopback device"].detail
    assert "LoopbackAdapter=\\Device\\{A1B2C3D4" in named["Npcap options"].detail


def test_standin_windows_loopback_support_off_fails():
    env = StandinWindows(registry=npcap_registry(loopback=0))
    options = _by_name(_checks(env))["Npcap options"]
    assert options.ok is False and "LoopbackSupport=0" in options.detail
    assert "Support loopback traffic" in options.fix


def test_standin_windows_winpcap_version_string_is_a_warning():
    env = StandinWindows(library=standin_library(b"WinPcap version 4.1.3 (packet.dll version "
                                                 b"4.1.0.2980)"))
    checks = _checks(env)
    library = _by_name(checks)["capture library"]
    assert env.library.kind == "winpcap"
    assert library.ok is True and library.warning is True
    assert "WinPcap is unmaintained" in library.detail and "cannot capture loopback" \
        in library.detail
    assert "install Npcap" in library.fix
    lines = check.render_text(checks)
    assert any(line.startswith("! capture library: WinPcap version 4.1.3") for line in lines)
    assert any(line.startswith("    fix: Uninstall WinPcap") for line in lines)
    ascii_lines = check.render_text(checks, symbols=check.ASCII_SYMBOLS)
    assert any(line.startswith("[warn] capture library:") for line in ascii_lines)


def test_standin_windows_access_denied_on_loopback_device_names_elevation():
    denied = PermissionError(13, "pcap_activate(\\Device\\NPF_Loopback): access denied")
    env = StandinWindows(probe_errors={LOOPBACK.name: denied})
    named = _by_name(_checks(env))
    device = named["device " + LOOPBACK.name]
    assert device.ok is False and "access denied" in device.detail
    assert "Run as administrator" in device.fix


def test_standin_windows_packet_dll_missing_is_a_warning_not_a_failure():
    env = StandinWindows(library=standin_library(packet=False))
    checks = _checks(env)
    packet = _by_name(checks)["Packet.dll"]
    assert packet.ok is True and packet.warning is True
    assert check.overall_ok(checks)


def test_standin_windows_main_json_and_ascii_console_exit_nonzero():
    env = StandinWindows(services={"npcap": 1})
    out = io.StringIO()
    code = check.main(["--json"], env=env, stdout=out)
    report = json.loads(out.getvalue())
    assert code == 1 and report["ok"] is False
    named = {c["name"]: c for c in report["checks"]}
    assert "sc start npcap" in named["Npcap service"]["fix"]
    assert named["self-test"]["ok"] is False            # stand-in has no capture
    assert "stand-in" in named["self-test"]["detail"]

    raw = io.BytesIO()
    console = io.TextIOWrapper(raw, encoding="cp1252")  # a Windows console: no ✓/✗
    code = check.main(["--count", "5"], env=StandinWindows(), stdout=console)
    text = raw.getvalue().decode("cp1252")
    assert code == 1
    assert "[ok] capture library: Npcap: Npcap version 1.79" in text
    assert "[FAIL] self-test:" in text and "✓" not in text


def test_standin_check_functions_never_raise_a_traceback():
    class Broken(StandinWindows):
        def registry(self):
            raise RuntimeError("registry exploded")

    checks = _checks(Broken())
    failed = [c for c in checks if not c.ok]
    assert failed and "registry exploded" in failed[0].detail
    assert "report" in failed[0].fix


def test_posix_permission_fix_names_the_real_python_path_for_setcap():
    fix = check.posix_permission_fix(check.Environment(platform="linux"))
    assert fix.split(": ", 1)[1] == ("sudo setcap cap_net_raw,cap_net_admin+eip %s"
                                     % os.path.realpath(sys.executable))
