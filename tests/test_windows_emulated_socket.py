"""UdpcapSocket on the emulated Windows: the Windows code path, unchanged, with real traffic.

Every test runs a function of this module inside the emulated Windows (``machine().call``,
see tests/winemu): ``WindowsPlatform``, ``EventWaiter``, ``Receiver`` and ``UdpcapSocket`` over
the package's own ctypes tables bound to the kernel32/advapi32/Packet/wpcap shims, in a test
namespace whose veth is the Npcap adapter ``\\Device\\NPF_{GUID}`` and whose lo is
``\\Device\\NPF_Loopback`` (DLT_NULL, inbound only).  Other hosts are the peer namespace of
a ``netpair``.  Functions named ``emulated_*`` run in the child; the tests assert on what
they return.
"""

import errno
import socket
import threading
import time

import pytest

from udpcap_ctypes import _net
from winemu import numbered, receive_all, send_udp

pytestmark = [pytest.mark.windows_emulated, pytest.mark.live]

GROUP = "239.192.7.1"
OTHER_GROUP = "239.192.7.2"


def _summary(received):
    return {"payloads": [data.decode("latin-1") for data, _ in received],
            "sources": sorted({"%s:%d" % address for _, address in received})}


# --------------------------------------------------------------------------------------------
# Unicast from another host, and what the Windows platform chose


def emulated_unicast_from_peer(peer, target, port, count, receive_in_thread):
    import sys

    from udpcap_ctypes import UdpcapSocket, _loader
    assert sys.platform == "win32"
    library = _loader.get_library()
    with UdpcapSocket() as sock:
        sock.bind(("0.0.0.0", port))
        result = {"filters": sock.filter_expressions(),
                  "library": [library.kind, library.path, library.fns.text_encoding],
                  "waiter": type(sock._receiver.waiter).__name__}
        received = []
        worker = threading.Thread(target=lambda: received.extend(receive_all(sock, count)))
        if receive_in_thread:
            worker.start()
        send_udp(peer, (target, port), numbered(count), interval=0.0005)
        if receive_in_thread:
            worker.join(10)
        else:
            received = receive_all(sock, count)
        result.update(_summary(received))
        result["statistics"] = sock.statistics()
        return result


@pytest.mark.parametrize("receive_in_thread", [False, True], ids=["main-thread", "worker-thread"])
def test_unicast_from_another_host_arrives_once_in_order(machine, netpair, receive_in_thread):
    """The main thread waits through _winapi (Ctrl-C aware), a worker through the package's
    own ctypes WaitForMultipleObjects: both must see every datagram once, in order."""
    port = _net.free_udp_port()
    result = machine().call(netpair.a, emulated_unicast_from_peer, peer=netpair.b.name,
                            target=netpair.addr_a, port=port, count=200,
                            receive_in_thread=receive_in_thread)
    assert result["payloads"] == [p.decode() for p in numbered(200)]
    assert result["sources"] and all(s.startswith(netpair.addr_b + ":")
                                      for s in result["sources"])
    kind, path, encoding = result["library"]
    assert kind == "npcap" and path.endswith("System32\\Npcap\\wpcap.dll")
    assert encoding == "utf-8"                    # pcap_init(PCAP_CHAR_ENC_UTF_8) took
    assert result["waiter"] == "EventWaiter"
    filters = result["filters"]
    loopback = filters.pop("\\Device\\NPF_Loopback")
    (adapter, text), = filters.items()
    assert adapter.startswith("\\Device\\NPF_{") and adapter.endswith("}")
    assert text.startswith("(not ether src ") and "udp[2:2] = %d" % port in text
    assert "ether" not in loopback and "udp[2:2] = %d" % port in loopback
    stats = result["statistics"]
    assert stats["delivered"] == 200 and stats["capture_drops"] == 0
    assert stats["devices_failed"] == 0 and stats["malformed_total"] == 0


def emulated_lone_datagrams_wake_blocked_receives(peer, target, port, rounds):
    """A receive with no timeout, on the main thread and on a worker, must be woken by one
    small datagram: only the driver's read event can do that.  A watchdog closes the socket
    after 5 s, which a receive nobody woke reports as SocketClosedError."""
    from udpcap_ctypes import SocketClosedError, UdpcapSocket
    outcomes = []
    with UdpcapSocket() as sock:
        sock.bind(("0.0.0.0", port))
        for index in range(rounds):
            payload = b"lone %d" % index
            timer = threading.Timer(0.3, send_udp, args=(peer, (target, port), [payload]))
            watchdog = threading.Timer(5.0, sock.close)
            timer.start()
            watchdog.start()
            box = []

            def receive(box=box):
                try:
                    box.append(sock.recvfrom(2048)[0].decode())
                except SocketClosedError:
                    box.append("not woken")
            if index % 2:
                worker = threading.Thread(target=receive)
                worker.start()
                worker.join(10)
            else:
                receive()
            watchdog.cancel()
            timer.join()
            outcomes.append(box[0] if box else "no result")
            if sock.closed:
                break
    return outcomes


def test_a_lone_datagram_wakes_a_receive_blocked_without_timeout(machine, netpair):
    """Npcap signals the read event per frame only with MinToCopy 0 (immediate mode); with the
    driver's 16000-byte default a lone datagram would never wake an INFINITE wait."""
    port = _net.free_udp_port()
    outcomes = machine().call(netpair.a, emulated_lone_datagrams_wake_blocked_receives,
                              peer=netpair.b.name, target=netpair.addr_a, port=port, rounds=4)
    assert outcomes == ["lone 0", "lone 1", "lone 2", "lone 3"]


# --------------------------------------------------------------------------------------------
# Loopback: \Device\NPF_Loopback, DLT_NULL, inbound only


def emulated_local_unicast(bind_host, destinations, port, count):
    from udpcap_ctypes import UdpcapSocket
    with UdpcapSocket() as sock:
        sock.bind((bind_host, port))
        devices = sorted(sock.filter_expressions())
        received = []
        for destination in destinations:
            send_udp(None, (destination, port), numbered(count, tag=destination.encode()),
                     interval=0.0002)
            received += receive_all(sock, count, timeout=1.0)
        extra = receive_all(sock, 1, timeout=0.3)          # nothing twice
        summary = _summary(received)
        summary["extra"] = len(extra)
        summary["devices"] = devices
        return summary


def test_loopback_bind_receives_local_unicast_once(machine, netpair):
    port = _net.free_udp_port()
    result = machine().call(netpair.a, emulated_local_unicast, bind_host="127.0.0.1",
                            destinations=["127.0.0.1"], port=port, count=100)
    assert result["devices"] == ["\\Device\\NPF_Loopback"]
    assert result["payloads"] == [p.decode() for p in numbered(100, tag=b"127.0.0.1")]
    assert result["extra"] == 0


def test_any_bind_receives_local_traffic_to_loopback_and_own_address_once(machine, netpair):
    """Traffic between local sockets goes over the loopback adapter on Windows, also to the
    host's own interface address: captured there once, never also on the adapter."""
    port = _net.free_udp_port()
    result = machine().call(netpair.a, emulated_local_unicast, bind_host="0.0.0.0",
                            destinations=["127.0.0.1", netpair.addr_a], port=port, count=50)
    assert len(result["devices"]) == 2
    expected = ([p.decode() for p in numbered(50, tag=b"127.0.0.1")]
                + [p.decode() for p in numbered(50, tag=netpair.addr_a.encode())])
    assert result["payloads"] == expected
    assert result["extra"] == 0


# --------------------------------------------------------------------------------------------
# Multicast


def emulated_multicast(peer, local_interface, port, loopback_steps, remote_count, own_count):
    """Join GROUP, then for each multicast-loopback setting in *loopback_steps*: another host
    and this host each send to GROUP (and to OTHER_GROUP, never joined)."""
    from udpcap_ctypes import UdpcapSocket
    steps = []
    with UdpcapSocket() as sock:
        sock.join_multicast_group(GROUP)
        sock.bind(("0.0.0.0", port))
        for step, loopback in enumerate(loopback_steps):
            sock.set_multicast_loopback(loopback)
            remote = numbered(remote_count, tag=b"remote%d-" % step)
            own = numbered(own_count, tag=b"own%d-" % step)
            send_udp(peer, (GROUP, port), remote, interval=0.0005)
            send_udp(peer, (OTHER_GROUP, port), [b"never"])
            send_udp(None, (GROUP, port), own, interval=0.0005,
                     multicast_interface=local_interface)
            received = receive_all(sock, remote_count + own_count + 5, timeout=0.8)
            steps.append(_summary(received))
        steps.append(sock.statistics())
    return steps


def test_multicast_from_another_host_and_own_multicast_exactly_once(machine, netpair):
    """Own multicast shows up twice on Npcap: outgoing on the adapter (dropped by the
    `not ether src <own MAC>` filter) and looped back on the loopback adapter -- which
    Windows does only after a local socket joined the group (udpcap's kickstart).  With
    multicast loopback on it is delivered exactly once; off, never; remote always."""
    port = _net.free_udp_port()
    result = machine().call(netpair.a, emulated_multicast, peer=netpair.b.name,
                            local_interface=netpair.addr_a, port=port,
                            loopback_steps=[True, False, True], remote_count=20, own_count=20)
    *steps, stats = result
    for index, (step, loopback) in enumerate(zip(steps, [True, False, True])):
        remote = [p.decode() for p in numbered(20, tag=b"remote%d-" % index)]
        own = [p.decode() for p in numbered(20, tag=b"own%d-" % index)]
        expected = remote + own if loopback else remote
        assert sorted(step["payloads"]) == sorted(expected), index
        assert [p for p in step["payloads"] if p.startswith("remote")] == remote
    assert stats["own_multicast_dropped"] == 20


def emulated_join_without_kickstart(peer, local_interface, port):
    """The emulated Windows loops own multicast to the loopback adapter only for groups a
    local socket joined: with the kickstart suppressed, own datagrams are not captured."""
    from udpcap_ctypes import UdpcapSocket, _loader, _platform
    platform = _platform.current(_loader.get_library())
    kickstarts = []
    platform._kickstart = kickstarts.append
    try:
        with UdpcapSocket() as sock:
            sock.join_multicast_group("239.192.7.9")
            sock.bind(("0.0.0.0", port))
            send_udp(None, ("239.192.7.9", port), [b"own"], multicast_interface=local_interface)
            send_udp(peer, ("239.192.7.9", port), [b"remote"])
            received = receive_all(sock, 2, timeout=0.8)
    finally:
        del platform._kickstart
    return {"kickstarts": kickstarts, "payloads": _summary(received)["payloads"]}


def test_the_harness_loops_own_multicast_only_after_a_local_join(machine, netpair):
    """The emulation itself: without udpcap's kickstart the loopback adapter never sees the
    host's own multicast (the Windows cold start); the kickstart is asked for the group."""
    result = machine().call(netpair.a, emulated_join_without_kickstart, peer=netpair.b.name,
                            local_interface=netpair.addr_a, port=_net.free_udp_port())
    assert result == {"kickstarts": [["239.192.7.9"]], "payloads": ["remote"]}


# --------------------------------------------------------------------------------------------
# Fragments, timeouts, non-blocking, close


def emulated_fragments(peer, target, port, sizes):
    from udpcap_ctypes import UdpcapSocket
    with UdpcapSocket() as sock:
        sock.bind(("0.0.0.0", port))
        payloads = [bytes([index]) * size for index, size in enumerate(sizes)]
        send_udp(peer, (target, port), payloads, interval=0.002)
        send_udp(None, ("127.0.0.1", port), payloads, interval=0.002)
        received = receive_all(sock, 2 * len(sizes), timeout=1.0)
        stats = sock.statistics()
    return {"ok": [data == payloads[i % len(sizes)] for i, (data, _) in enumerate(received)],
            "count": len(received), "fragments": stats["fragments"],
            "reassembled": stats["reassembled"]}


def test_fragmented_datagrams_from_another_host_are_reassembled(machine, netpair):
    sizes = [1472, 1473, 4000, 9000, 65507]
    result = machine().call(netpair.a, emulated_fragments, peer=netpair.b.name,
                            target=netpair.addr_a, port=_net.free_udp_port(), sizes=sizes)
    assert result["count"] == 2 * len(sizes) and all(result["ok"])
    assert result["reassembled"] == 4               # over the MTU-1500 veth; lo needs none
    assert result["fragments"] == 2 + 3 + 7 + 45


def emulated_timeouts(port):
    from udpcap_ctypes import SocketClosedError, UdpcapSocket
    out = {}
    with UdpcapSocket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.settimeout(0.25)
        started = time.monotonic()
        try:
            sock.recvfrom(100)
        except socket.timeout:
            out["timeout_after"] = time.monotonic() - started
        sock.setblocking(False)
        started = time.monotonic()
        try:
            sock.recv(100)
        except BlockingIOError as exc:
            out["nonblocking"] = [exc.errno, time.monotonic() - started]
        send_udp(None, ("127.0.0.1", port), [b"queued"])
        time.sleep(0.2)
        out["nonblocking_data"] = sock.recv(100).decode()
        sock.setblocking(True)
        errors = []

        def blocked():
            try:
                sock.recvfrom(100)
            except SocketClosedError as exc:
                errors.append((exc.errno, time.monotonic()))
        worker = threading.Thread(target=blocked)
        worker.start()
        time.sleep(0.3)
        closed_at = time.monotonic()
        sock.close()
        worker.join(5)
        out["closed_wakes_after"] = errors[0][1] - closed_at if errors else None
        out["closed_errno"] = errors[0][0] if errors else None
    return out


def test_timeout_nonblocking_and_close_waking_a_blocked_receive(machine, netpair):
    result = machine().call(netpair.a, emulated_timeouts, port=_net.free_udp_port())
    assert result["timeout_after"] >= 0.25
    assert result["nonblocking"][0] == errno.EAGAIN
    assert result["nonblocking_data"] == "queued"
    assert result["closed_errno"] == errno.EBADF
    assert result["closed_wakes_after"] is not None and result["closed_wakes_after"] < 0.1
