"""UdpcapSocket(AF_INET6) on the emulated Windows: the loopback adapter and an Ethernet adapter.

The package's Windows path, unchanged, over the emulated Npcap (tests/winemu): IPv6 on
``\\Device\\NPF_Loopback`` arrives as DLT_NULL with the family 24 (Npcap's DLTNULLTYPE_IPV6,
which wpcap.dll's filters test for), and on ``\\Device\\NPF_{GUID}`` as Ethernet with ethertype
0x86DD.  The namespace pair has an MTU-1280 veth, ``nodad`` ULA and link-local addresses;
multicast goes to ff15::/16 inside it only.  Every test runs with both readers (the machine
fixture).  Functions named ``emulated_*`` run inside the emulated Windows.
"""

import contextlib
import socket
import threading
import time

import pytest

import netns as nslib

pytestmark = [pytest.mark.windows_emulated, pytest.mark.live]

GROUP = "ff15::4242"


def send6(ns, destination, payloads, interval=0.0005, multicast_if=None):
    """Send from a kernel AF_INET6 socket made in namespace *ns* (None: this one's)."""
    ctx = nslib.in_namespace(ns) if ns is not None else contextlib.ExitStack()
    with ctx:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        if multicast_if:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF,
                            socket.if_nametoindex(multicast_if))
    with sock:
        for payload in payloads:
            sock.sendto(payload, destination)
            if interval:
                time.sleep(interval)
        return sock.getsockname()[1]


def emulated_receive6(address, count, peer=None, target=None, group=None, join_if=None,
                      send_if=None, sizes=(64,), own=False, target_scope=0):
    """Bind an AF_INET6 UdpcapSocket to *address*, have *peer* (or this host, *own*) send
    *count* datagrams of each of *sizes* to *target*, and report what arrived."""
    import sys

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from test_windows_emulated_ipv6 import send6

    from udpcap_ctypes import UdpcapSocket
    assert sys.platform == "win32"
    with UdpcapSocket(socket.AF_INET6) as sock:
        if group:
            sock.join_multicast_group(group, interface=join_if)
        sock.bind(tuple(address))
        port = sock.getsockname()[1]
        payloads = [bytes([65 + i % 26]) * size for size in sizes for i in range(count)]
        got = []

        def receive():
            sock.settimeout(2.0)
            while len(got) < len(payloads):
                try:
                    got.append(sock.recvfrom(65536))
                except socket.timeout:
                    return

        reader = threading.Thread(target=receive)
        reader.start()
        destination = (target or group, port, 0, target_scope)
        sport = send6(None if own else peer, destination, payloads, multicast_if=send_if)
        reader.join(15)
        stats = sock.statistics()
        return {"ok": [data for data, _ in got] == payloads, "count": len(got),
                "sources": sorted({list(address) and "%s|%d|%d|%d" % address
                                   for _, address in got}),
                "sport": sport, "sockname": list(sock.getsockname()),
                "readers": sock.capture_readers(),
                "stats": {k: stats[k] for k in ("frames", "delivered", "fragments",
                                                 "reassembled", "malformed_total",
                                                 "not_for_us")}}


def test_unicast_to_loopback_over_the_dlt_null_adapter(machine, netns):
    result = machine().call(netns, emulated_receive6, address=["::1", 0], count=30,
                            target="::1", own=True)
    assert result["ok"], result
    assert result["sources"] == ["::1|%d|0|0" % result["sport"]]
    assert list(result["readers"]) == ["\\Device\\NPF_Loopback"]


def test_unicast_from_another_host_over_the_ethernet_adapter(machine, pair6):
    for host in (pair6.addr6_a, "::"):
        result = machine().call(pair6.a, emulated_receive6, address=[host, 0], count=30,
                                peer=pair6.b.name, target=pair6.addr6_a)
        assert result["ok"], result
        assert result["sources"] == ["%s|%d|0|0" % (pair6.addr6_b, result["sport"])]


def test_link_local_with_its_scope(machine, pair6):
    with nslib.in_namespace(pair6.a):
        index = socket.if_nametoindex(pair6.if_a)
    with nslib.in_namespace(pair6.b):
        peer_index = socket.if_nametoindex(pair6.if_b)
    result = machine().call(pair6.a, emulated_receive6,
                            address=["%s%%%s" % (pair6.LINK_LOCAL_A, pair6.if_a), 0], count=10,
                            peer=pair6.b.name, target=pair6.LINK_LOCAL_A,
                            target_scope=peer_index)
    assert result["ok"], result
    assert result["sockname"][3] == index
    assert result["sources"] == ["%s|%d|0|%d" % (pair6.LINK_LOCAL_B, result["sport"], index)]


@pytest.mark.parametrize("joined_on", ["name", "index", "any"])
def test_multicast_from_another_host(machine, pair6, joined_on):
    with nslib.in_namespace(pair6.a):
        index = socket.if_nametoindex(pair6.if_a)
    join_if = {"name": pair6.if_a, "index": index, "any": None}[joined_on]
    result = machine().call(pair6.a, emulated_receive6, address=["::", 0], count=20,
                            peer=pair6.b.name, group=GROUP, join_if=join_if,
                            send_if=pair6.if_b)
    assert result["ok"], result
    assert result["sources"] == ["%s|%d|0|0" % (pair6.LINK_LOCAL_B, result["sport"])] or \
        result["sources"] == ["%s|%d|0|0" % (pair6.addr6_b, result["sport"])], result


def test_fragmented_datagrams_over_the_ethernet_adapter(machine, pair6):
    result = machine().call(pair6.a, emulated_receive6, address=["::", 0], count=5,
                            peer=pair6.b.name, target=pair6.addr6_a, sizes=(20000, 60000),
                            timeout=120)
    assert result["ok"], result
    assert result["stats"]["reassembled"] == 10 and result["stats"]["malformed_total"] == 0
