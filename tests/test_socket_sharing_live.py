"""Live: the sockets of one process share one capture per device (``_shared_capture``).

Each scenario runs with real traffic in namespaces the tests create (a ``netpair``: A and B
joined by an MTU-1500 veth); the UdpcapSockets live in A, the senders in B (or on A's own
``lo``).  What sharing must not change: every socket gets exactly its own datagrams (several
on one port each a copy), in order; a socket nobody reads holds at most its receive buffer and
costs the others nothing; binds, closes, joins and leaves of one socket lose nothing of the
others'; a forked child does not touch its parent's captures.
"""

import collections
import contextlib
import socket
import struct
import textwrap
import threading
import time

import pytest

from test_socket_support import Background, nslib, open_socket, udp_socket
from udpcap_ctypes import SocketClosedError, UdpcapSocket
from udpcap_ctypes._receiver import ENTRY_OVERHEAD

pytestmark = pytest.mark.live

BASE_PORT = 16100
GROUP = "239.7.7.7"
TAG = struct.Struct("!HI")           # destination port, sequence number


def tagged(port, seq, size=16):
    return TAG.pack(port, seq) + b"x" * (size - TAG.size)


def untag(payload):
    return TAG.unpack_from(payload)


def send_stream(sock, address, ports, count, size=16, pause_every=50, pause=0.002):
    """*count* datagrams to each of *ports* at *address*, interleaved, paced so that the
    default capture ring (hundreds of frames) never fills between two reads."""
    sent = 0
    for seq in range(count):
        for port in ports:
            sock.sendto(tagged(port, seq, size), (address, port))
            sent += 1
            if sent % pause_every == 0:
                time.sleep(pause)


def drain_all(sockets, expected_per_socket, deadline):
    """Read every socket without blocking, round robin from one thread, until each has its
    expected count or *deadline*: ``{socket: [payload, ...]}``.  One thread reading all of them
    means that most datagrams reach a socket's queue through another socket's read."""
    got = {sock: [] for sock in sockets}
    for sock in sockets:
        sock.setblocking(False)
    while time.monotonic() < deadline:
        busy = False
        for sock in sockets:
            if len(got[sock]) >= expected_per_socket:
                continue
            busy = True
            try:
                while True:
                    got[sock].append(sock.recv(2048))
            except BlockingIOError:
                pass
        if not busy:
            break
        time.sleep(0.001)
    return got


def captures_of(sockets):
    """The distinct shared captures the sockets read."""
    return {id(c.shared): c.shared for s in sockets for c in s._receiver.captures}


def test_hundred_sockets_on_ten_ports_each_get_exactly_their_own(netpair, stack):
    """100 sockets bound to 0.0.0.0 across 10 ports (10 on each), traffic to every port:
    each socket receives every datagram for its port, in order, and nothing else; the
    process has one capture per device."""
    ports = [BASE_PORT + i for i in range(10)]
    count = 60
    with nslib.in_namespace(netpair.a):
        sockets = [open_socket(stack, ("0.0.0.0", ports[i % 10])) for i in range(100)]
    shared = captures_of(sockets)
    assert sorted(s.device.name for s in shared.values()) == ["lo", netpair.if_a]
    tx = udp_socket(netpair.b)
    stack.callback(tx.close)
    sender = Background(lambda: send_stream(tx, netpair.addr_a, ports, count))
    got = drain_all(sockets, count, time.monotonic() + 20)
    sender.join(10)
    assert sender.error is None
    for sock in sockets:
        port = sock.getsockname()[1]
        assert [untag(p) for p in got[sock]] == [(port, seq) for seq in range(count)], (
            sock.getsockname(), sock.statistics())
        assert sock.statistics()["queue_dropped"] == 0
    # One frame per datagram on the veth, read once for all 100 sockets.
    veth = [s for s in shared.values() if s.device.name == netpair.if_a][0]
    assert veth.stats.frames >= count * len(ports)
    assert sum(s.statistics()["delivered"] for s in sockets) == 10 * count * len(ports)


def test_each_thread_gets_its_own_sockets_datagrams(netpair, stack):
    """10 sockets on 5 ports, each read by a thread of its own (blocking receives): a thread
    that reads the shared capture hands the others their datagrams and wakes them."""
    ports = [BASE_PORT + 20 + i for i in range(5)]
    count = 200
    with nslib.in_namespace(netpair.a):
        sockets = [open_socket(stack, ("0.0.0.0", ports[i % 5])) for i in range(10)]
    results = {}

    def reader(sock):
        sock.settimeout(5.0)
        payloads = []
        try:
            while len(payloads) < count:
                payloads.append(sock.recv(2048))
        except socket.timeout:
            pass
        results[sock] = payloads

    threads = [threading.Thread(target=reader, args=(s,), daemon=True) for s in sockets]
    for thread in threads:
        thread.start()
    tx = udp_socket(netpair.b)
    stack.callback(tx.close)
    send_stream(tx, netpair.addr_a, ports, count, size=200)
    for thread in threads:
        thread.join(15)
        assert not thread.is_alive()
    for sock in sockets:
        port = sock.getsockname()[1]
        assert [untag(p) for p in results[sock]] == [(port, seq) for seq in range(count)], (
            sock.getsockname(), sock.statistics())


def test_an_unread_socket_is_capped_and_costs_the_others_nothing(netpair, stack):
    """Two sockets on one port with a 256 KiB receive buffer; only one is read.  The reader
    gets everything; the unread one keeps the first datagrams up to its buffer (payload +
    ENTRY_OVERHEAD each) and counts the rest in queue_dropped."""
    port = BASE_PORT + 40
    size, count = 1000, 600
    limit = 256 << 10
    with nslib.in_namespace(netpair.a):
        read_me = open_socket(stack)
        unread = open_socket(stack)
        for sock in (read_me, unread):
            sock.set_receive_buffer_size(limit)
            sock.bind(("0.0.0.0", port))
    assert captures_of([read_me]) == captures_of([unread])      # same size: shared
    tx = udp_socket(netpair.b)
    stack.callback(tx.close)
    sender = Background(lambda: send_stream(tx, netpair.addr_a, [port], count, size=size,
                                            pause_every=20))
    got = drain_all([read_me], count, time.monotonic() + 20)[read_me]
    sender.join(10)
    assert [untag(p)[1] for p in got] == list(range(count)), read_me.statistics()
    stats = unread.statistics()
    held = stats["accepted"] - stats["delivered"]
    assert held == len(unread._receiver.ready)
    assert 0 < held * (size + ENTRY_OVERHEAD) <= limit
    assert stats["queue_dropped"] == count - held
    unread.setblocking(False)
    kept = []
    with contextlib.suppress(BlockingIOError):
        while True:
            kept.append(untag(unread.recv(2048))[1])
    assert kept == list(range(held))             # the first ones, in order, like a socket


def _count_wakes(sock):
    """Count the returns of *sock*'s waiter (its receiving threads' wake-ups)."""
    waiter = sock._receiver.waiter
    wait, wakes = waiter.wait, [0]

    def counted(*args):
        result = wait(*args)
        wakes[0] += 1
        return result

    waiter.wait = counted
    return wakes


def test_idle_sockets_sleep_while_a_sibling_streams(netpair, stack):
    """Ten sockets on ten ports share the captures, each with a thread blocked in a receive;
    traffic goes to one port only.  One blocked thread waits on the devices (the watcher), so
    the idle threads together wake at most once per frame, and all but the one or two that
    held the watch hardly at all (before: every frame woke every thread).  One extra wake-up
    per read remains while an idle socket's thread is the watcher (it hands the datagram on)."""
    ports = [BASE_PORT + 45 + i for i in range(10)]
    count = 400
    with nslib.in_namespace(netpair.a):
        sockets = [open_socket(stack, ("0.0.0.0", port)) for port in ports]
    busy, idle = sockets[0], sockets[1:]
    wakes = {sock: _count_wakes(sock) for sock in sockets}
    got = []

    def read_busy():
        busy.settimeout(5.0)
        while len(got) < count:
            got.append(untag(busy.recv(2048))[1])

    def read_idle(sock):
        with contextlib.suppress(SocketClosedError):
            sock.recv(2048)

    threads = [threading.Thread(target=read_idle, args=(s,), daemon=True) for s in idle]
    threads.append(threading.Thread(target=read_busy, daemon=True))
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    tx = udp_socket(netpair.b)
    stack.callback(tx.close)
    send_stream(tx, netpair.addr_a, [ports[0]], count, size=200, pause_every=10)
    threads[-1].join(15)
    assert got == list(range(count)), busy.statistics()
    idle_wakes = sum(wakes[s][0] for s in idle)
    for sock in idle:
        sock.close()                               # wakes the idle threads: they leave
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive()
    assert wakes[busy][0] >= 1
    per_idle = sorted(wakes[s][0] for s in idle)
    assert idle_wakes <= busy.statistics()["frames"], per_idle
    assert all(n <= 5 for n in per_idle[:-2]), per_idle


def test_a_waiting_thread_that_stops_receiving_hands_the_watch_on(netpair, stack):
    """Four sockets on one port.  The first socket's thread blocks first (so it waits on the
    devices for all), takes one datagram and never receives again; the other three, blocked
    on their own notify meanwhile, must take over waiting on the devices and get every
    datagram (they block without a timeout: without the hand-over they would sleep for good
    with frames in the ring)."""
    port = BASE_PORT + 60
    count = 200
    with nslib.in_namespace(netpair.a):
        sockets = [open_socket(stack, ("0.0.0.0", port)) for _ in range(4)]
    first, others = sockets[0], sockets[1:]
    results = {}

    def read(sock, limit):
        payloads = []
        with contextlib.suppress(SocketClosedError):       # teardown after a failure
            while len(payloads) < limit:
                payloads.append(untag(sock.recv(2048))[1])
        results[sock] = payloads

    threads = [threading.Thread(target=read, args=(first, 1), daemon=True)]
    threads[0].start()
    time.sleep(0.2)                                  # the first thread is the watcher
    shared = {c.shared for c in first._receiver.captures}
    assert any(s.watcher is first._receiver for s in shared)
    threads += [threading.Thread(target=read, args=(s, count), daemon=True) for s in others]
    for thread in threads[1:]:
        thread.start()
    time.sleep(0.2)
    tx = udp_socket(netpair.b)
    stack.callback(tx.close)
    send_stream(tx, netpair.addr_a, [port], count, size=200, pause_every=10)
    for thread in threads:
        thread.join(15)
        assert not thread.is_alive(), [len(results.get(s, ())) for s in sockets]
    assert results[first] == [0]
    for sock in others:
        assert results[sock] == list(range(count)), sock.statistics()


def test_binds_and_closes_in_other_threads_lose_nothing_of_a_stream(netpair, stack):
    """While one socket streams, another thread binds and closes sockets on the same device
    (same port and other ports): every bind and close re-filters the shared capture, and
    the streaming socket loses nothing."""
    port = BASE_PORT + 50
    count = 3000
    with nslib.in_namespace(netpair.a):
        streaming = open_socket(stack, ("0.0.0.0", port))
    stop = threading.Event()
    churned = []

    def churn():
        with nslib.in_namespace(netpair.a):
            n = 0
            while not stop.is_set():
                with UdpcapSocket() as extra:
                    extra.bind(("0.0.0.0", port if n % 2 else port + 1 + n % 5))
                    time.sleep(0.005)
                n += 1
        churned.append(n)

    churner = Background(churn)
    tx = udp_socket(netpair.b)
    stack.callback(tx.close)
    sender = Background(lambda: send_stream(tx, netpair.addr_a, [port], count, size=100))
    got = drain_all([streaming], count, time.monotonic() + 30)[streaming]
    stop.set()
    churner.join(10)
    sender.join(10)
    assert churner.error is None and sender.error is None
    assert churned[0] >= 10, "the churn thread hardly ran"
    assert [untag(p)[1] for p in got] == list(range(count)), _full(streaming)


def test_join_and_leave_on_one_socket_lose_nothing_of_another(netpair, stack):
    """Two sockets on one port joined to a group; one keeps leaving and re-joining (each a
    drain and a new filter on the shared capture) while B streams to the group: the other
    gets every datagram, in order."""
    port = BASE_PORT + 60
    count = 2000
    with nslib.in_namespace(netpair.a):
        steady = open_socket(stack, ("0.0.0.0", port))
        fickle = open_socket(stack, ("0.0.0.0", port))
    steady.join_multicast_group(GROUP)
    fickle.join_multicast_group(GROUP)
    stop = threading.Event()
    changes = []

    def flip():
        n = 0
        while not stop.is_set():
            fickle.leave_multicast_group(GROUP)
            time.sleep(0.002)
            fickle.join_multicast_group(GROUP)
            time.sleep(0.002)
            n += 2
        changes.append(n)

    flipper = Background(flip)
    tx = udp_socket(netpair.b, multicast_if=netpair.addr_b)
    stack.callback(tx.close)
    sender = Background(lambda: send_stream(tx, GROUP, [port], count, size=100))
    got = drain_all([steady], count, time.monotonic() + 30)[steady]
    stop.set()
    flipper.join(10)
    sender.join(10)
    assert flipper.error is None and sender.error is None
    assert changes[0] >= 20
    assert [untag(p)[1] for p in got] == list(range(count)), _full(steady)


def test_close_wakes_a_blocked_socket_while_its_sibling_receives(netpair, stack):
    """close() of a socket blocked in another thread raises there at once, while a socket
    sharing its capture keeps receiving."""
    port = BASE_PORT + 70
    with nslib.in_namespace(netpair.a):
        blocked = open_socket(stack, ("0.0.0.0", port))
        sibling = open_socket(stack, ("0.0.0.0", port + 1))
    blocked.settimeout(None)
    waiting = Background(lambda: blocked.recv(2048))
    time.sleep(0.2)
    closed_at = time.monotonic()
    blocked.close()
    waiting.join(5)
    assert isinstance(waiting.error, SocketClosedError)
    assert waiting.finished - closed_at < 0.5
    tx = udp_socket(netpair.b)
    stack.callback(tx.close)
    send_stream(tx, netpair.addr_a, [port + 1], 50)
    got = drain_all([sibling], 50, time.monotonic() + 10)[sibling]
    assert [untag(p)[1] for p in got] == list(range(50))


def test_the_last_socket_to_leave_closes_the_capture(netpair, stack):
    """Captures are opened by the first socket on a device and closed by the last one."""
    from udpcap_ctypes._shared_capture import REGISTRY
    with nslib.in_namespace(netpair.a):
        first = UdpcapSocket()
        first.bind(("0.0.0.0", BASE_PORT + 80))
        second = UdpcapSocket()
        second.bind(("0.0.0.0", BASE_PORT + 81))
    shared = list(captures_of([first]).values())
    assert captures_of([second]).keys() == captures_of([first]).keys()
    first.close()
    assert all(not s.closed for s in shared)
    second.close()
    assert all(s.closed for s in shared)
    assert all(REGISTRY.find(s.key) is None for s in shared)


def test_different_settings_get_captures_of_their_own(netpair, stack):
    """Sockets share a capture only when its settings are theirs: another buffer size or
    immediate mode opens another one."""
    with nslib.in_namespace(netpair.a):
        plain = open_socket(stack, ("0.0.0.0", BASE_PORT + 90))
        same = open_socket(stack, ("0.0.0.0", BASE_PORT + 91))
        sized = open_socket(stack)
        sized.set_receive_buffer_size(1 << 20)
        sized.bind(("0.0.0.0", BASE_PORT + 92))
        batched = open_socket(stack, ("0.0.0.0", BASE_PORT + 93), immediate=False)
    assert captures_of([plain]).keys() == captures_of([same]).keys()
    assert not captures_of([plain]).keys() & captures_of([sized]).keys()
    assert not captures_of([plain]).keys() & captures_of([batched]).keys()


FORK_SCRIPT = textwrap.dedent("""
    import errno, os, socket, sys
    sys.path[:0] = [{repo!r}]
    from udpcap_ctypes import UdpcapSocket

    def send(port, payload):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.sendto(payload, ("127.0.0.1", port))

    parent = UdpcapSocket()
    parent.bind(("127.0.0.1", {port}))
    parent.settimeout(5)
    send({port}, b"before")
    assert parent.recv(100) == b"before"
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            try:
                parent.recv(100)
                code = 10                       # the inherited socket must not receive
            except OSError as exc:
                if exc.errno != errno.EBADF or "fork" not in str(exc):
                    code = 11
            child = UdpcapSocket()
            child.bind(("127.0.0.1", {port} + 1))
            child.settimeout(5)
            send({port} + 1, b"child")
            if child.recv(100) != b"child":
                code = 12
            child.close()
            parent.close()                      # must not touch the parent's captures
        except BaseException as exc:
            print("child:", repr(exc), file=sys.stderr)
            code = 13
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    send({port}, b"after")
    assert parent.recv(100) == b"after"           # the parent's capture survived the child
    parent.close()
    print("ok")
""")


def test_a_forked_child_uses_captures_of_its_own(netns):
    """After os.fork() the child's inherited socket raises EBADF (its captures are the
    parent's), a socket the child creates works, and the parent's socket still receives
    after the child closed everything and exited."""
    import os
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = netns.python(FORK_SCRIPT.format(repo=repo, port=BASE_PORT + 95), timeout=60)
    assert result.stdout.strip().endswith("ok"), result.stderr


def test_statistics_count_per_socket_and_per_device(netpair, stack):
    """Frame counters come from the shared capture since the socket subscribed; accepted and
    delivered are the socket's own."""
    port = BASE_PORT + 98
    with nslib.in_namespace(netpair.a):
        early = open_socket(stack, ("0.0.0.0", port))
    tx = udp_socket(netpair.b)
    stack.callback(tx.close)
    send_stream(tx, netpair.addr_a, [port], 20)
    assert len(drain_all([early], 20, time.monotonic() + 10)[early]) == 20
    with nslib.in_namespace(netpair.a):
        late = open_socket(stack, ("0.0.0.0", port + 1))
    send_stream(tx, netpair.addr_a, [port, port + 1], 30)
    got = drain_all([early, late], 30, time.monotonic() + 10)
    assert len(got[early]) == 30 and len(got[late]) == 30
    early_stats, late_stats = early.statistics(), late.statistics()
    assert early_stats["delivered"] == 50 and late_stats["delivered"] == 30
    # The late socket's frames are those the shared capture read since it subscribed.
    assert late_stats["frames"] >= 60 and early_stats["frames"] >= late_stats["frames"] + 20
    counts = collections.Counter(untag(p)[0] for p in got[late])
    assert counts == {port + 1: 30}


def _full(sock):
    """Every non-zero counter, and the captures' own, for a failure message."""
    stats = {k: v for k, v in sock.statistics().items() if v}
    shared = [(c.device.name, c.shared.stats.frames, c.capture.drops(), c.filter_text)
              for c in sock._receiver.captures]
    return stats, shared
