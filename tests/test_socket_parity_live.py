"""Socket parity: each call behaves like ``socket.socket(AF_INET, SOCK_DGRAM)`` or says why not.

Where a behaviour has a kernel counterpart the test compares with a real socket in the same
run (timeouts, sizes, ``recv(0)``, errors after close).  Live tests run on the ``lo`` and veth
of test namespaces; the Windows side of what differs (``fileno``, the port guard's default) is
in tests/test_windows_emulated_parity.py.
"""

import asyncio
import contextlib
import errno
import gc
import selectors
import socket
import subprocess
import sys
import time
import warnings

import pytest

from test_socket_support import Background, UdpcapSocket, nslib, open_socket, udp_socket
from udpcap_ctypes import NotBoundError, SocketClosedError
from udpcap_ctypes.udpcap_socket import DEFAULT_RECEIVE_BUFFER

PORT = 15400


def _outcome(call):
    try:
        return ("ok", call())
    except Exception as exc:           # noqa: BLE001 - the type is what is compared
        return ("raises", type(exc))


# --------------------------------------------------------------------------------------------
# Construction, options, attributes


def test_family_type_and_proto_as_a_socket_takes_them():
    """Checked before the capture library is touched (no root needed)."""
    with pytest.raises(OSError) as info:
        UdpcapSocket(socket.AF_UNIX)
    assert info.value.errno == errno.EAFNOSUPPORT and "AF_INET6" in str(info.value)
    with pytest.raises(OSError) as info:
        UdpcapSocket(socket.AF_INET, socket.SOCK_STREAM)
    assert info.value.errno == errno.EPROTONOSUPPORT and "SOCK_DGRAM" in str(info.value)
    with pytest.raises(OSError):
        UdpcapSocket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_TCP)


@pytest.mark.parametrize("option,value", [
    ("immediate", "no"), ("immediate", 1), ("promiscuous", None), ("port_guard", "yes"),
    ("verify_udp_checksum", 0), ("hold_memberships", "off"),
    ("reassembly_timeout", "30"), ("reassembly_timeout", float("inf")),
    ("coalesce", "fast"), ("coalesce", True)])
def test_options_take_booleans_and_numbers_only(option, value):
    """``immediate="no"`` used to mean True."""
    with pytest.raises((TypeError, ValueError)) as info:
        UdpcapSocket(**{option: value})
    assert option in str(info.value)


@pytest.mark.live
def test_positional_family_and_type_attributes_and_getsockopt(stack):
    sock = open_socket(stack)
    stack.callback(sock.close)
    other = UdpcapSocket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    stack.callback(other.close)
    kernel = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stack.callback(kernel.close)
    assert (sock.family, sock.type) == (kernel.family, kernel.type)
    assert isinstance(sock.family, socket.AddressFamily)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == DEFAULT_RECEIVE_BUFFER
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 4 << 20
    assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP) == 1
    sock.set_multicast_loopback(False)
    assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP) == 0
    assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 4) == b"\0" * 4
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_DGRAM
    with pytest.raises(OSError) as info:
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    assert info.value.errno == errno.ENOPROTOOPT


@pytest.mark.live
@pytest.mark.parametrize("size", [2 ** 31, 2 ** 32 + (64 << 20), 2 ** 63])
def test_a_receive_buffer_that_does_not_fit_a_c_int_is_refused(stack, size):
    """It used to wrap in pcap_set_buffer_size's int: 2**32 + 64 MiB behaved as 64 MiB."""
    sock = open_socket(stack)
    with pytest.raises(OverflowError) as info:
        sock.set_receive_buffer_size(size)
    assert "2**31" in str(info.value)
    with pytest.raises(OverflowError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    with pytest.raises(TypeError):
        sock.set_receive_buffer_size(2.5 * (1 << 20))
    sock.set_receive_buffer_size(2 ** 31 - 1)          # the largest C int is taken
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 ** 31 - 1


# --------------------------------------------------------------------------------------------
# Timeouts and sizes, as a socket checks them


@pytest.mark.live
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e300, "1", b"1", -1, -0.5,
                                   2 ** 63, None, 0, 1.5, True, 10 ** 9])
def test_settimeout_accepts_and_refuses_what_a_socket_does(stack, value):
    sock = open_socket(stack)
    kernel = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stack.callback(kernel.close)
    expected = _outcome(lambda: kernel.settimeout(value) or kernel.gettimeout())
    assert _outcome(lambda: sock.settimeout(value) or sock.gettimeout()) == expected


@pytest.mark.live
def test_a_huge_timeout_waits_and_close_still_wakes_it(netns, stack):
    """settimeout(1e9) is valid for a socket; poll() takes at most 2**31-1 ms."""
    with nslib.in_namespace(netns):
        sock = open_socket(stack, ("127.0.0.1", PORT))
    sock.settimeout(1e9)
    blocked = Background(lambda: sock.recvfrom(100))
    time.sleep(0.3)
    sock.close()
    errors = [blocked.join(5).error]
    assert [type(e) for e in errors] == [SocketClosedError]


def _queue(netns, *payloads):
    with nslib.in_namespace(netns):
        tx = udp_socket()
    with tx:
        for payload in payloads:
            tx.sendto(payload, ("127.0.0.1", PORT))
    time.sleep(0.1)


@pytest.mark.live
@pytest.mark.parametrize("call", [
    lambda s: s.recv(2.5), lambda s: s.recvfrom("4"), lambda s: s.recv(-1),
    lambda s: s.recv(2 ** 63), lambda s: s.recv_into(bytearray(10), -1),
    lambda s: s.recv_into(bytearray(10), 11), lambda s: s.recvfrom_into(bytearray(10), 2.5),
    lambda s: s.recv_into(bytes(10)), lambda s: s.recv(None)],
    ids=["recv-float", "recvfrom-str", "recv-negative", "recv-huge", "into-negative",
         "into-too-long", "into-float", "into-readonly", "recv-none"])
def test_a_bad_size_raises_at_once_and_consumes_nothing(netns, stack, call):
    """``recv(2.5)`` used to pop the queued datagram and then raise TypeError: it was lost."""
    with nslib.in_namespace(netns):
        sock = open_socket(stack, ("127.0.0.1", PORT))
    sock.settimeout(2.0)
    _queue(netns, b"first", b"queued")
    assert sock.recv(100) == b"first"        # "queued" now waits in the receiver's queue,
    kernel = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stack.callback(kernel.close)
    kernel.settimeout(2.0)
    expected = _outcome(lambda: call(kernel))[1]
    started = time.monotonic()
    with pytest.raises(expected):
        call(sock)                           # where the fast paths would have popped it
    assert time.monotonic() - started < 1.0            # raised before any wait
    assert sock.recv(100) == b"queued"


@pytest.mark.live
def test_zero_sizes_return_at_once_without_consuming(netns, stack):
    """``recv(0)`` is ``b""`` at once and leaves the datagram queued, as a socket's recv(0)."""
    with nslib.in_namespace(netns):
        sock = open_socket(stack, ("127.0.0.1", PORT))
    sock.settimeout(2.0)
    started = time.monotonic()
    assert sock.recv(0) == b""                          # nothing queued: still at once
    assert sock.recvfrom(0) == (b"", None)
    assert sock.recvfrom_into(bytearray(0)) == (0, None)
    assert time.monotonic() - started < 1.0
    _queue(netns, b"kept", b"also kept")
    assert sock.recv(0) == b"" and sock.recvfrom(0) == (b"", None)
    assert sock.recv(100) == b"kept"
    assert sock.recv(0) == b"" and sock.recv_into(bytearray(0)) == 0
    assert sock.recv(100) == b"also kept"
    unbound = open_socket(stack)
    with pytest.raises(NotBoundError):
        unbound.recv(0)


# --------------------------------------------------------------------------------------------
# Hosts, closed sockets, garbage collection


@pytest.mark.live
def test_bytes_hosts_are_accepted_as_by_a_socket(netns, stack):
    with nslib.in_namespace(netns):
        sock = open_socket(stack, (b"127.0.0.1", PORT))
    assert sock.getsockname() == ("127.0.0.1", PORT)
    sock.join_multicast_group(b"239.192.11.1")
    sock.leave_multicast_group(bytearray(b"239.192.11.1"))
    with pytest.raises(OSError):
        sock.join_multicast_group(b"\xff\xfe")
    with pytest.raises(OSError) as caught:
        sock.join_multicast_group(b"10.0.0.1")
    assert caught.value.errno == errno.EINVAL
    assert caught.value.strerror.startswith("10.0.0.1 is not a multicast address")


@pytest.mark.live
@pytest.mark.parametrize("call", ["settimeout(1)", "setblocking(True)", "getsockname()",
                                  "fileno()", "setsockopt(socket.SOL_SOCKET, "
                                  "socket.SO_REUSEADDR, 1)", "getsockopt(socket.SOL_SOCKET, "
                                  "socket.SO_RCVBUF)"])
def test_calls_after_close_raise_ebadf(stack, call):
    sock = open_socket(stack)
    sock.close()
    with pytest.raises(SocketClosedError) as info:
        eval("sock." + call, {"sock": sock, "socket": socket})
    assert info.value.errno == errno.EBADF


@pytest.mark.live
def test_an_unclosed_socket_warns_when_collected(netns):
    with nslib.in_namespace(netns):
        sock = UdpcapSocket()
        sock.bind(("127.0.0.1", PORT))
    receiver = sock._receiver
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del sock
        gc.collect()
    assert [w.category for w in caught] == [ResourceWarning]
    assert "unclosed <UdpcapSocket bound to 127.0.0.1:%d>" % PORT in str(caught[0].message)
    assert receiver.captures == []                     # and it was closed


# --------------------------------------------------------------------------------------------
# A connected sender loses nothing (the port guard, on by default on POSIX)


def _connected_burst(netns, count):
    with nslib.in_namespace(netns):
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    refused = 0
    with sender:
        sender.connect(("127.0.0.1", PORT))
        for index in range(count):
            try:
                sender.send(b"c%d" % index)
            except ConnectionRefusedError:
                refused += 1
            time.sleep(0.01)
    return refused


def _drain(sock, timeout=0.5):
    got = []
    sock.settimeout(timeout)
    with contextlib.suppress(socket.timeout):
        while True:
            got.append(sock.recv(100))
    return got


@pytest.mark.live
def test_a_connected_sender_loses_nothing_by_default(netns, stack):
    """With no socket on the port the kernel answers with ICMP port-unreachable: a connected
    sender's next send() fails with ECONNREFUSED and that datagram is never sent (measured
    before: 10 of 20 lost).  The default guard prevents that on POSIX."""
    with nslib.in_namespace(netns):
        sock = open_socket(stack, ("127.0.0.1", PORT))
    assert _connected_burst(netns, 20) == 0
    assert _drain(sock) == [b"c%d" % i for i in range(20)]
    stack.close()
    with nslib.in_namespace(netns):
        unguarded = open_socket(stack, ("127.0.0.1", PORT), port_guard=False)
    refused = _connected_burst(netns, 20)
    assert refused > 0                                 # what the guard is for
    assert len(_drain(unguarded)) == 20 - refused


@pytest.mark.live
def test_the_guard_never_takes_datagrams_from_another_programs_socket(netns, stack):
    """A socket that holds the port first keeps every datagram (no guard is made: none is
    needed); one that binds the port after the guard, with SO_REUSEADDR, gets them too (Linux
    hands unicast to the socket bound last).  SO_REUSEPORT, which load-balances, is never
    used."""
    with nslib.in_namespace(netns):
        first = udp_socket()
        first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        first.bind(("127.0.0.1", PORT))
        stack.callback(first.close)
        capture = open_socket(stack, ("127.0.0.1", PORT))
    assert capture._receiver.port_guard is None
    with nslib.in_namespace(netns):
        tx = udp_socket()
    with tx:
        for index in range(10):
            tx.sendto(b"a%d" % index, ("127.0.0.1", PORT))
    assert _drain(first) == [b"a%d" % i for i in range(10)]
    assert _drain(capture) == [b"a%d" % i for i in range(10)]
    first.close()
    stack.close()
    with nslib.in_namespace(netns):
        capture = open_socket(stack, ("127.0.0.1", PORT))
        assert capture._receiver.port_guard is not None
        later = udp_socket()
        later.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        later.bind(("127.0.0.1", PORT))
        stack.callback(later.close)
        tx = udp_socket()
    with tx:
        for index in range(10):
            tx.sendto(b"b%d" % index, ("127.0.0.1", PORT))
    assert _drain(later) == [b"b%d" % i for i in range(10)]


# --------------------------------------------------------------------------------------------
# fileno(): select, selectors, asyncio


@pytest.mark.live
@pytest.mark.parametrize("immediate", [True, False])
def test_fileno_is_readable_exactly_when_a_receive_would_not_block(netns, stack, immediate):
    """Never missed: a burst of 50 is read with select() before each non-blocking receive,
    also while datagrams wait in the receiver's queue and no capture fd shows them."""
    with nslib.in_namespace(netns):
        sock = open_socket(stack, ("127.0.0.1", PORT), immediate=immediate)
    sock.setblocking(False)
    selector = selectors.DefaultSelector()
    stack.callback(selector.close)
    selector.register(sock, selectors.EVENT_READ)      # takes the object: fileno()
    assert selector.select(0.2) == []                  # nothing yet
    with nslib.in_namespace(netns):
        tx = udp_socket()
    with tx:
        for index in range(50):
            tx.sendto(b"d%d" % index, ("127.0.0.1", PORT))
    got = []
    while len(got) < 50:
        assert selector.select(2.0), "readiness missed after %d datagrams" % len(got)
        with contextlib.suppress(BlockingIOError):
            got.append(sock.recv(100))
    assert got == [b"d%d" % i for i in range(50)]
    with pytest.raises(BlockingIOError):
        sock.recv(100)
    assert selector.select(0.3) == []                  # and quiet again once read


@pytest.mark.live
def test_fileno_works_before_bind_and_with_asyncio(netns, stack):
    with nslib.in_namespace(netns):
        sock = open_socket(stack)
    fd = sock.fileno()
    with nslib.in_namespace(netns):
        sock.bind(("127.0.0.1", PORT))
    assert sock.fileno() == fd
    sock.setblocking(False)
    received = []

    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def readable():
            while True:
                try:
                    data = sock.recv(100)
                except BlockingIOError:
                    return
                received.append(data)
                if len(received) == 20 and not done.done():
                    done.set_result(None)
        loop.add_reader(sock, readable)
        with nslib.in_namespace(netns):
            tx = udp_socket()
        with tx:
            for index in range(20):
                tx.sendto(b"e%d" % index, ("127.0.0.1", PORT))
                await asyncio.sleep(0.005)
        await asyncio.wait_for(done, 5)
        loop.remove_reader(sock)
    asyncio.run(main())
    assert received == [b"e%d" % i for i in range(20)]


# --------------------------------------------------------------------------------------------
# Group membership on one interface


@pytest.mark.live
@pytest.mark.parametrize("how", ["method", "ip_mreq", "ip_mreqn"])
def test_a_group_joined_on_one_interface_arrives_only_there(netpair, stack, how):
    """As a socket: the mreq's interface restricts the group (it used to be ignored)."""
    group = "239.192.12.1"
    second_a, second_b = netpair.add_link()
    with nslib.in_namespace(netpair.a):
        sock = open_socket(stack, ("0.0.0.0", PORT))
        if how == "method":
            sock.join_multicast_group(group, interface=second_a)
        elif how == "ip_mreq":
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                            socket.inet_aton(group) + socket.inet_aton(second_a))
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                            socket.inet_aton(group) + bytes(4)
                            + socket.if_nametoindex("vx-a").to_bytes(4, sys.byteorder))
    assert "239.192.12.1" not in sock.filter_expressions()[netpair.if_a]
    assert "239.192.12.1" in sock.filter_expressions()["vx-a"]
    for source, tag in ((netpair.addr_b, b"first"), (second_b, b"second")):
        with nslib.in_namespace(netpair.b):
            tx = udp_socket(bind=(source, 0), multicast_if=source)
        with tx:
            tx.sendto(tag, (group, PORT))
    assert _drain(sock) == [b"second"]
    with pytest.raises(OSError) as info:
        sock.join_multicast_group(group, interface=second_a)
    assert info.value.errno == errno.EADDRINUSE
    sock.join_multicast_group(group)                   # now on every interface too
    sock.leave_multicast_group(group, interface=second_a)
    with pytest.raises(OSError) as info:
        sock.join_multicast_group("239.192.12.2", interface="198.18.250.250")
    assert info.value.errno == errno.ENODEV


# --------------------------------------------------------------------------------------------
# The capture library override: empty means unset


@pytest.mark.live
def test_an_empty_library_override_counts_as_unset(netns):
    code = ("from udpcap_ctypes import UdpcapSocket, _loader\n"
            "s = UdpcapSocket(); print(_loader.get_library().path); s.close()")
    proc = netns.python(code, env={"UDPCAP_CTYPES_LIBPCAP": ""}, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "libpcap" in proc.stdout
    check = subprocess.run(netns.exec_argv([sys.executable, "-m", "udpcap_ctypes.check",
                                            "--count", "10"]),
                           env=nslib.python_env({"UDPCAP_CTYPES_LIBPCAP": ""}),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "UDPCAP_CTYPES_LIBPCAP" not in check.stdout
