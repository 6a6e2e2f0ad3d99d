"""The union BPF filter of a shared capture, compiled and run by the real libpcap.

* ports become ranges (consecutive ports one range), at most MAX_PORT_RANGES of them, the
  smallest gaps closed first, and every port always covered;
* the text passes, in libpcap's own filter engine (``pcap_offline_filter``), a UDP datagram to
  every subscribed port and to the destinations of its clause, every fragment to those
  destinations (the first one of another port's datagram too), and nothing else outside the
  merged ranges;
* a hundred scattered ports compile in a bounded time's worth of instructions (the clause
  count is capped, so the program stays short).
"""

import ctypes
import random

import pytest

import packets
from udpcap_ctypes import _loader, _pcap
from udpcap_ctypes._shared_capture import MAX_PORT_RANGES, port_clause, port_ranges, union_filter


def test_consecutive_ports_make_one_range_and_singles_stay_single():
    assert port_ranges([5000]) == [(5000, 5000)]
    assert port_ranges([7, 5, 6, 9, 6]) == [(5, 7), (9, 9)]
    assert port_ranges(range(21000, 21100)) == [(21000, 21099)]
    assert port_clause([5000]) == "udp[2:2] = 5000"
    assert port_clause([5000, 5001, 6000]) == ("(udp[2:2] >= 5000 and udp[2:2] <= 5001) or "
                                                "udp[2:2] = 6000")


@pytest.mark.parametrize("seed", range(20))
def test_too_many_ranges_close_the_smallest_gaps_and_cover_every_port(seed):
    rng = random.Random(seed)
    ports = rng.sample(range(1, 65536), rng.randint(1, 300))
    limit = rng.choice([1, 2, 5, MAX_PORT_RANGES])
    ranges = port_ranges(ports, limit)
    assert 1 <= len(ranges) <= limit
    assert ranges == sorted(ranges)
    assert all(first <= last for first, last in ranges)
    assert all(b[0] > a[1] + 1 for a, b in zip(ranges, ranges[1:]))     # disjoint, apart
    assert all(any(first <= p <= last for first, last in ranges) for p in ports)
    assert {r[0] for r in ranges} <= set(ports) and {r[1] for r in ranges} <= set(ports)
    exact = port_ranges(ports, limit=65536)
    if len(exact) > limit:
        # the gaps left open are the widest ones of the exact ranges
        open_gaps = sorted(b[0] - a[1] for a, b in zip(ranges, ranges[1:]))
        all_gaps = sorted(b[0] - a[1] for a, b in zip(exact, exact[1:]))
        assert open_gaps == all_gaps[len(all_gaps) - len(open_gaps):]
    else:
        assert ranges == exact


@pytest.fixture(scope="module")
def offline_filter():
    """``passes(text, frame) -> bool`` through libpcap's pcap_compile and pcap_offline_filter
    on an Ethernet pcap_open_dead handle."""
    library = _loader.get_library()
    fns = library.fns
    # pcap_offline_filter is not in the package's table (it never filters in user space)
    run = ctypes.CDLL(library.path).pcap_offline_filter
    run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p]
    run.restype = ctypes.c_int

    class Header(ctypes.Structure):
        _fields_ = [("sec", ctypes.c_long), ("usec", ctypes.c_long),
                    ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32)]

    dead = fns.pcap_open_dead(_pcap.DLT_EN10MB, 65535)
    compiled = {}

    def passes(text, frame):
        if text not in compiled:
            program = _pcap.P_program._type_()
            fns.pcap_compile(dead, ctypes.byref(program), text.encode(), 1,
                             _pcap.PCAP_NETMASK_UNKNOWN)
            compiled[text] = program
        header = Header(0, 0, len(frame), len(frame))
        return run(ctypes.byref(compiled[text]), ctypes.byref(header), frame) != 0

    yield passes
    for program in compiled.values():
        fns.pcap_freecode(ctypes.byref(program))
    fns.pcap_close(dead)


def _frame(dport, dst="198.18.0.2", sport=40000):
    segment = packets.udp(b"x" * 8, sport=sport, dport=dport, src="198.18.0.1", dst=dst)
    return packets.ethernet(packets.ipv4(segment, dst=dst))


def test_union_passes_exactly_its_ports_and_destinations_in_libpcap(offline_filter):
    rng = random.Random(7)
    ports = sorted(rng.sample(range(1024, 65536), 100))
    text = union_filter([(None, "dst host 198.18.0.2", port, 4) for port in ports[:60]] +
                        [(None, "dst host 239.1.2.3", port, 4) for port in ports[60:]])
    for port in ports[:60]:
        assert offline_filter(text, _frame(port)), port
        assert offline_filter(text, _frame(port, sport=port + 1 if port < 65535 else 1))
    for port in ports[60:]:
        assert offline_filter(text, _frame(port, dst="239.1.2.3")), port
    covered = port_ranges(ports[:60])
    outside = [p for p in range(1, 65536, 97)
               if not any(first <= p <= last for first, last in covered)]
    assert outside
    for port in outside:
        assert not offline_filter(text, _frame(port)), port
    assert not offline_filter(text, _frame(ports[0], dst="198.18.0.3"))
    # Every fragment passes, whatever its port: later ones carry no UDP header, and the first
    # one of another port's datagram tells the reassembler to let the rest go.
    segment = packets.udp(b"y" * 3000, dport=outside[0], src="198.18.0.1", dst="198.18.0.2")
    pieces = packets.fragment_ip(segment, "198.18.0.1", "198.18.0.2", 0x4242)
    assert len(pieces) == 3 and pieces[0][:2] == (0, True)
    assert all(offline_filter(text, packets.ethernet(piece)) for _, _, piece in pieces)
    # ... but only to the destinations of the clause
    stray = packets.fragment_ip(segment, "198.18.0.1", "198.18.0.3", 0x4243)
    assert not any(offline_filter(text, packets.ethernet(piece)) for _, _, piece in stray)
    # TCP to a subscribed port is not UDP
    tcp = bytearray(_frame(ports[0]))
    tcp[14 + 9] = 6
    assert not offline_filter(text, bytes(tcp))


def test_no_terms_is_an_error_not_a_filter():
    # libpcap rejects a filter that passes nothing; the last subscriber closes the capture
    with pytest.raises(ValueError):
        union_filter([])
