"""The Windows faults a review found, each proven on the emulated Windows (tests/winemu).

Group changes that flush Npcap's buffer, Ctrl-C in a blocking receive, adapters that fail to
open or vanish, admin-only mode with the UAC prompt declined, ``immediate=False`` with
Npcap's MinToCopy, strings in the ANSI code page, System32 from ``GetSystemDirectoryW``,
more than 63 devices, and the port guard's Windows semantics.  Functions named
``emulated_*`` run inside the emulated Windows.
"""

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import winemu
from udpcap_ctypes import _net
from winemu import numbered, receive_all, send_udp

pytestmark = [pytest.mark.windows_emulated, pytest.mark.live]


# --------------------------------------------------------------------------------------------
# 1. A group change must not lose datagrams, and drop counters never go backwards


def emulated_group_change_keeps_pending(peer, target, port, count, change):
    from udpcap_ctypes import UdpcapSocket
    with UdpcapSocket() as sock:
        sock.join_multicast_group("239.192.8.1")
        sock.bind(("0.0.0.0", port))
        if change == "leave":               # datagrams to the group that is left
            target = "239.192.8.1"
        send_udp(peer, (target, port), numbered(count), interval=0.0005)
        time.sleep(0.3)                     # all of them wait in the driver's buffer
        if change == "join":
            sock.join_multicast_group("239.192.8.2")
        elif change == "leave":
            sock.leave_multicast_group("239.192.8.1")
        else:
            sock.set_multicast_loopback(False)
        received = receive_all(sock, count + 1, timeout=0.5)
    return [data.decode() for data, _ in received]


@pytest.mark.parametrize("change", ["join", "leave", "loopback"])
def test_a_group_change_keeps_datagrams_that_arrived_before_it(machine, netpair, change):
    """Npcap's BIOCSETF discards the driver's buffer and pcap_setfilter drops libpcap's user
    buffer: what is pending is read (under the receive lock, with the rules it arrived under)
    before the filter changes -- also datagrams to a group being left, as a socket keeps
    what it queued before IP_DROP_MEMBERSHIP."""
    received = machine().call(netpair.a, emulated_group_change_keeps_pending,
                              peer=netpair.b.name, target=netpair.addr_a, port=_net.free_udp_port(),
                              count=100, change=change)
    assert received == [p.decode() for p in numbered(100)]


def emulated_drops_across_filter_changes(peer, target, port, count):
    from udpcap_ctypes import UdpcapSocket
    seen = []
    with UdpcapSocket() as sock:
        sock.set_receive_buffer_size(65535)          # the smallest: the burst overflows it
        sock.bind(("0.0.0.0", port))
        send_udp(peer, (target, port), numbered(count, size=1400), interval=0.0002)
        time.sleep(0.3)
        seen.append(sock.statistics()["capture_drops"])
        for index in range(3):
            sock.join_multicast_group("239.192.8.%d" % (index + 1))
            seen.append(sock.statistics()["capture_drops"])
        received = receive_all(sock, count, timeout=0.5)
        seen.append(sock.statistics()["capture_drops"])
    return {"drops": seen, "received": len(received)}


def test_capture_drops_never_go_backwards_when_npcap_resets_its_counters(machine, netpair):
    result = machine().call(netpair.a, emulated_drops_across_filter_changes,
                            peer=netpair.b.name, target=netpair.addr_a, port=_net.free_udp_port(),
                            count=400)
    drops = result["drops"]
    assert drops[0] > 0, drops                      # the small buffer did overflow
    assert drops == sorted(drops), drops            # monotonic across three filter changes
    assert result["received"] + drops[-1] == 400


# --------------------------------------------------------------------------------------------
# 2. Ctrl-C interrupts a blocking receive (main thread)


def emulated_block_until_interrupted(port):
    from udpcap_ctypes import UdpcapSocket
    sock = UdpcapSocket()
    sock.bind(("127.0.0.1", port))
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    try:
        sock.recvfrom(100)                 # no timeout: only Ctrl-C can end this
    except KeyboardInterrupt:
        sys.stdout.write("INTERRUPTED\n")
        sys.stdout.flush()
        raise
    finally:
        sock.close()
    return "returned"


def _interrupt_after_ready(proc, wait=0.5):
    line = proc.stdout.readline()
    assert line.strip() == "READY", line + proc.stderr.read()
    time.sleep(wait)                       # inside the wait by now
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return None, out, err
    return time.monotonic() - started, out, err


def test_ctrl_c_interrupts_a_blocking_receive_on_windows(machine, netpair):
    """CPython's own waits add the console's Ctrl-C event on the main thread; a plain ctypes
    INFINITE wait would never return to the interpreter."""
    emulated = machine()
    target = "%s:%s" % (__file__, emulated_block_until_interrupted.__name__)
    proc = emulated.popen(netpair.a, ["call", target, '{"port": %d}' % _net.free_udp_port()])
    elapsed, out, err = _interrupt_after_ready(proc)       # ip netns exec execs python
    assert elapsed is not None, "SIGINT did not end the blocking receive:\n" + err
    assert "INTERRUPTED" in out
    with pytest.raises(winemu.EmulatedFailure, match="KeyboardInterrupt"):
        winemu.parse_result(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))


# --------------------------------------------------------------------------------------------
# 3. One bad adapter does not break everything


def emulated_bind_with_a_failing_adapter(peer, target, port, bind_host):
    import logging

    from udpcap_ctypes import UdpcapSocket
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("udpcap_ctypes").addHandler(handler)
    try:
        with UdpcapSocket() as sock:
            sock.bind((bind_host, port))
            devices = sorted(sock.filter_expressions())
            send_udp(peer, (target, port), [b"over the adapter that opened"])
            send_udp(None, ("127.0.0.1", port), [b"local"])
            received = sorted(d.decode() for d, _ in receive_all(sock, 3, timeout=0.8))
            stats = sock.statistics()
    except OSError as exc:
        return {"error": [type(exc).__name__, exc.errno, str(exc)],
                "warnings": [r.getMessage() for r in records]}
    return {"devices": devices, "received": received, "failed": stats["devices_failed"],
            "warnings": [r.getMessage() for r in records if r.levelname == "WARNING"]}


def test_bind_any_goes_on_without_an_adapter_that_fails_to_open(machine, netpair):
    """udpcap logs a device that fails to open and goes on: bind fails only when none opens."""
    second, _ = netpair.add_link()
    emulated = machine(adapters={netpair.if_a: {"open_error": 31}})
    result = emulated.call(netpair.a, emulated_bind_with_a_failing_adapter, peer=netpair.b.name,
                           target=second, port=_net.free_udp_port(), bind_host="0.0.0.0")
    assert len(result["devices"]) == 2 and "\\Device\\NPF_Loopback" in result["devices"]
    assert result["received"] == ["local", "over the adapter that opened"]
    assert result["failed"] == 1
    warning, = [w for w in result["warnings"] if "not capturing on" in w]
    assert "A device attached to the system is not functioning. (31)" in warning


def test_bind_to_the_failing_adapters_address_raises(machine, netpair):
    emulated = machine(adapters={netpair.if_a: {"open_error": 31}})
    result = emulated.call(netpair.a, emulated_bind_with_a_failing_adapter, peer=netpair.b.name,
                           target=netpair.addr_a, port=_net.free_udp_port(),
                           bind_host=netpair.addr_a)
    kind, number, text = result["error"]
    assert kind == "PcapError" and number == errno.EIO
    assert "Error opening adapter: A device attached to the system is not functioning" in text


@pytest.mark.parametrize("error,warned", [(31, True), (50, False)])
def test_an_adapter_refusing_promiscuous_mode_is_opened_without_it(machine, netpair, error,
                                                                   warned):
    """pcap-npf.c fails activation when the NIC refuses promiscuous mode (any error but
    ERROR_NOT_SUPPORTED, which it ignores): the device is opened again without it."""
    emulated = machine(adapters={netpair.if_a: {"promisc_error": error}})
    result = emulated.call(netpair.a, emulated_bind_with_a_failing_adapter, peer=netpair.b.name,
                           target=netpair.addr_a, port=_net.free_udp_port(), bind_host="0.0.0.0")
    assert result["received"] == ["local", "over the adapter that opened"]
    assert result["failed"] == 0
    retried = [w for w in result["warnings"] if "without promiscuous mode" in w]
    assert len(retried) == (1 if warned else 0), result["warnings"]


def emulated_adapter_vanishes(peer, host, targets, port, bind_host, vanish):
    import subprocess as sp

    from udpcap_ctypes import UdpcapSocket
    out = {}
    with UdpcapSocket() as sock:
        sock.bind((bind_host, port))
        out["before"] = len(sock.filter_expressions())
        sock.settimeout(1.0)
        errors = []

        def receive_forever():
            while True:
                try:
                    data, _ = sock.recvfrom(100)
                except socket.timeout:
                    continue
                except OSError as exc:
                    errors.append([type(exc).__name__, exc.errno, str(exc)])
                    return
                out.setdefault("received", []).append(data.decode())
                if data == b"stop":
                    return
        worker = threading.Thread(target=receive_forever)
        worker.start()
        time.sleep(0.3)
        sp.run(["ip", "-n", host, "link", "del", vanish], check=True)
        time.sleep(0.3)
        for target in targets:
            send_udp(peer, (target, port), [b"after"])
        time.sleep(0.3)                         # the peer resolves the address first (ARP)
        send_udp(None, ("127.0.0.1", port), [b"stop"])
        worker.join(10)
        out["alive"] = worker.is_alive()
        out["errors"] = errors
        stats = sock.statistics()
        out["lost"] = stats["devices_lost"]
        if errors:
            try:
                sock.recvfrom(100)
            except OSError as exc:
                out["again"] = exc.errno
    return out


def test_receiving_goes_on_when_one_adapter_disappears(machine, netpair):
    """The driver sets the read event of a removed adapter and the next read fails with "The
    interface disappeared": that capture is dropped and the waiter rebuilt."""
    second, _ = netpair.add_link()
    result = machine().call(netpair.a, emulated_adapter_vanishes, peer=netpair.b.name,
                            host=netpair.a.name, targets=[second], port=_net.free_udp_port(),
                            bind_host="0.0.0.0", vanish=netpair.if_a)
    assert result["before"] == 3
    assert result["errors"] == [] and not result["alive"]
    assert result["received"] == ["after", "stop"]
    assert result["lost"] == 1


def test_a_socket_bound_to_the_vanished_adapter_reports_it(machine, netpair):
    result = machine().call(netpair.a, emulated_adapter_vanishes, peer=netpair.b.name,
                            host=netpair.a.name, targets=[], port=_net.free_udp_port(),
                            bind_host=netpair.addr_a, vanish=netpair.if_a)
    (kind, number, text), = result["errors"]
    assert kind == "OSError" and number == errno.ENETDOWN
    assert "The interface disappeared" in text and "bind a new socket" in text
    assert result["again"] == errno.ENETDOWN and result["lost"] == 1


# --------------------------------------------------------------------------------------------
# 4. Admin-only mode


def emulated_bind_any(port):
    from udpcap_ctypes import UdpcapSocket
    try:
        with UdpcapSocket() as sock:
            sock.bind(("0.0.0.0", port))
            send_udp(None, ("127.0.0.1", port), [b"in"])
            return {"received": [d.decode() for d, _ in receive_all(sock, 1)]}
    except OSError as exc:
        return {"error": [type(exc).__name__, exc.errno, str(exc)]}


@pytest.mark.parametrize("uac", ["decline", "decline_bad_unit"])
def test_admin_only_with_the_uac_prompt_declined_is_a_permission_error(machine, netpair, uac):
    """Current Packet.dll: ERROR_ACCESS_DENIED, PCAP_ERROR_PERM_DENIED; older ones:
    ERROR_BAD_UNIT, PCAP_ERROR_NO_SUCH_DEVICE for a device just listed.  Both must say what
    to do: accept the UAC prompt or run elevated."""
    emulated = machine(admin_only=True, elevated=False, uac=uac)
    result = emulated.call(netpair.a, emulated_bind_any, port=_net.free_udp_port())
    kind, number, text = result["error"]
    assert kind == "PermissionError" and number == errno.EPERM
    assert "User Account Control" in text and "Run as administrator" in text
    assert "sc start" not in text


@pytest.mark.parametrize("settings", [dict(admin_only=True, elevated=False, uac="accept"),
                                      dict(admin_only=True, elevated=True, uac="decline")],
                         ids=["uac-accepted", "elevated"])
def test_admin_only_receives_when_elevated_or_the_prompt_is_accepted(machine, netpair,
                                                                     settings):
    result = machine(**settings).call(netpair.a, emulated_bind_any, port=_net.free_udp_port())
    assert result == {"received": ["in"]}


# --------------------------------------------------------------------------------------------
# 5. immediate=False keeps Npcap's MinToCopy and still delivers


def emulated_not_immediate(peer, target, port, count):
    from udpcap_ctypes import UdpcapSocket
    with UdpcapSocket(immediate=False) as sock:
        sock.bind(("0.0.0.0", port))
        box = []
        worker = threading.Thread(target=lambda: box.append(sock.recvfrom(100)[0]))
        worker.start()
        time.sleep(0.2)
        send_udp(peer, (target, port), [b"lone"])
        worker.join(3)                  # a receive nobody wakes stays blocked
        woken = not worker.is_alive()
        send_udp(peer, (target, port), numbered(count), interval=0.0002)
        worker.join(5)
        received = receive_all(sock, count, timeout=1.0)
    return {"lone": [d.decode() for d in box], "woken": woken,
            "burst": [d.decode() for d, _ in received]}


def test_not_immediate_mode_delivers_lone_datagrams_and_bursts(machine, netpair):
    """Without immediate mode Npcap signals only once 16,000 bytes are buffered: the waiter
    also reads every NONIMMEDIATE_READ_INTERVAL, so a lone datagram still arrives."""
    result = machine().call(netpair.a, emulated_not_immediate, peer=netpair.b.name,
                            target=netpair.addr_a, port=_net.free_udp_port(), count=300)
    assert result["lone"] == ["lone"] and result["woken"] is True
    assert result["burst"] == [p.decode() for p in numbered(300)]


def emulated_mintocopy(port):
    import ctypes

    from udpcap_ctypes import UdpcapSocket, _loader
    library = _loader.get_library()
    probes = {}
    # The driver's MinToCopy of a wpcap.dll handle or of a Packet.dll adapter (the batch
    # reader's), through the shims' test-only exports.
    for kind, path, name in (("wpcap", library.path, "winemu_pcap_mintocopy"),
                             ("packet", library.packet_path, "winemu_adapter_mintocopy")):
        probes[kind] = getattr(ctypes.CDLL(path), name)
        probes[kind].restype = ctypes.c_long
        probes[kind].argtypes = [ctypes.c_void_p]
    out = {}
    for immediate in (True, False):
        with UdpcapSocket(immediate=immediate) as sock:
            sock.bind(("0.0.0.0", port))
            out[str(immediate)] = sorted({
                probes["packet" if type(c.capture).__name__ == "PacketCapture" else "wpcap"](
                    c.capture.handle) for c in sock._receiver.captures})
    return out


def test_the_driver_keeps_libpcaps_mintocopy_in_both_modes(machine, netpair):
    """pcap_activate_npf sets MinToCopy 0 in immediate mode and 16000 without it; setting it
    again from the package would turn immediate=False into immediate mode."""
    result = machine().call(netpair.a, emulated_mintocopy, port=_net.free_udp_port())
    assert result == {"True": [0], "False": [16000]}


# --------------------------------------------------------------------------------------------
# 6. Strings in the ANSI code page


def emulated_texts(peer, target, port):
    import logging

    from udpcap_ctypes import UdpcapSocket, _capture, _loader
    library = _loader.get_library()
    descriptions = sorted(d.description for d in _capture.find_devices(library.fns))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("udpcap_ctypes").addHandler(handler)
    with UdpcapSocket() as sock:
        sock.bind(("0.0.0.0", port))
    return {"encoding": library.fns.text_encoding, "descriptions": descriptions,
            "warnings": [r.getMessage() for r in records if r.levelname == "WARNING"]}


@pytest.mark.parametrize("pcap_init", [True, False], ids=["npcap-1.87", "npcap-before-1.20"])
def test_localized_texts_and_descriptions_are_decoded_right(machine, netpair, pcap_init):
    """A German Windows: error texts in cp1252 unless pcap_init(UTF-8) exists and succeeds;
    adapter descriptions in cp1252 always (Packet.dll builds them with CP_ACP)."""
    emulated = machine(pcap_init=pcap_init, locale="de", adapters={
        netpair.if_a: {"description": "Realtek-Netzwerkkarte für Tests", "open_error": 31}})
    result = emulated.call(netpair.a, emulated_texts, peer=netpair.b.name,
                           target=netpair.addr_a, port=_net.free_udp_port())
    assert result["encoding"] == ("utf-8" if pcap_init else "mbcs")
    assert "Realtek-Netzwerkkarte für Tests" in result["descriptions"]
    warning, = [w for w in result["warnings"] if "not capturing on" in w]
    assert "Ein an das System angeschlossenes Gerät funktioniert nicht. (31)" in warning
    assert "\ufffd" not in warning


# --------------------------------------------------------------------------------------------
# 7. System32 from GetSystemDirectoryW


def emulated_library_location():
    import boot

    from udpcap_ctypes import _loader
    library = _loader.get_library()
    return {"path": library.path, "packet": library.packet_path,
            "system_root": os.environ.get("SystemRoot"),
            "dll_directories_left": list(boot.ADDED_DLL_DIRECTORIES)}


@pytest.mark.parametrize("npcap", ["installed", "compat"])
def test_system32_comes_from_getsystemdirectoryw_not_systemroot(machine, npcap):
    """A scrubbed or wrong %SystemRoot% must not matter: Npcap's DLLs are found where
    GetSystemDirectoryW says System32 is, Npcap's own folder first."""
    emulated = machine(npcap=npcap)
    result = emulated.call(None, emulated_library_location,
                           env={"SystemRoot": "D:\\NotWindows", "windir": "D:\\NotWindows"})
    assert result["path"] == emulated.system32 + "\\Npcap\\wpcap.dll"
    assert result["packet"] == emulated.system32 + "\\Npcap\\Packet.dll"
    assert result["dll_directories_left"] == []           # added for the load only


def emulated_load_error():
    from udpcap_ctypes import CaptureUnavailableError, UdpcapSocket
    try:
        UdpcapSocket()
    except CaptureUnavailableError as exc:
        return str(exc)
    return None


def test_npcap_missing_says_to_install_it(machine):
    text = machine(npcap="missing").call(None, emulated_load_error)
    assert "System32\\Npcap\\wpcap.dll: not found" in text
    assert "Install Npcap from https://npcap.com/" in text


# --------------------------------------------------------------------------------------------
# More than 63 devices: chunked waits


def _many_links(pair, count):
    """*count* more veth pairs between a and b, 198.19.<i>.1 in a and .2 in b."""
    pair.a.run(["ip", "-batch", "-"], input="".join(
        "link add m%d type veth peer name n%d netns %s\n" % (i, i, pair.b.name)
        for i in range(count)))
    for ns, side, host in ((pair.a, "m", 1), (pair.b, "n", 2)):
        ns.run(["ip", "-batch", "-"], input="".join(
            "addr add 198.19.%d.%d/24 dev %s%d\nlink set %s%d up\n" % (i, host, side, i, side, i)
            for i in range(count)))
    return ["198.19.%d.1" % i for i in range(count)]


def emulated_many_devices(peer, targets, port, in_thread):
    from udpcap_ctypes import UdpcapSocket, _win32
    with UdpcapSocket() as sock:
        sock.bind(("0.0.0.0", port))
        devices = len(sock.filter_expressions())
        groups = len(sock._receiver.waiter._groups)
        received = []

        def receive():
            received.extend(receive_all(sock, len(targets), timeout=2.0))
        worker = threading.Thread(target=receive)
        if in_thread:
            worker.start()
        for target in targets:
            send_udp(peer, (target, port), [target.encode()])
            time.sleep(0.05)
        if in_thread:
            worker.join(30)
        else:
            receive()
    return {"devices": devices, "groups": groups, "chunk": _win32.WAIT_CHUNK,
            "received": sorted(d.decode() for d, _ in received)}


@pytest.mark.parametrize("in_thread", [False, True], ids=["main-thread", "worker-thread"])
def test_more_than_63_devices_are_waited_on_in_chunks(machine, netpair, in_thread):
    targets = _many_links(netpair, 64)
    result = machine().call(netpair.a, emulated_many_devices, peer=netpair.b.name,
                            targets=[targets[0], targets[59], targets[60], targets[63]],
                            port=_net.free_udp_port(), in_thread=in_thread, timeout=120)
    assert result["devices"] == 66                      # 64 + the pair's veth + loopback
    assert result["groups"] == 2 and result["chunk"] == 60
    assert result["received"] == sorted([targets[0], targets[59], targets[60], targets[63]])


# --------------------------------------------------------------------------------------------
# 9. The port guard on Windows


def emulated_port_guard(port, foreign_reuseaddr):
    from udpcap_ctypes import UdpcapSocket
    out = {}
    foreign = None
    if foreign_reuseaddr is not None:
        foreign = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if foreign_reuseaddr:
            foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        foreign.bind(("0.0.0.0", port))
    try:
        first = UdpcapSocket(port_guard=True)
        second = UdpcapSocket(port_guard=True)
        try:
            first.bind(("0.0.0.0", port))
            second.bind(("0.0.0.0", port))        # one guard per address and port, shared
            send_udp(None, ("127.0.0.1", port), [b"both"], connect=True)
            out["received"] = [len(receive_all(s, 1)) for s in (first, second)]
        except OSError as exc:
            out["error"] = [exc.errno, str(exc)]
        finally:
            first.close()
            second.close()
    finally:
        if foreign is not None:
            foreign.close()
    return out


def test_port_guard_shares_one_socket_and_never_takes_a_port_on_windows(machine, netns):
    """SO_REUSEADDR on Windows would let the guard bind over another program's port: the
    guard binds without it, and says which guard failed."""
    emulated = machine()
    port = _net.free_udp_port()
    assert emulated.call(netns, emulated_port_guard, port=port,
                         foreign_reuseaddr=None) == {"received": [1, 1]}
    for reuse in (False, True):
        number, text = emulated.call(netns, emulated_port_guard, port=port,
                                     foreign_reuseaddr=reuse)["error"]
        assert number == errno.EADDRINUSE
        assert "port_guard=True: the guard socket cannot bind to 0.0.0.0:%d" % port in text
        assert "pass port_guard=False" in text
