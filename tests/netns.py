"""Network namespaces for live tests: private hosts on this machine, deleted afterwards.

Everything here lives inside namespaces this module creates; the root namespace's interfaces
are never touched (the veth pair is created directly inside the two namespaces with
``ip -n A link add ... peer ... netns B``, so it never exists in the root namespace).

* :class:`Namespace` -- ``ip netns add udpc-<pid>-<n>``, loopback up; ``run`` / ``popen`` /
  ``python`` execute inside it via ``ip netns exec``; ``delete()`` (also on ``with`` exit).
* :class:`NetPair` -- two namespaces ``a`` and ``b`` joined by a veth pair (MTU 1500 by
  default), addresses ``198.18.<n>.1/24`` and ``198.18.<n>.2/24`` (RFC 2544 benchmarking
  range), and a multicast route ``224.0.0.0/4 dev <veth>`` in each.
* :func:`in_namespace` -- run code of this thread in a namespace with ``setns(2)``, restoring
  the thread's original namespace on exit.  Sockets keep the namespace they were created in.

Cleanup is layered: ``try/finally`` in the fixtures, an ``atexit`` hook for anything still
alive, and :func:`sweep` (called by conftest at session start and end) which deletes our
leftovers and those of dead test processes -- only names with our prefix.
"""

import atexit
import contextlib
import ctypes
import ctypes.util
import errno
import itertools
import os
import re
import shutil
import subprocess
import sys
import threading

PREFIX = "udpc-"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_NAME_RE = re.compile(r"^%s(\d+)-(\d+)$" % re.escape(PREFIX))

_counter = itertools.count(1)
_lock = threading.Lock()
_alive = {}          # name -> Namespace, for the atexit hook


class NetnsError(RuntimeError):
    """An ``ip`` command failed; the message carries its output."""


def _ip(*args, check=True):
    proc = subprocess.run(["ip"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetnsError("ip %s failed (exit %d): %s" % (" ".join(args), proc.returncode,
                                                          proc.stderr.strip()))
    return proc


def unavailable_reason():
    """Why namespaces cannot be used here, or None when they can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root (run the tests as root, e.g. sudo bash .ci/run)"
    if shutil.which("ip") is None:
        return "the 'ip' command is missing: apt-get install iproute2"
    probe = _ip("netns", "list", check=False)
    if probe.returncode != 0:
        return "'ip netns' does not work here: %s" % probe.stderr.strip()
    return None


def _new_name():
    with _lock:
        return "%s%d-%d" % (PREFIX, os.getpid(), next(_counter))


def python_env(extra=None):
    """Environment for a child Python that must import udpcap_ctypes from this repository."""
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = REPO + (os.pathsep + old if old else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if extra:
        env.update(extra)
    return env


def python_argv(code_or_script, args=()):
    """argv that runs a script file (an existing ``.py`` path) or a code snippet."""
    text = os.fspath(code_or_script)
    if text.endswith(".py") and "\n" not in text and os.path.isfile(text):
        return [sys.executable, text] + [str(a) for a in args]
    return [sys.executable, "-c", text] + [str(a) for a in args]


class Namespace:
    """A network namespace of our own; loopback is up.  Use as a context manager."""

    def __init__(self, name=None):
        self.name = name or _new_name()
        if not self.name.startswith(PREFIX):
            raise ValueError("namespace names must start with %r" % PREFIX)
        self._procs = []
        self.deleted = False
        _ip("netns", "add", self.name)
        with _lock:
            _alive[self.name] = self
        try:
            self.ip("link", "set", "lo", "up")
        except Exception:
            self.delete()
            raise

    def __repr__(self):
        return "<Namespace %s%s>" % (self.name, " deleted" if self.deleted else "")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.delete()
        return False

    def exec_argv(self, argv):
        return ["ip", "netns", "exec", self.name] + [str(a) for a in argv]

    def ip(self, *args):
        """``ip -n <name> ...``: configure this namespace."""
        return _ip("-n", self.name, *args)

    def run(self, argv, timeout=30, check=True, env=None, input=None):
        """Run *argv* inside the namespace; returns the CompletedProcess (text output)."""
        proc = subprocess.run(self.exec_argv(argv), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout,
                              env=env, input=input)
        if check and proc.returncode != 0:
            raise NetnsError("in %s: %s exited %d\n--- stdout\n%s\n--- stderr\n%s"
                             % (self.name, " ".join(map(str, argv)), proc.returncode,
                                proc.stdout, proc.stderr))
        return proc

    def popen(self, argv, **kwargs):
        """Start *argv* inside the namespace; killed at the latest by :meth:`delete`."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("universal_newlines", True)
        proc = subprocess.Popen(self.exec_argv(argv), **kwargs)
        self._procs.append(proc)
        return proc

    def python(self, code_or_script, args=(), timeout=60, check=True, env=None):
        """Run a Python snippet or script inside the namespace with udpcap_ctypes importable."""
        return self.run(python_argv(code_or_script, args), timeout=timeout, check=check,
                        env=python_env(env))

    def python_popen(self, code_or_script, args=(), env=None, **kwargs):
        """Like :meth:`python` but in the background (returns the Popen)."""
        return self.popen(python_argv(code_or_script, args), env=python_env(env), **kwargs)

    def delete(self):
        """Kill what we started in it and delete the namespace.  Idempotent."""
        if self.deleted:
            return
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.communicate(timeout=5)
            except Exception:
                pass
        self._procs = []
        _ip("netns", "del", self.name, check=False)
        self.deleted = True
        with _lock:
            _alive.pop(self.name, None)


class NetPair:
    """Two namespaces ``a`` and ``b`` joined by a veth pair.

    Attributes: ``addr_a``/``addr_b`` ("198.18.n.1"/"198.18.n.2"), ``if_a``/``if_b`` (the
    veth interface inside each namespace), ``mtu``.
    """

    IF_A = "veth-a"
    IF_B = "veth-b"
    LINK_LOCAL_A = "fe80::a"
    LINK_LOCAL_B = "fe80::b"

    def __init__(self, mtu=1500, subnet=None, ipv6=False):
        """*ipv6*: also ULA addresses ``fd00:198:18:<n>::1/64`` and ``::2`` (``addr6_a``,
        ``addr6_b``) and the link-local ``fe80::a``/``fe80::b``, all ``nodad`` (usable at once;
        no other link-local address is generated), duplicate address detection off."""
        self.mtu = mtu
        n = next(_counter) % 256 if subnet is None else subnet
        self.addr_a = "198.18.%d.1" % n
        self.addr_b = "198.18.%d.2" % n
        self.addr6_a = "fd00:198:18:%x::1" % n
        self.addr6_b = "fd00:198:18:%x::2" % n
        self.if_a, self.if_b = self.IF_A, self.IF_B
        self.a = self.b = None
        try:
            self.a = Namespace()
            self.b = Namespace()
            # Created inside a, its peer inside b: no interface ever appears in the root netns.
            self.a.ip("link", "add", self.if_a, "mtu", str(mtu), "type", "veth",
                      "peer", "name", self.if_b, "mtu", str(mtu), "netns", self.b.name)
            for ns, ifname, addr in ((self.a, self.if_a, self.addr_a),
                                     (self.b, self.if_b, self.addr_b)):
                ns.ip("addr", "add", addr + "/24", "dev", ifname)
                if ipv6:
                    for key, value in (("accept_dad", "0"), ("addr_gen_mode", "1")):
                        ns.run(["sysctl", "-q", "-w",
                                "net.ipv6.conf.%s.%s=%s" % (ifname, key, value)])
                    six, local = ((self.addr6_a, self.LINK_LOCAL_A) if ns is self.a
                                  else (self.addr6_b, self.LINK_LOCAL_B))
                    ns.ip("-6", "addr", "add", six + "/64", "dev", ifname, "nodad")
                    ns.ip("-6", "addr", "add", local + "/64", "dev", ifname, "nodad")
                ns.ip("link", "set", ifname, "up")
                ns.ip("route", "add", "224.0.0.0/4", "dev", ifname)
        except Exception:
            self.delete()
            raise

    def add_link(self, if_a="vx-a", if_b="vx-b"):
        """One more veth between a and b (no multicast route), ``198.19.<n>.1`` in a and
        ``.2`` in b, with n the pair's own subnet number; returns the two addresses."""
        subnet = int(self.addr_a.split(".")[2])
        self.a.ip("link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns",
                  self.b.name)
        addresses = ("198.19.%d.1" % subnet, "198.19.%d.2" % subnet)
        for ns, ifname, address in ((self.a, if_a, addresses[0]), (self.b, if_b, addresses[1])):
            ns.ip("addr", "add", address + "/24", "dev", ifname)
            ns.ip("link", "set", ifname, "up")
        return addresses

    def __repr__(self):
        return "<NetPair %s(%s) <-> %s(%s) mtu %d>" % (
            self.a and self.a.name, self.addr_a, self.b and self.b.name, self.addr_b, self.mtu)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.delete()
        return False

    def delete(self):
        for ns in (self.a, self.b):
            if ns is not None:
                ns.delete()


_libc = None


def _setns(fd):
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
        _libc.setns.restype = ctypes.c_int
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "setns: %s" % os.strerror(err))


@contextlib.contextmanager
def in_namespace(name):
    """Move the calling *thread* into network namespace *name*; move it back on exit.

    ``setns(CLONE_NEWNET)`` changes only the calling thread, so other threads are unaffected.
    Sockets (and pcap handles) created inside stay in that namespace after the block.
    """
    if isinstance(name, Namespace):
        name = name.name
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            try:
                _setns(original)
            except OSError as exc:     # cannot happen as root; never continue in the wrong netns
                sys.stderr.write("FATAL: could not return to the original netns: %s\n" % exc)
                os._exit(70)
    finally:
        os.close(original)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def our_namespaces():
    """Names of existing namespaces with our prefix, as ``(name, pid)``."""
    proc = _ip("netns", "list", check=False)
    found = []
    for line in proc.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NAME_RE.match(name)
        if match:
            found.append((name, int(match.group(1))))
    return found


def sweep(include_own=True):
    """Delete leftovers: our own (this pid) and those of test processes that no longer run."""
    removed = []
    for name, pid in our_namespaces():
        if pid == os.getpid():
            if not include_own:
                continue
        elif _pid_alive(pid):
            continue       # another live test run owns it
        with _lock:
            ns = _alive.get(name)
        if ns is not None:
            ns.delete()
        else:
            _ip("netns", "del", name, check=False)
        removed.append(name)
    return removed


def _atexit_cleanup():
    with _lock:
        alive = list(_alive.values())
    for ns in alive:
        try:
            ns.delete()
        except Exception:
            pass


atexit.register(_atexit_cleanup)
