"""Live tests of the two environment rows of the semantics table: no usable capture library,
and no permission to capture.  Each runs a child Python against the real libpcap of this
machine with one thing taken away -- nothing is mocked:

* the library is hidden by bind-mounting /dev/null over it in a private mount namespace of the
  child only (``unshare --mount --propagation private``), so the loader's real search fails;
* ``UDPCAP_CTYPES_LIBPCAP`` pointed at a missing file / at a library that is not libpcap;
* the child runs as root but with CAP_NET_RAW and CAP_NET_ADMIN removed from its bounding set
  (``setpriv``), inside a test namespace, so libpcap's ``socket(AF_PACKET)`` gets EPERM.
"""

import os
import shutil
import subprocess
import sys

import pytest

from test_socket_support import nslib

pytestmark = pytest.mark.live

PROBE = r'''
import json, sys
import udpcap_ctypes
out = {}
try:
    sock = udpcap_ctypes.UdpcapSocket()
    out["created"] = True
    if len(sys.argv) > 1:
        sock.bind(("127.0.0.1", int(sys.argv[1])))
        out["bound"] = True
except Exception as exc:
    out["type"] = type(exc).__name__
    out["mro"] = [c.__name__ for c in type(exc).__mro__]
    out["errno"] = getattr(exc, "errno", None)
    out["message"] = str(exc)
print(json.dumps(out))
'''


def run_probe(argv_prefix=(), env=None, args=()):
    import json
    proc = subprocess.run(list(argv_prefix) + [sys.executable, "-c", PROBE] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60, env=nslib.python_env(env))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def libpcap_files():
    """Every real file the loader could find libpcap as (sonames resolved)."""
    from udpcap_ctypes._loader import get_library
    found = {os.path.realpath(get_library().path)}
    for directory in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib",
                      "/usr/lib64", "/usr/local/lib", "/lib"):
        if os.path.isdir(directory):
            for name in os.listdir(directory):
                if name.startswith("libpcap.so"):
                    found.add(os.path.realpath(os.path.join(directory, name)))
    return sorted(f for f in found if os.path.isfile(f))


def test_missing_capture_library_raises_capture_unavailable():
    """libpcap made unreadable for one child (empty file bind-mounted over it in the child's
    private mount namespace): UdpcapSocket() raises CaptureUnavailableError (an OSError)
    whose message says what was tried and how to install libpcap."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is needed to hide libpcap from a child process")
    mounts = " && ".join("mount --bind /dev/null %s" % path for path in libpcap_files())
    script = '%s && exec "$@"' % mounts
    result = run_probe(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                        "sh"])
    assert result.get("type") == "CaptureUnavailableError", result
    assert "OSError" in result["mro"] and "UdpcapError" in result["mro"]
    assert "libpcap" in result["message"]
    assert "install" in result["message"].lower()


@pytest.mark.parametrize("override, words", [
    ("/nonexistent/libpcap.so.1", ["/nonexistent/libpcap.so.1", "UDPCAP_CTYPES_LIBPCAP"]),
    ("libm.so.6", ["not a usable capture library", "pcap_create", "UDPCAP_CTYPES_LIBPCAP"]),
], ids=["missing-file", "not-libpcap"])
def test_unusable_capture_library_override(override, words):
    """UDPCAP_CTYPES_LIBPCAP naming a missing file, or a real library that is not libpcap
    (the C math library): CaptureUnavailableError naming the variable and what is wrong."""
    if override == "libm.so.6":
        import ctypes.util
        override = ctypes.util.find_library("m") or override
    result = run_probe(env={"UDPCAP_CTYPES_LIBPCAP": override})
    assert result.get("type") == "CaptureUnavailableError", result
    for word in words:
        assert word in result["message"], (word, result["message"])


def test_no_permission_to_capture_raises_permission_error(netns):
    """Root without CAP_NET_RAW/CAP_NET_ADMIN (bounding set cleared by setpriv), in a test
    namespace: creating the socket works (no capture yet); bind() raises PermissionError
    (errno EPERM, an OSError) whose message names root / CAP_NET_RAW+CAP_NET_ADMIN."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop capabilities")
    drop = ["setpriv", "--bounding-set", "-net_raw,-net_admin",
            "--inh-caps", "-net_raw,-net_admin"]
    result = run_probe(netns.exec_argv(drop), args=["15400"])
    assert result.get("created") is True, result
    assert result.get("type") == "PermissionError", result
    assert result["errno"] == 1
    assert "OSError" in result["mro"]
    assert "CAP_NET_RAW" in result["message"] and "root" in result["message"]
    # The same probe with the capabilities intact binds: the failure above is the permission.
    assert run_probe(netns.exec_argv([]), args=["15400"]).get("bound") is True
