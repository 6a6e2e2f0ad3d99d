"""Live: ``recvfrom_batch(max_datagrams, bufsize)`` on real captures (``lo`` of a test
namespace, and a veth pair for a shared capture).

The contract: it waits for the first datagram as ``recvfrom`` does (timeout, non-blocking,
close), then adds what is queued or capturable without waiting, up to the maximum; the same
datagrams in the same order as a loop of ``recvfrom(bufsize)``, payloads cut at *bufsize*.
"""

import socket
import threading
import time

import pytest

from test_socket_support import nslib, open_socket, udp_socket
from udpcap_ctypes import NotBoundError, SocketClosedError, UdpcapSocket

pytestmark = pytest.mark.live

PORT = 16300


def _send(tx, count, port, size=64, tag=b"b"):
    for seq in range(count):
        tx.sendto(tag + b"%06d" % seq + b"x" * (size - 7), ("127.0.0.1", port))
        if seq % 50 == 49:
            time.sleep(0.002)      # keep within the default loopback ring (256 frames)


def _bound(netns, stack, port, **options):
    with nslib.in_namespace(netns):
        sock = open_socket(stack, ("127.0.0.1", port), **options)
        tx = udp_socket()
    stack.callback(tx.close)
    return sock, tx


def test_batches_return_what_a_recvfrom_loop_would(netns, stack):
    """200 queued datagrams (the default loopback ring holds 256) come out in batches of at
    most 64, in order, unchanged; the first batch is full (everything was queued); recvfrom
    between batches keeps the order."""
    sock, tx = _bound(netns, stack, PORT)
    count = 200
    _send(tx, count, PORT)
    sock.settimeout(2.0)
    got, sizes = [], []
    while len(got) < count:
        batch = sock.recvfrom_batch(64)
        assert 1 <= len(batch) <= 64
        sizes.append(len(batch))
        got.extend(batch)
        if len(got) < count:
            got.append(sock.recvfrom(65535))             # a single receive in between
    assert [data[1:7] for data, _a in got] == [b"%06d" % seq for seq in range(count)]
    assert all(len(data) == 64 for data, _a in got)
    assert {address[0] for _d, address in got} == {"127.0.0.1"}
    assert sizes[0] == 64
    stats = sock.statistics()
    assert stats["delivered"] == count and stats["truncated_deliveries"] == 0


def test_payloads_are_cut_at_bufsize_and_counted(netns, stack):
    sock, tx = _bound(netns, stack, PORT + 1)
    _send(tx, 10, PORT + 1, size=100)
    sock.settimeout(2.0)
    got = []
    while len(got) < 10:
        got.extend(sock.recvfrom_batch(10, 16))
    assert [data for data, _a in got] == [b"b%06d" % seq + b"x" * 9 for seq in range(10)]
    assert sock.statistics()["truncated_deliveries"] == 10


def test_waits_like_recvfrom_timeout_nonblocking_and_close(netns, stack):
    sock, tx = _bound(netns, stack, PORT + 2)
    sock.settimeout(0.1)
    with pytest.raises(socket.timeout):
        sock.recvfrom_batch(8)
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recvfrom_batch(8)
    # a lone datagram ends a blocking wait and comes back alone
    sock.setblocking(True)
    sender = threading.Timer(0.2, lambda: _send(tx, 1, PORT + 2))
    sender.start()
    batch = sock.recvfrom_batch(8)
    sender.join()
    assert [data[:7] for data, _a in batch] == [b"b000000"]
    # close() from another thread wakes a blocked batch receive
    outcome = []

    def blocked():
        try:
            sock.recvfrom_batch(8)
        except BaseException as exc:
            outcome.append(exc)
    thread = threading.Thread(target=blocked)
    thread.start()
    time.sleep(0.2)
    sock.close()
    thread.join(5)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], SocketClosedError)
    with pytest.raises(SocketClosedError):
        sock.recvfrom_batch(8)


def test_bad_arguments_fail_before_anything_is_consumed(netns, stack):
    sock, tx = _bound(netns, stack, PORT + 3)
    _send(tx, 3, PORT + 3)
    sock.settimeout(2.0)
    for bad, error in ((0, ValueError), (-1, ValueError), (2.5, TypeError), ("8", TypeError)):
        with pytest.raises(error):
            sock.recvfrom_batch(bad)
    with pytest.raises(ValueError):
        sock.recvfrom_batch(8, -1)
    with pytest.raises(TypeError):
        sock.recvfrom_batch(8, 1.5)
    assert sock.recvfrom_batch(8, 0) == []                  # nothing consumed
    got = []
    while len(got) < 3:
        got.extend(sock.recvfrom_batch(8))
    assert [data[:7] for data, _a in got] == [b"b%06d" % seq for seq in range(3)]
    with pytest.raises(NotBoundError):
        UdpcapSocket().recvfrom_batch(1)


def test_sockets_sharing_a_capture_each_get_every_datagram_in_batches(netpair, stack):
    """Two sockets on one port bound to 0.0.0.0 (one shared capture per device), each read in
    batches by a thread of its own: each gets all 400 datagrams, in order."""
    port = PORT + 4
    with nslib.in_namespace(netpair.a):
        socks = [open_socket(stack, ("0.0.0.0", port)) for _ in range(2)]
    results = {}

    def read(sock):
        sock.settimeout(5.0)
        got = []
        try:
            while len(got) < 400:
                got.extend(data for data, _a in sock.recvfrom_batch(32))
        except socket.timeout:
            pass
        results[sock] = got
    threads = [threading.Thread(target=read, args=(s,)) for s in socks]
    for thread in threads:
        thread.start()
    tx = udp_socket(netpair.b)
    stack.callback(tx.close)
    for seq in range(400):
        tx.sendto(b"s%06d" % seq, (netpair.addr_a, port))
        if seq % 20 == 19:
            time.sleep(0.002)
    for thread in threads:
        thread.join(15)
        assert not thread.is_alive()
    for sock in socks:
        assert results[sock] == [b"s%06d" % seq for seq in range(400)]
