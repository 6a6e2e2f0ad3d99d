"""Live tests of ``udpcap_ctypes.create_datagram_endpoint`` (udpcap_ctypes/_asyncio.py).

Real captures, real kernel traffic, inside namespaces the tests create (tests/netns.py).
Every behaviour is checked on both of the transport's paths:

* ``add_reader``: a selector loop waits on ``UdpcapSocket.fileno()``;
* ``thread``: a selector loop whose ``add_reader`` raises ``NotImplementedError``, as the
  Proactor loop's does on Windows, so the transport receives in a thread of its own.

The loop runs on the test's thread inside the namespace (``nslib.in_namespace``), so the
endpoint's captures open there.  Waits are futures set by the protocol, bounded by timeouts
that only a failure reaches.
"""

import asyncio
import contextlib
import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import udpcap_ctypes
from test_socket_support import UdpcapSocket, nslib, udp_socket
from udpcap_ctypes import _asyncio, create_datagram_endpoint
from udpcap_ctypes._shared_capture import REGISTRY

pytestmark = pytest.mark.live

WAIT = 5.0              # upper bound for what must happen; only a failure waits this long
PORT = 15300
GROUP, OTHER_GROUP = "239.1.3.1", "239.1.3.2"
READER_THREAD = "udpcap-asyncio-reader"
TESTS = os.path.dirname(os.path.abspath(__file__))
CHUNK = 128             # datagrams sent at once: loopback's capture ring holds 256 frames


class NoReaderLoop(asyncio.SelectorEventLoop):
    """A selector loop without ``add_reader``, as the Proactor loop (Windows): the transport
    must fall back to its reader thread."""

    def add_reader(self, fd, callback, *args):
        raise NotImplementedError


LOOPS = {"add_reader": asyncio.SelectorEventLoop, "thread": NoReaderLoop}


@pytest.fixture(params=sorted(LOOPS))
def kind(request):
    return request.param


@pytest.fixture(autouse=True)
def nothing_left_open():
    """Each test starts with no capture open, so that its own "released" checks mean
    something, and leaves none behind."""
    assert REGISTRY.open_count() == 0, "a capture was left open before this test"
    yield
    assert REGISTRY.open_count() == 0, "the test left a capture open"


def run(namespace, main, loop_class=asyncio.SelectorEventLoop, timeout=60):
    """Run coroutine function *main* to completion on a new *loop_class* loop, on this thread
    inside *namespace*; the loop is closed afterwards."""
    loop = loop_class()
    try:
        with nslib.in_namespace(namespace):
            return loop.run_until_complete(asyncio.wait_for(main(), timeout))
    finally:
        loop.close()


def reader_threads():
    return [t for t in threading.enumerate() if t.name.startswith(READER_THREAD)]


def assert_released():
    """Nothing of an endpoint is left: no reader thread, no capture."""
    assert reader_threads() == []
    assert REGISTRY.open_count() == 0


def assert_reading_as(kind, transport):
    """The transport took the path *kind* names."""
    sock = transport.get_extra_info("socket")
    if kind == "thread":
        assert len(reader_threads()) == 1, threading.enumerate()
        assert sock.gettimeout() is None
    else:
        assert reader_threads() == []
        assert sock.gettimeout() == 0.0


class Recorder(asyncio.DatagramProtocol):
    """Records every call, in order; :meth:`received` waits for a number of datagrams."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.events = []                 # "made", "datagram", ("error", exc), ("lost", exc)
        self.datagrams = []
        self.errors = []
        self.transport = None
        self.lost = self.loop.create_future()
        self._waiters = []

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport

    def datagram_received(self, data, addr):
        self.events.append("datagram")
        self.datagrams.append((data, addr))
        self._wake()

    def error_received(self, exc):
        self.events.append(("error", exc))
        self.errors.append(exc)
        self._wake()

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        if not self.lost.done():
            self.lost.set_result(exc)

    def _wake(self):
        for count, future in self._waiters:
            if len(self.datagrams) >= count and not future.done():
                future.set_result(None)

    async def received(self, count, timeout=WAIT):
        """The first *count* datagrams, once they are there."""
        if len(self.datagrams) < count:
            future = self.loop.create_future()
            self._waiters.append((count, future))
            try:
                await asyncio.wait_for(future, timeout)
            except asyncio.TimeoutError:
                pytest.fail("%d of %d datagrams arrived within %.1f s (errors %r, statistics %r)"
                            % (len(self.datagrams), count, timeout, self.errors,
                               _statistics(self.transport)))
        return self.datagrams[:count]

    async def closed(self, timeout=WAIT):
        """The exception connection_lost got."""
        try:
            return await asyncio.wait_for(asyncio.shield(self.lost), timeout)
        except asyncio.TimeoutError:
            pytest.fail("connection_lost was not called within %.1f s (events %r)"
                        % (timeout, self.events))

    def lost_calls(self):
        return [e for e in self.events if isinstance(e, tuple) and e[0] == "lost"]


def _statistics(transport):
    try:
        stats = transport.get_extra_info("socket").statistics()
    except Exception as exc:
        return repr(exc)
    return {k: v for k, v in stats.items() if v and k != "malformed"}


def numbered(count, tag="d"):
    return [b"%s%05d" % (tag.encode(), i) for i in range(count)]


def assert_lost_once(protocol, exc_check=None):
    """connection_lost came exactly once, last; with None unless *exc_check* is given."""
    lost = protocol.lost_calls()
    assert len(lost) == 1, protocol.events
    assert protocol.events[-1] is lost[0], protocol.events[-3:]
    if exc_check is None:
        assert lost[0][1] is None
    else:
        exc_check(lost[0][1])


# -- unicast ----------------------------------------------------------------------------------

def test_unicast_in_order_exactly_once(netns, stack, kind):
    """connection_made first, then every datagram once and in order (more than one batch),
    close() releases at once, connection_lost(None) once."""
    tx = udp_socket(netns, bind=("127.0.0.1", 0))
    stack.callback(tx.close)
    sent = numbered(3 * _asyncio.MAX_BATCH)
    state = {}

    async def main():
        transport, protocol = await create_datagram_endpoint(
            Recorder, local_addr=("127.0.0.1", PORT))
        assert protocol.events == ["made"] and protocol.transport is transport
        assert isinstance(transport, asyncio.DatagramTransport)
        assert transport.get_extra_info("sockname") == ("127.0.0.1", PORT)
        assert isinstance(transport.get_extra_info("socket"), UdpcapSocket)
        assert transport.get_extra_info("peername") is None
        assert not transport.is_closing()
        assert_reading_as(kind, transport)
        with pytest.raises(OSError) as info:
            transport.sendto(b"x", ("127.0.0.1", 9))
        assert info.value.errno == errno.EOPNOTSUPP and "only receives" in str(info.value)
        # In chunks: loopback's capture ring holds 256 frames, and this loop does not read
        # while this coroutine sends.
        for first in range(0, len(sent), CHUNK):
            for data in sent[first:first + CHUNK]:
                tx.sendto(data, ("127.0.0.1", PORT))
            await protocol.received(first + CHUNK)
        tx.sendto(b"marker", ("127.0.0.1", PORT))
        got = await protocol.received(len(sent) + 1)
        assert got == [(d, tx.getsockname()) for d in sent + [b"marker"]]
        transport.close()
        assert transport.is_closing()
        assert_released()                # before connection_lost: close() joined, released
        transport.close()                # idempotent
        assert await protocol.closed() is None
        state["protocol"] = protocol

    run(netns, main, LOOPS[kind])
    protocol = state["protocol"]
    assert protocol.events == ["made"] + ["datagram"] * (len(sent) + 1) + [("lost", None)]
    assert_released()


def test_the_sock_argument_and_argument_errors(netns, stack, kind):
    """sock= an unbound socket with local_addr, or a bound one; what cannot work says why and
    leaves nothing open."""
    tx = udp_socket(netns)
    stack.callback(tx.close)

    async def main():
        unbound = UdpcapSocket()
        transport, protocol = await create_datagram_endpoint(
            Recorder, local_addr=("127.0.0.1", PORT), sock=unbound)
        assert transport.get_extra_info("socket") is unbound and unbound.bound
        bound = UdpcapSocket()
        bound.bind(("127.0.0.1", PORT + 1))
        transport2, protocol2 = await create_datagram_endpoint(Recorder, sock=bound)
        assert transport2.get_extra_info("sockname") == ("127.0.0.1", PORT + 1)
        tx.sendto(b"one", ("127.0.0.1", PORT))
        tx.sendto(b"two", ("127.0.0.1", PORT + 1))
        assert [d for d, _ in await protocol.received(1)] == [b"one"]
        assert [d for d, _ in await protocol2.received(1)] == [b"two"]
        transport.close()
        transport2.close()
        assert unbound.closed and bound.closed      # the transport owns its socket
        await protocol.closed()
        await protocol2.closed()

        with pytest.raises(ValueError, match="local_addr"):
            await create_datagram_endpoint(Recorder)
        with UdpcapSocket() as sock:
            with pytest.raises(ValueError, match="not bound"):
                await create_datagram_endpoint(Recorder, sock=sock)
            with pytest.raises(ValueError, match="UdpcapSocket"):
                await create_datagram_endpoint(Recorder, sock=sock, immediate=False)
            sock.bind(("127.0.0.1", PORT + 2))
            with pytest.raises(ValueError, match="already bound"):
                await create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", PORT),
                                               sock=sock)
            assert not sock.closed                   # a failed call leaves the socket yours
        with pytest.raises(TypeError, match="UdpcapSocket"):
            await create_datagram_endpoint(Recorder, sock=tx)
        with pytest.raises(OSError) as info:
            await create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", PORT),
                                           family=socket.AF_UNIX)
        assert info.value.errno == errno.EAFNOSUPPORT
        # family= reaches the socket: an IPv6 endpoint on ::1, 4-tuple addresses.
        transport6, protocol6 = await create_datagram_endpoint(
            Recorder, local_addr=("::1", PORT + 3), family=socket.AF_INET6)
        assert transport6.get_extra_info("sockname") == ("::1", PORT + 3, 0, 0)
        with contextlib.closing(socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)) as tx6:
            tx6.sendto(b"six", ("::1", PORT + 3))
            (data, address), = await protocol6.received(1)
            assert data == b"six" and address == ("::1", tx6.getsockname()[1], 0, 0)
        transport6.close()
        await protocol6.closed()
        with pytest.raises(TypeError):
            await create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", PORT), bogus=1)

        def failing_factory():
            raise RuntimeError("factory failed")
        with pytest.raises(RuntimeError, match="factory failed"):
            await create_datagram_endpoint(failing_factory, local_addr=("127.0.0.1", PORT))
        assert_released()

    run(netns, main, LOOPS[kind])
    assert_released()


def test_options_reach_the_socket(netns, kind):
    async def main():
        transport, protocol = await create_datagram_endpoint(
            Recorder, local_addr=("127.0.0.1", PORT), family=socket.AF_INET,
            port_guard=False, coalesce=0)
        sock = transport.get_extra_info("socket")
        assert sock._options.port_guard is False and sock._options.coalesce == 0
        transport.close()
        await protocol.closed()

    run(netns, main, LOOPS[kind])


# -- multicast --------------------------------------------------------------------------------

def test_multicast_joined_on_the_transports_socket(netpair, stack, kind):
    """In netpair's B: groups joined and left on get_extra_info("socket") while the endpoint
    runs; only the joined group arrives, in order, from A's sender."""
    tx = udp_socket(netpair.a, bind=(netpair.addr_a, 0), multicast_if=netpair.addr_a)
    stack.callback(tx.close)
    source = tx.getsockname()

    async def main():
        transport, protocol = await create_datagram_endpoint(
            Recorder, local_addr=("0.0.0.0", PORT))
        sock = transport.get_extra_info("socket")
        sock.join_multicast_group(GROUP)
        for index in range(20):
            tx.sendto(b"g%d" % index, (GROUP, PORT))
            tx.sendto(b"other%d" % index, (OTHER_GROUP, PORT))
        tx.sendto(b"marker", (netpair.addr_b, PORT))
        got = await protocol.received(21)
        assert got == [(b"g%d" % i, source) for i in range(20)] + [(b"marker", source)]
        sock.leave_multicast_group(GROUP)
        tx.sendto(b"after leave", (GROUP, PORT))
        tx.sendto(b"marker2", (netpair.addr_b, PORT))
        assert (await protocol.received(22))[21] == (b"marker2", source)
        transport.close()
        assert await protocol.closed() is None

    run(netpair.b, main, LOOPS[kind])
    assert_released()


# -- cancelling and closing ---------------------------------------------------------------------

class QueueProtocol(Recorder):
    def __init__(self, queue):
        super().__init__()
        self.queue = queue

    def datagram_received(self, data, addr):
        super().datagram_received(data, addr)
        self.queue.put_nowait(data)


def test_receiver_task_cancelled_mid_stream(netns, stack, kind):
    """A task that owns the endpoint is cancelled while datagrams stream in: its finally
    closes the transport; what it got is the start of the stream, in order; nothing is left."""
    tx = udp_socket(netns)
    stack.callback(tx.close)
    state = {}

    async def consumer(queue, got, enough):
        transport, protocol = await create_datagram_endpoint(
            lambda: QueueProtocol(queue), local_addr=("127.0.0.1", PORT))
        state["protocol"] = protocol
        try:
            while True:
                got.append(await queue.get())
                if len(got) == 50:
                    enough.set()
        finally:
            transport.close()

    async def main():
        queue, got, enough = asyncio.Queue(), [], asyncio.Event()
        task = asyncio.ensure_future(consumer(queue, got, enough))
        sent = 300

        async def stream():              # goes on after the cancellation
            for index in range(sent):
                tx.sendto(b"s%05d" % index, ("127.0.0.1", PORT))
                await asyncio.sleep(0.001)

        sender = asyncio.ensure_future(stream())
        await asyncio.wait_for(enough.wait(), WAIT)
        assert not sender.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert_released()
        await sender
        protocol = state["protocol"]
        assert await protocol.closed() is None
        assert sent > len(got) >= 50
        assert len(protocol.datagrams) < sent
        assert got == [b"s%05d" % i for i in range(len(got))]
        return protocol

    protocol = run(netns, main, LOOPS[kind])
    assert_lost_once(protocol)
    assert_released()


def test_cancelled_while_creating(netns, kind):
    """The call that creates the endpoint is cancelled after it bound: it raises
    CancelledError and the endpoint is closed; made and lost(None) come once each."""
    async def main():
        made = asyncio.Event()
        protocols = []

        def factory():
            protocols.append(Recorder())
            made.set()
            return protocols[-1]

        task = asyncio.ensure_future(
            create_datagram_endpoint(factory, local_addr=("127.0.0.1", PORT)))
        await made.wait()                # no wait_for: its own task would let the call finish
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert_released()
        protocol = protocols[0]
        assert await protocol.closed() is None
        return protocol

    protocol = run(netns, main, LOOPS[kind])
    assert protocol.events == ["made", ("lost", None)]


def test_close_from_the_protocol_while_datagrams_arrive(netns, stack, kind):
    """A sender keeps sending; the protocol closes the transport in datagram_received of the
    100th datagram, in the middle of a batch (200 wait when the loop first reads): not one
    datagram more is delivered."""
    tx = udp_socket(netns)
    stack.callback(tx.close)
    stop = threading.Event()
    burst = 200

    def send():
        index = burst
        while not stop.is_set():
            tx.sendto(b"c%06d" % index, ("127.0.0.1", PORT))
            index += 1
            if index % 50 == 0:
                time.sleep(0.001)        # pacing, so that the ring is not simply flooded

    class Closer(Recorder):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if len(self.datagrams) == 100:
                self.transport.close()
                self.left_at_close = (reader_threads(), REGISTRY.open_count())

    async def main():
        transport, protocol = await create_datagram_endpoint(
            Closer, local_addr=("127.0.0.1", PORT))
        for index in range(burst):       # the loop reads none of these before it awaits
            tx.sendto(b"c%06d" % index, ("127.0.0.1", PORT))
        sender = threading.Thread(target=send, name="udpcap-test-sender", daemon=True)
        sender.start()
        try:
            assert await protocol.closed() is None
            # datagrams go on arriving at the (closed) port: give the loop some turns
            for _ in range(20):
                await asyncio.sleep(0.005)
        finally:
            stop.set()
            sender.join(WAIT)
        assert not sender.is_alive()
        return protocol

    protocol = run(netns, main, LOOPS[kind])
    assert protocol.left_at_close == ([], 0)
    assert len(protocol.datagrams) == 100
    assert [d for d, _ in protocol.datagrams] == [b"c%06d" % i for i in range(100)]
    assert_lost_once(protocol)
    assert_released()


# asyncio.run() makes the default loop, which has add_reader.
@pytest.mark.parametrize("kind, closer", [("add_reader", "loop.close"), ("thread", "loop.close"),
                                          ("add_reader", "asyncio.run")])
def test_closing_the_loop_with_an_open_transport(netns, stack, kind, closer):
    """The loop is closed while the transport is open: no thread and no capture remain, and
    the protocol gets connection_lost(None) once."""
    tx = udp_socket(netns)
    stack.callback(tx.close)
    threads_before = threading.active_count()

    async def main():
        transport, protocol = await create_datagram_endpoint(
            Recorder, local_addr=("127.0.0.1", PORT))
        tx.sendto(b"alive", ("127.0.0.1", PORT))
        await protocol.received(1)
        assert REGISTRY.open_count() > 0
        assert_reading_as(kind, transport)
        return transport, protocol

    with nslib.in_namespace(netns):
        if closer == "asyncio.run":
            transport, protocol = asyncio.run(main())
        else:
            loop = LOOPS[kind]()
            try:
                transport, protocol = loop.run_until_complete(main())
            finally:
                loop.close()
    assert transport.is_closing()
    assert threading.active_count() == threads_before
    assert_released()
    assert protocol.events == ["made", "datagram", ("lost", None)]


def test_closing_the_loop_without_asyncio_knowing_still_ends_the_thread(netns, stack):
    """Thread path: when the loop is closed behind the transport's back (the close hook is
    bypassed), the thread sees the closed loop at its next datagram, closes the socket and
    ends."""
    tx = udp_socket(netns)
    stack.callback(tx.close)
    loop = NoReaderLoop()
    try:
        with nslib.in_namespace(netns):
            transport, protocol = loop.run_until_complete(
                create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", PORT)))
        [thread] = reader_threads()
    finally:
        type(loop).close(loop)           # the class's close: the transport is not told
    tx.sendto(b"to a closed loop", ("127.0.0.1", PORT))
    thread.join(WAIT)
    assert not thread.is_alive()
    assert_released()
    transport.close()                    # harmless now
    assert protocol.events == ["made"]


# -- many endpoints -----------------------------------------------------------------------------

def test_many_endpoints_on_one_loop(netns, stack, kind):
    """100 endpoints (20 on the thread path: a thread each) on one loop, a port each: each
    gets its own port's datagrams, in order, and no other."""
    count = 100 if kind == "add_reader" else 20
    ports = [PORT + i for i in range(count)]
    tx = udp_socket(netns)
    stack.callback(tx.close)

    async def main():
        endpoints = []
        try:
            for port in ports:
                endpoints.append(await create_datagram_endpoint(
                    Recorder, local_addr=("127.0.0.1", port)))
            if kind == "thread":
                assert len(reader_threads()) == count
            for round_ in range(3):      # a round at a time: the ring holds 256 frames
                for port in ports:
                    tx.sendto(b"%d/%d" % (port, round_), ("127.0.0.1", port))
                for _transport, protocol in endpoints:
                    await protocol.received(round_ + 1)
            for port, (_transport, protocol) in zip(ports, endpoints):
                got = await protocol.received(3)
                assert [d for d, _ in got] == [b"%d/%d" % (port, r) for r in range(3)]
            for port in ports:               # markers: nothing else came before them
                tx.sendto(b"end", ("127.0.0.1", port))
            for _transport, protocol in endpoints:
                assert [d for d, _ in await protocol.received(4)][3] == b"end"
        finally:
            for transport, _protocol in endpoints:
                transport.close()
        assert_released()
        for _transport, protocol in endpoints:
            assert await protocol.closed() is None
            assert len(protocol.datagrams) == 4
        return [protocol for _t, protocol in endpoints]

    for protocol in run(netns, main, LOOPS[kind], timeout=120):
        assert_lost_once(protocol)
    assert_released()


class CountingSocket(UdpcapSocket):
    """An UdpcapSocket that counts its receive calls (the receive path is the real one)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.receives = 0

    def recvfrom_batch(self, max_datagrams, bufsize=65535):
        self.receives += 1
        return super().recvfrom_batch(max_datagrams, bufsize)


def test_idle_endpoints_on_a_shared_device_are_not_woken(netns, stack):
    """30 endpoints on one loop share the loopback capture; 300 datagrams go to the first
    port only.  The capture's fd is waited on once per loop, so the idle endpoints' receives
    run (almost) never; with every endpoint's fd covering the capture, every wake-up of the
    loop made each of them receive once (435 calls in all, 15 each)."""
    count, endpoints_wanted = 300, 30
    ports = [PORT + 200 + i for i in range(endpoints_wanted)]
    tx = udp_socket(netns)
    stack.callback(tx.close)

    async def main():
        endpoints = []
        try:
            for port in ports:
                sock = CountingSocket()
                sock.bind(("127.0.0.1", port))
                endpoints.append(await create_datagram_endpoint(Recorder, sock=sock))
            busy = endpoints[0][1]
            for seq in range(count):
                tx.sendto(b"%d" % seq, ("127.0.0.1", ports[0]))
                if seq % 20 == 19:
                    await asyncio.sleep(0.002)      # within the 256-frame loopback ring
            got = await busy.received(count)
            assert [d for d, _ in got] == [b"%d" % seq for seq in range(count)]
            idle = [t.get_extra_info("socket").receives for t, _p in endpoints[1:]]
            assert all(not p.datagrams for _t, p in endpoints[1:])
            return idle
        finally:
            for transport, _protocol in endpoints:
                transport.close()

    idle = run(netns, main, asyncio.SelectorEventLoop)
    assert sum(idle) <= 2 * len(idle), idle
    assert_released()


# -- errors -------------------------------------------------------------------------------------

class CaptureLeft(AssertionError):
    """A capture stayed open after the socket closed (Receiver._lose once left the healthy
    loopback capture out of ``lost``, so close() never released it)."""


def vanished_device_child(kind, address, ifname):
    """Runs in a child process inside netpair's A (the test below): an endpoint bound to
    *address*, whose device *ifname* is then deleted.  Returns what the test checks."""
    async def main():
        transport, protocol = await create_datagram_endpoint(
            Recorder, local_addr=(address, PORT))
        subprocess.run(["ip", "link", "del", ifname], check=True, timeout=30)
        exc = await protocol.closed()
        return {"errno": getattr(exc, "errno", None), "error": repr(exc),
                "events": [e if isinstance(e, str) else e[0] for e in protocol.events],
                "closing": transport.is_closing(), "threads_at_lost": len(reader_threads()),
                "captures_at_lost": REGISTRY.open_count()}

    loop = LOOPS[kind]()
    try:
        return loop.run_until_complete(asyncio.wait_for(main(), 30))
    finally:
        loop.close()


def test_a_vanished_device_is_fatal_and_goes_to_connection_lost(netpair, kind):
    """Bound to A's veth address, whose device is then deleted: connection_lost gets the
    ENETDOWN error, no error_received comes, and everything is released.  In a child process,
    so that a capture left open cannot reach the other tests."""
    code = ("import json, sys; sys.path[:0] = [%r]; import test_asyncio_live as t; "
            "print('RESULT:' + json.dumps(t.vanished_device_child(%r, %r, %r)))"
            % (TESTS, kind, netpair.addr_a, netpair.if_a))
    proc = netpair.a.python(code, timeout=60, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT:")]
    assert proc.returncode == 0 and lines, "child failed:\n%s\n%s" % (proc.stdout, proc.stderr)
    result = json.loads(lines[-1][len("RESULT:"):])
    assert result["errno"] == errno.ENETDOWN, result["error"]
    assert result["events"] == ["made", "lost"]
    assert result["closing"] and result["threads_at_lost"] == 0
    if result["captures_at_lost"] != 0:
        raise CaptureLeft("%d capture(s) still open after the fatal error closed the socket"
                          % result["captures_at_lost"])


class FlakySocket(UdpcapSocket):
    """An UdpcapSocket whose next receive raises the errors queued in ``failures`` first
    (fault injection: the receive path itself is the real one)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.failures = []

    def recvfrom_batch(self, max_datagrams, bufsize=65535):
        if self.failures:
            raise self.failures.pop(0)
        return super().recvfrom_batch(max_datagrams, bufsize)


def test_survivable_errors_and_protocol_exceptions(netns, stack, kind):
    """A receive error the socket survives goes to error_received and reading goes on; an
    exception in datagram_received goes to the loop's exception handler and the rest of the
    batch is still delivered."""
    tx = udp_socket(netns)
    stack.callback(tx.close)

    class Raising(Recorder):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data == b"bad":
                raise ValueError("the protocol failed on %r" % data)

    async def main():
        contexts = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: contexts.append(ctx))
        sock = FlakySocket()
        sock.bind(("127.0.0.1", PORT))
        sock.failures.append(OSError(errno.ENOBUFS, "injected"))
        transport, protocol = await create_datagram_endpoint(Raising, sock=sock)
        for data in (b"first", b"bad", b"third"):
            tx.sendto(data, ("127.0.0.1", PORT))
        got = await protocol.received(3)
        assert [d for d, _ in got] == [b"first", b"bad", b"third"]
        transport.close()
        await protocol.closed()
        return protocol, contexts

    protocol, contexts = run(netns, main, LOOPS[kind])
    [error] = protocol.errors
    assert error.errno == errno.ENOBUFS
    assert protocol.events[:2] == ["made", ("error", error)]
    assert [type(c.get("exception")) for c in contexts] == [ValueError]
    assert "datagram_received" in contexts[0]["message"]
    assert_lost_once(protocol)


# -- cost -----------------------------------------------------------------------------------------

class CountingLoop(asyncio.SelectorEventLoop):
    """Counts the calls the transport makes the loop run: reader callbacks (add_reader path)
    and callbacks handed in from another thread (thread path)."""

    reader_calls = 0
    threadsafe_calls = 0

    def add_reader(self, fd, callback, *args):
        def counted(*a):
            self.reader_calls += 1
            return callback(*a)
        return super().add_reader(fd, counted, *args)

    def call_soon_threadsafe(self, callback, *args, **kwargs):
        self.threadsafe_calls += 1
        return super().call_soon_threadsafe(callback, *args, **kwargs)


class CountingNoReaderLoop(CountingLoop):
    def add_reader(self, fd, callback, *args):
        raise NotImplementedError


def test_an_idle_endpoint_does_not_spin(netns, stack, kind):
    """Over 0.5 s without traffic the loop runs (almost) nothing for the endpoint: no reader
    callbacks, nothing handed in by the thread.  (The counters do count: one datagram shows.)"""
    tx = udp_socket(netns)
    stack.callback(tx.close)
    loop_class = CountingLoop if kind == "add_reader" else CountingNoReaderLoop

    async def main():
        loop = asyncio.get_running_loop()
        transport, protocol = await create_datagram_endpoint(
            Recorder, local_addr=("127.0.0.1", PORT))
        tx.sendto(b"one", ("127.0.0.1", PORT))
        await protocol.received(1)
        calls = loop.reader_calls + loop.threadsafe_calls
        assert calls >= 1
        await asyncio.sleep(0.5)
        idle = loop.reader_calls + loop.threadsafe_calls - calls
        transport.close()
        await protocol.closed()
        return idle

    idle = run(netns, main, loop_class)
    assert idle <= 1, "the loop ran %d callbacks for an idle endpoint in 0.5 s" % idle


def test_a_callback_hands_over_a_bounded_batch(netns, stack):
    """add_reader path: more datagrams wait than one batch holds (TPACKET_V3 blocks hold
    them, immediate=False); each reader callback delivers at most MAX_BATCH of them and
    returns to the loop, which calls again: all arrive, in order."""
    tx = udp_socket(netns)
    stack.callback(tx.close)
    sent = numbered(_asyncio.MAX_BATCH * 5 // 2)

    class PerCallback(Recorder):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            self.callbacks.append(self.loop.reader_calls)

    async def main():
        transport, protocol = await create_datagram_endpoint(
            PerCallback, local_addr=("127.0.0.1", PORT), immediate=False)
        protocol.callbacks = []
        for data in sent:
            tx.sendto(data, ("127.0.0.1", PORT))
        got = await protocol.received(len(sent))
        assert [d for d, _ in got] == sent
        stats = transport.get_extra_info("socket").statistics()
        transport.close()
        await protocol.closed()
        return protocol.callbacks, stats

    callbacks, stats = run(netns, main, CountingLoop)
    assert stats["capture_drops"] == 0
    per_callback = [callbacks.count(c) for c in sorted(set(callbacks))]
    assert max(per_callback) == _asyncio.MAX_BATCH, per_callback


class BackPressureLoop(NoReaderLoop):
    """Counts the batches the reader thread has handed in that the loop has not run yet."""

    def __init__(self):
        super().__init__()
        self.pending = 0
        self.most_pending = 0
        self.changed = threading.Condition()

    def call_soon_threadsafe(self, callback, *args, **kwargs):
        def counted(*a):
            with self.changed:
                self.pending -= 1
            return callback(*a)
        with self.changed:
            self.pending += 1
            self.most_pending = max(self.most_pending, self.pending)
            self.changed.notify_all()
        return super().call_soon_threadsafe(counted, *args, **kwargs)


def test_the_reader_thread_waits_for_a_busy_loop(netns, stack):
    """Back-pressure: while the loop is busy, the thread hands in at most MAX_PENDING_BATCHES
    batches and then waits; afterwards every datagram arrives, in order."""
    tx = udp_socket(netns)
    stack.callback(tx.close)
    bound = _asyncio.MAX_PENDING_BATCHES
    sent = numbered(bound + CHUNK)

    async def main():
        loop = asyncio.get_running_loop()
        transport, protocol = await create_datagram_endpoint(
            Recorder, local_addr=("127.0.0.1", PORT), coalesce=0)
        # The loop is busy from here on (this coroutine blocks it) while the thread reads.
        with loop.changed:
            for index in range(bound):   # one datagram, one batch
                tx.sendto(sent[index], ("127.0.0.1", PORT))
                assert loop.changed.wait_for(lambda i=index: loop.pending > i, WAIT), loop.pending
            for data in sent[bound:]:
                tx.sendto(data, ("127.0.0.1", PORT))
            # Room for an unbounded thread to hand in more: the bound must hold meanwhile.
            loop.changed.wait(0.3)
            assert loop.pending == loop.most_pending == bound
        got = await protocol.received(len(sent))
        assert [d for d, _ in got] == sent
        stats = transport.get_extra_info("socket").statistics()
        transport.close()
        await protocol.closed()
        return stats

    stats = run(netns, main, BackPressureLoop)
    assert stats["capture_drops"] == 0 and stats["queue_dropped"] == 0


def test_importing_the_package_does_not_import_asyncio():
    code = ("import sys, udpcap_ctypes; assert 'asyncio' not in sys.modules, 'asyncio loaded'; "
            "f = udpcap_ctypes.create_datagram_endpoint; assert 'asyncio' in sys.modules; "
            "assert f.__module__ == 'udpcap_ctypes._asyncio', f.__module__")
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True,
                          env=nslib.python_env(), timeout=60)
    assert proc.returncode == 0, proc.stdout
    assert "create_datagram_endpoint" in udpcap_ctypes.__all__
