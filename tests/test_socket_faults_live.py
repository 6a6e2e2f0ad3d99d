"""Live on Linux: the faults the Windows review found, where Linux has the same question.

Ctrl-C in a blocking receive, an interface that disappears while captured, a group change
with datagrams still in the ring, and the port guard (one per address and port, and an error
that names it).  The Windows side of each is in tests/test_windows_emulated_faults.py.
"""

import errno
import signal
import socket
import subprocess
import time

import pytest

from test_socket_support import Background, nslib, open_socket, udp_socket

pytestmark = pytest.mark.live

PORT = 15300

_BLOCKER = r"""
import sys
from udpcap_ctypes import UdpcapSocket
sock = UdpcapSocket()
sock.bind(("127.0.0.1", int(sys.argv[1])))
print("READY", flush=True)
try:
    sock.recvfrom(100)
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
    raise
"""


def test_ctrl_c_interrupts_a_blocking_receive(netns):
    """select.poll retries after a signal (PEP 475) and lets KeyboardInterrupt through."""
    proc = netns.python_popen(_BLOCKER, args=[PORT])
    assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)          # ip netns exec execs python: same pid
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("SIGINT did not end the blocking receive")
    assert "INTERRUPTED" in out and "KeyboardInterrupt" in err


def _send_from(ns, address, payload):
    with nslib.in_namespace(ns):
        tx = udp_socket()
    with tx:
        tx.sendto(payload, address)


def test_receiving_goes_on_when_a_captured_interface_disappears(netpair, stack):
    """libpcap reports "The interface disappeared" on the next read: that capture is dropped,
    the waiter rebuilt, and the other devices go on (before: every receive raised)."""
    second, _ = netpair.add_link()
    with nslib.in_namespace(netpair.a):
        sock = open_socket(stack, ("0.0.0.0", PORT))
    sock.settimeout(1.0)
    assert len(sock.filter_expressions()) == 3
    netpair.a.ip("link", "del", netpair.if_a)
    with pytest.raises(socket.timeout):
        sock.recvfrom(100)                   # the loss is noticed here, and not raised
    _send_from(netpair.b, (second, PORT), b"over the other link")
    assert sock.recvfrom(100)[0] == b"over the other link"
    stats = sock.statistics()
    assert stats["devices_lost"] == 1 and len(sock.filter_expressions()) == 2


def test_a_socket_bound_to_a_vanished_interface_says_so(netpair, stack):
    with nslib.in_namespace(netpair.a):
        sock = open_socket(stack, (netpair.addr_a, PORT))
    sock.settimeout(2.0)
    blocked = Background(lambda: sock.recvfrom(100))
    time.sleep(0.3)
    netpair.a.ip("link", "del", netpair.if_a)
    blocked.join(5)
    errors = [blocked.error]
    assert [e.errno for e in errors] == [errno.ENETDOWN]
    assert "The interface disappeared" in str(errors[0])
    with pytest.raises(OSError) as info:
        sock.recvfrom(100)
    assert info.value.errno == errno.ENETDOWN


@pytest.mark.parametrize("change", ["join", "leave", "loopback-off"])
def test_a_group_change_keeps_datagrams_already_in_the_ring(netpair, stack, change):
    """Linux keeps the ring across pcap_setfilter, but libpcap then filters the frames still in
    it with the new filter in user space, and the delivery rules change with the groups: what
    arrived before the change is read, under the rules it arrived under, as a socket keeps
    what it queued before IP_DROP_MEMBERSHIP."""
    group = "239.192.10.1"
    with nslib.in_namespace(netpair.a):
        sock = open_socket(stack, ("0.0.0.0", PORT))
    sock.join_multicast_group(group)
    with nslib.in_namespace(netpair.b):
        tx = udp_socket()
    with tx:
        for index in range(50):
            tx.sendto(b"unicast %d" % index, (netpair.addr_a, PORT))
            tx.sendto(b"group %d" % index, (group, PORT))
    time.sleep(0.3)
    if change == "join":
        sock.join_multicast_group("239.192.10.2")
    elif change == "leave":
        sock.leave_multicast_group(group)
    else:
        sock.set_multicast_loopback(False)
    sock.settimeout(1.0)
    got = [sock.recvfrom(100)[0] for _ in range(100)]
    expected = []
    for index in range(50):
        expected += [b"unicast %d" % index, b"group %d" % index]
    assert got == expected


def test_port_guards_are_shared_and_a_taken_port_names_the_guard(netns, stack):
    with nslib.in_namespace(netns):
        first = open_socket(stack, ("127.0.0.1", PORT), port_guard=True)
        second = open_socket(stack, ("127.0.0.1", PORT), port_guard=True)
        guard = first._receiver.port_guard
        assert guard is second._receiver.port_guard and guard.users == 2
        second.close()
        assert guard.users == 1
        # A connected sender sees no ECONNREFUSED while a guard holds the port.
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sender:
            sender.connect(("127.0.0.1", PORT))
            for _ in range(3):
                sender.send(b"x")
                time.sleep(0.05)
        first.close()
        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)     # no SO_REUSEADDR
        with taken:
            taken.bind(("127.0.0.1", PORT + 1))
            with pytest.raises(OSError) as info:
                open_socket(stack, ("127.0.0.1", PORT + 1), port_guard=True)
    assert info.value.errno == errno.EADDRINUSE
    assert "port_guard=True: the guard socket cannot bind to 127.0.0.1:%d" % (PORT + 1) \
        in str(info.value)
