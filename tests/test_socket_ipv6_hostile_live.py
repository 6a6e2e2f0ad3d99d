"""Hostile and out-of-order IPv6, live: hand-built frames (tests/packets.py, from the RFCs)
written with a raw AF_PACKET socket from namespace A onto the veth to B, where a
UdpcapSocket(AF_INET6) bound to [::]:PORT captures them with the real libpcap between valid
datagrams.  Every valid datagram must arrive, in order; every hostile frame is dropped and
counted by its reason; nothing raises; the reassembler's memory stays under its cap.
"""

import contextlib
import inspect
import socket
import time

import pytest
from test_socket_hostile_live import Injector

import packets as pk
from test_socket_support import nslib
from udpcap_ctypes import UdpcapSocket
from udpcap_ctypes._reassembly import Reassembler

pytestmark = pytest.mark.live

PORT = 15660
SPORT = 40006


class Injector6(Injector):
    """Writes raw IPv6 packets from A's veth to B's MAC (the IPv4 injector's raw socket)."""

    def __init__(self, pair):
        super().__init__(pair)
        self.src, self.dst = pair.addr6_a, pair.addr6_b
        self.ident = 0x10000

    def packet(self, packet):
        self.sock.send(pk.ethernet(packet, src_mac=self.src_mac, dst_mac=self.dst_mac,
                                   ethertype=0x86DD))

    def udp(self, data, headers=(), **kw):
        return pk.ipv6_udp(data, SPORT, kw.pop("dport", PORT), self.src, self.dst,
                           headers=headers, **kw)

    def fragments(self, data, size=1232, **kw):
        self.ident += 1
        segment = pk.udp6(data, SPORT, PORT, self.src, self.dst)
        return pk.fragment_ipv6(segment, self.src, self.dst, self.ident, size=size, **kw)


@contextlib.contextmanager
def injected6(pair, buffer_size=None):
    inj = Injector6(pair)
    try:
        with nslib.in_namespace(pair.b):
            sock = UdpcapSocket(socket.AF_INET6)
            try:
                if buffer_size:
                    sock.set_receive_buffer_size(buffer_size)
                sock.bind(("::", PORT))        # the captures open in B's namespace
            except BaseException:
                sock.close()
                raise
        try:
            yield inj, sock
        finally:
            sock.close()
    finally:
        inj.sock.close()


def drain(sock, count, timeout=2.0):
    sock.settimeout(timeout)
    got = []
    while len(got) < count:
        try:
            got.append(sock.recvfrom(65536)[0])
        except socket.timeout:
            break
    return got


def test_hostile_ipv6_is_counted_and_the_valid_stream_arrives_in_order(pair6):
    with injected6(pair6) as (inj, sock):
        valid = []

        def good():
            data = b"valid-%03d" % len(valid)
            valid.append(data)
            inj.packet(inj.udp(data))

        hostile = [
            # (reason or None for not_for_us, packet)
            ("ip6_header_chain", inj.udp(b"x", headers=[("hop", {}), ("hop", {})])),
            ("ip6_header_chain", pk.ipv6(pk.ext_header(17, b"\0" * 6, hdr_ext_len=40),
                                         inj.src, inj.dst, next_header=60)),
            ("ip6_header_chain", inj.udp(b"x", headers=["dst"] * 9)),
            ("ip6_jumbogram", inj.udp(b"x", payload_length=0)),
            ("udp_checksum", inj.udp(b"zero checksum", udp_checksum=0)),
            ("udp_length", inj.udp(b"x", length=200)),
            ("ip_truncated", inj.udp(b"x", payload_length=900)),
            # AH and ESP behind a hop-by-hop header (so that the filter, which lets every
            # chain through, hands them to the parser): not UDP, not for us.
            (None, pk.ipv6(pk.hop_by_hop(51) + pk.ext_header(17, b"\0" * 14), inj.src,
                           inj.dst, next_header=0)),
            (None, pk.ipv6(pk.hop_by_hop(50) + b"\0" * 16, inj.src, inj.dst, next_header=0)),
            (None, inj.udp(b"x", headers=[("rt", {"segments_left": 1})])),
        ]
        # RFC 7112: a first fragment whose destination options push the UDP header out.
        tiny = inj.fragments(b"t" * 200, size=8, fragmentable=[("dst", {"size": 8})])
        hostile.append(("ip6_first_fragment", tiny[0][2]))
        # RFC 5722: overlapping fragments drop the whole datagram.
        parts = inj.fragments(b"o" * 3000)
        overlap = pk.ipv6(pk.fragment_header(17, 8, True, inj.ident) + b"\0" * 64,
                          inj.src, inj.dst, next_header=44)
        before = sock.statistics()
        good()
        for _reason, packet in hostile:
            inj.packet(packet)
            good()
        for _o, _m, packet in parts[:2]:
            inj.packet(packet)
        inj.packet(overlap)
        for _o, _m, packet in parts[2:]:
            inj.packet(packet)
        good()
        got = drain(sock, len(valid))
        assert got == valid
        stats = sock.statistics()
        counted = {}
        for reason, _packet in hostile:
            if reason:
                counted[reason] = counted.get(reason, 0) + 1
        for reason, count in counted.items():
            assert stats["malformed"][reason] - before["malformed"][reason] >= count, reason
        assert stats["malformed"]["fragment_overlap"] >= 1
        assert stats["not_for_us"] - before["not_for_us"] >= 3
        assert stats["delivered"] == len(valid)


def test_fragments_in_and_out_of_order(pair6):
    payloads = [bytes([i + 1]) * 60000 for i in range(4)]
    with injected6(pair6) as (inj, sock):
        for i, payload in enumerate(payloads):
            fragments = inj.fragments(payload)
            order = fragments if i % 2 == 0 else list(reversed(fragments))
            if i == 3:
                order = fragments[1::2] + fragments[0::2]
            for _o, _m, packet in order:
                inj.packet(packet)
        assert drain(sock, len(payloads), timeout=3.0) == payloads
        stats = sock.statistics()
        assert stats["reassembled"] == 4 and stats["pending_datagrams"] == 0


def test_a_flood_of_incomplete_fragments_stays_under_the_cap(pair6):
    cap = inspect.signature(Reassembler.__init__).parameters["max_bytes"].default
    with injected6(pair6, buffer_size=64 << 20) as (inj, sock):
        for _ in range(400):
            first = inj.fragments(b"f" * 20000)[:-1]        # never the last fragment
            for _o, _m, packet in first:
                inj.packet(packet)
            time.sleep(0.001)                              # within what the ring holds
        inj.packet(inj.udp(b"after the flood"))
        assert drain(sock, 1, timeout=3.0) == [b"after the flood"]
        stats = sock.statistics()
        assert stats["pending_bytes"] <= cap
        assert stats["reassembly_evictions"] > 0
