"""What a person should do: every fix text that errors and ``check`` print, in one place.

Each is a sentence (or a function of what is known) ready to follow "Fix: " or "fix:".  The
platform comes from ``_structs.host_family`` unless a caller passes the one it describes
(``check`` can describe another machine's layout in its tests).
"""

from __future__ import annotations

import sys
from typing import Optional

from . import _structs

NPCAP_URL = "https://npcap.com/"

INSTALL_NPCAP = ("Install Npcap from %s with 'Support loopback traffic' checked (optionally "
                 "'WinPcap API-compatible mode'); a legacy WinPcap is not supported (it loads, "
                 "but cannot capture loopback traffic and is unmaintained)" % NPCAP_URL)
REINSTALL_NPCAP_WITH_LOOPBACK = ("Reinstall Npcap from %s with 'Support loopback traffic' "
                                 "checked" % NPCAP_URL)
REPLACE_WINPCAP = ("Uninstall WinPcap, then install Npcap from %s with 'Support loopback "
                   "traffic' checked" % NPCAP_URL)
NATIVE_PYTHON = ("Run it with a native Windows Python (python.org, the Microsoft Store or conda) "
                 "and install Npcap from %s" % NPCAP_URL)
INSTALL_LIBPCAP = ("Install libpcap: 'apt install libpcap0.8' (Debian/Ubuntu), "
                   "'dnf install libpcap' (Fedora/RHEL), 'apk add libpcap' (Alpine)")
MACOS_LIBPCAP = "libpcap ships with macOS; check that /usr/lib/libpcap.A.dylib is present"

#: Npcap restricted to administrators: Packet.dll starts NpcapHelper.exe, which asks for
#: elevation with a User Account Control prompt.
ADMIN_ONLY = ("Npcap is installed in admin-only mode: accept the User Account Control prompt "
              "that Npcap shows (NpcapHelper) when capturing starts, or run this program from an "
              "elevated prompt (Run as administrator), or reinstall Npcap without 'Restrict "
              "Npcap driver's access to Administrators only'")
ELEVATED_CHECK = "Run this check from an elevated prompt (Run as administrator)"

MACOS_PERMISSION = ("Run with sudo, or give your user read access to /dev/bpf* (e.g. "
                    "Wireshark's ChmodBPF package)")
SHARED_INTERPRETER = ("Note: %s is a shared interpreter (the system's, or the one a default venv "
                      "links to): every script it runs gets the capabilities. For a private "
                      "copy: python3 -m venv --copies DIR, then setcap DIR/bin/python3 and run "
                      "your program with it")


def install(platform: Optional[str] = None) -> str:
    """How to get a capture library on *platform* (``sys.platform`` by default)."""
    family = _structs.host_family(platform)
    if family == _structs.CYGWIN:
        return NATIVE_PYTHON
    if family == _structs.WINDOWS:
        return INSTALL_NPCAP
    if (platform or sys.platform) == "darwin":
        return MACOS_LIBPCAP
    return INSTALL_LIBPCAP


def permission(platform: Optional[str] = None, python: Optional[str] = None) -> str:
    """How to get the right to capture: elevation on Windows, capabilities on Linux."""
    family = _structs.host_family(platform)
    if family == _structs.WINDOWS:
        return ADMIN_ONLY
    if (platform or sys.platform) == "darwin":
        return MACOS_PERMISSION
    if python is None:
        return ("Capturing needs root or the capabilities CAP_NET_RAW and CAP_NET_ADMIN: run "
                "as root, or grant them to a private copy of the interpreter (python3 -m venv "
                "--copies DIR; sudo setcap cap_net_raw,cap_net_admin+eip DIR/bin/python3), not "
                "to the system's python3, which every script shares; python3 -m "
                "udpcap_ctypes.check says more")
    return ("Run as root (sudo), or grant the interpreter the capabilities once: "
            "sudo setcap cap_net_raw,cap_net_admin+eip %s" % python)


def npcap_service(winpcap_compatible: Optional[bool] = None) -> str:
    """Restart the Npcap driver's service (its loopback adapter missing, the service stopped)."""
    both = "sc stop npcap, then sc start npcap"
    if winpcap_compatible:
        both += " (sc stop npf / sc start npf if Npcap runs in WinPcap API-compatible mode)"
    else:
        both += " (use npf instead of npcap in WinPcap API-compatible mode)"
    return "From an elevated prompt (Run as administrator): " + both
