"""``python -m udpcap_ctypes.check`` on emulated Windows machines (tests/winemu).

The real command runs unchanged in the emulated Windows inside a test namespace: the loader
finds Npcap through GetSystemDirectoryW, the registry is read through winreg over advapi32,
the service state and elevation through the package's own Win32 table, the devices and the
self-test through wpcap.dll over the emulated driver.  Each machine is one kind of install a
person may have: healthy, missing, admin-only with the UAC prompt declined or accepted,
service stopped, legacy loopback adapter, loopback support off, WinPcap-compatible mode, a
German Windows with an old Npcap.
"""

import json

import pytest

pytestmark = [pytest.mark.windows_emulated, pytest.mark.live]


def run_check(emulated, namespace, *args):
    proc = emulated.run(namespace, ["-m", "udpcap_ctypes.check", "--count", "50"] + list(args),
                        timeout=90)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def check_json(emulated, namespace):
    proc = run_check(emulated, namespace, "--json")
    report = json.loads(proc.stdout)
    assert report["platform"] == "win32"
    assert proc.returncode == (0 if report["ok"] else 1)
    return report, {c["name"]: c for c in report["checks"]}


def _describe(proc):
    return "exit %d\n--- stdout\n%s\n--- stderr\n%s" % (proc.returncode, proc.stdout,
                                                        proc.stderr)


def test_healthy_npcap_reports_every_part_and_passes(machine, netpair):
    emulated = machine(adapters={netpair.if_a: {"description": "Intel(R) Ethernet Controller"}})
    proc = run_check(emulated, netpair.a)
    assert proc.returncode == 0, _describe(proc)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("udpcap_ctypes check (Python ") and lines[0].endswith(", win32)")
    expected = [
        "✓ capture library: Npcap: Npcap version 1.87, based on libpcap version 1.10.6, "
        "loaded from %s\\Npcap\\wpcap.dll" % emulated.system32,
        "✓ Npcap installed: Npcap service key HKLM\\SYSTEM\\CurrentControlSet\\Services\\npcap",
        "✓ Npcap service: the npcap service is running",
        "✓ Packet.dll: Packet.dll 1.87 (%s\\Npcap\\Packet.dll), driver 1.87.203"
        % emulated.system32,
        "✓ Npcap options: LoopbackSupport=1, LoopbackAdapter=not set, AdminOnly=0, "
        "WinPcapCompatible=0",
        "✓ elevation: Npcap is not restricted to administrators (AdminOnly=0)",
        "✓ loopback device: \\Device\\NPF_Loopback is present",
    ]
    assert lines[1:8] == expected
    device_lines = [line for line in lines if line.startswith("✓ device ")]
    assert len(device_lines) == 2
    assert any("%s (Intel(R) Ethernet Controller), link type EN10MB, opened" % netpair.addr_a
               in line for line in device_lines), device_lines
    assert any(line.startswith("✓ device \\Device\\NPF_Loopback: 127.0.0.1 (Adapter for "
                               "loopback traffic capture), link type NULL, opened")
               for line in device_lines), device_lines
    assert any(line.startswith("✓ self-test: 50/50 datagrams received on 127.0.0.1:")
               for line in lines)
    assert lines[-1] == "✓ receiving works on this machine"


def test_npcap_missing_says_to_install_it_and_does_not_self_test(machine, netns):
    report, named = check_json(machine(npcap="missing"), netns)
    assert report["ok"] is False
    library = named["capture library"]
    assert library["ok"] is False
    assert "System32\\Npcap\\wpcap.dll: not found" in library["detail"]
    assert "Install Npcap from https://npcap.com/" in library["fix"]
    assert named["Npcap installed"]["ok"] is False
    assert named["Npcap service"]["detail"] == "the npcap service does not exist"
    assert named["self-test"]["detail"] == "not run: no capture library"


def test_winpcap_only_says_to_uninstall_it(machine, netns):
    report, named = check_json(machine(npcap="missing", winpcap_service=True), netns)
    assert "only the WinPcap driver (npf) is present" in named["Npcap installed"]["detail"]
    assert named["Npcap installed"]["fix"].endswith("after uninstalling WinPcap")


def test_admin_only_with_the_uac_prompt_declined_names_the_prompt_never_sc(machine, netpair):
    """Packet.dll lists only adapters it can open, so only the loopback adapter is listed,
    and opening it is refused: the fixes speak of the UAC prompt and elevation only."""
    emulated = machine(admin_only=True, elevated=False, uac="decline")
    proc = run_check(emulated, netpair.a)
    assert proc.returncode == 1, _describe(proc)
    assert "sc stop" not in proc.stdout and "sc start" not in proc.stdout
    report, named = check_json(emulated, netpair.a)
    elevation = named["elevation"]
    assert elevation["ok"] is True and elevation["warning"] is True
    assert "User Account Control prompt" in elevation["detail"]
    device = named["device \\Device\\NPF_Loopback"]
    assert device["ok"] is False
    assert "must be allowed to make changes to your device" in device["detail"]
    assert "User Account Control" in device["fix"]
    selftest = named["self-test"]
    assert selftest["ok"] is False and "User Account Control" in selftest["fix"]


def test_admin_only_with_the_uac_prompt_accepted_passes_with_a_warning(machine, netpair):
    emulated = machine(admin_only=True, elevated=False, uac="accept")
    report, named = check_json(emulated, netpair.a)
    assert report["ok"] is True
    assert named["elevation"]["warning"] is True
    assert named["self-test"]["data"]["received"] == 50


def test_admin_only_elevated_passes(machine, netns):
    report, named = check_json(machine(admin_only=True, elevated=True, uac="decline"), netns)
    assert report["ok"] is True
    assert named["elevation"]["detail"] == ("Npcap is restricted to administrators (AdminOnly=1) "
                                           "and this process is elevated")


def test_service_stopped_gives_the_sc_start_fix(machine, netpair):
    report, named = check_json(machine(service=1), netpair.a)
    assert report["ok"] is False
    service = named["Npcap service"]
    assert service["ok"] is False
    assert service["detail"] == "the npcap service is stopped, not running"
    assert "sc stop npcap, then sc start npcap" in service["fix"]
    device = named["device \\Device\\NPF_Loopback"]
    assert device["ok"] is False and "The system cannot find the file specified" in \
        device["detail"]
    assert "sc start npcap" in device["fix"]


def test_legacy_loopback_adapter_from_the_registry_is_the_loopback_device(machine, netns):
    guid = "{A1B2C3D4-0000-4000-8000-000000000001}"
    report, named = check_json(machine(legacy_loopback=guid), netns)
    assert report["ok"] is True
    assert named["loopback device"]["detail"] == "\\Device\\NPF_%s is present" % guid
    assert "LoopbackAdapter=\\Device\\%s" % guid in named["Npcap options"]["detail"]
    assert named["self-test"]["data"]["received"] == 50


def test_loopback_support_off_fails_with_the_reinstall_fix(machine, netns):
    report, named = check_json(machine(loopback_support=False), netns)
    assert report["ok"] is False
    options = named["Npcap options"]
    assert options["ok"] is False and "LoopbackSupport=0" in options["detail"]
    assert "Support loopback traffic" in options["fix"]
    assert named["loopback device"]["ok"] is False
    assert named["self-test"]["ok"] is False


def test_winpcap_compatible_mode_still_loads_from_the_npcap_folder(machine, netns):
    emulated = machine(npcap="compat")
    report, named = check_json(emulated, netns)
    assert report["ok"] is True
    assert named["capture library"]["data"]["path"] == emulated.system32 + "\\Npcap\\wpcap.dll"
    assert "WinPcapCompatible=1" in named["Npcap options"]["detail"]


def test_service_manager_or_registry_refusing_to_answer_is_a_warning(machine, netns):
    """What the self-test measured decides: the loopback adapter is known by its modern name
    even when the registry cannot be read."""
    report, named = check_json(machine(scm_denied=True, registry_denied=True), netns)
    assert report["ok"] is True, report
    assert named["Npcap service"]["warning"] is True
    assert named["Npcap registry"]["warning"] is True
    assert named["self-test"]["data"]["received"] == 50


def test_a_german_windows_with_an_old_npcap_prints_its_texts_right(machine, netpair):
    """No pcap_init before Npcap 1.20: error texts and descriptions in cp1252 ("mbcs")."""
    emulated = machine(pcap_init=False, locale="de", adapters={
        netpair.if_a: {"description": "Realtek-Netzwerkkarte für Tests", "open_error": 31}})
    report, named = check_json(emulated, netpair.a)
    device = [c for name, c in named.items() if name.startswith("device \\Device\\NPF_{")][0]
    assert device["ok"] is False
    assert "Realtek-Netzwerkkarte für Tests" in device["detail"]
    assert "Ein an das System angeschlossenes Gerät funktioniert nicht. (31)" in device["detail"]
