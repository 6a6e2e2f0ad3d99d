"""Live test of the hostile-input row: malformed, truncated, overlapping and out-of-range
packets and fragments are dropped silently (counted in statistics), never raise in the
receiver, never grow memory without bound.

Namespace A writes hand-built Ethernet frames (tests/packets.py, written from the RFCs) with a
raw AF_PACKET socket onto the veth to B; B's UdpcapSocket, bound to 0.0.0.0:PORT, captures them
with the real libpcap between valid datagrams, which must all arrive, in order.
"""

import contextlib
import os
import re
import socket

import pytest

import packets as pk
from test_socket_support import UdpcapSocket, assert_quiet, nslib, receive_payloads

pytestmark = pytest.mark.live

PORT = 15500
SPORT = 40000


def mac_of(ns, ifname):
    text = ns.ip("-o", "link", "show", ifname).stdout
    return bytes.fromhex(re.search(r"link/ether ([0-9a-f:]{17})", text).group(1).replace(":", ""))


class Injector:
    """Writes raw IPv4 packets from A's veth to B's MAC."""

    def __init__(self, pair):
        self.pair = pair
        self.src_mac = mac_of(pair.a, pair.if_a)
        self.dst_mac = mac_of(pair.b, pair.if_b)
        with nslib.in_namespace(pair.a):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        self.sock.bind((pair.if_a, 0))
        self.ident = 0x4000

    def close(self):
        self.sock.close()

    def packet(self, ip_packet):
        self.sock.send(pk.ethernet(ip_packet, src_mac=self.src_mac, dst_mac=self.dst_mac))

    def udp_packet(self, data, dport=PORT, **ip_fields):
        segment = pk.udp(data, SPORT, dport, self.pair.addr_a, self.pair.addr_b)
        return pk.ipv4(segment, self.pair.addr_a, self.pair.addr_b, **ip_fields)

    def valid(self, data):
        self.packet(self.udp_packet(data))

    def next_ident(self):
        self.ident += 1
        return self.ident

    def fragments(self, data, size=1480, dport=PORT):
        segment = pk.udp(data, SPORT, dport, self.pair.addr_a, self.pair.addr_b)
        return pk.fragment_ip(segment, self.pair.addr_a, self.pair.addr_b, self.next_ident(),
                              size=size)

    def fragment(self, chunk, offset, more, ident):
        return pk.ipv4(chunk, self.pair.addr_a, self.pair.addr_b, ident=ident,
                       offset_bytes=offset, mf=more)


@contextlib.contextmanager
def injected_receiver(pair, buffer_size=None):
    """``(injector, sock, source)``: raw packets from A to a UdpcapSocket bound to 0.0.0.0:PORT
    inside B; both closed on exit."""
    inj = Injector(pair)
    try:
        with nslib.in_namespace(pair.b):
            sock = UdpcapSocket()
            try:
                if buffer_size:
                    sock.set_receive_buffer_size(buffer_size)
                sock.bind(("0.0.0.0", PORT))
                yield inj, sock, (pair.addr_a, SPORT)
            finally:
                sock.close()
    finally:
        inj.close()


def test_hostile_packets_dropped_silently_and_counted(netpair):
    with injected_receiver(netpair) as (inj, sock, source):
        a, b = netpair.addr_a, netpair.addr_b
        good = [b"ok-0", b"ok-1", os.urandom(3000), b"ok-3", b"ok-4"]

        inj.valid(good[0])
        # IPv4 header checksum wrong.
        inj.packet(inj.udp_packet(b"bad-ip-checksum", checksum=0x1234))
        # Total length claims more than the frame carries.
        inj.packet(inj.udp_packet(b"short-frame", total_length=1400))
        # Total length shorter than the header.
        inj.packet(inj.udp_packet(b"total-below-header", total_length=12))
        # UDP length beyond the IP payload, and below the UDP header size.
        seg = pk.udp(b"udp-length-long", SPORT, PORT, a, b, checksum=False, length=900)
        inj.packet(pk.ipv4(seg, a, b))
        seg = pk.udp(b"udp-length-short", SPORT, PORT, a, b, checksum=False, length=4)
        inj.packet(pk.ipv4(seg, a, b))
        # Only 4 bytes of UDP header.
        inj.packet(pk.ipv4(pk.udp(b"", SPORT, PORT, a, b)[:4], a, b))
        inj.valid(good[1])

        # Overlapping fragments with different bytes: the whole datagram is dropped.
        ident = inj.next_ident()
        seg = pk.udp(b"A" * 40, SPORT, PORT, a, b, checksum=False)
        inj.packet(inj.fragment(seg[:24], 0, True, ident))
        inj.packet(inj.fragment(b"B" * 24, 16, True, ident))
        inj.packet(inj.fragment(seg[24:], 24, False, ident))
        # Fragment beyond the largest datagram (offset + length > 65515).
        ident = inj.next_ident()
        inj.packet(inj.fragment(pk.udp(b"x" * 8, SPORT, PORT, a, b), 0, True, ident))
        inj.packet(inj.fragment(b"y" * 64, 65528 - 56, False, ident))
        # Non-final fragment whose length is not a multiple of 8.
        ident = inj.next_ident()
        inj.packet(inj.fragment(pk.udp(b"z" * 5, SPORT, PORT, a, b), 0, True, ident))
        # A valid fragmented datagram, fragments sent in reverse order.
        for _offset, _more, packet in reversed(inj.fragments(good[2], size=1000)):
            inj.packet(packet)
        # Not IPv4 at all behind an IPv4 ethertype (version 6).
        inj.packet(inj.udp_packet(b"version-6", version=6))
        inj.valid(good[3])
        # Duplicate fragments of a valid datagram are harmless.
        frags = inj.fragments(b"D" * 2500, size=1000)
        for _offset, _more, packet in [frags[0], frags[0], frags[1], frags[1], frags[2]]:
            inj.packet(packet)
        inj.valid(good[4])

        got = receive_payloads(sock, 6)
        assert got == [(good[0], source), (good[1], source), (good[2], source),
                       (good[3], source), (b"D" * 2500, source), (good[4], source)]
        assert_quiet(sock)
        stats = sock.statistics()
    malformed = stats["malformed"]
    for reason in ("ip_checksum", "ip_truncated", "ip_total_length", "ip_version",
                   "udp_length", "udp_truncated", "fragment_overlap", "fragment_offset",
                   "fragment_alignment"):
        assert malformed[reason] >= 1, (reason, malformed)
    assert malformed["udp_length"] >= 2
    assert stats["delivered"] == 6
    assert stats["reassembled"] == 2


def test_fragment_flood_memory_is_bounded(netpair):
    """3000 first fragments of datagrams that never complete (1480 bytes each, ~4.4 MB) do
    not grow memory without bound: the reassembler keeps at most its caps (1024 datagrams,
    4 MiB), evicts the oldest (counted), and valid traffic still gets through afterwards."""
    with injected_receiver(netpair, buffer_size=32 << 20) as (inj, sock, source):
        a, b = netpair.addr_a, netpair.addr_b
        for _ in range(3000):
            head = pk.udp(b"f" * 1472, SPORT, PORT, a, b, checksum=False)
            inj.packet(inj.fragment(head, 0, True, inj.next_ident()))
        inj.valid(b"after-flood")
        assert receive_payloads(sock, 1, timeout=10.0) == [(b"after-flood", source)]
        whole = os.urandom(5000)
        for _offset, _more, packet in inj.fragments(whole):
            inj.packet(packet)
        assert receive_payloads(sock, 1) == [(whole, source)]
        stats = sock.statistics()
    assert stats["capture_drops"] == 0, stats["capture_drops"]
    assert stats["fragments"] >= 3000
    assert stats["pending_datagrams"] <= 1024
    assert stats["pending_bytes"] <= 4 << 20
    assert stats["reassembly_evictions"] >= 3000 - 1024
