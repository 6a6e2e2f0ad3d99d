"""Npcap's Packet.dll capture API on the emulated Windows, through the package's own table.

udpcap_ctypes binds the Packet.dll functions that libpcap's ``pcap-npf.c`` calls
(``_pcap.PACKET_PROTOTYPES``: PacketOpenAdapter ... PacketRequest) and reads the driver's
``bpf_hdr`` records with them.  Here each of those functions is called through
``_loader.get_library().packet_fns`` -- the package's ``argtypes``, ``restype`` and errchecks --
inside the emulated Windows (tests/winemu: packet.c over the emulated NPF driver, which
captures a test namespace's real interfaces), and its answers are checked against Npcap's
semantics (``Packet32.cpp``, the driver's ``Packet.c``/``Read.c``/``Openclos.c``): the
ADAPTER it returns, the link types, errors told through the thread's last error, the read
event, ``PacketReceivePacket``'s records and wait, the statistics and the OID requests.
Functions named ``emulated_*`` run inside the emulated Windows.
"""

import pytest

from udpcap_ctypes import _net
from winemu import SERVICE_STOPPED, send_udp

pytestmark = [pytest.mark.windows_emulated, pytest.mark.live]

LOOPBACK = "\\Device\\NPF_Loopback"
WINEMU_EVENT = 1                 # tests/winemu/c/winemu.h handle kind
WAIT_OBJECT_0 = 0x000
WAIT_TIMEOUT = 0x102
NDIS_PACKET_TYPE_PROMISCUOUS = 0x20
NDIS_PACKET_TYPE_ALL_LOCAL_AND_CO = 0x80 | 0x01 | 0x08 | 0x02   # pcap-npf.c without promisc
NDIS_MEDIUM_802_3 = 0
NDIS_MEDIUM_NULL = 0xFFFFFFFF
INFO_FLAG_NPCAP_LOOPBACK = 0x100
OID_GEN_MEDIA_IN_USE = 0x00010104
OID_GEN_LINK_SPEED = 0x00010107
OID_802_3_CURRENT_ADDRESS = 0x01010102
BPF_HDR_SIZE = 20                # sizeof(struct bpf_hdr) on Windows: 18 bytes + padding


def _align(n):
    """Packet32.h Packet_WORDALIGN."""
    return (n + 3) & ~3


# --------------------------------------------------------------------------------------------
# Helpers that run inside the emulated Windows


def _packet_api():
    """(library, Packet.dll table, kernel32 shim) of the emulated machine."""
    import ctypes
    import os
    import sys

    from udpcap_ctypes import _loader
    assert sys.platform == "win32"
    library = _loader.get_library()
    assert library.packet_fns is not None, "the package did not bind Packet.dll"
    kernel32 = ctypes.CDLL(os.path.join(os.environ["WINEMU_DIR"], "kernel32.so"))
    kernel32.winemu_handle_kind.argtypes = [ctypes.c_void_p]
    kernel32.GetLastError.restype = ctypes.c_uint32
    return library, library.packet_fns, kernel32


def _device_names(fns):
    """Every device pcap_findalldevs lists (the package's wpcap table): the namespace's
    adapter(s) as \\Device\\NPF_{GUID}, then \\Device\\NPF_Loopback."""
    import ctypes

    from udpcap_ctypes import _structs
    alldevs = ctypes.c_void_p()
    fns.pcap_findalldevs(ctypes.byref(alldevs), ctypes.create_string_buffer(256))
    names = []
    node = alldevs.value
    while node:
        dev = _structs.pcap_if.from_address(node)
        names.append(ctypes.string_at(dev.name).decode("ascii"))
        node = dev.next
    fns.pcap_freealldevs(alldevs)
    return names


def _adapter_name(fns):
    (name,) = [n for n in _device_names(fns) if n.startswith("\\Device\\NPF_{")]
    return name


def _adapter_struct():
    """Common/Packet32.h ``ADAPTER`` (without HAVE_AIRPCAP_API), what PacketOpenAdapter
    returns a pointer to; the package never reads it, the test does."""
    import ctypes

    class ADAPTER(ctypes.Structure):
        _fields_ = [("hFile", ctypes.c_void_p), ("SymbolicLink", ctypes.c_char * 64),
                    ("NumWrites", ctypes.c_int), ("ReadEvent", ctypes.c_void_p),
                    ("ReadTimeOut", ctypes.c_uint), ("Name", ctypes.c_char * (256 + 12)),
                    ("pWanAdapter", ctypes.c_void_p), ("Flags", ctypes.c_uint)]
    return ADAPTER


def _failure(function, *args):
    """What a failing Packet.dll call raised: [exception class, winerror, errno]."""
    try:
        function(*args)
    except OSError as exc:
        return [type(exc).__name__, getattr(exc, "winerror", None), exc.errno]
    return "succeeded"


def _records(buffer, size, dlt):
    """The bpf_hdr records of one read, walked as pcap-npf.c walks them."""
    import ctypes

    from udpcap_ctypes import _structs
    raw = buffer.raw[:size]
    out = []
    offset = 0
    while offset < size:
        hdr = _structs.bpf_hdr.from_buffer_copy(raw, offset)
        frame = raw[offset + hdr.bh_hdrlen:offset + hdr.bh_hdrlen + hdr.bh_caplen]
        link = 14 if dlt == 1 else 4
        ihl = (frame[link] & 0x0F) * 4
        udp = frame[link + ihl:]
        out.append({"offset": offset, "hdrlen": hdr.bh_hdrlen, "caplen": hdr.bh_caplen,
                    "datalen": hdr.bh_datalen, "sec": hdr.bh_tstamp.tv_sec,
                    "usec": hdr.bh_tstamp.tv_usec,
                    "link": frame[:link].hex(), "dport": int.from_bytes(udp[2:4], "big"),
                    "payload": udp[8:].decode("latin-1")})
        offset += (hdr.bh_hdrlen + hdr.bh_caplen + 3) & ~3
    assert ctypes.sizeof(_structs.bpf_hdr) == BPF_HDR_SIZE
    return out


# --------------------------------------------------------------------------------------------
# Opening, closing, the ADAPTER and the link types


def emulated_open_and_close():
    import ctypes

    from udpcap_ctypes import _structs
    library, packet, kernel32 = _packet_api()
    ADAPTER = _adapter_struct()
    events_before = kernel32.winemu_handle_count(WINEMU_EVENT)
    out = {}
    for name in _device_names(library.fns):
        ctypes.set_last_error(99)
        handle = packet.PacketOpenAdapter(name.encode("ascii"))
        entry = {"last_error": ctypes.get_last_error()}
        adapter = ADAPTER.from_address(handle)
        event = packet.PacketGetReadEvent(handle)
        net_type = _structs.NetType(LinkType=12345, LinkSpeed=777)
        entry["net_type_ok"] = packet.PacketGetNetType(handle, ctypes.byref(net_type))
        entry.update(link_type=net_type.LinkType, link_speed=net_type.LinkSpeed,
                     name=adapter.Name.decode("ascii"), flags=adapter.Flags,
                     read_timeout=adapter.ReadTimeOut, num_writes=adapter.NumWrites,
                     read_event_member=adapter.ReadEvent == event,
                     event_kind=kernel32.winemu_handle_kind(event),
                     event_set=kernel32.winemu_event_is_set(ctypes.c_void_p(event)),
                     events_open=kernel32.winemu_handle_count(WINEMU_EVENT) - events_before)
        packet.PacketCloseAdapter(handle)
        entry["event_kind_after_close"] = kernel32.winemu_handle_kind(event)
        entry["events_after_close"] = kernel32.winemu_handle_count(WINEMU_EVENT) - events_before
        out[name] = entry
    packet.PacketCloseAdapter(None)                       # "attempt to close a NULL adapter"
    # Packet32.cpp's "Ugly heuristic": a name whose second byte is 0 is a wide string.
    name = _adapter_name(library.fns)
    wide = ctypes.create_unicode_buffer(name)
    handle = packet.PacketOpenAdapter(ctypes.cast(wide, ctypes.c_char_p))
    out["wide name"] = ADAPTER.from_address(handle).Name.decode("ascii")
    packet.PacketCloseAdapter(handle)
    return out


def test_open_and_close_an_adapter_and_the_loopback_adapter(machine, netpair):
    """PacketOpenAdapter returns Packet32.h's ADAPTER: the read event in ReadEvent (a
    manual-reset event, clear), ReadTimeOut 0, the name, INFO_FLAG_NPCAP_LOOPBACK on the
    loopback adapter only, and sets the last error to ERROR_SUCCESS; PacketGetNetType gives
    NdisMedium802_3 / NdisMediumNull with LinkSpeed 0; PacketCloseAdapter frees the event
    (and ignores NULL)."""
    result = machine().call(netpair.a, emulated_open_and_close)
    assert result.pop("wide name").startswith("\\Device\\NPF_{")
    loopback = result.pop(LOOPBACK)
    (name, adapter), = result.items()
    assert name.startswith("\\Device\\NPF_{") and name.endswith("}")
    common = {"last_error": 0, "net_type_ok": 1, "link_speed": 0, "read_timeout": 0,
              "num_writes": 0, "read_event_member": True, "event_kind": WINEMU_EVENT,
              "event_set": 0, "events_open": 1, "event_kind_after_close": 0,
              "events_after_close": 0}
    assert adapter == dict(common, name=name, flags=0, link_type=NDIS_MEDIUM_802_3)
    assert loopback == dict(common, name=LOOPBACK, flags=INFO_FLAG_NPCAP_LOOPBACK,
                            link_type=NDIS_MEDIUM_NULL)


def emulated_open_failures(names):
    import ctypes
    _, packet, kernel32 = _packet_api()
    out = {}
    for name in names:
        ctypes.set_last_error(0)
        failure = _failure(packet.PacketOpenAdapter, name.encode("ascii"))
        # Both copies of the last error: ctypes' (what get_last_error returns) and the
        # thread's own (kernel32's GetLastError, read right after).
        out[name] = failure if failure == "succeeded" else failure + [
            ctypes.get_last_error(), kernel32.GetLastError()]
    return out


NO_SUCH_GUID = "\\Device\\NPF_{00000000-0000-4000-8000-000000000000}"


@pytest.mark.parametrize("profile, names, expected", [
    ({}, [NO_SUCH_GUID], ["OSError", 20, 22]),                   # ERROR_BAD_UNIT
    ({}, ["eth0", "\\Device\\NPF_" + "X" * 300], ["OSError", 123, 22]),   # ERROR_INVALID_NAME
    ({"service": SERVICE_STOPPED}, [LOOPBACK], ["FileNotFoundError", 2, 2]),
    ({"admin_only": True, "elevated": False, "uac": "decline"}, [LOOPBACK],
     ["PermissionError", 5, 13]),
], ids=["no-such-adapter", "not-an-npf-name", "driver-stopped", "uac-declined"])
def test_a_failed_open_raises_the_last_error(machine, netns, profile, names, expected):
    """PacketOpenAdapter returns NULL and the error as the thread's last error; the package's
    errcheck raises it as the OSError CPython would (winerror set).  The name is checked first
    (NpcapGetAdapterID: ERROR_INVALID_NAME), then the driver answers (ERROR_BAD_UNIT for an
    adapter it does not know, the CreateFile error without a driver or with the UAC prompt
    declined)."""
    result = machine(**profile).call(netns, emulated_open_failures, names=names)
    code = expected[1]
    assert result == {name: expected + [code, code] for name in names}


# --------------------------------------------------------------------------------------------
# Reading: settings, records, the read event, the wait, statistics


def emulated_receive(peer, target, port, loopback):
    import ctypes
    import threading
    import time

    from udpcap_ctypes import _pcap, _structs, _win32
    library, packet, _ = _packet_api()
    fns = library.fns
    api = _win32.Win32Api()
    name = LOOPBACK if loopback else _adapter_name(fns)
    dlt = _pcap.DLT_NULL if loopback else _pcap.DLT_EN10MB
    dead = fns.pcap_open_dead(dlt, 65536 + 64)
    handle = packet.PacketOpenAdapter(name.encode("ascii"))
    out = {}

    def set_filter(expression):
        program = _structs.bpf_program()
        fns.pcap_compile(dead, ctypes.byref(program), expression.encode("ascii"), 1,
                         _pcap.PCAP_NETMASK_UNKNOWN)
        try:
            return packet.PacketSetBpf(handle, ctypes.byref(program))
        finally:
            fns.pcap_freecode(ctypes.byref(program))

    buffer = ctypes.create_string_buffer(256000)
    pkt = _structs.PACKET()

    def read():
        started = time.monotonic()
        ok = packet.PacketReceivePacket(handle, ctypes.byref(pkt), 1)
        return {"ok": ok, "error": 0 if ok else ctypes.get_last_error(),
                "bytes": pkt.ulBytesReceived, "seconds": time.monotonic() - started,
                "records": _records(buffer, pkt.ulBytesReceived, dlt) if ok else []}

    def stats():
        stat = _structs.bpf_stat(bs_recv=7777, bs_drop=7777, ps_ifdrop=0xDEAD, bs_capt=0xBEEF)
        packet.PacketGetStats(handle, ctypes.byref(stat))
        return [stat.bs_recv, stat.bs_drop, stat.ps_ifdrop, stat.bs_capt]

    try:
        event = packet.PacketGetReadEvent(handle)
        packet.PacketInitPacket(ctypes.byref(pkt), buffer, len(buffer))
        out["init"] = [pkt.Buffer == ctypes.addressof(buffer), pkt.Length, pkt.ulBytesReceived]
        out["set_read_timeout"] = packet.PacketSetReadTimeout(handle, -1)
        # The driver's buffer is 0 bytes until PacketSetBuff: NPF_Read fails.
        out["unbuffered"] = read()
        out["settings"] = [packet.PacketSetBuff(handle, 1 << 20),
                           packet.PacketSetMinToCopy(handle, 0),
                           packet.PacketSetHwFilter(handle, NDIS_PACKET_TYPE_PROMISCUOUS),
                           set_filter("udp dst port %d" % port)]
        out["empty"] = read()
        out["event_idle"] = api.wait_for_single_object(event, 0)

        send_udp(peer, (target, port), [b"P" * 61])
        out["event_pending"] = api.wait_for_single_object(event, 3000)
        out["event_still_set"] = api.wait_for_single_object(event, 0)       # manual reset
        out["time"] = time.time()
        out["one"] = read()
        out["event_after_read"] = api.wait_for_single_object(event, 0)

        send_udp(peer, (target, port), [b"first" * 3, b"second" * 7])
        api.wait_for_single_object(event, 3000)
        time.sleep(0.3)                                  # the second one is queued too
        out["two"] = read()
        out["stats"] = stats()

        # PacketSetBpf: the driver flushes its buffer and zeroes its counters.
        send_udp(peer, (target, port), [b"flushed"])
        api.wait_for_single_object(event, 3000)
        out["stats_before_flush"] = stats()
        out["refilter"] = set_filter("udp dst port %d" % port)
        out["stats_after_flush"] = stats()
        out["after_flush"] = read()

        # ReadTimeOut > 0: PacketReceivePacket waits that long for the event, then reads.
        out["set_timeout"] = packet.PacketSetReadTimeout(handle, 300)
        out["timed_out"] = read()
        out["set_timeout_long"] = packet.PacketSetReadTimeout(handle, 5000)
        timer = threading.Timer(0.3, send_udp, args=(peer, (target, port), [b"woken"]))
        timer.start()
        out["woken"] = read()
        timer.join()
    finally:
        packet.PacketCloseAdapter(handle)
        fns.pcap_close(dead)
    return out


@pytest.mark.parametrize("loopback", [False, True], ids=["adapter", "loopback"])
def test_packets_arrive_as_bpf_hdr_records_with_npcaps_event_and_wait(machine, netpair,
                                                                      loopback):
    """The capture path of pcap-npf.c, with Packet.dll's own calls: PacketSetBuff,
    PacketSetMinToCopy(0), PacketSetHwFilter, PacketSetReadTimeout(-1) and PacketSetBpf with
    a program pcap_compile made on pcap_open_dead(DLT_EN10MB / DLT_NULL, 65536 + 64).  A
    datagram to the namespace (from the peer host; to 127.0.0.1 for the loopback adapter)
    arrives in one PacketReceivePacket as a bpf_hdr record: bh_hdrlen 20, caplen = datalen =
    the frame, the next record Packet_WORDALIGN'ed.  The read event is set while a frame is
    pending and cleared by the read; ReadTimeOut -1 returns at once with 0 bytes, a positive
    ReadTimeOut waits that long or until a frame comes.  PacketGetStats writes bs_recv and
    bs_drop only; PacketSetBpf flushes the buffer and zeroes them; without PacketSetBuff a
    read fails with ERROR_GEN_FAILURE (the driver's Size is 0)."""
    port = _net.free_udp_port()
    if loopback:
        peer, target = None, "127.0.0.1"
    else:
        peer, target = netpair.b.name, netpair.addr_a
    r = machine().call(netpair.a, emulated_receive, peer=peer, target=target, port=port,
                       loopback=loopback)
    link = 4 if loopback else 14
    assert r["init"] == [True, 256000, 0]
    assert r["set_read_timeout"] == 1
    unbuffered = r["unbuffered"]
    assert [unbuffered["ok"], unbuffered["error"], unbuffered["bytes"]] == [0, 31, 0]
    assert r["settings"] == [1, 1, 1, 1]

    empty = r["empty"]
    assert [empty["ok"], empty["bytes"]] == [1, 0] and empty["seconds"] < 0.5
    assert r["event_idle"] == WAIT_TIMEOUT
    assert r["event_pending"] == WAIT_OBJECT_0 and r["event_still_set"] == WAIT_OBJECT_0

    one = r["one"]
    (record,) = one["records"]
    caplen = link + 20 + 8 + 61                       # not a multiple of 4
    assert caplen % 4
    assert one["ok"] == 1 and one["bytes"] == _align(BPF_HDR_SIZE + caplen)
    assert record["offset"] == 0 and record["hdrlen"] == BPF_HDR_SIZE
    assert record["caplen"] == record["datalen"] == caplen
    assert record["dport"] == port and record["payload"] == "P" * 61
    assert abs(record["sec"] + record["usec"] / 1e6 - r["time"]) < 5
    assert 0 <= record["usec"] < 1000000
    if loopback:
        assert record["link"] == "02000000"           # DLT_NULL: AF_INET, host byte order
    else:
        assert record["link"].endswith("0800")        # Ethernet, IPv4
    assert r["event_after_read"] == WAIT_TIMEOUT

    two = r["two"]
    first, second = two["records"]
    assert [first["payload"], second["payload"]] == ["first" * 3, "second" * 7]
    assert second["offset"] == _align(BPF_HDR_SIZE + first["caplen"]) and first["caplen"] % 4
    assert two["bytes"] == second["offset"] + _align(BPF_HDR_SIZE + second["caplen"])
    assert r["stats"] == [3, 0, 0xDEAD, 0xBEEF]

    assert r["stats_before_flush"] == [4, 0, 0xDEAD, 0xBEEF]
    assert r["refilter"] == 1
    assert r["stats_after_flush"] == [0, 0, 0xDEAD, 0xBEEF]
    after_flush = r["after_flush"]
    assert [after_flush["ok"], after_flush["bytes"]] == [1, 0]

    assert r["set_timeout"] == 1 and r["set_timeout_long"] == 1
    timed_out = r["timed_out"]
    assert [timed_out["ok"], timed_out["bytes"]] == [1, 0]
    assert 0.25 <= timed_out["seconds"] < 2.0
    woken = r["woken"]
    assert woken["ok"] == 1 and [rec["payload"] for rec in woken["records"]] == ["woken"]
    assert 0.2 <= woken["seconds"] < 3.0


def emulated_refusals():
    import ctypes

    from udpcap_ctypes import _structs
    library, packet, kernel32 = _packet_api()
    handle = packet.PacketOpenAdapter(_adapter_name(library.fns).encode("ascii"))
    out = {}
    try:
        out["buffer_negative"] = _failure(packet.PacketSetBuff, handle, -1)
        out["buffer_too_big"] = _failure(packet.PacketSetBuff, handle, 0x40000001)
        out["buffer_largest"] = packet.PacketSetBuff(handle, 0x40000000)
        out["buffer"] = packet.PacketSetBuff(handle, 1 << 16)
        empty = _structs.bpf_program(0, None)
        out["bpf_empty"] = _failure(packet.PacketSetBpf, handle, ctypes.byref(empty))
        jump = (_structs.bpf_insn * 1)(_structs.bpf_insn(0x05, 0, 0, 100))    # BPF_JA +100
        bad = _structs.bpf_program(1, ctypes.cast(jump, ctypes.c_void_p))
        out["bpf_invalid"] = _failure(packet.PacketSetBpf, handle, ctypes.byref(bad))
        packet.PacketSetReadTimeout(handle, -1)
        small = ctypes.create_string_buffer(BPF_HDR_SIZE - 1)
        pkt = _structs.PACKET()
        packet.PacketInitPacket(ctypes.byref(pkt), small, len(small))
        ok = packet.PacketReceivePacket(handle, ctypes.byref(pkt), 1)
        out["read_small"] = [ok, ctypes.get_last_error(), kernel32.GetLastError()]
        out["net_type_null"] = _failure(packet.PacketGetNetType, handle, None)
    finally:
        packet.PacketCloseAdapter(handle)
    return out


def test_the_driver_refusals_arrive_as_last_errors(machine, netpair):
    """PacketSetBuff beyond NPF_MAX_BUFFER_SIZE (1 GiB; a negative int is a huge ULONG):
    STATUS_INSUFFICIENT_RESOURCES -> ERROR_NO_SYSTEM_RESOURCES; PacketSetBpf with no
    instructions: an ioctl without a buffer -> ERROR_INVALID_PARAMETER; a program bpf_validate
    rejects -> ERROR_INVALID_FUNCTION; a read buffer smaller than a bpf_hdr ->
    ERROR_INSUFFICIENT_BUFFER; PacketGetNetType(NULL) -> ERROR_INVALID_PARAMETER."""
    result = machine().call(netpair.a, emulated_refusals)
    assert result == {"buffer_negative": ["OSError", 1450, 22],
                      "buffer_too_big": ["OSError", 1450, 22],
                      "buffer_largest": 1, "buffer": 1,
                      "bpf_empty": ["OSError", 87, 22], "bpf_invalid": ["OSError", 1, 22],
                      "read_small": [0, 122, 122], "net_type_null": ["OSError", 87, 22]}


# --------------------------------------------------------------------------------------------
# OID requests and the hardware filter


def emulated_requests():
    import ctypes

    from udpcap_ctypes import _structs
    library, packet, kernel32 = _packet_api()
    header = _structs.PACKET_OID_DATA.Data.offset

    def request(handle, oid, length, set_=0, data=b""):
        buffer = ctypes.create_string_buffer(header + max(length, 1) + 8)
        oid_data = _structs.PACKET_OID_DATA.from_buffer(buffer)
        oid_data.Oid, oid_data.Length = oid, length
        ctypes.memmove(ctypes.addressof(buffer) + header, data, len(data))
        ctypes.set_last_error(99)
        failure = _failure(packet.PacketRequest, handle, set_, buffer)
        answer = buffer.raw[header:header + oid_data.Length].hex()
        return [failure if failure != "succeeded" else ctypes.get_last_error(),
                oid_data.Length, answer]

    out = {}
    for name in _device_names(library.fns):
        handle = packet.PacketOpenAdapter(name.encode("ascii"))
        try:
            key = "loopback" if name == LOOPBACK else "adapter"
            out[key] = {
                "mac": request(handle, OID_802_3_CURRENT_ADDRESS, 6),
                "mac_short": request(handle, OID_802_3_CURRENT_ADDRESS, 5),
                "tiny": request(handle, OID_802_3_CURRENT_ADDRESS, 3),
                "medium": request(handle, OID_GEN_MEDIA_IN_USE, 4),
                "other": request(handle, OID_GEN_LINK_SPEED, 4),
                "promiscuous": [_failure(packet.PacketSetHwFilter, handle,
                                         NDIS_PACKET_TYPE_PROMISCUOUS), ctypes.get_last_error()],
                "local": [_failure(packet.PacketSetHwFilter, handle,
                                   NDIS_PACKET_TYPE_ALL_LOCAL_AND_CO), ctypes.get_last_error()],
            }
        finally:
            packet.PacketCloseAdapter(handle)
    return out


def test_oid_requests_and_the_hardware_filter(machine, netpair):
    """PacketRequest(FALSE, OID_802_3_CURRENT_ADDRESS) answers the adapter's MAC with Length 6
    and last error ERROR_SUCCESS; a PACKET_OID_DATA too short for the answer is refused with
    ERROR_INSUFFICIENT_BUFFER; the loopback adapter answers no 802.3 OID
    (STATUS_INVALID_DEVICE_REQUEST -> ERROR_INVALID_FUNCTION) but does fake
    OID_GEN_MEDIA_IN_USE (NdisMediumNull); a failed request leaves Length 0
    (PacketRequestHelper).  PacketSetHwFilter (a set of OID_GEN_CURRENT_PACKET_FILTER)
    succeeds on both, with last error ERROR_SUCCESS."""
    mac = netpair.a.run(["cat", "/sys/class/net/%s/address" % netpair.if_a]).stdout.strip()
    result = machine().call(netpair.a, emulated_requests)
    adapter, loopback = result["adapter"], result["loopback"]
    assert adapter["mac"] == [0, 6, mac.replace(":", "")]
    assert adapter["mac_short"] == [["OSError", 122, 22], 0, ""]
    assert adapter["tiny"] == [["OSError", 122, 22], 0, ""]
    assert adapter["medium"] == [0, 4, "00000000"]                  # NdisMedium802_3
    assert adapter["other"] == [["OSError", 50, 22], 0, ""]          # see npf.c
    assert loopback["mac"] == [["OSError", 1, 22], 0, ""]
    assert loopback["mac_short"] == [["OSError", 1, 22], 0, ""]
    assert loopback["tiny"] == [["OSError", 122, 22], 0, ""]
    assert loopback["medium"] == [0, 4, "ffffffff"]                  # NdisMediumNull
    assert loopback["other"] == [["OSError", 1, 22], 0, ""]
    for answers in (adapter, loopback):
        assert [answers["promiscuous"], answers["local"]] == [["succeeded", 0]] * 2, answers


def emulated_refused_promiscuous():
    import ctypes
    library, packet, _ = _packet_api()
    handle = packet.PacketOpenAdapter(_adapter_name(library.fns).encode("ascii"))
    try:
        refused = _failure(packet.PacketSetHwFilter, handle, NDIS_PACKET_TYPE_PROMISCUOUS)
        last = ctypes.get_last_error()
        local = _failure(packet.PacketSetHwFilter, handle, NDIS_PACKET_TYPE_ALL_LOCAL_AND_CO)
    finally:
        packet.PacketCloseAdapter(handle)
    return {"refused": refused, "last_error": last, "local": local}


def test_a_refused_promiscuous_mode_is_the_last_error(machine, netpair):
    """An adapter whose miniport refuses promiscuous mode: PacketSetHwFilter returns FALSE
    with its error as the last error; the non-promiscuous filter is still accepted."""
    result = machine(adapters={netpair.if_a: {"promisc_error": 31}}).call(
        netpair.a, emulated_refused_promiscuous)
    assert result == {"refused": ["OSError", 31, 22], "last_error": 31, "local": "succeeded"}
