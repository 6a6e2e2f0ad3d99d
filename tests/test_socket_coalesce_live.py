"""Live: interrupt moderation (``Options.coalesce``) on the real ``lo``, with real traffic.

A sender in a separate process (no GIL shared with the receiver) sends to 127.0.0.1 only.
Under bursts the receiver coalesces -- ``statistics()["coalesced_waits"]`` counts the pauses --
and still delivers every datagram exactly once and in order.  At a low rate it never pauses,
so a lone datagram pays no added latency.  ``coalesce=0`` is the control: never a pause.
"""

import socket
import subprocess
import sys
import time

import pytest

from test_socket_support import UdpcapSocket, receive
from udpcap_ctypes import _platform
from udpcap_ctypes.udpcap_socket import MAX_COALESCE

pytestmark = pytest.mark.live

# Bursts of BURST datagrams, PAUSE seconds apart: a burst (50 frames) fits the loopback ring
# (256 frames at the default buffer) many times over, so no capture drop is excusable.
SENDER = r"""
import socket, sys, time
port, bursts, burst = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
pause = float(sys.argv[4])
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
seq = 0
for _ in range(bursts):
    for _ in range(burst):
        tx.sendto(b"%08d" % seq + b"." * 24, ("127.0.0.1", port))
        seq += 1
    time.sleep(pause)
"""


def _send_in_background(port, bursts, burst, pause):
    return subprocess.Popen([sys.executable, "-c", SENDER, str(port), str(bursts), str(burst),
                             str(pause)])


def _receive_sequence(sock, count):
    sequence = []
    for _ in range(count):
        data, address = receive(sock, 64)
        assert address[0] == "127.0.0.1"
        sequence.append(int(data[:8]))
    return sequence


@pytest.mark.parametrize("coalesce", [None, 0.0], ids=["default", "off"])
def test_bursts_are_coalesced_and_delivered_exactly_once(free_udp_port, coalesce):
    bursts, burst = 40, 50
    with UdpcapSocket(coalesce=coalesce) as sock:
        sock.bind(("127.0.0.1", free_udp_port))
        sender = _send_in_background(free_udp_port, bursts, burst, 0.002)
        try:
            got = _receive_sequence(sock, bursts * burst)
        finally:
            sender.wait(30)
        stats = sock.statistics()
    assert got == list(range(bursts * burst))
    assert stats["capture_drops"] == 0
    if coalesce is None and _platform.current(sock._library).coalesce_default(True):
        assert stats["coalesced_waits"] > 0, stats
    if coalesce == 0.0:
        assert stats["coalesced_waits"] == 0, stats


def test_low_rate_never_pauses(free_udp_port):
    """Datagrams 20 ms apart: every wake-up finds one frame, long after the last one, so the
    receiver goes straight back to waiting (a stray pause would need a 20 ms stall)."""
    count = 15
    with UdpcapSocket() as sock:
        sock.bind(("127.0.0.1", free_udp_port))
        sender = _send_in_background(free_udp_port, count, 1, 0.02)
        try:
            got = _receive_sequence(sock, count)
        finally:
            sender.wait(30)
        stats = sock.statistics()
    assert got == list(range(count))
    assert stats["coalesced_waits"] <= 1, stats


def test_timeout_holds_while_coalescing(free_udp_port):
    """After a burst the receiver is in coalescing mode; a receive with a timeout and no more
    traffic still raises socket.timeout, and not before the timeout."""
    with UdpcapSocket(coalesce=MAX_COALESCE) as sock:
        sock.bind(("127.0.0.1", free_udp_port))
        sender = _send_in_background(free_udp_port, 1, 100, 0.0)
        try:
            assert _receive_sequence(sock, 100) == list(range(100))
        finally:
            sender.wait(30)
        sock.settimeout(0.3)
        started = time.monotonic()
        with pytest.raises(socket.timeout):
            sock.recvfrom(64)
        assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize("bad", [-1e-6, MAX_COALESCE * 2, float("nan"), "fast"])
def test_coalesce_out_of_range_is_rejected_with_the_range(bad):
    with pytest.raises((ValueError, TypeError)) as info:
        UdpcapSocket(coalesce=bad)
    if isinstance(info.value, ValueError) and bad != "fast":
        assert "between 0 and" in str(info.value)


def test_coalesce_default_follows_the_platform_and_mode():
    with UdpcapSocket() as sock, UdpcapSocket(immediate=False) as batched, \
            UdpcapSocket(coalesce=0.0005) as chosen:
        for s in (sock, batched, chosen):
            s.bind(("127.0.0.1", 0))
        platform = _platform.current(sock._library)
        assert sock._receiver.coalesce == platform.coalesce_default(True)
        if sys.platform.startswith("linux"):
            assert sock._receiver.coalesce == pytest.approx(100e-6)
        assert batched._receiver.coalesce == 0.0       # TPACKET_V3 blocks batch already
        assert chosen._receiver.coalesce == 0.0005
