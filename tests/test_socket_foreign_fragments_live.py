"""Live: fragments of datagrams for another port cost almost nothing.

An eCAL publisher sends registration to group:14000 and payload to group:14002 in datagrams of
up to 65,507 bytes.  A socket bound to one port of the group sees the other port's fragments:
later fragments carry no port, so the filter lets them through, and only the first names the
port.  Were the first kept out by the filter, the reassembler would hold every foreign
datagram's later fragments until age or its caps evicted them (megabytes per socket, and its
own datagrams evicted under a heavier stream).  The first fragment of any UDP datagram passes,
so the reassembler learns at once that an id is not ours and lets its fragments go.
"""

import time

import pytest

from test_socket_support import nslib, open_socket, udp_socket

pytestmark = pytest.mark.live

GROUP = "239.0.0.1"
OURS, FOREIGN = 16400, 16402


def test_foreign_fragmented_stream_holds_no_memory_and_costs_ours_nothing(netpair, stack):
    """60,000-byte datagrams (41 fragments on an MTU-1500 link) to the other port of the
    group, our own small datagrams in between: ours all arrive, in order; the foreign ones are
    let go as soon as their first fragment is seen (fragments_unwanted), nothing is evicted,
    and almost nothing is held once the stream ends."""
    rounds = 120
    with nslib.in_namespace(netpair.a):
        sock = open_socket(stack, ("0.0.0.0", OURS))
    sock.join_multicast_group(GROUP)
    tx = udp_socket(netpair.b, bind=(netpair.addr_b, 0), multicast_if=netpair.addr_b)
    stack.callback(tx.close)
    tx.sendto(b"warm up", (GROUP, OURS))
    sock.settimeout(5.0)
    assert sock.recv(100) == b"warm up"
    big = b"F" * 60000
    got = []
    for seq in range(rounds):
        tx.sendto(big, (GROUP, FOREIGN))
        tx.sendto(b"ours-%04d" % seq, (GROUP, OURS))
        time.sleep(0.004)              # about 10,000 frames/s: within the 662-frame veth ring
        if seq % 10 == 9:
            sock.setblocking(False)
            try:
                while True:
                    got.append(sock.recv(100))
            except BlockingIOError:
                pass
            sock.settimeout(5.0)
    while len(got) < rounds:
        got.append(sock.recv(100))
    assert got == [b"ours-%04d" % seq for seq in range(rounds)]
    stats = sock.statistics()
    assert stats["capture_drops"] == 0, stats
    assert stats["reassembly_evictions"] == 0 and stats["reassembly_timeouts"] == 0, stats
    assert stats["reassembled"] == 0, stats              # none of ours was fragmented
    # Every foreign fragment was let go: the 40 later ones of each datagram count here
    # (the first one, which names the port, is dropped as not for us).
    assert stats["fragments_unwanted"] >= 40 * rounds * 0.95, stats
    assert stats["pending_datagrams"] <= 1 and stats["pending_bytes"] < 65536, stats
