"""tools/bench_packet_path.py runs and reports every figure (IPv4 and IPv6 parse rows, the
batch walker's rows); its foreign-fragment rows show what passing first fragments buys (no
network: frames are built in memory)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_json_has_every_figure_and_foreign_fragments_cost_no_memory():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "bench_packet_path.py"),
                           "--repeat", "1", "--frames", "2000", "--datagrams", "120",
                           "--json"],
                          cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert len(report["parse_ns"]) == 12 and all(v > 0 for v in report["parse_ns"].values())
    # IPv6: the common frame (32/1400 bytes, checksum off/on), extension headers, a fragment,
    # per link; the walker per link for IPv4, IPv6, IPv6 with extension headers, fragments.
    links = ("ethernet", "sll2", "null")
    assert set(report["parse6_ns"]) == {
        "%s/%s" % (link, row) for link in links for row in (
            "udp/32/no-verify", "udp/32/verify", "udp/1400/no-verify", "udp/1400/verify",
            "extensions/32/no-verify", "fragment/0/no-verify")}
    assert set(report["walk_ns"]) == {"%s/%s" % (link, kind) for link in links
                                      for kind in ("ipv4", "udp", "extensions", "fragment")}
    assert all(v > 0 for v in list(report["parse6_ns"].values())
               + list(report["walk_ns"].values()))
    assert set(report["reassembly"]) == {"in-order", "shuffled"}
    seen = report["foreign"]["first fragment seen"]
    filtered = report["foreign"]["first filtered out"]
    # The first fragment names the port: everything of the datagram is let go at once.
    assert seen["bytes_held"] == 0 and seen["evicted"] == 0
    # Without it, 120 datagrams' later fragments fill the 4 MiB cap and get evicted.
    assert filtered["bytes_held"] > 1 << 20 and filtered["evicted"] > 0
    assert seen["us_per_fragment"] > 0 and filtered["us_per_fragment"] > 0
