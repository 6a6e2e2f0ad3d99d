"""UdpcapSocket(AF_INET6) live: real kernel IPv6 traffic, real libpcap, in test namespaces.

Every test runs inside namespaces it creates: a veth pair with MTU 1280 (the IPv6 minimum, so
that large datagrams fragment), ``nodad`` ULA addresses fd00:198:18:<n>::1/::2 and the
link-local fe80::a/fe80::b.  Multicast (ff15::/16) is sent only there.  Receivers behave like
``socket.socket(AF_INET6, SOCK_DGRAM)`` with ``IPV6_V6ONLY`` on.
"""

import contextlib
import errno
import socket
import threading
import time

import pytest

import netns as nslib
from udpcap_ctypes import UdpcapSocket

pytestmark = pytest.mark.live

GROUP = "ff15::1234"
OTHER_GROUP = "ff15::5678"


def sender6(ns, multicast_if=None, loop=None):
    """A kernel AF_INET6 UDP socket created inside namespace *ns* (a Namespace or None)."""
    ctx = nslib.in_namespace(ns) if ns is not None else contextlib.ExitStack()
    with ctx:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        if multicast_if is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF,
                            socket.if_nametoindex(multicast_if))
        if loop is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, int(loop))
    return sock


def collect(sock, count, timeout=2.0, bufsize=65536):
    sock.settimeout(timeout)
    got = []
    while len(got) < count:
        try:
            got.append(sock.recvfrom(bufsize))
        except socket.timeout:
            break
    return got


def quiet(sock, wait=0.3):
    sock.settimeout(wait)
    with pytest.raises(socket.timeout):
        sock.recvfrom(65536)


@contextlib.contextmanager
def receiver6(ns, address, **options):
    with nslib.in_namespace(ns):
        sock = UdpcapSocket(socket.AF_INET6, **options)
        try:
            sock.bind(address)
            yield sock
        finally:
            sock.close()


def free_port6(ns, host="::"):
    with nslib.in_namespace(ns):
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind((host, 0))
        port = probe.getsockname()[1]
        probe.close()
    return port


def test_unicast_to_loopback(netns):
    port = free_port6(netns)
    with receiver6(netns, ("::1", port)) as sock, contextlib.closing(sender6(netns)) as tx:
        assert sock.family == socket.AF_INET6
        assert sock.getsockname() == ("::1", port, 0, 0)
        for i in range(20):
            tx.sendto(b"v6-%d" % i, ("::1", port))
        got = collect(sock, 20)
        sport = tx.getsockname()[1]
        assert [data for data, _ in got] == [b"v6-%d" % i for i in range(20)]
        assert {address for _, address in got} == {("::1", sport, 0, 0)}
        stats = sock.statistics()
        assert stats["delivered"] == 20 and stats["malformed_total"] == 0


def test_unicast_to_a_ula_across_veth_and_to_any(pair6):
    port = free_port6(pair6.a)
    with receiver6(pair6.a, (pair6.addr6_a, port)) as bound, \
            receiver6(pair6.a, ("::", port)) as anywhere, \
            contextlib.closing(sender6(pair6.b)) as tx:
        for i in range(30):
            tx.sendto(b"ula-%d" % i, (pair6.addr6_a, port))
        sport = tx.getsockname()[1]
        for sock in (bound, anywhere):
            got = collect(sock, 30)
            assert [data for data, _ in got] == [b"ula-%d" % i for i in range(30)]
            assert {address for _, address in got} == {(pair6.addr6_b, sport, 0, 0)}


def test_link_local_needs_a_scope_and_reports_it(pair6):
    port = free_port6(pair6.a)
    with nslib.in_namespace(pair6.a):
        index = socket.if_nametoindex(pair6.if_a)
        with UdpcapSocket(socket.AF_INET6) as sock:
            with pytest.raises(OSError) as info:
                sock.bind((pair6.LINK_LOCAL_A, port))
            assert info.value.errno == errno.EINVAL and "scope" in str(info.value)
    for address in [("%s%%%s" % (pair6.LINK_LOCAL_A, pair6.if_a), port),
                    (pair6.LINK_LOCAL_A, port, 0, index)]:
        with receiver6(pair6.a, address) as sock, contextlib.closing(sender6(pair6.b)) as tx:
            assert sock.getsockname() == (pair6.LINK_LOCAL_A, port, 0, index)
            with nslib.in_namespace(pair6.b):
                peer_index = socket.if_nametoindex(pair6.if_b)
            tx.sendto(b"local", (pair6.LINK_LOCAL_A, port, 0, peer_index))
            (data, source), = collect(sock, 1)
            assert data == b"local"
            assert source == (pair6.LINK_LOCAL_B, tx.getsockname()[1], 0, index)


@pytest.mark.parametrize("host", ["fd00:dead::1", "2001:db8::99", "ff15::1", "not-an-address"])
def test_addresses_no_device_has_fail_at_once(netns, host):
    with nslib.in_namespace(netns):
        with UdpcapSocket(socket.AF_INET6) as sock:
            start = time.monotonic()
            with pytest.raises(OSError) as info:
                sock.bind((host, 15600))
            assert time.monotonic() - start < 2
            assert info.value.errno in (errno.EADDRNOTAVAIL, errno.EINVAL)


def test_ipv4_and_ipv6_sockets_on_one_port_each_get_their_family(pair6):
    port = free_port6(pair6.a)
    with receiver6(pair6.a, ("::", port)) as six, \
            contextlib.closing(sender6(pair6.b)) as tx6:
        with nslib.in_namespace(pair6.a):
            four = UdpcapSocket()
            four.bind(("0.0.0.0", port))
        try:
            with nslib.in_namespace(pair6.b):
                tx4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with contextlib.closing(tx4):
                for i in range(10):
                    tx6.sendto(b"six-%d" % i, (pair6.addr6_a, port))
                    tx4.sendto(b"four-%d" % i, (pair6.addr_a, port))
                got6 = [data for data, _ in collect(six, 20, timeout=1.0)]
                got4 = [data for data, _ in collect(four, 20, timeout=1.0)]
            assert got6 == [b"six-%d" % i for i in range(10)]
            assert got4 == [b"four-%d" % i for i in range(10)]
        finally:
            four.close()


def test_fragmented_datagrams_are_reassembled(pair6):
    """60,000-byte datagrams over the MTU-1280 link: 48 fragments each."""
    port = free_port6(pair6.a)
    payloads = [bytes([i]) * 60000 for i in range(1, 11)]
    with receiver6(pair6.a, ("::", port)) as sock, contextlib.closing(sender6(pair6.b)) as tx:
        for payload in payloads:
            tx.sendto(payload, (pair6.addr6_a, port))
            time.sleep(0.01)
        got = collect(sock, len(payloads))
        assert [data for data, _ in got] == payloads
        stats = sock.statistics()
        assert stats["reassembled"] == len(payloads)
        assert stats["fragments"] >= 47 * len(payloads)
        assert stats["pending_datagrams"] == 0


def test_multicast_join_leave_and_own_datagrams_exactly_once(pair6):
    port = free_port6(pair6.a)
    with receiver6(pair6.a, ("::", port)) as sock, \
            contextlib.closing(sender6(pair6.b, multicast_if=pair6.if_b)) as remote, \
            contextlib.closing(sender6(pair6.a, multicast_if=pair6.if_a, loop=True)) as own:
        sock.join_multicast_group(GROUP, interface=pair6.if_a)
        # hold_memberships (on by default on POSIX): the kernel holds the group with MLD.
        assert GROUP in pair6.a.ip("-6", "maddr", "show", "dev", pair6.if_a).stdout
        for i in range(5):
            remote.sendto(b"remote-%d" % i, (GROUP, port))
            remote.sendto(b"never", (OTHER_GROUP, port))
            own.sendto(b"own-%d" % i, (GROUP, port))
        got = sorted(data for data, _ in collect(sock, 20, timeout=1.0))
        assert got == sorted([b"remote-%d" % i for i in range(5)]
                             + [b"own-%d" % i for i in range(5)])
        sock.set_multicast_loopback(False)
        own.sendto(b"own-muted", (GROUP, port))
        remote.sendto(b"remote-after", (GROUP, port))
        # (the filter now keeps this host's frames out: `not ether src <own MAC>`)
        assert [data for data, _ in collect(sock, 5, timeout=1.0)] == [b"remote-after"]
        assert "not ether src" in sock.filter_expressions()[pair6.if_a]
        sock.leave_multicast_group(GROUP, interface=pair6.if_a)
        remote.sendto(b"after-leave", (GROUP, port))
        quiet(sock)
        assert GROUP not in pair6.a.ip("-6", "maddr", "show", "dev", pair6.if_a).stdout


def test_setsockopt_membership_and_loop_map_to_the_methods(pair6):
    port = free_port6(pair6.a)
    with receiver6(pair6.a, ("::", port)) as sock, \
            contextlib.closing(sender6(pair6.b, multicast_if=pair6.if_b)) as remote:
        with nslib.in_namespace(pair6.a):
            index = socket.if_nametoindex(pair6.if_a)
        mreq = socket.inet_pton(socket.AF_INET6, GROUP) + index.to_bytes(4, "little")
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP) == 0
        remote.sendto(b"joined", (GROUP, port))
        assert [data for data, _ in collect(sock, 1)] == [b"joined"]
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_LEAVE_GROUP, mreq)
        remote.sendto(b"left", (GROUP, port))
        quiet(sock)
        with pytest.raises(OSError) as info:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, b"\0" * 8)
        assert info.value.errno == errno.ENOPROTOOPT


def test_a_stream_in_a_thread_with_a_blocked_receive(pair6):
    port = free_port6(pair6.a)
    with receiver6(pair6.a, ("::", port)) as sock, contextlib.closing(sender6(pair6.b)) as tx:
        got = []
        reader = threading.Thread(target=lambda: got.extend(collect(sock, 300, timeout=3.0)))
        reader.start()
        for i in range(300):
            tx.sendto(b"%05d" % i + b"." * (i % 700), (pair6.addr6_a, port))
            if i % 50 == 49:
                time.sleep(0.005)
        reader.join(10)
        assert [data[:5] for data, _ in got] == [b"%05d" % i for i in range(300)]


def test_datagrams_this_host_sends_to_its_own_addresses_arrive_once(pair6):
    """Linux routes datagrams to the host's own global and link-local addresses over lo
    (table local), not the veth: bound to ::, the socket captures both lo and the veth and
    must deliver each exactly once."""
    port = free_port6(pair6.a)
    with nslib.in_namespace(pair6.a):
        index = socket.if_nametoindex(pair6.if_a)
    with receiver6(pair6.a, ("::", port)) as sock, contextlib.closing(sender6(pair6.a)) as tx:
        targets = [(pair6.addr6_a, port, 0, 0), ("::1", port, 0, 0),
                   (pair6.LINK_LOCAL_A, port, 0, index)]
        for n, target in enumerate(targets):
            for i in range(5):
                tx.sendto(b"own-%d-%d" % (n, i), target)
        got = collect(sock, 20, timeout=1.0)
        assert sorted(data for data, _ in got) == sorted(
            b"own-%d-%d" % (n, i) for n in range(3) for i in range(5))
        # The link-local source comes with the scope of the interface that has the address,
        # as a kernel socket reports it, although the datagrams were captured on lo.
        sources = {address[0]: address for _, address in got}
        assert sources[pair6.LINK_LOCAL_A][3] == index
        assert sources[pair6.addr6_a][3] == sources["::1"][3] == 0


def test_the_same_datagrams_and_addresses_as_a_kernel_socket(pair6):
    """A kernel AF_INET6 socket (IPV6_V6ONLY) and a UdpcapSocket on the same port get the same
    traffic -- from the peer to the ULA and the link-local address, from this host to its own
    addresses and ::1, and IPv4 that neither may see -- and report the same thing."""
    port = free_port6(pair6.a)
    with nslib.in_namespace(pair6.a):
        index = socket.if_nametoindex(pair6.if_a)
        kernel = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        kernel.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        kernel.bind(("::", port))
    with contextlib.closing(kernel), receiver6(pair6.a, ("::", port)) as sock, \
            contextlib.closing(sender6(pair6.b)) as peer, \
            contextlib.closing(sender6(pair6.a)) as own:
        with nslib.in_namespace(pair6.b):
            peer_index = socket.if_nametoindex(pair6.if_b)
            four = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with contextlib.closing(four):
            for i in range(3):
                peer.sendto(b"ula-%d" % i, (pair6.addr6_a, port))
                peer.sendto(b"ll-%d" % i, (pair6.LINK_LOCAL_A, port, 0, peer_index))
                own.sendto(b"self-%d" % i, (pair6.addr6_a, port))
                own.sendto(b"lo-%d" % i, ("::1", port))
                own.sendto(b"ll-self-%d" % i, (pair6.LINK_LOCAL_A, port, 0, index))
                four.sendto(b"v4-%d" % i, (pair6.addr_a, port))
                time.sleep(0.01)
        expected = collect(kernel, 16, timeout=1.0)
        got = collect(sock, 16, timeout=1.0)
    assert len(expected) == 15
    assert sorted(got) == sorted(expected)
