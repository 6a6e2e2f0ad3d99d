"""The receiver's Windows decisions, run against a stand-in OS layer (Windows cannot run here).

``_platform.WindowsPlatform`` is built with recorded registry values, a recording stand-in for
``Win32Api`` and a recording kickstart; devices are what ``pcap_findalldevs`` lists on an Npcap
machine.  The real ``Receiver`` and ``select_devices`` then make the choices they make on
Windows: which devices a bind opens (the loopback adapter by its modern or legacy name), which
BPF filter each capture gets (``not ether src <own MAC>`` on Ethernet adapters only), that a
join with multicast loopback on triggers udpcap's kickstart, and that the waiter waits on the
captures' ``pcap_getevent`` handles.
"""

import errno
import types

import pytest

from udpcap_ctypes import _pcap, _platform, _win32
from udpcap_ctypes._capture import Device
from udpcap_ctypes._receiver import Receiver, _OpenCapture, select_devices
from udpcap_ctypes._stats import Statistics
from udpcap_ctypes.udpcap_socket import Options

ADAPTER = r"\Device\NPF_{3F2A1B44-0000-4C1D-9E7A-0123456789AB}"
LEGACY_LOOPBACK = r"\Device\NPF_{11111111-2222-3333-4444-555555555555}"
MAC = bytes.fromhex("02005e1001ff")


def ip(text):
    a, b, c, d = (int(x) for x in text.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


class StandinRegistry:
    """Recorded ``HKLM`` values of an Npcap install."""

    def __init__(self, parameters):
        self.values = {_win32.NPCAP_SERVICE_KEY: {"Start": 1},
                       _win32.NPCAP_PARAMETERS_KEY: parameters}

    def read_values(self, subkey):
        return self.values.get(subkey)


class StandinApi:
    """Records the kernel32 calls the waiter makes."""

    def __init__(self):
        self.events = []

    def create_event(self, manual_reset=True, initial_state=False):
        self.events.append("close-event")
        return 0x7000 + len(self.events)


def standin_platform(parameters=None, kickstarts=None):
    library = types.SimpleNamespace(windows=True, fns=None)
    parameters = {"LoopbackSupport": 1, "AdminOnly": 0} if parameters is None else parameters
    return _platform.WindowsPlatform(
        library, api=StandinApi(), registry=StandinRegistry(parameters),
        kickstart=(kickstarts.append if kickstarts is not None else None))


def npcap_devices(loopback_name=r"\Device\NPF_Loopback"):
    return [
        Device(ADAPTER, "Intel(R) Ethernet", _pcap.PCAP_IF_UP,
               [(ip("198.18.0.5"), ip("255.255.255.0"), ip("198.18.0.255"))]),
        Device(loopback_name, "Adapter for loopback traffic capture", _pcap.PCAP_IF_UP, []),
    ]


def test_standin_bind_selects_devices_as_udpcap_does():
    platform = standin_platform()
    devices = npcap_devices()
    names = lambda chosen: [d.name for d in chosen]       # noqa: E731
    assert names(select_devices(devices, ip("127.0.0.1"), platform.is_loopback)) == [
        r"\Device\NPF_Loopback"]
    assert names(select_devices(devices, 0, platform.is_loopback)) == [
        r"\Device\NPF_Loopback", ADAPTER]
    assert names(select_devices(devices, ip("198.18.0.5"), platform.is_loopback)) == [
        ADAPTER, r"\Device\NPF_Loopback"]
    with pytest.raises(OSError) as info:
        select_devices(devices, ip("198.18.7.7"), platform.is_loopback)
    assert info.value.errno == errno.EADDRNOTAVAIL and "198.18.0.5" in str(info.value)


def test_standin_legacy_loopback_adapter_from_registry_is_the_loopback_device():
    """Npcap before 0.9983 named a legacy adapter in LoopbackAdapter (``\\Device\\{GUID}``);
    its pcap name ``\\Device\\NPF_{GUID}`` must count as the loopback device."""
    platform = standin_platform({"LoopbackSupport": 1,
                                 "LoopbackAdapter": r"\Device\{11111111-2222-3333-4444-555555555555}"})
    devices = npcap_devices(LEGACY_LOOPBACK.upper())         # case differs too
    chosen = select_devices(devices, ip("127.0.0.1"), platform.is_loopback)
    assert [d.name for d in chosen] == [LEGACY_LOOPBACK.upper()]
    # Without the registry value the legacy adapter is just an adapter with no IPv4 address.
    plain = standin_platform({"LoopbackSupport": 1})
    with pytest.raises(OSError):
        select_devices(devices, ip("127.0.0.1"), plain.is_loopback)


def test_standin_unreadable_registry_falls_back_to_the_modern_loopback_name():
    class DeniedRegistry:
        def read_values(self, subkey):
            raise PermissionError(5, "Access is denied")
    library = types.SimpleNamespace(windows=True, fns=None)
    platform = _platform.WindowsPlatform(library, api=StandinApi(), registry=DeniedRegistry())
    assert platform.install is None
    assert platform.is_loopback(npcap_devices()[1]) and not platform.is_loopback(
        npcap_devices()[0])


def _receiver_with(platform, bound, groups, loopback):
    receiver = Receiver(platform, Statistics(), Options())
    receiver.port = 14000
    receiver.bound_address = bound
    receiver.groups = frozenset(groups)
    receiver.multicast_loopback = loopback
    return receiver


def _opened(device, linktype, is_loopback, own_macs):
    capture = types.SimpleNamespace(linktype=linktype, reader=types.SimpleNamespace(view=None))
    return _OpenCapture(capture, device, is_loopback, own_macs, False)


def test_standin_filters_drop_own_frames_on_adapters_only():
    platform = standin_platform()
    adapter, loopback = npcap_devices()
    receiver = _receiver_with(platform, 0, [ip("239.0.0.1")], True)
    on_adapter = receiver.filter_expression(_opened(adapter, _pcap.DLT_EN10MB, False, (MAC,)))
    on_loopback = receiver.filter_expression(_opened(loopback, _pcap.DLT_NULL, True, ()))
    assert on_adapter == ("(not ether src 02:00:5e:10:01:ff) and udp and "
                          "(not dst net 224.0.0.0/4 or dst host 239.0.0.1) and "
                          "(dst port 14000 or ip[6:2] & 0x1fff != 0)")
    assert "ether" not in on_loopback
    assert on_loopback.endswith("(dst port 14000 or ip[6:2] & 0x1fff != 0)")


def test_standin_own_multicast_comes_from_the_loopback_adapter():
    """On Npcap the copy of this host's own multicast is the one on the loopback adapter: it is
    delivered with multicast loopback on and counted as dropped with it off; the same group
    from the Ethernet adapter (another host) is always delivered."""
    platform = standin_platform()
    adapter, loopback = npcap_devices()
    group = ip("239.0.0.1")
    for loop, expected_own in ((True, True), (False, False)):
        receiver = _receiver_with(platform, 0, [group], loop)
        own = _opened(loopback, _pcap.DLT_NULL, True, ())
        remote = _opened(adapter, _pcap.DLT_EN10MB, False, (MAC,))
        assert receiver._accepts_special(group, own, b"", 0) is expected_own
        assert receiver._accepts_special(group, remote, b"\x00" * 64, 0) is True
        assert receiver._accepts_special(ip("239.0.0.2"), remote, b"\x00" * 64, 0) is False
    assert receiver.stats.own_multicast_dropped == 1


def test_standin_join_kickstarts_loopback_only_with_multicast_loopback_on():
    kickstarts = []
    platform = standin_platform(kickstarts=kickstarts)
    adapter, loopback = npcap_devices()
    captures = [_opened(adapter, _pcap.DLT_EN10MB, False, (MAC,)),
                _opened(loopback, _pcap.DLT_NULL, True, ())]
    platform.groups_joined({ip("239.0.0.2"), ip("239.0.0.1")}, captures, True)
    assert kickstarts == [["239.0.0.1", "239.0.0.2"]]
    platform.groups_joined({ip("239.0.0.3")}, captures, False)      # loopback off: no need
    platform.groups_joined({ip("239.0.0.3")}, captures[:1], True)   # no loopback capture
    platform.groups_joined(set(), captures, True)                   # nothing joined
    assert kickstarts == [["239.0.0.1", "239.0.0.2"]]


def test_standin_waiter_waits_on_the_captures_read_events():
    platform = standin_platform()
    captures = [types.SimpleNamespace(event_handle=lambda h=h: h) for h in (0x10, 0x20)]
    waiter = platform.make_waiter(captures, True)
    assert isinstance(waiter, _win32.EventWaiter)
    assert list(waiter.handles) == [0x10, 0x20]
    assert platform.api.events == ["close-event"]
    assert platform.drain_before_wait is True          # Npcap does not re-signal held frames
    assert platform.hold_memberships_default() is False
    assert platform.snaplen_for(npcap_devices()[0]) >= 65535
