"""Helpers shared by the live UdpcapSocket acceptance tests (tests/test_socket_*_live.py).

This module holds no tests.  Everything here runs against the real libpcap with real kernel
traffic inside namespaces the tests create (see tests/netns.py); nothing is mocked.

* :func:`udp_socket` -- a plain kernel UDP socket created inside a namespace (it stays there).
* :func:`open_socket` -- a UdpcapSocket closed by the test's ``stack`` fixture (conftest).
* :func:`receive`, :func:`receive_payloads`, :func:`assert_quiet` -- bounded receives.
* :class:`Background` -- run a callable in a thread, joined with a timeout (no test can hang).
* :class:`Collector` -- a thread that keeps receiving from a socket into a queue, so that
  another thread can change the socket (join, leave, loopback, close) while it is blocked.
* :func:`fd_count` -- open file descriptors of this process (leak checks).
"""

import contextlib
import os
import queue
import socket
import threading
import time

import pytest

import netns as nslib
from udpcap_ctypes import UdpcapSocket  # noqa: F401  (re-exported for the test files)

RECV_TIMEOUT = 3.0      # generous upper bound for a datagram that must arrive
QUIET = 0.4             # how long "nothing more arrives" is watched


def fd_count():
    """Number of open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def udp_socket(ns=None, bind=None, multicast_if=None, loop=None):
    """A kernel UDP socket created inside namespace *ns* (None: the calling thread's)."""
    ctx = nslib.in_namespace(ns) if ns is not None else contextlib.ExitStack()
    with ctx:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if bind is not None:
                sock.bind(bind)
            if multicast_if is not None:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                                socket.inet_aton(multicast_if))
            if loop is not None:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1 if loop else 0)
        except BaseException:
            sock.close()
            raise
    return sock


def open_socket(stack, address=None, **options):
    """A UdpcapSocket (bound to *address* when given), closed when *stack* unwinds."""
    sock = UdpcapSocket(**options)
    stack.callback(sock.close)
    if address is not None:
        sock.bind(address)
    return sock


def receive(sock, bufsize=65536, timeout=RECV_TIMEOUT):
    """One ``recvfrom`` with a timeout; a missing datagram fails the test with a message."""
    sock.settimeout(timeout)
    try:
        return sock.recvfrom(bufsize)
    except socket.timeout:
        pytest.fail("no datagram arrived within %.1f s (statistics: %r)"
                    % (timeout, _short_stats(sock)))


def receive_payloads(sock, count, bufsize=65536, timeout=RECV_TIMEOUT):
    """*count* datagrams as ``[(payload, (host, port))]``."""
    return [receive(sock, bufsize, timeout) for _ in range(count)]


def assert_quiet(sock, wait=QUIET):
    """Nothing (more) is delivered within *wait* seconds."""
    sock.settimeout(wait)
    try:
        data, address = sock.recvfrom(65536)
    except socket.timeout:
        return
    pytest.fail("unexpected datagram %r from %r" % (data[:60], address))


def _short_stats(sock):
    try:
        stats = sock.statistics()
    except Exception as exc:          # pragma: no cover - only for a failure message
        return repr(exc)
    return {k: v for k, v in stats.items() if v and k != "malformed"}


class Background:
    """Run ``fn()`` in a daemon thread; :meth:`join` waits a bounded time and re-raises nothing.

    After :meth:`join`: ``result``, ``error`` (the exception raised, if any) and ``finished``
    (``time.monotonic()`` when *fn* returned or raised).
    """

    def __init__(self, fn, name="udpcap-test-background"):
        self.result = None
        self.error = None
        self.finished = None
        self.started = threading.Event()
        self._fn = fn
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()
        assert self.started.wait(5), "background thread did not start"

    def _run(self):
        self.started.set()
        try:
            self.result = self._fn()
        except BaseException as exc:      # recorded for the test to assert on
            self.error = exc
        finally:
            self.finished = time.monotonic()

    def join(self, timeout=5.0):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "background thread still running after %.1f s" % timeout
        return self


class Collector:
    """A thread that receives from *sock* until stopped, putting ``(payload, address)`` in a
    queue.  It re-enters ``recvfrom`` every *slice* seconds, so it is blocked in a receive
    nearly all the time -- other threads change the socket meanwhile."""

    def __init__(self, sock, slice_=0.5):
        self.sock = sock
        self.queue = queue.Queue()
        self.errors = []
        self._stop = threading.Event()
        self._slice = slice_
        self.thread = threading.Thread(target=self._run, name="udpcap-test-collector",
                                       daemon=True)
        self.thread.start()

    def _run(self):
        self.sock.settimeout(self._slice)
        while not self._stop.is_set():
            try:
                self.queue.put(self.sock.recvfrom(65536))
            except socket.timeout:
                continue
            except BaseException as exc:
                self.errors.append(exc)
                return

    def get(self, timeout=RECV_TIMEOUT):
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            pytest.fail("collector received nothing within %.1f s (errors %r, statistics %r)"
                        % (timeout, self.errors, _short_stats(self.sock)))

    def payloads_until(self, marker, timeout=RECV_TIMEOUT):
        """Payloads received up to and including *marker* (a bytes payload)."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail("marker %r not received within %.1f s; got %r"
                            % (marker, timeout, out))
            data, _address = self.get(remaining)
            out.append(data)
            if data == marker:
                return out

    def assert_quiet(self, wait=QUIET):
        try:
            item = self.queue.get(timeout=wait)
        except queue.Empty:
            return
        pytest.fail("unexpected datagram %r" % (item,))

    def stop(self, timeout=5.0):
        self._stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "collector did not stop"
        assert not self.errors, "collector raised %r" % self.errors


def payload(tag, size=None):
    """A distinct payload: *tag* (str) padded with a repeating pattern to *size* bytes."""
    head = tag.encode("ascii")
    if size is None or size <= len(head):
        return head
    body = bytes((i * 7 + len(head)) & 0xFF for i in range(size - len(head)))
    return head + body
