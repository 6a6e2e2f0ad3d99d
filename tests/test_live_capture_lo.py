"""First live capture: libpcap through the binding, on a real loopback, with real sockets.

Opens the shipped capture (``udpcap_ctypes._capture.Capture``, no socket layer) on ``lo`` with
a per-port BPF filter, sends datagrams of distinct content with a real UDP socket to
127.0.0.1 and receives them with ``pcap_next_ex``, waiting on ``pcap_get_selectable_fd`` with
``select.poll``.  The same round trip then runs in a fresh network namespace (its own ``lo``),
in a subprocess and in-process via ``setns``; and two plain-socket tests prove that the
namespace pair used by later tests carries multicast and fragments like a real link.

Run as a script (``python tests/test_live_capture_lo.py roundtrip``) it performs the round trip
in whatever namespace it was started in and prints the result as JSON.
"""

import json
import os
import select
import socket
import struct
import sys
import time

import pytest

import netns as nslib
from packets import record_frames
from udpcap_ctypes import _capture, _pcap
from udpcap_ctypes._loader import get_library

COUNT = 50
ETH_HLEN = 14
ETHERTYPE_IPV4 = 0x0800


class LoCapture:
    """The shipped :class:`udpcap_ctypes._capture.Capture` on *device* with *bpf_filter*, as
    this test drives it: frames copied out with ``pending_records``, waits on its selectable
    fd with ``select.poll``; a context manager."""

    def __init__(self, device, bpf_filter, buffer_size=16 << 20):
        # 16 MiB: immediate mode cuts the ring into slots sized from the snaplen (64 KiB frames
        # on lo), so the 2 MiB default would hold only about 30 of them.
        self.capture = _capture.Capture(get_library().fns, device, 65535, buffer_size,
                                        immediate=True, promiscuous=False)
        try:
            self.capture.set_filter(bpf_filter)
            self.linktype = self.capture.linktype
            self.fd = self.capture.selectable_fd()
            if self.fd < 0:
                raise AssertionError("pcap_get_selectable_fd returned %d on Linux" % self.fd)
            self.poller = select.poll()
            self.poller.register(self.fd, select.POLLIN)
        except BaseException:
            self.capture.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.capture.close()
        return False

    def drain(self):
        """Every frame queued now, as bytes (caplen bytes each, never len)."""
        return record_frames(*self.capture.pending_records())

    def dropped(self):
        """Frames the kernel dropped because the ring was full."""
        return self.capture.drops()

    def wait(self, timeout_s):
        """Block on the selectable fd; True when it became readable."""
        return bool(self.poller.poll(max(0, int(timeout_s * 1000))))


def parse_ipv4_udp(frame):
    """Ethernet(14) + IPv4 + UDP -> (src, dst, sport, dport, payload); None if not that."""
    if len(frame) < ETH_HLEN + 20 or struct.unpack_from("!H", frame, 12)[0] != ETHERTYPE_IPV4:
        return None
    ip = ETH_HLEN
    if frame[ip] >> 4 != 4 or frame[ip + 9] != socket.IPPROTO_UDP:
        return None
    ihl = (frame[ip] & 0x0F) * 4
    total = struct.unpack_from("!H", frame, ip + 2)[0]
    udp = ip + ihl
    sport, dport, ulen = struct.unpack_from("!HHH", frame, udp)
    if ulen < 8 or udp + ulen > len(frame) or ip + total > len(frame):
        return None
    src = socket.inet_ntoa(frame[ip + 12:ip + 16])
    dst = socket.inet_ntoa(frame[ip + 16:ip + 20])
    return src, dst, sport, dport, bytes(frame[udp + 8:udp + ulen])


def payload_of(i):
    # Distinct content and length: the index, then a pattern whose length grows with i.
    return b"udpcap-live %04d|" % i + bytes((i + k) & 0xFF for k in range(i * 97))


def roundtrip(count=COUNT, device="lo", deadline_s=10.0):
    """Capture *count* datagrams sent to 127.0.0.1:port; also send to another port.

    Returns a dict with what was captured; :func:`check_roundtrip` judges it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as target, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        # Real sockets hold both ports so that no ICMP "port unreachable" is provoked.
        target.bind(("127.0.0.1", 0))
        other.bind(("127.0.0.1", 0))
        port, other_port = target.getsockname()[1], other.getsockname()[1]
        with LoCapture(device, "udp dst port %d" % port) as cap:
            if cap.linktype != _pcap.DLT_EN10MB:
                raise AssertionError("lo link type %d, expected DLT_EN10MB" % cap.linktype)
            for i in range(count):
                if i in (0, count // 2, count - 1):
                    sender.sendto(b"OTHER PORT %d" % i, ("127.0.0.1", other_port))
                sender.sendto(payload_of(i), ("127.0.0.1", port))
            frames, wakeups = [], 0
            end = time.monotonic() + deadline_s
            while len(frames) < count and time.monotonic() < end:
                if cap.wait(end - time.monotonic()):
                    wakeups += 1
                frames.extend(cap.drain())
            # Anything after the last expected frame would be a duplicate: look once more.
            cap.wait(0.2)
            frames.extend(cap.drain())
            dropped = cap.dropped()
    parsed = [parse_ipv4_udp(f) for f in frames]
    return {"port": port, "other_port": other_port, "frames": len(frames), "wakeups": wakeups,
            "dropped": dropped, "parsed": parsed}


def check_roundtrip(result, count=COUNT):
    parsed = result["parsed"]
    assert result["dropped"] == 0, "libpcap dropped %d frames" % result["dropped"]
    assert None not in parsed, "a captured frame is not Ethernet/IPv4/UDP"
    payloads = [p[4] for p in parsed]
    expected = [payload_of(i) for i in range(count)]
    missing = [i for i, p in enumerate(expected) if p not in payloads]
    assert not missing, "datagrams never captured: %s (got %d frames)" % (missing, len(parsed))
    assert not any(p.startswith(b"OTHER PORT") for p in payloads), \
        "a datagram to port %d passed the filter for port %d" % (result["other_port"],
                                                                 result["port"])
    assert all(p[3] == result["port"] for p in parsed)
    assert all(p[0] == "127.0.0.1" and p[1] == "127.0.0.1" for p in parsed)
    assert payloads == expected, "captured out of order or more than once"
    assert result["wakeups"] >= 1, "poll on pcap_get_selectable_fd never reported data"


@pytest.mark.live
def test_capture_on_lo_receives_each_datagram_once_in_order():
    result = roundtrip()
    check_roundtrip(result)


@pytest.mark.live
def test_capture_in_fresh_namespace_subprocess(netns):
    proc = netns.python(os.path.abspath(__file__), ["roundtrip"], timeout=60)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["interfaces"] == ["lo"], "the child did not run in the fresh namespace"
    assert report["netns"] != os.stat("/proc/self/ns/net").st_ino
    assert report["received"] == COUNT


@pytest.mark.live
def test_capture_in_namespace_in_process(netns):
    root_names = sorted(name for _, name in socket.if_nameindex())
    with nslib.in_namespace(netns):
        inside = [name for _, name in socket.if_nameindex()]
        result = roundtrip()
    assert inside == ["lo"], "setns did not move this thread into the namespace"
    # Back in the original namespace: this thread sees its interfaces again.
    assert sorted(name for _, name in socket.if_nameindex()) == root_names
    check_roundtrip(result)


RECEIVER = r"""
import hashlib, json, socket, sys
port, group, local, expect = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])

def reassembled():
    with open("/proc/net/snmp") as f:
        names, values = [l.split() for l in f if l.startswith("Ip:")][:2]
    return int(values[names.index("ReasmOKs")])

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("", port))
if group != "-":
    mreq = socket.inet_aton(group) + socket.inet_aton(local)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
s.settimeout(10)
before = reassembled()
print("ready", flush=True)
got = []
for _ in range(expect):
    data, addr = s.recvfrom(65535)
    got.append({"len": len(data), "sha": hashlib.sha256(data).hexdigest(),
                "head": data[:24].decode("ascii", "replace"), "src": addr[0]})
print(json.dumps({"got": got, "reassembled": reassembled() - before}), flush=True)
"""

SENDER = r"""
import socket, sys
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for dest, size in (a.split("=") for a in sys.argv[2:]):
    head = b"to %s " % dest.encode()
    s.sendto(head + bytes(i & 0xFF for i in range(int(size) - len(head))), (dest, port))
"""


def start_receiver(ns, port, group, local, expect):
    proc = ns.python_popen(RECEIVER, [port, group, local, expect])
    line = proc.stdout.readline()
    assert line.strip() == "ready", "receiver did not start: %r %s" % (line, proc.stderr.read())
    return proc


def finish_receiver(proc):
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, "receiver failed:\n%s" % err
    return json.loads(out.strip().splitlines()[-1])


def test_netpair_multicast_reaches_joined_receiver_only(netpair):
    port, group = 30001, "239.1.2.3"
    receiver = start_receiver(netpair.b, port, group, netpair.addr_b, 1)
    # Sender joins nothing; a datagram to a group nobody joined goes first and must not arrive.
    netpair.a.python(SENDER, [port, "239.1.2.4=100", group + "=200"])
    report = finish_receiver(receiver)
    assert [g["head"].split()[1] for g in report["got"]] == [group]
    assert report["got"][0]["len"] == 200
    assert report["got"][0]["src"] == netpair.addr_a


def test_netpair_mtu_1500_fragments_and_reassembles(netpair):
    link = netpair.b.run(["ip", "link", "show", netpair.if_b]).stdout
    assert " mtu 1500 " in link
    port, size = 30002, 5000
    receiver = start_receiver(netpair.b, port, "-", netpair.addr_b, 1)
    netpair.a.python(SENDER, [port, "%s=%d" % (netpair.addr_b, size)])
    report = finish_receiver(receiver)
    assert report["got"][0]["len"] == size, "datagram did not arrive whole"
    assert report["reassembled"] >= 1, "the kernel reassembled nothing: no fragments were sent"


def _main(argv):
    if argv[1:] != ["roundtrip"]:
        sys.stderr.write("usage: %s roundtrip\n" % argv[0])
        return 2
    result = roundtrip()
    check_roundtrip(result)
    print(json.dumps({"received": len(result["parsed"]),
                      "interfaces": [name for _, name in socket.if_nameindex()],
                      "netns": os.stat("/proc/self/ns/net").st_ino}))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
