"""Live, on the real ``lo``: the kernel keeps outgoing copies out of the loopback capture ring.

On Linux each datagram sent over ``lo`` passes packet capture twice, as an outgoing and as an
incoming frame.  libpcap throws the outgoing copy away, but only after the kernel has copied it
into the ring.  ``_platform.ignore_outgoing`` sets ``PACKET_IGNORE_OUTGOING`` so the kernel
skips it.  ``pcap_stats``' ``ps_recv`` counts the frames that reached the ring, so it tells
the two apart: N datagrams make N frames with the option and 2N without (the control, which
proves the check can fail).
"""

import ctypes
import socket
import sys
import time

import pytest

from netns import in_namespace
from packets import batch_frames
from udpcap_ctypes import UdpcapSocket, _capture, _platform, _structs
from udpcap_ctypes._loader import get_library

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="PACKET_IGNORE_OUTGOING is a Linux packet-socket option")

COUNT = 40


def _ring_frames(capture):
    """Frames the kernel put into the capture's ring (``ps_recv``)."""
    stat = _structs.pcap_stat()
    capture._fns.pcap_stats(capture.handle, ctypes.byref(stat))
    return stat.ps_recv


def _send(port, count, tag=b"d"):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for i in range(count):
            tx.sendto(tag + b"%04d" % i, ("127.0.0.1", port))
    time.sleep(0.05)


def _read_payloads(capture, port):
    """Every frame libpcap hands out, as UDP payloads (Ethernet framing on lo)."""
    view = capture.reader.view
    payloads = []
    while True:
        frames = batch_frames(capture.reader)
        if not frames:
            return payloads
        for start, end in frames:
            frame = bytes(view[start:end])
            assert int.from_bytes(frame[36:38], "big") == port
            payloads.append(frame[42:])


def _open_lo(port):
    library = get_library()
    platform = _platform.current(library)
    capture = _capture.Capture(library.fns, "lo", 65535 + 64, 16 << 20,
                               libc=platform.libc)
    capture.set_filter("udp dst port %d" % port)
    return capture


@pytest.mark.parametrize("ignore", [True, False], ids=["ignore_outgoing", "control"])
def test_loopback_ring_holds_each_datagram_once(ignore, free_udp_port):
    port = free_udp_port
    capture = _open_lo(port)
    try:
        if ignore:
            assert _platform.ignore_outgoing(capture), "PACKET_IGNORE_OUTGOING was refused"
        _send(port, COUNT)
        assert _ring_frames(capture) == (COUNT if ignore else 2 * COUNT)
        # Either way libpcap hands out each datagram exactly once, in order.
        assert _read_payloads(capture, port) == [b"d%04d" % i for i in range(COUNT)]
    finally:
        capture.close()


def test_first_frame_after_a_filter_change_is_delivered(free_udp_port):
    """libpcap filters the first frame after ``pcap_setfilter`` in userland.  A filter that
    only the kernel can evaluate (``inbound``) would lose it; ours must not."""
    port = free_udp_port
    capture = _open_lo(port)
    try:
        assert _platform.ignore_outgoing(capture)
        for round_ in range(3):
            capture.set_filter("udp dst port %d and udp[8] = %d" % (port, ord("a") + round_))
            tag = bytes([ord("a") + round_])
            _send(port, 1, tag)
            assert _read_payloads(capture, port) == [tag + b"0000"]
    finally:
        capture.close()


def test_bound_socket_loopback_capture_skips_outgoing_copies(free_udp_port):
    port = free_udp_port
    with UdpcapSocket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.settimeout(2.0)
        (opened,) = sock._receiver.captures
        _send(port, COUNT)
        assert _ring_frames(opened.capture) == COUNT
        got = [sock.recvfrom(64)[0] for _ in range(COUNT)]
    assert got == [b"d%04d" % i for i in range(COUNT)]


@pytest.mark.parametrize("mtu,frame,ring,frames", [
    (65536, 65632, 1 << 20, 32),      # raised to MIN_RING_FRAMES: one frame per 128 KiB block
    (1500, 1584, 35 * 1584, 34),      # 35 frames asked, two per page: rounded down to 34
])
def test_ring_holds_as_many_frames_as_the_platform_says(netns, mtu, frame, ring, frames):
    """``LinuxPlatform.ring_layout`` against the kernel: a ring that nobody reads keeps exactly
    that many datagrams.  The MTU is set on the namespace's own ``lo``."""
    netns.ip("link", "set", "lo", "mtu", str(mtu))
    port = 40000
    with in_namespace(netns):
        library = get_library()
        platform = _platform.current(library)
        device = _capture.Device("lo", None, 0, [], loopback=True)
        capture = platform.open_capture(device, ring, immediate=True, promiscuous=False)
        try:
            capture.set_filter("udp dst port %d" % port)
            assert platform._frame(capture.snaplen) == frame
            assert platform.ring_frames(capture.buffer_size, capture.snaplen, True) == frames
            _send(port, frames + 20)
            assert len(_read_payloads(capture, port)) == frames
        finally:
            capture.close()
