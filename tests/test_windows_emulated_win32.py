"""The Windows glue on the emulated Windows: tables bound to the shims, Win32 calls, registry,
waiting, the loader, device choice (tests/winemu).

``udpcap_ctypes._win32``, ``_loader`` and ``_platform.WindowsPlatform`` run unchanged in the
emulated Windows; every Win32 and wpcap call crosses ctypes with the package's own
``argtypes``/``restype``, so a wrong type fails here as it would on Windows.  Functions named
``emulated_*`` run in the child.
"""

import errno

import pytest

from udpcap_ctypes import _net
from winemu import receive_all, send_udp

pytestmark = [pytest.mark.windows_emulated, pytest.mark.live]


def _kernel32():
    import ctypes
    import os
    return ctypes.CDLL(os.path.join(os.environ["WINEMU_DIR"], "kernel32.so"))


def _advapi32():
    import ctypes
    import os
    return ctypes.CDLL(os.path.join(os.environ["WINEMU_DIR"], "advapi32.so"))


# --------------------------------------------------------------------------------------------
# The tables


def emulated_tables():
    import ctypes

    from udpcap_ctypes import _loader, _pcap, _structs, _win32
    library = _loader.get_library()
    api = _win32.Win32Api()
    bound = {}
    for dll in ("kernel32", "advapi32"):
        for row in _win32.WIN32_PROTOTYPES:
            if row.library == dll:
                func = api._fn(dll, row.name)
                bound[row.name] = [func.restype is row.restype,
                                   list(func.argtypes) == list(row.argtypes)]
    missing = [row.name for row in _pcap.PROTOTYPES
               if row.applies(windows=True) and not getattr(library.fns, row.name)]
    posix = [row.name for row in _pcap.PROTOTYPES
             if not row.applies(windows=True) and hasattr(library.fns, row.name)]
    packet = [row.name for row in _pcap.PACKET_PROTOTYPES
              if not getattr(library.packet_fns, row.name, None)]
    return {"bound": bound, "missing": missing, "posix_bound": posix,
            "packet_missing": packet, "c_long": ctypes.sizeof(ctypes.c_long),
            "pkthdr_size": ctypes.sizeof(_structs.pcap_pkthdr)}


def test_every_table_row_binds_to_the_emulated_dlls(machine, netns):
    """Every Win32 row binds with its declared types; wpcap.dll exports every "all"/"win" row
    and no POSIX-only one is bound; Packet.dll exports its rows except PacketGetInfo (Npcap
    1.81 and newer, not emulated).  The Windows pcap_pkthdr is 16 bytes although this
    interpreter's c_long is 8."""
    result = machine().call(netns, emulated_tables)
    assert result["bound"] and all(ok == [True, True] for ok in result["bound"].values())
    assert result["missing"] == [] and result["posix_bound"] == []
    assert result["packet_missing"] == ["PacketGetInfo"]
    assert result["c_long"] == 8 and result["pkthdr_size"] == 16


def emulated_wrong_argument_types():
    import ctypes

    from udpcap_ctypes import _win32
    api = _win32.Win32Api()
    event = api.create_event()
    out = {}
    try:
        api._fn("kernel32", "WaitForMultipleObjects")(1, [event], 0, 0)
    except ctypes.ArgumentError as exc:
        out["list"] = str(exc)
    array = (ctypes.c_void_p * 1)(event)
    out["array"] = api._fn("kernel32", "WaitForMultipleObjects")(1, array, 0, 0)
    api.close_handle(event)
    return out


def test_a_python_list_is_not_a_handle_array(machine, netns):
    """Real ctypes refuses a list for ``const HANDLE *``; the waiter passes arrays."""
    result = machine().call(netns, emulated_wrong_argument_types)
    assert "argument 2" in result["list"]
    assert result["array"] == 0x102                     # WAIT_TIMEOUT


# --------------------------------------------------------------------------------------------
# Win32 calls: errors, services, elevation, handles closed


def emulated_win32_calls():
    from udpcap_ctypes import _win32
    api = _win32.Win32Api()
    kernel32 = _kernel32()
    before = kernel32.winemu_handle_count(0)
    out = {"npcap": _win32.service_state(api, "npcap"),
           "npf": _win32.service_state(api, "npf"),
           "elevated": _win32.is_elevated(api),
           "system32": api.system_directory()}
    try:
        api.close_handle(0x4444)
    except OSError as exc:
        out["close_error"] = [type(exc).__name__, exc.winerror, str(exc)]
    out["leaked"] = kernel32.winemu_handle_count(0) - before
    return out


@pytest.mark.parametrize("service,elevated", [(4, True), (1, False)])
def test_service_state_elevation_and_errors_through_the_table(machine, netns, service,
                                                              elevated):
    emulated = machine(service=service, elevated=elevated)
    result = emulated.call(netns, emulated_win32_calls)
    assert result["npcap"] == ("running" if service == 4 else "stopped")
    assert result["npf"] == "missing"
    assert result["elevated"] is elevated
    assert result["system32"] == emulated.system32
    kind, winerror, text = result["close_error"]
    assert kind == "OSError" and winerror == 6
    assert text == "[Errno 9] CloseHandle failed: The handle is invalid. (Windows error 6)"
    assert result["leaked"] == 0                 # service, manager and token handles closed


def emulated_access_denied():
    from udpcap_ctypes import _win32
    api = _win32.Win32Api()
    try:
        api.open_sc_manager()
    except OSError as exc:
        return [type(exc).__name__, exc.errno, exc.winerror,
                _win32.service_state(api, "npcap")]


def test_access_denied_is_a_permission_error_as_on_windows(machine, netns):
    """CPython maps ERROR_ACCESS_DENIED to PermissionError; win_error does the same."""
    result = machine(scm_denied=True).call(netns, emulated_access_denied)
    assert result == ["PermissionError", errno.EACCES, 5, "access_denied"]


# --------------------------------------------------------------------------------------------
# Registry through winreg over advapi32


def emulated_registry():
    from udpcap_ctypes import _win32
    install = _win32.read_npcap_registry(_win32.WinregReader())
    out = install.as_dict()
    out["open_keys"] = _advapi32().winemu_open_keys()
    return out


@pytest.mark.parametrize("layout", ["modern", "pre-0.93"])
def test_npcap_options_are_read_in_both_registry_layouts(machine, netns, layout):
    guid = "{A1B2C3D4-0000-4000-8000-000000000002}"
    emulated = machine(admin_only=True, registry_layout=layout, legacy_loopback=guid)
    result = emulated.call(netns, emulated_registry)
    assert result["installed"] is True and result["admin_only"] is True
    assert result["loopback_support"] is True and result["winpcap_compatible"] is False
    assert result["loopback_adapter"] == "\\Device\\" + guid
    assert result["service_key"].endswith("npcap" if layout == "pre-0.93" else "Parameters")
    assert result["open_keys"] == 0


def test_npcap_absent_and_winpcap_only_in_the_registry(machine, netns):
    result = machine(npcap="missing", winpcap_service=True).call(netns, emulated_registry)
    assert result["installed"] is False and result["winpcap_present"] is True
    assert result["open_keys"] == 0


# --------------------------------------------------------------------------------------------
# EventWaiter over the real kernel32 semantics


def emulated_event_waiter():
    import threading
    import time
    import types

    from udpcap_ctypes import _win32

    def captures(handles):
        return [types.SimpleNamespace(event_handle=lambda h=h: h) for h in handles]
    api = _win32.Win32Api()
    events = [api.create_event() for _ in range(130)]
    waiter = _win32.EventWaiter(api)
    waiter.set_captures(captures(events))
    out = {"groups": len(waiter._groups)}
    started = time.monotonic()
    out["timeout"] = [waiter.wait(0.05), time.monotonic() - started >= 0.05]
    out["poll"] = waiter.wait(0)
    api.set_event(events[125])                       # in the third chunk
    out["late_chunk"] = waiter.wait(2.0)
    api.reset_event(events[125])
    box = []
    worker = threading.Thread(target=lambda: box.append(waiter.wait(None)))
    worker.start()
    time.sleep(0.1)
    waiter.wake()
    worker.join(2)
    out["woken"] = [box, waiter.wait(0), waiter.wait(0)]      # wake() is permanent
    single = _win32.EventWaiter(api)
    single.set_captures(captures(events[:3]))
    api.set_event(events[2])
    out["single"] = single.wait(None)
    empty = _win32.EventWaiter(api)
    out["empty"] = empty.wait(0.02)
    interval = _win32.EventWaiter(api, interval=0.02)
    interval.set_captures(captures(events[:1]))
    api.reset_event(events[2])
    started = time.monotonic()
    out["interval"] = [interval.wait(5.0), time.monotonic() - started < 1.0]
    for waiter_ in (waiter, single, empty, interval):
        waiter_.close()
    out["closed"] = waiter.wait(None)
    for event in events:
        api.close_handle(event)
    try:
        broken = _win32.EventWaiter(api)
        broken.set_captures(captures([0x4444]))
        broken.wait(0)
    except OSError as exc:
        out["bad_handle"] = exc.winerror
    return out


def test_event_waiter_chunks_wakes_resets_and_times_out(machine, netns):
    result = machine().call(netns, emulated_event_waiter)
    assert result["groups"] == 3                          # 130 handles in chunks of 60
    assert result["timeout"] == [False, True]             # never early
    assert result["poll"] is False
    assert result["late_chunk"] is True
    assert result["woken"] == [[True], True, True]
    assert result["single"] is True and result["empty"] is False
    assert result["interval"] == [True, True]             # non-immediate: read anyway
    assert result["closed"] is True
    assert result["bad_handle"] == 6


# --------------------------------------------------------------------------------------------
# Loader and device choice


def emulated_loaded():
    from udpcap_ctypes import _loader
    library = _loader.get_library()
    return [library.kind, library.path, library.packet_path, library.version]


def test_a_legacy_winpcap_in_system32_loads_as_winpcap(machine, netns):
    emulated = machine(npcap="winpcap")
    kind, path, packet, version = emulated.call(netns, emulated_loaded)
    assert kind == "winpcap" and version.startswith("WinPcap version 4.1.3")
    assert path == emulated.system32 + "\\wpcap.dll"
    assert packet == emulated.system32 + "\\Packet.dll"


def test_packet_dll_missing_loads_wpcap_without_it(machine, netns):
    emulated = machine(packet=False)
    kind, path, packet, _version = emulated.call(netns, emulated_loaded)
    assert (kind, path, packet) == ("npcap", emulated.system32 + "\\Npcap\\wpcap.dll", None)


def emulated_device_choice(addresses, port):
    from udpcap_ctypes import UdpcapSocket, _loader, _platform
    platform = _platform.current(_loader.get_library())
    out = {"platform": [type(platform).__name__, platform.drain_before_wait,
                        platform.hold_memberships_default(), platform.filter_resets_counters]}
    for address in addresses:
        try:
            with UdpcapSocket() as sock:
                sock.bind((address, port))
                out[address] = sorted(sock.filter_expressions())
        except OSError as exc:
            out[address] = [exc.errno, str(exc)]
    return out


def test_bind_selects_devices_as_udpcap_does(machine, netpair):
    result = machine().call(netpair.a, emulated_device_choice,
                            addresses=["127.0.0.1", "0.0.0.0", netpair.addr_a, "198.18.250.9"],
                            port=_net.free_udp_port())
    assert result["platform"] == ["WindowsPlatform", True, False, True]
    loopback = "\\Device\\NPF_Loopback"
    assert result["127.0.0.1"] == [loopback]
    any_devices = result["0.0.0.0"]
    assert loopback in any_devices and len(any_devices) == 2
    assert result[netpair.addr_a] == any_devices          # its adapter plus loopback
    number, text = result["198.18.250.9"]
    assert number == errno.EADDRNOTAVAIL and netpair.addr_a in text and "127.0.0.1" in text


def test_a_legacy_loopback_adapter_serves_loopback_binds(machine, netns):
    guid = "{A1B2C3D4-0000-4000-8000-000000000003}"
    result = machine(legacy_loopback=guid).call(netns, emulated_device_choice,
                                                 addresses=["127.0.0.1"], port=_net.free_udp_port())
    assert result["127.0.0.1"] == ["\\Device\\NPF_" + guid]


def emulated_own_mac(peer, target, port):
    from udpcap_ctypes import UdpcapSocket
    with UdpcapSocket() as sock:
        sock.bind(("0.0.0.0", port))
        macs = {}
        for opened in sock._receiver.captures:
            macs[opened.device.name] = [
                None if mac is None else mac.hex()
                for mac in [sock._platform.adapter_mac(opened.capture)]]
        send_udp(peer, (target, port), [b"x"])
        receive_all(sock, 1)
    return macs


def test_the_adapters_mac_comes_from_the_oid_request_and_loopback_has_none(machine, netpair):
    mac = netpair.a.run(["cat", "/sys/class/net/%s/address" % netpair.if_a]).stdout.strip()
    result = machine().call(netpair.a, emulated_own_mac, peer=netpair.b.name,
                            target=netpair.addr_a, port=_net.free_udp_port())
    assert result.pop("\\Device\\NPF_Loopback") == [None]
    (adapter, found), = result.items()
    assert found == [mac.replace(":", "")]


def emulated_kickstarts(port, loopback_at_join):
    from udpcap_ctypes import UdpcapSocket, _loader, _platform
    platform = _platform.current(_loader.get_library())
    calls = []
    platform._kickstart = calls.append
    with UdpcapSocket() as sock:
        sock.set_multicast_loopback(loopback_at_join)
        sock.join_multicast_group("239.192.9.1")
        sock.bind(("0.0.0.0", port))
        sock.join_multicast_group("239.192.9.2")
        sock.set_multicast_loopback(True)
    return calls


@pytest.mark.parametrize("loopback_at_join", [True, False])
def test_joins_kickstart_the_loopback_only_with_multicast_loopback_on(machine, netpair,
                                                                      loopback_at_join):
    calls = machine().call(netpair.a, emulated_kickstarts, port=_net.free_udp_port(),
                           loopback_at_join=loopback_at_join)
    if loopback_at_join:
        assert calls == [["239.192.9.1"], ["239.192.9.2"], ["239.192.9.1", "239.192.9.2"]]
    else:
        assert calls == [["239.192.9.1", "239.192.9.2"]]      # once loopback is turned on
