"""Live acceptance tests of UdpcapSocket: bind forms, receive semantics, timeouts, buffers,
filtering, IPv4 fragments, statistics, the port guard and idle CPU.

Every test captures for real with libpcap, on traffic that real kernel sockets send, inside
network namespaces created by the test (tests/netns.py): ``netns`` (its own ``lo``) or
``netpair`` (namespaces A and B joined by an MTU-1500 veth, 198.18.n.1 <-> 198.18.n.2).  The
test body moves its own thread into a namespace with ``netns.in_namespace``; the UdpcapSocket
and kernel sockets created there stay there.  Nothing is bound to 0.0.0.0 and no multicast is
sent in the root namespace.  Multicast-specific rows live in test_socket_multicast_live.py,
many-sockets/leak/lifetime rows in test_socket_lifecycle_live.py.
"""

import array
import contextlib
import ctypes
import errno
import os
import re
import socket
import sys
import time

import pytest

from test_socket_support import (
    QUIET,
    Background,
    UdpcapSocket,
    assert_quiet,
    fd_count,
    nslib,
    open_socket,
    payload,
    receive,
    receive_payloads,
    udp_socket,
)
from udpcap_ctypes import NotBoundError, SocketClosedError, _platform

pytestmark = pytest.mark.live

PORT = 15000


def kernel_socket(stack, ns=None, **kwargs):
    sock = udp_socket(ns, **kwargs)
    stack.callback(sock.close)
    return sock


def veth_mac(ns, ifname):
    text = ns.ip("-o", "link", "show", ifname).stdout
    match = re.search(r"link/ether ([0-9a-f:]{17})", text)
    assert match, "no MAC address in %r" % text
    return match.group(1)


def other_host(pair):
    """An address in the veth subnet that nobody has; A's frames to it are sent to B's MAC
    (static neighbour entry), so B's capture sees unicast for an address that is not B's."""
    subnet = pair.addr_b.rsplit(".", 1)[0]
    address = subnet + ".3"
    pair.a.ip("neigh", "add", address, "lladdr", veth_mac(pair.b, pair.if_b), "dev", pair.if_a)
    return address


# -- bind forms -------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["", "0.0.0.0"], ids=["empty", "any"])
def test_bind_any_receives_remote_and_local_unicast(netpair, stack, host):
    """"" and "0.0.0.0" bind to every address: getsockname ("0.0.0.0", port); unicast from the
    other host to B's veth address and local unicast to 127.0.0.1 both arrive, with the
    sender's exact address and port."""
    sender_a = kernel_socket(stack, netpair.a, bind=(netpair.addr_a, 0))
    with nslib.in_namespace(netpair.b):
        sock = open_socket(stack, (host, PORT))
        assert sock.getsockname() == ("0.0.0.0", PORT)
        assert sock.bound and not sock.closed
        local = kernel_socket(stack, bind=("127.0.0.1", 0))

        sender_a.sendto(b"remote", (netpair.addr_b, PORT))
        assert receive(sock) == (b"remote", (netpair.addr_a, sender_a.getsockname()[1]))
        local.sendto(b"local", ("127.0.0.1", PORT))
        assert receive(sock) == (b"local", ("127.0.0.1", local.getsockname()[1]))
        assert_quiet(sock)


def test_bind_loopback_receives_only_its_address(netpair, stack):
    """Bound to 127.0.0.1: receives datagrams to 127.0.0.1 only -- not to 127.0.0.2 (also on
    lo), not the veth address, not other ports; ordered as sent."""
    sender_a = kernel_socket(stack, netpair.a)
    with nslib.in_namespace(netpair.b):
        sock = open_socket(stack, ("127.0.0.1", PORT))
        assert sock.getsockname() == ("127.0.0.1", PORT)
        local = kernel_socket(stack, bind=("127.0.0.1", 0))
        local_port = local.getsockname()[1]
        sender_a.sendto(b"remote-to-b", (netpair.addr_b, PORT))
        local.sendto(b"lo-1", ("127.0.0.1", PORT))
        local.sendto(b"to-127.0.0.2", ("127.0.0.2", PORT))
        local.sendto(b"other-port", ("127.0.0.1", PORT + 1))
        local.sendto(b"lo-2", ("127.0.0.1", PORT))
        assert receive_payloads(sock, 2) == [(b"lo-1", ("127.0.0.1", local_port)),
                                             (b"lo-2", ("127.0.0.1", local_port))]
        assert_quiet(sock)


def test_bind_interface_address(netpair, stack):
    """Bound to B's veth address: unicast to it arrives (from A over the veth, and from B
    itself, which Linux routes over lo); unicast to 127.0.0.1 on the same port does not."""
    sender_a = kernel_socket(stack, netpair.a)
    with nslib.in_namespace(netpair.b):
        sock = open_socket(stack, (netpair.addr_b, PORT))
        assert sock.getsockname() == (netpair.addr_b, PORT)
        local = kernel_socket(stack)
        local.sendto(b"to-loopback", ("127.0.0.1", PORT))
        local.sendto(b"to-self", (netpair.addr_b, PORT))
        # Both went over lo, in this order: the first is skipped, the second delivered.
        assert receive(sock) == (b"to-self", (netpair.addr_b, local.getsockname()[1]))
        sender_a.sendto(b"remote", (netpair.addr_b, PORT))
        assert receive(sock) == (b"remote", (netpair.addr_a, sender_a.getsockname()[1]))
        local.sendto(b"to-loopback-again", ("127.0.0.1", PORT))
        assert_quiet(sock)


def test_bind_address_no_interface_has(netpair, stack):
    """An address no interface has: OSError EADDRNOTAVAIL at once; the socket stays unbound
    and can still be bound to a valid address."""
    with nslib.in_namespace(netpair.b):
        sock = open_socket(stack)
        started = time.monotonic()
        with pytest.raises(OSError) as info:
            sock.bind(("198.18.250.9", PORT))
        elapsed = time.monotonic() - started
        assert info.value.errno == errno.EADDRNOTAVAIL
        assert "198.18.250.9" in str(info.value)
        assert elapsed < 1.0, "bind failure took %.3f s" % elapsed
        assert not sock.bound
        sock.bind(("127.0.0.1", PORT))
        assert sock.getsockname() == ("127.0.0.1", PORT)


@pytest.mark.parametrize("address, error", [
    (("300.1.2.3", PORT), OSError),
    (("abc", PORT), OSError),
    (("1.2.3.4.5", PORT), OSError),
    ((5, PORT), TypeError),
    (("127.0.0.1", "x"), TypeError),
    (("127.0.0.1", 70000), OverflowError),
    ("127.0.0.1", TypeError),
    (("239.1.2.3", PORT), OSError),
], ids=["octet-300", "name-abc", "five-octets", "int-host", "str-port", "port-70000",
        "not-a-tuple", "multicast-host"])
def test_bind_malformed_address(netns, stack, address, error):
    """Malformed addresses fail like socket.bind does (OSError; TypeError/OverflowError for
    wrong types/ranges), quickly, and leave the socket unbound.  Runs inside a namespace so
    that name resolution of "abc" never reaches the machine's real network."""
    with nslib.in_namespace(netns):
        sock = open_socket(stack)
        started = time.monotonic()
        with pytest.raises(error):
            sock.bind(address)
        assert time.monotonic() - started < 2.0
        assert not sock.bound
        with pytest.raises(NotBoundError):
            sock.recvfrom(10)


def test_bind_twice_is_einval(netns, stack):
    with nslib.in_namespace(netns):
        sock = open_socket(stack, ("127.0.0.1", PORT))
        with pytest.raises(OSError) as info:
            sock.bind(("127.0.0.1", PORT + 1))
        assert info.value.errno == errno.EINVAL
        assert sock.getsockname() == ("127.0.0.1", PORT)
        sender = kernel_socket(stack)
        sender.sendto(b"second-port", ("127.0.0.1", PORT + 1))
        sender.sendto(b"first-port", ("127.0.0.1", PORT))
        assert receive(sock) == (b"first-port", ("127.0.0.1", sender.getsockname()[1]))


def test_bind_port_zero_chooses_a_port(netns, stack):
    with nslib.in_namespace(netns):
        sock = open_socket(stack, ("127.0.0.1", 0))
        host, port = sock.getsockname()
        assert host == "127.0.0.1"
        assert 1024 <= port <= 65535
        sender = kernel_socket(stack)
        sender.sendto(b"to-chosen-port", ("127.0.0.1", port))
        assert receive(sock) == (b"to-chosen-port", ("127.0.0.1", sender.getsockname()[1]))


# -- receive before bind / after close ---------------------------------------------------------

RECEIVES = {
    "recvfrom": lambda s: s.recvfrom(100),
    "recv": lambda s: s.recv(100),
    "recvfrom_into": lambda s: s.recvfrom_into(bytearray(100)),
    "recv_into": lambda s: s.recv_into(bytearray(100)),
}


@pytest.mark.parametrize("method", sorted(RECEIVES))
def test_receive_before_bind_raises_not_bound_at_once(stack, method):
    """Blocking mode (no timeout), not bound: NotBoundError (an OSError), never a hang.
    Run in a thread so that a hang fails the test instead of stalling the run."""
    sock = open_socket(stack)
    assert sock.gettimeout() is None
    started = time.monotonic()
    job = Background(lambda: RECEIVES[method](sock)).join(3.0)
    assert isinstance(job.error, NotBoundError), job.error
    assert isinstance(job.error, OSError)
    assert job.finished - started < 0.5


@pytest.mark.parametrize("method", sorted(RECEIVES))
def test_receive_after_close(netns, stack, method):
    with nslib.in_namespace(netns):
        sock = open_socket(stack, ("127.0.0.1", PORT))
        sock.close()
        with pytest.raises(SocketClosedError) as info:
            RECEIVES[method](sock)
        assert info.value.errno == errno.EBADF
        unbound = open_socket(stack)
        unbound.close()
        with pytest.raises(SocketClosedError):
            RECEIVES[method](unbound)


def test_close_is_idempotent(netns, stack):
    with nslib.in_namespace(netns):
        sock = open_socket(stack, ("127.0.0.1", PORT))
        assert sock.bound and not sock.closed
        sock.close()
        sock.close()
        assert sock.closed and not sock.bound
        with pytest.raises(SocketClosedError):
            sock.bind(("127.0.0.1", PORT))


def test_context_manager_closes_and_releases(netns):
    with nslib.in_namespace(netns):
        before = fd_count()
        with UdpcapSocket() as sock:
            sock.bind(("127.0.0.1", PORT))
            assert fd_count() > before, "a bound socket holds at least one capture fd"
        assert sock.closed
        assert fd_count() == before
        with pytest.raises(SocketClosedError):
            sock.recvfrom(10)


# -- timeouts ------------------------------------------------------------------------------------

def test_timeout_expires_no_earlier_than_set(netns, stack):
    with nslib.in_namespace(netns):
        sock = open_socket(stack, ("127.0.0.1", PORT))
        sock.settimeout(0.3)
        assert sock.gettimeout() == 0.3
        assert sock.getblocking()
        started = time.monotonic()
        with pytest.raises(socket.timeout) as info:
            sock.recvfrom(100)
        elapsed = time.monotonic() - started
        if sys.version_info >= (3, 10):
            assert isinstance(info.value, TimeoutError)
        assert 0.3 <= elapsed < 1.5, elapsed


def test_timeout_delivers_what_arrives_in_time(netns, stack):
    """A datagram arriving while a receive with timeout waits is delivered (the wait wakes)."""
    with nslib.in_namespace(netns):
        sock = open_socket(stack, ("127.0.0.1", PORT))
        sender = kernel_socket(stack)

        def send_later():
            time.sleep(0.3)
            sender.sendto(b"late", ("127.0.0.1", PORT))
            return time.monotonic()

        sock.settimeout(5.0)
        job = Background(send_later)
        assert sock.recvfrom(100) == (b"late", ("127.0.0.1", sender.getsockname()[1]))
        arrived = time.monotonic()
        job.join()
        assert arrived - job.result < 0.1, "the wait did not wake promptly"


def test_nonblocking_raises_blocking_io_error_at_once(netns, stack):
    with nslib.in_namespace(netns):
        sock = open_socket(stack, ("127.0.0.1", PORT))
        sock.setblocking(False)
        assert sock.gettimeout() == 0.0 and not sock.getblocking()
        for setup in (lambda: sock.setblocking(False), lambda: sock.settimeout(0)):
            setup()
            started = time.monotonic()
            with pytest.raises(BlockingIOError):
                sock.recvfrom(100)
            with pytest.raises(BlockingIOError):
                sock.recv_into(bytearray(10))
            assert time.monotonic() - started < 0.1
        # Non-blocking still delivers what is queued.
        sender = kernel_socket(stack)
        sender.sendto(b"queued", ("127.0.0.1", PORT))
        deadline = time.monotonic() + 3.0
        while True:
            try:
                got = sock.recvfrom(100)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "queued datagram never became readable"
                time.sleep(0.01)
        assert got == (b"queued", ("127.0.0.1", sender.getsockname()[1]))
        sock.setblocking(True)
        assert sock.gettimeout() is None and sock.getblocking()
        sock.settimeout(None)
        assert sock.gettimeout() is None
        with pytest.raises(ValueError):
            sock.settimeout(-1)


# -- close() from another thread ---------------------------------------------------------------

@pytest.mark.parametrize("timeout", [None, 30.0], ids=["blocking", "timeout30"])
@pytest.mark.parametrize("method", sorted(RECEIVES))
def test_close_wakes_blocked_receiver_within_100ms(netpair, method, timeout):
    """close() while another thread is blocked in a receive: that thread raises
    SocketClosedError (errno EBADF) within 100 ms of the close() call.  Bound to 0.0.0.0 in B
    (captures on lo and the veth)."""
    with nslib.in_namespace(netpair.b):
        error, latency = close_while_blocked(lambda sock: RECEIVES[method](sock), timeout)
    assert isinstance(error, SocketClosedError), error
    assert error.errno == errno.EBADF
    assert latency < 0.1, "blocked receiver raised %.3f s after close()" % latency


def close_while_blocked(receive, timeout=None, devices=None):
    """Bind to 0.0.0.0:PORT, block a thread in ``receive(sock)``, close() from this thread.

    Returns ``(what the receiving thread raised, seconds from close() to that)``.
    """
    sock = UdpcapSocket()
    try:
        sock.bind(("0.0.0.0", PORT))
        if devices is not None:
            assert len(sock.filter_expressions()) == devices
        sock.settimeout(timeout)
        job = Background(lambda: receive(sock))
        time.sleep(0.3)
        assert job.thread.is_alive() and job.error is None, "receiver was not blocked"
        closed_at = time.monotonic()
        sock.close()
        job.join(3.0)
    finally:
        sock.close()
    return job.error, job.finished - closed_at


def test_close_wakes_every_blocked_receiver(netpair):
    """Four threads blocked in receives on one socket, one per receive method: close() wakes
    them all, each raises SocketClosedError within 100 ms, and close() returns only after all
    of them have left the wait (it counts them in and out before releasing the waiter)."""
    with nslib.in_namespace(netpair.b):
        sock = UdpcapSocket()
        try:
            sock.bind(("0.0.0.0", PORT))
            jobs = [Background(lambda m=method: RECEIVES[m](sock)) for method in sorted(RECEIVES)]
            time.sleep(0.3)
            assert all(job.thread.is_alive() for job in jobs), [(j.result, j.error) for j in jobs]
            closed_at = time.monotonic()
            sock.close()
            close_returned = time.monotonic()
            for job in jobs:
                job.join(3.0)
        finally:
            sock.close()
    assert len(jobs) == 4
    for job in jobs:
        assert isinstance(job.error, SocketClosedError), job.error
        assert job.finished - closed_at < 0.1
        assert job.finished <= close_returned


def test_waiter_wake_is_permanent():
    """After wake(), every wait returns at once, not only the first: a receiving thread that
    reaches the wait after another thread was woken by close() must not block (the wait pipe
    is never emptied)."""
    waiter = _platform.PollWaiter([])
    try:
        assert waiter.wait(0.05) == []                  # timeout: nothing ready
        waiter.wake()
        for _ in range(3):
            started = time.monotonic()
            assert [fd for fd, _events in waiter.wait(5.0)] == [waiter.wake_fd]
            assert [fd for fd, _events in waiter.wait(None)] == [waiter.wake_fd]
            assert time.monotonic() - started < 1.0
    finally:
        waiter.close()


def add_veth_devices(ns, count):
    """*count* extra capture devices with IPv4 addresses in *ns* (veth pairs inside it)."""
    for k in range(count):
        ns.ip("link", "add", "xv%d" % k, "type", "veth", "peer", "name", "xp%d" % k)
        ns.ip("addr", "add", "198.19.%d.1/24" % (200 + k), "dev", "xv%d" % k)
        ns.ip("link", "set", "xp%d" % k, "up")
        ns.ip("link", "set", "xv%d" % k, "up")


def test_close_wakes_blocked_receiver_with_many_devices(netpair):
    """The 100 ms contract holds however many devices a 0.0.0.0 bind captures on: here six
    (lo, the veth to A, four more veths), as on a host with a few NICs, VPN and container
    bridges.  Releasing a Linux capture costs ~20 ms (packet_release waits for an RCU grace
    period in synchronize_net), so the release must not happen on the receiving thread
    before it raises."""
    add_veth_devices(netpair.b, 4)
    with nslib.in_namespace(netpair.b):
        error, latency = close_while_blocked(lambda sock: sock.recvfrom(100), devices=6)
    assert isinstance(error, SocketClosedError), error
    assert latency < 0.1, "blocked receiver raised %.3f s after close()" % latency


# -- buffers --------------------------------------------------------------------------------------

def test_datagram_larger_than_buffer_is_truncated(netns, stack):
    """Like a UDP socket: the first len(buffer) bytes, the rest of that datagram discarded
    (the next receive returns the next datagram)."""
    with nslib.in_namespace(netns):
        sock = open_socket(stack, ("127.0.0.1", PORT))
        sender = kernel_socket(stack)
        sent = [payload("d%d-" % i, 100) for i in range(6)]
        for data in sent:
            sender.sendto(data, ("127.0.0.1", PORT))
        source = ("127.0.0.1", sender.getsockname()[1])
        sock.settimeout(3.0)

        assert sock.recvfrom(10) == (sent[0][:10], source)

        buf = bytearray(10)
        assert sock.recvfrom_into(buf) == (10, source)
        assert bytes(buf) == sent[1][:10]

        buf = bytearray(b"\xee" * 50)
        assert sock.recv_into(buf, 5) == 5
        assert bytes(buf[:5]) == sent[2][:5] and bytes(buf[5:]) == b"\xee" * 45

        buf = bytearray(20)
        assert sock.recvfrom_into(buf, 0) == (20, source)        # nbytes=0: len(buffer)
        assert bytes(buf) == sent[3][:20]

        assert sock.recv(7) == sent[4][:7]
        assert sock.recvfrom(65536) == (sent[5], source)          # whole, not a leftover
        stats = sock.statistics()
        assert stats["delivered"] == 6
        assert stats["truncated_deliveries"] == 5
        assert_quiet(sock)


BUFFERS = {
    "bytearray": lambda n: bytearray(n),
    "memoryview-slice": lambda n: memoryview(bytearray(n + 8))[4:4 + n],
    "array-B": lambda n: array.array("B", bytes(n)),
    "array-H": lambda n: array.array("H", bytes(n)),
    "ctypes-string-buffer": lambda n: ctypes.create_string_buffer(n),
    "ctypes-ubyte-array": lambda n: (ctypes.c_ubyte * n)(),
}


@pytest.mark.parametrize("kind", sorted(BUFFERS))
def test_receive_into_any_writable_buffer(netns, stack, kind):
    with nslib.in_namespace(netns):
        sock = open_socket(stack, ("127.0.0.1", PORT))
        sender = kernel_socket(stack)
        first, second = payload("first-", 40), payload("second-", 10)
        sender.sendto(first, ("127.0.0.1", PORT))
        sender.sendto(second, ("127.0.0.1", PORT))
        sock.settimeout(3.0)
        buf = BUFFERS[kind](32)
        n, address = sock.recvfrom_into(buf)
        assert (n, address) == (32, ("127.0.0.1", sender.getsockname()[1]))
        assert bytes(memoryview(buf).cast("B")) == first[:32]
        n = sock.recv_into(buf)
        assert n == 10
        assert bytes(memoryview(buf).cast("B"))[:10] == second
        with pytest.raises(TypeError):
            sock.recvfrom_into(b"read-only bytes")
        with pytest.raises(ValueError):
            sock.recvfrom_into(bytearray(4), 5)


# -- receive buffer size -------------------------------------------------------------------------

def test_receive_buffer_size_rules(netns, stack):
    """Below 65535: ValueError; before bind: accepted (method and SO_RCVBUF); after bind:
    OSError (method and SO_RCVBUF)."""
    with nslib.in_namespace(netns):
        sock = open_socket(stack)
        with pytest.raises(ValueError):
            sock.set_receive_buffer_size(65534)
        with pytest.raises(ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sock.set_receive_buffer_size(65535)
        assert sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20) is None
        sock.bind(("127.0.0.1", PORT))
        with pytest.raises(OSError):
            sock.set_receive_buffer_size(1 << 20)
        with pytest.raises(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sender = kernel_socket(stack)
        sender.sendto(b"after-rcvbuf", ("127.0.0.1", PORT))
        assert receive(sock) == (b"after-rcvbuf", ("127.0.0.1", sender.getsockname()[1]))


def _burst_delivered(stack, size, count=100):
    sock = open_socket(stack)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    sock.bind(("127.0.0.1", PORT))
    sender = kernel_socket(stack)
    for i in range(count):
        sender.sendto(payload("burst-%d-" % i, 1000), ("127.0.0.1", PORT))
    time.sleep(0.2)                 # everything is in the capture (or dropped) by now
    got = []
    sock.settimeout(QUIET)
    with contextlib.suppress(socket.timeout):
        while len(got) < count:
            got.append(sock.recv(2000))
    drops = sock.statistics()["capture_drops"]
    sock.close()
    return got, drops


def test_so_rcvbuf_before_bind_sizes_the_capture(netns, stack):
    """SO_RCVBUF set before bind really sizes the capture buffer: an unread burst of 100
    datagrams of 1000 bytes overflows a 65535-byte buffer on lo (counted in capture_drops) but
    fits 16 MiB (lo's snaplen is ~64 KiB, so 16 MiB is ~250 ring slots)."""
    with nslib.in_namespace(netns):
        small, small_drops = _burst_delivered(stack, 65535)
        large, large_drops = _burst_delivered(stack, 16 << 20)
    assert len(large) == 100 and large_drops == 0
    assert large == [payload("burst-%d-" % i, 1000) for i in range(100)]
    assert len(small) < 100 and small_drops > 0, (len(small), small_drops)


# -- filtering ------------------------------------------------------------------------------------

def test_only_wanted_datagrams_delivered_in_order(netpair, stack):
    """Bound to 0.0.0.0:PORT in B, joined G1.  A sends, interleaved: wanted unicast and G1
    datagrams, and unwanted ones to another port, another group, G1 on another port, another
    unicast address (frames addressed to B's MAC), and B sends unicast to A on PORT.  Exactly
    the wanted ones arrive, in the order sent, with A's address and port."""
    group, other_group = "239.1.2.3", "239.1.2.4"
    elsewhere = other_host(netpair)
    sender_a = kernel_socket(stack, netpair.a, bind=(netpair.addr_a, 0),
                             multicast_if=netpair.addr_a)
    source = (netpair.addr_a, sender_a.getsockname()[1])
    plan = [
        (b"w1", netpair.addr_b, PORT, True),
        (b"u-port", netpair.addr_b, PORT + 1, False),
        (b"w2-group", group, PORT, True),
        (b"u-other-group", other_group, PORT, False),
        (b"u-group-port", group, PORT + 1, False),
        (b"u-elsewhere", elsewhere, PORT, False),
        (b"w3", netpair.addr_b, PORT, True),
        (b"u-broadcast-port", netpair.addr_b.rsplit(".", 1)[0] + ".255", PORT + 2, False),
        (b"w4-group", group, PORT, True),
    ]
    with nslib.in_namespace(netpair.b):
        sock = open_socket(stack, ("0.0.0.0", PORT))
        sock.join_multicast_group(group)
        from_b = kernel_socket(stack)
        from_b.sendto(b"u-b-to-a", (netpair.addr_a, PORT))
        sender_a.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        for data, host, port, _wanted in plan:
            sender_a.sendto(data, (host, port))
        wanted = [(data, source) for data, _h, _p, ok in plan if ok]
        assert receive_payloads(sock, len(wanted)) == wanted
        assert_quiet(sock)
        stats = sock.statistics()
    assert stats["delivered"] == len(wanted)
    # Passed the BPF filter but rejected by the delivery rules: B's own unicast to A, and
    # unicast to an address B does not have.
    assert stats["not_for_us"] >= 2


def test_broadcast_to_subnet_delivered_to_any_bind(netpair, stack):
    """A datagram to the subnet broadcast address reaches a socket bound to 0.0.0.0 (as with
    a kernel socket) but not one bound to B's unicast address."""
    broadcast = netpair.addr_b.rsplit(".", 1)[0] + ".255"
    sender_a = kernel_socket(stack, netpair.a, bind=(netpair.addr_a, 0))
    sender_a.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    with nslib.in_namespace(netpair.b):
        any_sock = open_socket(stack, ("0.0.0.0", PORT))
        unicast_sock = open_socket(stack, (netpair.addr_b, PORT))
        sender_a.sendto(b"bcast", (broadcast, PORT))
        sender_a.sendto(b"ucast", (netpair.addr_b, PORT))
        source = (netpair.addr_a, sender_a.getsockname()[1])
        assert receive_payloads(any_sock, 2) == [(b"bcast", source), (b"ucast", source)]
        assert receive(unicast_sock) == (b"ucast", source)
        assert_quiet(any_sock)
        assert_quiet(unicast_sock, 0.1)


# -- IPv4 fragments -------------------------------------------------------------------------------

def test_fragmented_datagrams_across_veth(netpair, stack):
    """60000- and 65507-byte datagrams from A cross the MTU-1500 veth as 41-45 fragments each;
    several in a row arrive reassembled, byte-identical, once each, in order."""
    sizes = [60000, 65507, 60000, 65507, 1000, 65507]
    sent = [os.urandom(size) for size in sizes]
    sender_a = kernel_socket(stack, netpair.a, bind=(netpair.addr_a, 0))
    source = (netpair.addr_a, sender_a.getsockname()[1])
    with nslib.in_namespace(netpair.b):
        sock = open_socket(stack, ("0.0.0.0", PORT))
        for data in sent:
            sender_a.sendto(data, (netpair.addr_b, PORT))
        got = receive_payloads(sock, len(sent))
        assert [len(d) for d, _a in got] == sizes
        assert got == [(data, source) for data in sent]
        assert_quiet(sock)
        stats = sock.statistics()
    per_datagram = [-(-(size + 8) // 1480) for size in sizes if size + 8 > 1480]
    assert stats["reassembled"] == len(per_datagram)
    assert stats["fragments"] == sum(per_datagram)
    assert stats["pending_datagrams"] == 0 and stats["pending_bytes"] == 0


def test_largest_datagram_on_loopback(netns, stack):
    """65507 bytes to 127.0.0.1 (lo MTU 65536: not fragmented), three in a row, identical."""
    sent = [os.urandom(65507) for _ in range(3)]
    with nslib.in_namespace(netns):
        sock = open_socket(stack, ("127.0.0.1", PORT))
        sender = kernel_socket(stack)
        for data in sent:
            sender.sendto(data, ("127.0.0.1", PORT))
        source = ("127.0.0.1", sender.getsockname()[1])
        assert receive_payloads(sock, 3) == [(data, source) for data in sent]
        assert_quiet(sock)
        assert sock.statistics()["fragments"] == 0


def test_fragments_of_other_ports_never_delivered(netpair, stack):
    """Fragmented datagrams to another port: every fragment passes the BPF filter (the later
    ones carry no port, and the first one is let through so that the reassembler learns the
    port), and the reassembler lets each datagram go as soon as its first fragment names the
    other port -- never delivered, never glued to anything else, nothing held.

    Measured: ``fragments`` counts them all, ``fragments_unwanted`` the 41 of each foreign
    datagram, ``pending_datagrams`` is 0 at once (before, the later fragments were held until
    ``reassembly_timeout``), and nothing times out."""
    sender_a = kernel_socket(stack, netpair.a, bind=(netpair.addr_a, 0))
    source = (netpair.addr_a, sender_a.getsockname()[1])
    with nslib.in_namespace(netpair.b):
        sock = open_socket(stack, ("0.0.0.0", PORT), reassembly_timeout=0.5)
        others = [os.urandom(60000) for _ in range(3)]
        wanted = os.urandom(60000)
        for data in others:
            sender_a.sendto(data, (netpair.addr_b, PORT + 1))
        sender_a.sendto(wanted, (netpair.addr_b, PORT))
        assert receive(sock) == (wanted, source)
        held = sock.statistics()
        assert held["pending_datagrams"] == 0 and held["pending_bytes"] == 0, held
        assert held["fragments"] == 41 + 3 * 41, held
        assert held["fragments_unwanted"] == 3 * 41, held
        time.sleep(0.6)
        sender_a.sendto(wanted[:3000], (netpair.addr_b, PORT))      # 3 fragments: a sweep
        assert receive(sock) == (wanted[:3000], source)
        assert_quiet(sock)
        after = sock.statistics()
    assert after["reassembly_timeouts"] == 0 and after["reassembly_evictions"] == 0
    assert after["pending_datagrams"] == 0 and after["pending_bytes"] == 0
    assert after["delivered"] == 2 and after["reassembled"] == 2


# -- statistics -----------------------------------------------------------------------------------

def test_statistics_counters(netpair, stack):
    """delivered / delivered_bytes count exactly what the caller got; not_for_us counts
    well-formed datagrams that passed the filter but are not for this socket; every counter
    the docs name is present."""
    elsewhere = other_host(netpair)
    sender_a = kernel_socket(stack, netpair.a)
    with nslib.in_namespace(netpair.b):
        sock = open_socket(stack, ("0.0.0.0", PORT))
        base = sock.statistics()
        for key in ("frames", "delivered", "delivered_bytes", "truncated_deliveries",
                    "not_for_us", "own_multicast_dropped", "malformed", "malformed_total",
                    "fragments", "reassembled", "capture_drops"):
            assert key in base, key
        assert isinstance(base["own_multicast_dropped"], int)
        assert base["delivered"] == 0 and base["not_for_us"] == 0
        for i in range(5):
            sender_a.sendto(b"x" * (10 + i), (netpair.addr_b, PORT))
            sender_a.sendto(b"not-mine", (elsewhere, PORT))
        got = receive_payloads(sock, 5)
        assert_quiet(sock)
        stats = sock.statistics()
    assert [len(d) for d, _a in got] == [10, 11, 12, 13, 14]
    assert stats["delivered"] == 5
    assert stats["delivered_bytes"] == 10 + 11 + 12 + 13 + 14
    assert stats["not_for_us"] == 5
    assert stats["malformed_total"] == 0
    assert stats["frames"] >= 10


# -- port guard / ICMP ----------------------------------------------------------------------------

def _connected_sends(stack, port_guard):
    sock = open_socket(stack, ("127.0.0.1", PORT), port_guard=port_guard)
    sender = kernel_socket(stack)
    sender.connect(("127.0.0.1", PORT))
    outcomes = []
    for i in range(3):
        try:
            sender.send(b"s%d" % i)
            outcomes.append("sent")
        except ConnectionRefusedError:
            outcomes.append("refused")
        time.sleep(0.05)
    got = []
    sock.settimeout(QUIET)
    with contextlib.suppress(socket.timeout):
        while len(got) < 3:
            got.append(sock.recv(100))
    return outcomes, got


def test_port_guard_stops_icmp_port_unreachable(netns, stack):
    """The capture opens no socket, so the kernel answers unicast to the port with ICMP
    port-unreachable.  Measured on Linux: without the guard a connected sender's second
    send() raises ConnectionRefusedError (that datagram is not sent at all), the third goes
    out again; the capture still receives the 1st and 3rd.  With ``port_guard=True`` every
    send succeeds and all three arrive."""
    with nslib.in_namespace(netns):
        outcomes, got = _connected_sends(stack, port_guard=False)
        assert outcomes == ["sent", "refused", "sent"]
        assert got == [b"s0", b"s2"]
        stack.close()
        outcomes, got = _connected_sends(stack, port_guard=True)
        assert outcomes == ["sent", "sent", "sent"]
        assert got == [b"s0", b"s1", b"s2"]


# -- idle CPU ------------------------------------------------------------------------------------

def test_blocked_receiver_uses_no_cpu(netpair, stack):
    """Blocked in recvfrom for 1 s with nothing arriving (captures on lo and the veth): the
    process uses < 0.05 s CPU, i.e. it waits in poll(), it does not busy-poll."""
    with nslib.in_namespace(netpair.b):
        sock = open_socket(stack, ("0.0.0.0", PORT))
        sock.settimeout(1.0)
        cpu = time.process_time()
        wall = time.monotonic()
        with pytest.raises(socket.timeout):
            sock.recvfrom(100)
        cpu = time.process_time() - cpu
        wall = time.monotonic() - wall
    assert wall >= 1.0
    assert cpu < 0.05, "blocked receive used %.3f s CPU in %.3f s" % (cpu, wall)
