"""Socket parity where Windows differs, on the emulated Windows (tests/winemu).

``fileno()`` raises (Npcap signals events, not fds); no port guard by default (the trade-off
README's Windows notes describe: a connected sender sees its datagrams refused, as it would
see WSAECONNRESET); a group joined on one interface arrives from that adapter only, while the
host's own multicast, which Npcap shows on the loopback adapter without its interface, is
delivered for any membership.  Functions named ``emulated_*`` run in the child.
"""

import errno
import socket
import time

import pytest

from udpcap_ctypes import _net
from winemu import receive_all, send_udp

pytestmark = [pytest.mark.windows_emulated, pytest.mark.live]


def emulated_fileno(port):
    from udpcap_ctypes import UdpcapSocket
    with UdpcapSocket() as sock:
        sock.bind(("127.0.0.1", port))
        try:
            sock.fileno()
        except OSError as exc:
            return [type(exc).__name__, exc.errno, str(exc)]
    return None


def test_fileno_raises_on_windows_and_says_why(machine, netns):
    kind, number, text = machine().call(netns, emulated_fileno, port=_net.free_udp_port())
    assert kind == "OSError" and number == errno.EOPNOTSUPP
    assert "Npcap signals frames with events" in text and "thread" in text


def emulated_connected_sender(port, guard):
    from udpcap_ctypes import UdpcapSocket
    options = {} if guard is None else {"port_guard": guard}
    with UdpcapSocket(**options) as sock:
        sock.bind(("127.0.0.1", port))
        has_guard = sock._receiver.port_guard is not None
        refused = 0
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sender:
            sender.connect(("127.0.0.1", port))
            for index in range(20):
                try:
                    sender.send(b"c%d" % index)
                except ConnectionRefusedError:
                    refused += 1
                time.sleep(0.01)
        received = len(receive_all(sock, 20, timeout=0.5))
    return {"guard": has_guard, "refused": refused, "received": received}


@pytest.mark.parametrize("guard", [None, True])
def test_no_port_guard_by_default_on_windows_and_its_price(machine, netns, guard):
    result = machine().call(netns, emulated_connected_sender, port=_net.free_udp_port(),
                            guard=guard)
    if guard is None:
        assert result["guard"] is False
        assert result["refused"] > 0
        assert result["received"] == 20 - result["refused"]
    else:
        assert result == {"guard": True, "refused": 0, "received": 20}


def emulated_group_on_one_interface(peer, sources, local, interface, port):
    from udpcap_ctypes import UdpcapSocket
    group = "239.192.13.1"
    with UdpcapSocket() as sock:
        sock.join_multicast_group(group, interface=interface)
        sock.bind(("0.0.0.0", port))
        for source, tag in sources:
            import netns
            with netns.in_namespace(peer):
                tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with tx:
                tx.bind((source, 0))
                tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                              socket.inet_aton(source))
                tx.sendto(tag.encode(), (group, port))
        send_udp(None, (group, port), [b"own"], multicast_interface=local)
        return sorted(d.decode() for d, _ in receive_all(sock, 4, timeout=0.8))


def test_a_group_joined_on_one_interface_on_windows(machine, netpair):
    second_a, second_b = netpair.add_link()
    got = machine().call(netpair.a, emulated_group_on_one_interface, peer=netpair.b.name,
                         sources=[[netpair.addr_b, "first"], [second_b, "second"]],
                         local=netpair.addr_a, interface=second_a, port=_net.free_udp_port())
    assert got == ["own", "second"]
