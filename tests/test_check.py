"""``python -m udpcap_ctypes.check``: live runs on this machine, and the Windows branches.

Live tests (marker ``live``) run the real command as a subprocess: as root (exit 0, the
self-test line with counts, ``--json``), with a broken ``UDPCAP_CTYPES_LIBPCAP``, as user
``nobody`` without capabilities (non-zero, the PermissionError text naming setcap) and with only
CAP_NET_RAW+CAP_NET_ADMIN (exit 0), and ``--multicast`` inside test network namespaces only.

The Windows branches run on emulated Windows machines: tests/test_windows_emulated_check.py.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

import netns as nslib
from udpcap_ctypes import _loader, check

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
def test_check_live_ipv6_self_test_has_its_own_line(netns):
    proc = run_check(["--count", "40"], prefix=netns.exec_argv([]))
    assert proc.returncode == 0, _describe(proc)
    assert re.search(r"✓ IPv6 self-test: 40/40 datagrams received on \[::1\]:\d+ \(2560 bytes\)",
                     proc.stdout), _describe(proc)


@pytest.mark.live
def test_check_live_without_ipv6_warns_on_that_line_and_passes(netns):
    """A machine without IPv6 fails the IPv6 line only: a warning, the check still passes."""
    netns.run(["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"])
    netns.run(["sysctl", "-q", "-w", "net.ipv6.conf.lo.disable_ipv6=1"])
    proc = run_check(["--count", "20"], prefix=netns.exec_argv([]))
    assert proc.returncode == 0, _describe(proc)
    assert re.search(r"! IPv6 self-test: not run: ::1 is not configured", proc.stdout), \
        _describe(proc)
    assert "✓ self-test: 20/20" in proc.stdout
    assert proc.stdout.rstrip().endswith("✓ receiving works on this machine")


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
    assert "BPF filter on lo: " in verbose and "udp[2:2] = %d" % port in verbose
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
@pytest.mark.parametrize("caps", ["+net_raw,+net_admin", "+net_raw"])
def test_check_as_nobody_with_capabilities_passes_and_the_verdict_follows_the_self_test(
        nobody_tree, netns, caps):
    """Only CAP_NET_RAW is needed (libpcap sets promiscuous mode through the packet socket):
    with it alone the check used to print "receiving does NOT work" after both self-tests had
    passed.  The capabilities sit on a shared interpreter here, which the check points out."""
    python, directory = nobody_tree
    proc = run_check(["--count", "50"], env_extra={"PYTHONPATH": directory}, python=python,
                     cwd=directory, prefix=netns.exec_argv(
                         SETPRIV + ["--inh-caps=" + caps, "--ambient-caps=" + caps]))
    assert proc.returncode == 0, _describe(proc)
    if caps == "+net_raw":
        assert ("! privileges: running as uid 65534 with CAP_NET_RAW (CAP_NET_ADMIN is not "
                "needed: libpcap sets promiscuous mode through the packet socket)") in proc.stdout
    else:
        assert "! privileges: running as uid 65534 with CAP_NET_RAW and CAP_NET_ADMIN" \
            in proc.stdout
    assert ("    fix: The capabilities come with %s. Note: %s is a shared interpreter"
            % (os.path.realpath(python), os.path.realpath(python))) in proc.stdout
    assert "python3 -m venv --copies DIR" in proc.stdout
    assert "self-test: 50/50 datagrams received" in proc.stdout
    assert proc.stdout.rstrip().endswith("✓ receiving works on this machine")


@pytest.fixture
def venvs(nobody_tree):
    """Two venvs of the interpreter user nobody can run, in a folder nobody can read: a
    default one (python3 links to the shared interpreter) and one made with --copies (a
    private interpreter)."""
    python, directory = nobody_tree
    folder = tempfile.mkdtemp(prefix="udpcap-venvs-")
    try:
        os.chmod(folder, 0o755)
        made = {}
        for kind, extra in (("linked", []), ("copies", ["--copies"])):
            path = os.path.join(folder, kind)
            subprocess.run([python, "-m", "venv", "--without-pip"] + extra + [path],
                           check=True, timeout=120)
            made[kind] = os.path.join(path, "bin", "python3")
        subprocess.run(["chmod", "-R", "a+rX", folder], check=True)
        yield made, directory
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.live
@pytest.mark.parametrize("kind", ["linked", "copies"])
def test_the_setcap_advice_warns_about_a_shared_interpreter(venvs, netns, kind):
    """A default venv's python3 resolves to the system's interpreter: setcap there reaches
    every script.  Only ``venv --copies`` gives a private one, which the fix then names."""
    pythons, directory = venvs
    python = pythons[kind]
    proc = run_check(["--count", "5"], env_extra={"PYTHONPATH": directory}, python=python,
                     cwd=directory, prefix=netns.exec_argv(SETPRIV + ["--inh-caps=-all"]))
    assert proc.returncode != 0, _describe(proc)
    setcap = "sudo setcap cap_net_raw,cap_net_admin+eip %s" % os.path.realpath(python)
    assert setcap in proc.stdout
    shared = "is a shared interpreter" in proc.stdout
    assert shared is (kind == "linked"), _describe(proc)
    if kind == "copies":
        assert os.path.realpath(python) == python      # the venv's own file


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


def test_posix_permission_fix_names_the_real_python_path_for_setcap():
    fix = check.posix_permission_fix(check.Environment(platform="linux"))
    assert fix.split(": ", 1)[1].split(". ", 1)[0] == (
        "sudo setcap cap_net_raw,cap_net_admin+eip %s" % os.path.realpath(sys.executable))
