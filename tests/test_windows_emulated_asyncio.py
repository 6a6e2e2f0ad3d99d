"""The asyncio endpoint on the emulated Windows (tests/winemu).

There ``UdpcapSocket.fileno()`` raises (Npcap signals events, not fds), so
``create_datagram_endpoint`` must receive in its reader thread, whatever loop runs it.  The
emulated interpreter's asyncio is the real stdlib module, imported by tests/winemu/boot.py
before ``sys.platform`` becomes "win32" (asyncio picks its event loop implementation at import:
its Windows one needs ``_overlapped``, which only Windows has), so the loop here is a selector
loop and the thread path is chosen by fileno()'s OSError alone.  Functions named
``emulated_*`` run in the child.
"""

import asyncio
import errno
import socket
import sys
import threading

import pytest

from udpcap_ctypes import _net

pytestmark = [pytest.mark.windows_emulated, pytest.mark.live]

READER_THREAD = "udpcap-asyncio-reader"


class Recorder(asyncio.DatagramProtocol):
    """Records the calls in order; ``complete`` resolves after *expect* datagrams."""

    def __init__(self, expect):
        loop = asyncio.get_running_loop()
        self.events = []
        self.datagrams = []
        self.expect = expect
        self.complete = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.events.append("made")

    def datagram_received(self, data, addr):
        self.events.append("datagram")
        self.datagrams.append([data.decode(), list(addr)])
        if len(self.datagrams) >= self.expect and not self.complete.done():
            self.complete.set_result(None)

    def error_received(self, exc):
        self.events.append("error %r" % (exc,))

    def connection_lost(self, exc):
        self.events.append("lost %r" % (exc,))
        if not self.lost.done():
            self.lost.set_result(exc)


def _reader_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith(READER_THREAD)]


def emulated_endpoint(port, count):
    """Receive *count* datagrams from a socket of this process through the endpoint, close
    it; then open another and close the loop under it."""
    import udpcap_ctypes
    from udpcap_ctypes._shared_capture import REGISTRY

    result = {"platform": sys.platform, "threads_before": threading.active_count()}
    sent = ["w%04d" % i for i in range(count)]

    async def main():
        result["loop"] = type(asyncio.get_running_loop()).__name__
        transport, protocol = await udpcap_ctypes.create_datagram_endpoint(
            lambda: Recorder(count), local_addr=("127.0.0.1", port))
        sock = transport.get_extra_info("socket")
        try:
            sock.fileno()
        except OSError as exc:
            result["fileno_errno"] = exc.errno
        result["threads_open"] = _reader_threads()
        result["sockname"] = list(transport.get_extra_info("sockname"))
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with tx:
            tx.bind(("127.0.0.1", 0))
            result["source"] = list(tx.getsockname())
            for data in sent:
                tx.sendto(data.encode(), ("127.0.0.1", port))
                # Paced, as every emulated scenario (test_windows_emulated_sharing.PACING):
                # the emulated driver takes its frames from a Linux capture whose ring holds
                # about 60 frames, and a burst overflows it (tp_drops; no Npcap counter).
                await asyncio.sleep(0.002)
            try:
                await asyncio.wait_for(protocol.complete, 10)
            except asyncio.TimeoutError:
                raise AssertionError("%d of %d datagrams arrived within 10 s (statistics %r)"
                                     % (len(protocol.datagrams), count, sock.statistics())) \
                    from None
        transport.close()
        result["threads_after_close"] = _reader_threads()
        result["captures_after_close"] = REGISTRY.open_count()
        await asyncio.wait_for(protocol.lost, 10)
        result["events"] = protocol.events
        result["datagrams"] = protocol.datagrams

        transport2, protocol2 = await udpcap_ctypes.create_datagram_endpoint(
            lambda: Recorder(1), local_addr=("127.0.0.1", port))
        result["threads_second"] = _reader_threads()
        return protocol2

    loop = asyncio.new_event_loop()
    try:
        protocol2 = loop.run_until_complete(asyncio.wait_for(main(), 30))
    finally:
        loop.close()                     # with the second transport still open
    result["second_events"] = protocol2.events
    result["threads_after_loop_close"] = _reader_threads()
    result["threads_end"] = threading.active_count()
    result["captures_end"] = REGISTRY.open_count()
    return result


def test_endpoint_receives_in_a_thread_on_windows(machine, netns):
    port, count = _net.free_udp_port(), 50
    result = machine().call(netns, emulated_endpoint, port=port, count=count)
    assert result["platform"] == "win32"
    assert result["loop"] == "_UnixSelectorEventLoop"      # it has add_reader: fileno decides
    # No fd on Windows: the transport receives in its thread.
    assert result["fileno_errno"] == errno.EOPNOTSUPP
    assert len(result["threads_open"]) == 1, result
    assert result["sockname"] == ["127.0.0.1", port]
    assert result["events"] == ["made"] + ["datagram"] * count + ["lost None"]
    assert result["datagrams"] == [["w%04d" % i, result["source"]] for i in range(count)]
    # close() joined the thread and released the captures before it returned
    assert result["threads_after_close"] == [] and result["captures_after_close"] == 0
    # the loop closed under an open transport: the same
    assert len(result["threads_second"]) == 1
    assert result["second_events"] == ["made", "lost None"]
    assert result["threads_after_loop_close"] == []
    assert result["threads_end"] == result["threads_before"]
    assert result["captures_end"] == 0
