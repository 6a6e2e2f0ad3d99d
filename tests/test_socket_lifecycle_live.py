"""Live lifetime tests of UdpcapSocket: many sockets on one port, resource release, and no
leak over many create/bind/close cycles.

Loopback tests run on the ``lo`` of a namespace of their own (``netns``), so no other traffic
of this machine reaches their captures; leak checks count ``/proc/self/fd`` entries.
"""

import contextlib
import os
import time

import pytest

from test_socket_support import Background, UdpcapSocket, fd_count, nslib, receive, udp_socket
from udpcap_ctypes import SocketClosedError

pytestmark = pytest.mark.live

PORT = 15200


def rss_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_hundred_sockets_same_port_each_get_every_datagram(netns):
    """100 UdpcapSockets bound to 127.0.0.1:PORT (65535-byte capture buffers), each with its
    own capture: all 100 receive each of 20 datagrams sent one at a time, with the sender's
    address; closing them gives back every file descriptor they took."""
    count, datagrams = 100, 20
    with nslib.in_namespace(netns):
        before = fd_count()
        socks = []
        try:
            for _ in range(count):
                sock = UdpcapSocket()
                socks.append(sock)
                sock.set_receive_buffer_size(65535)
                sock.bind(("127.0.0.1", PORT))
                sock.settimeout(3.0)
            assert fd_count() >= before + count, "each socket holds its own capture"
            with contextlib.closing(udp_socket(bind=("127.0.0.1", 0))) as tx:
                source = tx.getsockname()
                for i in range(datagrams):
                    data = b"datagram-%d" % i
                    tx.sendto(data, ("127.0.0.1", PORT))
                    got = [sock.recvfrom(100) for sock in socks]
                    assert got == [(data, source)] * count, i
            for sock in socks:
                assert sock.statistics()["delivered"] == datagrams
        finally:
            for sock in socks:
                sock.close()
        assert fd_count() == before


def test_close_releases_everything(netpair):
    """A socket bound to 0.0.0.0 with groups joined (kernel membership sockets) and
    port_guard (a kernel socket on the port) gives back every fd on close."""
    with nslib.in_namespace(netpair.b):
        before = fd_count()
        sock = UdpcapSocket(port_guard=True)
        sock.join_multicast_group("239.1.2.3")
        sock.bind(("0.0.0.0", PORT))
        sock.join_multicast_group("239.1.2.4")
        # lo + veth captures, 2 memberships, 1 port guard, the waiter.
        assert fd_count() >= before + 5
        sock.close()
        assert fd_count() == before


def test_close_while_receiving_releases_everything(netpair):
    """close() from another thread while a receive is blocked: once the receiver has raised
    SocketClosedError, every fd is given back (the busy close path releases too)."""
    with nslib.in_namespace(netpair.b):
        before = fd_count()
        sock = UdpcapSocket()
        sock.join_multicast_group("239.1.2.3")
        sock.bind(("0.0.0.0", PORT))
        job = Background(lambda: sock.recvfrom(100))
        time.sleep(0.2)
        sock.close()
        job.join(3.0)
        assert isinstance(job.error, SocketClosedError), job.error
        deadline = time.monotonic() + 1.0
        while fd_count() != before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fd_count() == before


def test_thousand_create_bind_close_cycles_leak_nothing(netns, record_property):
    """1,000 cycles of UdpcapSocket() / bind(127.0.0.1) / close(): no fd left behind (no
    slack), resident memory grows by less than 64 MiB (each cycle allocates MiBs of capture and
    batch buffers, so a leak of either would show as GiBs), and the socket still works."""
    cycles = 1000
    with nslib.in_namespace(netns):
        # Warm-up: first-use allocations (library load, prototypes) are not leaks.
        with UdpcapSocket() as warm:
            warm.bind(("127.0.0.1", PORT))
        fds, rss = fd_count(), rss_bytes()
        started = time.monotonic()
        for _ in range(cycles):
            sock = UdpcapSocket()
            sock.bind(("127.0.0.1", PORT))
            sock.close()
        elapsed = time.monotonic() - started
        assert fd_count() == fds
        growth = rss_bytes() - rss
        assert growth < 64 << 20, "RSS grew by %.1f MiB" % (growth / 1048576.0)
        with UdpcapSocket() as sock, contextlib.closing(udp_socket()) as tx:
            sock.bind(("127.0.0.1", PORT))
            tx.sendto(b"still-works", ("127.0.0.1", PORT))
            assert receive(sock) == (b"still-works", ("127.0.0.1", tx.getsockname()[1]))
    # Recorded (junit XML property), not asserted: this is a leak test, not a benchmark.
    record_property("cycle_ms", round(elapsed * 1000.0 / cycles, 2))


def test_garbage_collected_socket_releases_its_captures(netns):
    """A bound socket dropped without close() releases its captures when collected."""
    import gc
    with nslib.in_namespace(netns):
        before = fd_count()
        sock = UdpcapSocket()
        sock.bind(("127.0.0.1", PORT))
        assert fd_count() > before
        del sock
        gc.collect()
        assert fd_count() == before


def test_unbound_sockets_hold_no_descriptors():
    """Creating (and closing) unbound sockets opens nothing: no capture before bind()."""
    before = fd_count()
    socks = [UdpcapSocket() for _ in range(50)]
    assert fd_count() == before
    for sock in socks:
        sock.close()
    assert fd_count() == before
