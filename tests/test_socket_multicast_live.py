"""Live acceptance tests of UdpcapSocket multicast: membership rules, remote and local
(loopback) delivery, changes made while another thread is blocked receiving, several sockets
on one port.

All multicast happens inside the namespaces of a ``netpair`` (A and B joined by an MTU-1500
veth with a ``224.0.0.0/4`` route each); never in the root namespace.  A's sender picks its
veth with IP_MULTICAST_IF; B's "local" sender does the same with B's address, so B's own
datagrams leave through the veth B captures on -- where Linux shows them to the capture as
outgoing frames, exactly once (the kernel's looped-back copy is not shown to packet sockets).

Order is asserted only among frames captured on the same device (one capture preserves wire
order); a unicast "marker" from A after the datagrams under test proves that nothing else was
delivered before it, without waiting for a timeout.
"""

import errno
import os
import socket
import struct
import time

import pytest

from test_socket_support import (
    Collector,
    assert_quiet,
    nslib,
    open_socket,
    receive,
    receive_payloads,
    udp_socket,
)
from udpcap_ctypes import SocketClosedError

pytestmark = pytest.mark.live

PORT = 15100
G1, G2, G3, G4 = "239.1.2.3", "239.1.2.4", "239.1.2.5", "239.1.2.6"


def sender(stack, ns, address):
    """A kernel socket in *ns* bound to *address* that sends multicast out of that interface."""
    sock = udp_socket(ns, bind=(address, 0), multicast_if=address)
    stack.callback(sock.close)
    return sock


def source_of(sock):
    return sock.getsockname()


# -- membership rules -------------------------------------------------------------------------

def test_membership_errors(netpair, stack):
    """Joining a non-multicast address, joining a group twice and leaving a group not joined
    are OSErrors -- before and after bind; a failed call changes nothing."""
    with nslib.in_namespace(netpair.b):
        sock = open_socket(stack)
        for bound in (False, True):
            if bound:
                sock.bind(("0.0.0.0", PORT))
            for not_multicast in ("10.0.0.1", "255.255.255.255", "223.255.255.255"):
                with pytest.raises(OSError):
                    sock.join_multicast_group(not_multicast)
            with pytest.raises(OSError):
                sock.join_multicast_group("300.1.1.1")
            sock.join_multicast_group(G1)
            with pytest.raises(OSError) as info:
                sock.join_multicast_group(G1)
            assert info.value.errno in (errno.EADDRINUSE, errno.EINVAL)
            with pytest.raises(OSError) as info:
                sock.leave_multicast_group(G2)
            assert info.value.errno in (errno.EADDRNOTAVAIL, errno.EINVAL)
            sock.leave_multicast_group(G1)
            with pytest.raises(OSError):
                sock.leave_multicast_group(G1)
        sock.close()
        with pytest.raises(SocketClosedError):
            sock.join_multicast_group(G1)


def test_join_and_leave_before_bind_take_effect_at_bind(netpair, stack):
    """Join G1, G2, G3 and leave G3 before bind: after bind exactly G1 and G2 arrive."""
    tx = sender(stack, netpair.a, netpair.addr_a)
    source = source_of(tx)
    with nslib.in_namespace(netpair.b):
        sock = open_socket(stack)
        sock.join_multicast_group(G1)
        sock.join_multicast_group(G2)
        sock.join_multicast_group(G3)
        sock.leave_multicast_group(G3)
        sock.bind(("0.0.0.0", PORT))
        for group, data in ((G3, b"g3"), (G1, b"g1"), (G4, b"g4"), (G2, b"g2")):
            tx.sendto(data, (group, PORT))
        tx.sendto(b"marker", (netpair.addr_b, PORT))
        assert receive_payloads(sock, 3) == [(b"g1", source), (b"g2", source),
                                             (b"marker", source)]
        assert_quiet(sock)


def test_setsockopt_membership_and_loopback(netpair, stack):
    """The setsockopt forms (IP_ADD_MEMBERSHIP / IP_DROP_MEMBERSHIP with an ip_mreq,
    IP_MULTICAST_LOOP) map to the methods; multicast_loopback reflects the setting."""
    tx = sender(stack, netpair.a, netpair.addr_a)
    source = source_of(tx)
    mreq = struct.pack("4s4s", socket.inet_aton(G1), socket.inet_aton("0.0.0.0"))
    with nslib.in_namespace(netpair.b):
        sock = open_socket(stack)
        assert sock.multicast_loopback is True
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        assert sock.multicast_loopback is False
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        assert sock.multicast_loopback is True
        sock.set_multicast_loopback(False)
        assert sock.multicast_loopback is False
        sock.set_multicast_loopback(True)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        sock.bind(("0.0.0.0", PORT))
        tx.sendto(b"joined", (G1, PORT))
        assert receive(sock) == (b"joined", source)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_DROP_MEMBERSHIP, mreq)
        tx.sendto(b"left", (G1, PORT))
        tx.sendto(b"marker", (netpair.addr_b, PORT))
        assert receive(sock) == (b"marker", source)
        assert_quiet(sock)


# -- delivery -----------------------------------------------------------------------------------

def test_remote_multicast_delivered(netpair, stack):
    """Multicast from another host (A) to a joined group arrives with A's address and port,
    in order, and a kernel socket on B sees the same (the membership is real)."""
    tx = sender(stack, netpair.a, netpair.addr_a)
    source = source_of(tx)
    with nslib.in_namespace(netpair.b):
        sock = open_socket(stack, ("0.0.0.0", PORT))
        sock.join_multicast_group(G1)
        sent = [b"remote-%d" % i for i in range(5)]
        for data in sent:
            tx.sendto(data, (G1, PORT))
        assert receive_payloads(sock, 5) == [(data, source) for data in sent]
        assert_quiet(sock)
        stats = sock.statistics()
    assert stats["delivered"] == 5 and stats["own_multicast_dropped"] == 0


def test_fragmented_multicast_delivered(netpair, stack):
    """A 20000-byte multicast datagram crosses the veth as 14 fragments and arrives whole."""
    tx = sender(stack, netpair.a, netpair.addr_a)
    data = os.urandom(20000)
    with nslib.in_namespace(netpair.b):
        sock = open_socket(stack, ("0.0.0.0", PORT))
        sock.join_multicast_group(G1)
        tx.sendto(data, (G1, PORT))
        assert receive(sock) == (data, source_of(tx))
        assert_quiet(sock)


def test_local_multicast_loopback_toggled_while_receiving(netpair, stack):
    """Multicast that B itself sends to a joined group: delivered exactly once with loopback
    on (the default); not at all after set_multicast_loopback(False); once again after
    set_multicast_loopback(True) -- both toggles made while another thread is blocked in
    recvfrom.  Remote multicast from A is delivered throughout."""
    tx_a = sender(stack, netpair.a, netpair.addr_a)
    tx_b = sender(stack, netpair.b, netpair.addr_b)
    a_source, b_source = source_of(tx_a), source_of(tx_b)
    with nslib.in_namespace(netpair.b):
        sock = open_socket(stack, ("0.0.0.0", PORT))
        sock.join_multicast_group(G1)
        assert sock.multicast_loopback is True
        collector = Collector(sock)
        try:
            time.sleep(0.2)
            tx_b.sendto(b"own-1", (G1, PORT))
            assert collector.get() == (b"own-1", b_source)
            tx_a.sendto(b"remote-1", (G1, PORT))
            assert collector.get() == (b"remote-1", a_source)   # own-1 was not repeated

            sock.set_multicast_loopback(False)
            assert sock.multicast_loopback is False
            tx_b.sendto(b"own-2", (G1, PORT))
            tx_a.sendto(b"remote-2", (G1, PORT))
            assert collector.get() == (b"remote-2", a_source)   # own-2 never delivered

            sock.set_multicast_loopback(True)
            assert sock.multicast_loopback is True
            tx_b.sendto(b"own-3", (G1, PORT))
            tx_a.sendto(b"remote-3", (G1, PORT))
            assert collector.get() == (b"own-3", b_source)
            assert collector.get() == (b"remote-3", a_source)
            collector.assert_quiet()
        finally:
            collector.stop()
        stats = sock.statistics()
    assert stats["delivered"] == 5


def test_multicast_loopback_off_before_bind(netpair, stack):
    """Loopback disabled before bind: only other hosts' multicast is delivered; B's own
    unicast to itself still is (the loopback flag is about multicast only)."""
    tx_a = sender(stack, netpair.a, netpair.addr_a)
    tx_b = sender(stack, netpair.b, netpair.addr_b)
    with nslib.in_namespace(netpair.b):
        sock = open_socket(stack)
        sock.set_multicast_loopback(False)
        sock.bind(("0.0.0.0", PORT))
        sock.join_multicast_group(G1)
        for i in range(3):
            tx_b.sendto(b"own-%d" % i, (G1, PORT))
            tx_a.sendto(b"remote-%d" % i, (G1, PORT))
        assert receive_payloads(sock, 3) == [(b"remote-%d" % i, source_of(tx_a))
                                             for i in range(3)]
        assert_quiet(sock)
        tx_b.sendto(b"own-unicast", (netpair.addr_b, PORT))
        assert receive(sock) == (b"own-unicast", source_of(tx_b))


def test_two_groups_two_sockets(netpair, stack):
    """Two sockets on the same port, one per group: each gets only its own group (and both
    get unicast to the port)."""
    tx = sender(stack, netpair.a, netpair.addr_a)
    source = source_of(tx)
    with nslib.in_namespace(netpair.b):
        one = open_socket(stack, ("0.0.0.0", PORT))
        two = open_socket(stack, ("0.0.0.0", PORT))
        one.join_multicast_group(G1)
        two.join_multicast_group(G2)
        for data, group in ((b"1a", G1), (b"2a", G2), (b"1b", G1), (b"2b", G2), (b"3", G3)):
            tx.sendto(data, (group, PORT))
        tx.sendto(b"marker", (netpair.addr_b, PORT))
        assert receive_payloads(one, 3) == [(b"1a", source), (b"1b", source),
                                            (b"marker", source)]
        assert receive_payloads(two, 3) == [(b"2a", source), (b"2b", source),
                                            (b"marker", source)]
        assert_quiet(one)
        assert_quiet(two, 0.1)


def test_join_and_leave_while_receiving(netpair, stack):
    """join/leave from the main thread while a collector thread is blocked in recvfrom:
    after the join the group arrives; after the leave nothing more from it."""
    tx = sender(stack, netpair.a, netpair.addr_a)
    with nslib.in_namespace(netpair.b):
        sock = open_socket(stack, ("0.0.0.0", PORT))
        sock.join_multicast_group(G1)
        collector = Collector(sock)
        try:
            time.sleep(0.2)
            tx.sendto(b"g2-before-join", (G2, PORT))
            tx.sendto(b"m0", (netpair.addr_b, PORT))
            assert collector.payloads_until(b"m0") == [b"m0"]

            sock.join_multicast_group(G2)
            tx.sendto(b"g2-joined", (G2, PORT))
            tx.sendto(b"g1-still", (G1, PORT))
            tx.sendto(b"m1", (netpair.addr_b, PORT))
            assert collector.payloads_until(b"m1") == [b"g2-joined", b"g1-still", b"m1"]

            sock.leave_multicast_group(G2)
            for i in range(3):
                tx.sendto(b"g2-after-leave-%d" % i, (G2, PORT))
            tx.sendto(b"g1-after", (G1, PORT))
            tx.sendto(b"m2", (netpair.addr_b, PORT))
            assert collector.payloads_until(b"m2") == [b"g1-after", b"m2"]

            sock.leave_multicast_group(G1)
            tx.sendto(b"g1-after-leave", (G1, PORT))
            tx.sendto(b"m3", (netpair.addr_b, PORT))
            assert collector.payloads_until(b"m3") == [b"m3"]
            collector.assert_quiet()
        finally:
            collector.stop()


def test_memberships_are_held_in_the_kernel(netpair, stack):
    """hold_memberships (POSIX default): a joined group shows up in B's kernel membership
    table for B's veth while joined, and disappears after leave and after close."""
    def groups_on_veth():
        text = netpair.b.run(["ip", "maddr", "show", "dev", netpair.if_b]).stdout
        return {line.split()[1] for line in text.splitlines() if line.strip().startswith("inet ")}

    with nslib.in_namespace(netpair.b):
        sock = open_socket(stack, ("0.0.0.0", PORT))
        assert G3 not in groups_on_veth()
        sock.join_multicast_group(G3)
        assert G3 in groups_on_veth()
        sock.leave_multicast_group(G3)
        assert G3 not in groups_on_veth()
        sock.join_multicast_group(G3)
        sock.close()
        assert G3 not in groups_on_veth()


# -- several sockets on one port ----------------------------------------------------------------

def test_three_sockets_same_port_each_get_a_copy(netpair, stack):
    """Three sockets bound to 0.0.0.0:PORT in B (all joined G1): each receives its own copy of
    remote unicast, remote multicast and local unicast to 127.0.0.1."""
    tx = sender(stack, netpair.a, netpair.addr_a)
    with nslib.in_namespace(netpair.b):
        socks = [open_socket(stack, ("0.0.0.0", PORT)) for _ in range(3)]
        for sock in socks:
            sock.join_multicast_group(G1)
        local = udp_socket(bind=("127.0.0.1", 0))
        stack.callback(local.close)
        tx.sendto(b"unicast", (netpair.addr_b, PORT))
        tx.sendto(b"multicast", (G1, PORT))
        for sock in socks:
            assert receive_payloads(sock, 2) == [(b"unicast", source_of(tx)),
                                                 (b"multicast", source_of(tx))]
        local.sendto(b"local", ("127.0.0.1", PORT))
        for sock in socks:
            assert receive(sock) == (b"local", source_of(local))
        for sock in socks:
            assert_quiet(sock, 0.15)
            assert sock.statistics()["delivered"] == 3
