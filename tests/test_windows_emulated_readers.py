"""The two Windows readers on the emulated Npcap: which one a capture gets, that both deliver
the same thing from the same traffic, and the fallback from Packet.dll to wpcap.dll.

* ``reader="batch"`` (the default): ``_npf.PacketCapture``, one ``PacketReceivePacket`` per
  batch into a Python-owned buffer, Npcap's ``bpf_hdr`` records walked in place;
* ``reader="next_ex"`` (or ``UDPCAP_CTYPES_READER=next_ex``): wpcap.dll's ``pcap_next_ex``.

The differential test opens one socket of each kind in one process on the same adapter and
the same loopback adapter (sockets with different readers never share a capture), sends one
stream, and compares what each delivered and counted.  Functions named ``emulated_*`` run
inside the emulated Windows (see tests/winemu).
"""

import pytest

from udpcap_ctypes import _net
from winemu import numbered, receive_all, send_udp

pytestmark = [pytest.mark.windows_emulated, pytest.mark.live]


def emulated_capture_kinds(port, reader, remove=None, packet_dll=True):
    import logging

    from udpcap_ctypes import UdpcapSocket, _loader
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logging.getLogger("udpcap_ctypes").addHandler(Keep())
    logging.getLogger("udpcap_ctypes").setLevel(logging.INFO)
    library = _loader.get_library()
    if remove:
        # A Packet.dll without this export: the table's stub for a missing function.
        setattr(library.packet_fns, remove, type(library.packet_fns.PacketOpenAdapter)())
    options = {} if reader is None else {"reader": reader}
    with UdpcapSocket(**options) as sock:
        sock.bind(("0.0.0.0", port))
        kinds = {c.device.name: [type(c.capture).__name__, c.shared.reader.records]
                 for c in sock._receiver.captures}
    return {"kinds": kinds, "packet_loaded": library.packet_fns is not None,
            "log": [m for m in records if "Packet.dll" in m]}


@pytest.mark.parametrize("reader", [None, "batch", "next_ex"])
def test_each_reader_gets_its_capture(machine, netpair, reader):
    """The machine fixture sets UDPCAP_CTYPES_READER; the socket option wins over it."""
    m = machine()
    result = m.call(netpair.a, emulated_capture_kinds, port=_net.free_udp_port(),
                    reader=reader)
    chosen = reader or m.reader
    expected = (["PacketCapture", "npf"] if chosen == "batch"
                else ["Capture", "savefile"])
    assert len(result["kinds"]) == 2                      # the veth and the loopback adapter
    assert all(kind == expected for kind in result["kinds"].values()), result
    assert result["log"] == []


def test_without_packet_dll_the_batch_reader_falls_back_and_says_why(machine, netpair):
    result = machine(packet=False).call(netpair.a, emulated_capture_kinds,
                                        port=_net.free_udp_port(), reader="batch")
    assert result["packet_loaded"] is False
    assert all(kind == ["Capture", "savefile"] for kind in result["kinds"].values()), result
    assert len(result["log"]) == 2
    assert all("Packet.dll was not loaded" in line and "pcap_next_ex" in line
               for line in result["log"]), result["log"]


def test_a_packet_dll_lacking_a_function_falls_back_and_names_it(machine, netpair):
    result = machine().call(netpair.a, emulated_capture_kinds, port=_net.free_udp_port(),
                            reader="batch", remove="PacketReceivePacket")
    assert all(kind == ["Capture", "savefile"] for kind in result["kinds"].values()), result
    assert len(result["log"]) == 2
    assert all("lacks PacketReceivePacket" in line for line in result["log"]), result["log"]


def emulated_both_readers(peer, target, port, count, size, group):
    import threading

    from udpcap_ctypes import UdpcapSocket
    sockets = {reader: UdpcapSocket(reader=reader) for reader in ("batch", "next_ex")}
    try:
        for sock in sockets.values():
            sock.bind(("0.0.0.0", port))
            sock.join_multicast_group(group)
        got = {}

        def drain(reader, sock):
            got[reader] = receive_all(sock, 4 * count, timeout=3.0)

        threads = [threading.Thread(target=drain, args=item) for item in sockets.items()]
        for thread in threads:
            thread.start()
        payloads = numbered(count, size=size)
        send_udp(peer, (target, port), payloads, interval=0.0005)
        send_udp(peer, (group, port), payloads, interval=0.0005)
        # This host's own: to 127.0.0.1, and to the group (looped to the loopback adapter).
        send_udp(None, ("127.0.0.1", port), payloads, interval=0.0005)
        send_udp(None, (group, port), payloads, interval=0.0005, multicast_interface=target)
        for thread in threads:
            thread.join(30)
        out = {}
        for reader, sock in sockets.items():
            stats = sock.statistics()
            out[reader] = {
                "datagrams": [[data.hex(), list(address)] for data, address in got[reader]],
                "counts": {name: stats[name] for name in (
                    "accepted", "delivered", "not_for_us", "malformed_total",
                    "own_multicast_dropped", "fragments", "reassembled")},
                "frames": stats["frames"], "capture_drops": stats["capture_drops"]}
        return out
    finally:
        for sock in sockets.values():
            sock.close()


@pytest.mark.parametrize("size", [1, 1400, 4000])
def test_both_readers_deliver_the_same_from_the_same_traffic(machine, netpair, size):
    """Unicast and multicast from the peer (the Ethernet adapter), and this host's own to
    127.0.0.1 and to the group (the DLT_NULL loopback adapter), of one size (4,000 bytes:
    fragmented on the MTU-1500 link), into one socket per reader: the same datagrams from
    the same sources in the same order, the same counts."""
    count = 200
    result = machine().call(netpair.a, emulated_both_readers, peer=netpair.b.name,
                            target=netpair.addr_a, port=_net.free_udp_port(), count=count,
                            size=size, group="239.192.9.9", timeout=120)
    batch, next_ex = result["batch"], result["next_ex"]
    # Drops would make the comparison meaningless: the emulated driver's buffers are ample
    # at this pace; say so if one overflowed.
    assert batch["capture_drops"] == next_ex["capture_drops"] == 0, result
    # Npcap's loopback adapter skips fragments (npf Loopback.c NPF_ShouldProcess), and this
    # host's own 4,000-byte multicast is fragmented on the way out: none of it is seen.
    assert len(batch["datagrams"]) == 4 * count - (count if size > 1472 else 0)
    assert batch["datagrams"] == next_ex["datagrams"]
    assert batch["counts"] == next_ex["counts"]
    assert batch["frames"] == next_ex["frames"] > 0
