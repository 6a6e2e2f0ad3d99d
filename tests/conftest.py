"""Shared fixtures and the CI rule "nothing skips".

Fixtures: ``netns`` (one namespace), ``netpair`` (two namespaces joined by veth, see
tests/netns.py), ``free_udp_port`` (a UDP port free on 127.0.0.1 at the time of the call).

Marker ``live`` (registered in pyproject.toml): the test captures for real, so it needs root,
a loadable libpcap and working ``ip netns``.  Outside CI such a test is skipped with the
reason; with ``CI=true`` or ``UDPCAP_STRICT=1`` every skip -- live or not, at collection,
setup or call -- is turned into a failure carrying the skip reason, so a CI run can never
pass by silently skipping.
"""

import contextlib
import os
import sys

import pytest

import netns as _netns  # tests/netns.py, importable as "netns" from the tests
from udpcap_ctypes import _net

REPO = _netns.REPO


def strict_mode():
    """True when a skip must count as a failure (CI)."""
    return (os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
            or os.environ.get("UDPCAP_STRICT", "").strip() not in ("", "0"))


def libpcap_unavailable_reason():
    """Why libpcap cannot be used in this process, or None."""
    from udpcap_ctypes import CaptureUnavailableError
    from udpcap_ctypes._loader import get_library
    try:
        get_library()
    except CaptureUnavailableError as exc:
        return "libpcap is not usable: %s" % exc
    return None


def live_unavailable_reason():
    """Why a ``live`` test cannot run here, or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return ("live capture test needs root (or CAP_NET_RAW+CAP_NET_ADMIN and ip netns): "
                "run as root, e.g. sudo bash .ci/run")
    return libpcap_unavailable_reason() or _netns.unavailable_reason()


def pytest_sessionstart(session):
    if _netns.unavailable_reason() is None:
        _netns.sweep()          # leftovers of crashed earlier runs


def pytest_sessionfinish(session, exitstatus):
    if _netns.unavailable_reason() is None:
        left = _netns.sweep()
        if left:
            sys.stderr.write("\nconftest: deleted leftover namespaces %s\n" % ", ".join(left))


def pytest_runtest_setup(item):
    if item.get_closest_marker("live") is not None:
        reason = live_unavailable_reason()
        if reason:
            pytest.skip(reason)


def _skip_reason(report):
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _strict_text(reason):
    return ("skipped, which is not allowed with CI=true / UDPCAP_STRICT=1 (every test must run "
            "in CI): %s" % reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and strict_mode():
        report.outcome = "failed"
        report.longrepr = _strict_text(_skip_reason(report))


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and strict_mode():
        report.outcome = "failed"
        report.longrepr = _strict_text(_skip_reason(report))


def _require_namespaces():
    reason = _netns.unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def netns():
    """A fresh network namespace (loopback up), deleted after the test."""
    _require_namespaces()
    ns = _netns.Namespace()
    try:
        yield ns
    finally:
        ns.delete()


@pytest.fixture
def netpair():
    """Two namespaces ``a``/``b`` joined by veth (MTU 1500, 198.18.n.1/.2), deleted after."""
    _require_namespaces()
    pair = _netns.NetPair()
    try:
        yield pair
    finally:
        pair.delete()


@pytest.fixture
def pair6():
    """Like :func:`netpair`, with IPv6: an MTU-1280 veth (the IPv6 minimum, so that large
    datagrams fragment), ``nodad`` ULA addresses ``addr6_a``/``addr6_b`` and the link-local
    fe80::a/fe80::b (see netns.NetPair)."""
    _require_namespaces()
    pair = _netns.NetPair(mtu=1280, ipv6=True)
    try:
        yield pair
    finally:
        pair.delete()


@pytest.fixture(scope="session")
def winemu_shims(tmp_path_factory):
    """The emulated Windows' C shims, compiled once per session (tests/winemu)."""
    import winemu
    reason = winemu.unavailable_reason()
    if reason:
        pytest.skip(reason)
    return winemu.shims(str(tmp_path_factory.mktemp("winemu-shims")))


@pytest.fixture(params=["batch", "next_ex"])
def machine(request, winemu_shims, tmp_path):
    """``machine(**settings)``: a new emulated Windows install (see winemu.Machine).

    Every test that uses it runs twice: with the package's Packet.dll batch reader and with
    wpcap.dll's pcap_next_ex (``reader``; a test may still ask for one itself)."""
    import winemu
    made = []

    def make(**settings):
        root = tmp_path / ("machine%d" % len(made))
        settings.setdefault("reader", request.param)
        made.append(winemu.Machine(str(root), winemu_shims, **settings))
        return made[-1]
    return make


@pytest.fixture
def free_udp_port():
    """A UDP port that was free on 127.0.0.1 a moment ago."""
    return _net.free_udp_port()


@pytest.fixture
def stack():
    """An ExitStack for what a test opens (sockets): closed at teardown, before the namespace
    fixtures delete their namespaces."""
    with contextlib.ExitStack() as exits:
        yield exits
