"""tools/send.py, tools/recv.py and tools/bench.py, run as a user runs them (subprocesses).

Traffic goes only to 127.0.0.1, or inside network namespaces the tests create (IPv6: ::1 of a
namespace's loopback, nodad addresses of a NetPair(ipv6=True)).  Tests that capture
(UdpcapSocket, bench) are marked ``live``: they need root and libpcap, and in CI a skip is a
failure.
"""

import ctypes
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

import _common  # tools/ is on pytest's pythonpath (pyproject.toml)
import bench_replay
import bench_report
import bench_run
import bench_worker
import send
from udpcap_ctypes import _net

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "tools")


def tool(name):
    return [sys.executable, os.path.join(TOOLS, name)]


def start_recv(args, timeout=20, namespace=None):
    """Start recv.py (inside *namespace*, a tests/netns.py Namespace, if given) and wait until
    it says it is receiving (its stderr banner)."""
    argv = tool("recv.py") + args
    if namespace is not None:
        argv = namespace.exec_argv(argv)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, cwd="/")
    line = proc.stderr.readline()
    if "receiving on" not in line:
        out, err = proc.communicate(timeout=timeout)
        pytest.fail("recv.py did not start: %s%s%s" % (line, err, out))
    proc.banner = line.strip()
    return proc


def finish_recv(proc, timeout=30):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, "recv.py failed (%d): %s" % (proc.returncode, err)
    return json.loads(out.strip().splitlines()[-1])


def run_send(args, timeout=60, namespace=None):
    argv = tool("send.py") + args + ["--json", "--quiet"]
    if namespace is not None:
        argv = namespace.exec_argv(argv)
    done = subprocess.run(argv, cwd="/",
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- --help

@pytest.mark.parametrize("script", ["send.py", "recv.py", "bench.py", "bench_replay.py",
                                    "bench_sockets.py", "bench_readers.py"])
def test_help_exits_zero_from_any_directory(script):
    done = subprocess.run(tool(script) + ["--help"], cwd="/", stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ")


def test_bad_arguments_say_what_is_wrong():
    done = subprocess.run(tool("send.py") + ["127.0.0.1:notaport"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert done.returncode == 2
    assert "HOST:PORT" in done.stderr
    done = subprocess.run(tool("send.py") + ["127.0.0.1:9", "--size", "10", "--count", "1"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60)
    assert done.returncode == 2
    assert "--size >= 24" in done.stderr


# --------------------------------------------------------------------------- helpers

def test_sequence_tracker_counts_gaps_reorders_duplicates():
    t = _common.SequenceTracker()
    for seq in [0, 1, 2, 5, 3, 3, 6, 9, 4]:
        t.add(seq)
    # 5 skips 3,4 (gap 1); 9 skips 7,8 (gap 2); 3 and 4 arrive late; the second 3 is a duplicate
    assert (t.gaps, t.reorders, t.duplicates, t.lost, t.unique) == (2, 2, 1, 2, 8)
    assert t.missing == {7, 8}


def test_payload_header_round_trip():
    buf = _common.make_payload(100)
    before = _common.monotonic_ns()
    _common.stamp(buf, 12345)
    seq, sent_ns = _common.parse_header(buf)
    assert seq == 12345
    assert before <= sent_ns <= _common.monotonic_ns()
    assert _common.parse_header(b"XXXX" + bytes(buf[4:])) is None
    assert bytes(buf[24:28]) == b"\x00\x01\x02\x03"


def test_send_paces_low_rates_without_bursting():
    """send() at 200 datagrams/s: ~1 s for 200, and they arrive spread out, not in a burst."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        port = rx.getsockname()[1]
        result = send.send("127.0.0.1", port, size=64, rate=200, count=200)
        arrivals = []
        for _ in range(200):
            data = rx.recv(2048)
            arrivals.append(_common.parse_header(data)[1])
    assert result["sent"] == 200
    assert 0.9 <= result["seconds"] <= 1.6, result
    gaps_ms = [(b - a) / 1e6 for a, b in zip(arrivals, arrivals[1:])]
    gaps_ms.sort()
    assert 3.0 <= gaps_ms[len(gaps_ms) // 2] <= 7.0, "median spacing should be ~5 ms"


def test_summary_table_and_svg_from_runs():
    runs = {
        bench_worker.BASELINE: {"idle": {"idle": [{"cpu_pct": 0.1}]}, "sizes": {"32": {
            "path": "loopback", "count": 10,
            "drain": [{"rate": 100.0, "cpu_us": 2.0, "drops": 0, "duplicates": 0}] * 3,
            "latency": [{"p50_us": 10.0, "p99_us": 20.0, "drops": 0}]}}},
        "UdpcapSocket.recvfrom_into": {"idle": {"idle": [{"cpu_pct": 0.5}]}, "sizes": {"32": {
            "path": "loopback", "count": 10,
            "drain": [{"rate": r, "cpu_us": c, "drops": 0, "duplicates": 0}
                      for r, c in ((40.0, 6.0), (50.0, 5.0), (60.0, 4.0))],
            "latency": [{"p50_us": 30.0, "p99_us": 90.0, "drops": 0}]}}},
    }
    rows = bench_report.summarize(runs)
    assert [r["receiver"] for r in rows] == ["UdpcapSocket.recvfrom_into", bench_worker.BASELINE]
    udpcap = rows[0]
    assert udpcap["drain_rate"] == 50.0 and udpcap["cpu_us_per_datagram"] == 5.0
    assert udpcap["rate_ratio"] == 0.5 and udpcap["cpu_ratio"] == 2.5
    text = bench_report.table(rows)
    assert "UdpcapSocket.recvfrom_into" in text and "0.50" in text and "2.50" in text
    root = ET.fromstring(bench_report.svg_chart(rows))
    rects = list(root.iter("{http://www.w3.org/2000/svg}rect"))[1:]     # [0] is the background
    widths = [float(r.get("width")) for r in rects]
    assert widths == [210.0, 420.0]    # bars proportional to the rates 50 and 100
    assert udpcap["latency_p99_ratio"] is None      # runs without a repeat index: no pairs


def test_latency_p99_ratio_pairs_runs_of_the_same_repeat():
    """p99 x is the median of per-repeat ratios, each against the baseline's run of the same
    repeat: a machine that got slower between repeats does not show as a receiver being slower,
    and a repeat that failed for one side is left out."""
    def latency(*p99s):
        return [{"p50_us": 1.0, "p99_us": v, "drops": 0, "repeat": k}
                for k, v in enumerate(p99s) if v is not None]

    def receiver(p99s):
        return {"idle": {}, "sizes": {"32": {
            "path": "loopback", "count": 1, "latency": latency(*p99s),
            "drain": [{"rate": 1.0, "cpu_us": 1.0, "drops": 0, "duplicates": 0}]}}}
    runs = {bench_worker.BASELINE: receiver([80.0, 200.0, 90.0, 100.0]),
            "UdpcapSocket.recvfrom_into": receiver([88.0, 230.0, 99.0, None])}
    rows = {r["receiver"]: r for r in bench_report.summarize(runs)}
    udpcap = rows["UdpcapSocket.recvfrom_into"]
    assert udpcap["latency_p99_ratio"] == 1.1                   # 1.1, 1.15, 1.1
    assert udpcap["latency_p99_us"] == 99.0                     # the plain median of 88, 230, 99
    assert rows[bench_worker.BASELINE]["latency_p99_ratio"] == 1.0
    assert "1.10" in bench_report.table(list(rows.values()))


def test_stream_summary_and_table_from_runs():
    """Stream medians, CPU ratio to the socket, and the note for a sender short of the rate."""
    def run(cpu_us, sender_rate, drops=0):
        return {"cpu_us": cpu_us, "sender_rate": sender_rate, "rate": sender_rate,
                "count": 300, "unique": 300 - drops, "drops": drops, "lag_max_ms": 1.0,
                "ended": "complete" if not drops else "marker"}
    runs = {
        bench_worker.BASELINE: {"idle": {}, "sizes": {"32": {"path": "loopback", "count": 10,
                                                             "stream": [run(3.0, 100.0)] * 3}}},
        "UdpcapSocket.recvfrom_into": {"idle": {}, "sizes": {"32": {
            "path": "loopback", "count": 10,
            "stream": [run(6.0, 60.0, 2), run(4.5, 70.0, 0), run(9.0, 50.0, 5)]}}},
    }
    info = {"32": {"rate": 100, "limited_by": "sender", "path": "loopback",
                   "steps": [{"rate": 100, "ok": True, "why": "0 drops"}]}}
    rows = bench_report.summarize_stream(runs, info)
    assert [r["receiver"] for r in rows] == ["UdpcapSocket.recvfrom_into", bench_worker.BASELINE]
    udpcap = rows[0]
    assert udpcap["cpu_us_per_datagram"] == 6.0 and udpcap["cpu_ratio"] == 2.0
    assert (udpcap["drops"], udpcap["max_drops"], udpcap["received"]) == (2, 5, 298)
    assert udpcap["ended"] == ["complete", "marker"]
    text = bench_report.stream_table(rows, info)
    assert "2.00" in text and "send.py could not send faster" in text
    assert "sender short of the rate with: UdpcapSocket.recvfrom_into 32 B (60/s)" in text
    assert "sender short of the rate with: socket" not in text


def test_report_text_notes_ring_drops_and_leaves_out_the_stream_table_without_streams():
    """What bench.py prints: the drain table with a note on drops beyond the capture ring, the
    stream table only when stream runs were made (settings stream_seconds not None)."""
    row = {"receiver": "UdpcapSocket.recvfrom_into", "size": 32, "path": "loopback",
           "drain_rate": 50.0, "cpu_us_per_datagram": 5.0, "drops": 5909.0,
           "ring_frames": 4091, "latency_p50_us": 30.0, "latency_p99_us": 90.0,
           "idle_cpu_pct": 0.5, "rate_ratio": 0.5, "cpu_ratio": 2.5, "latency_p99_ratio": None,
           "errors": []}
    settings = {"latency_rate": 1000.0, "rcvbuf": 256 << 20, "stream_seconds": None,
                "repeat": 3}
    report = {"rows": [row], "stream_rows": [], "stream": {}, "seconds": 12.0,
              "settings": settings}
    text = bench_report.report_text(report)
    assert text.startswith("drain ceiling (queue --count datagrams, then read them), "
                           "latency at 1000/s, idle CPU\n")
    assert "UdpcapSocket.recvfrom_into 32 B: 5909 dropped; its capture ring holds 4,091" in text
    assert "stream" not in text
    assert text.endswith("(medians of 3 run(s); ratios vs socket.recvfrom_into; 12 s)")
    settings["stream_seconds"] = 0.5
    assert "\n\nstream (read while the sender sends at the socket's sustainable rate for " \
           "0.5 s;" in bench_report.report_text(report)


def sweep_runs():
    """Bench.sweep-shaped runs: the baseline, UdpcapSocket.recvfrom_into and the asyncio pair
    at 1,000/s and "max", two repeats, of which the machine was twice as slow in the second."""
    def run(rep, cpu_us, drops=0, p99=100.0, sender_rate=1000.0):
        return {"repeat": rep, "cpu_us": cpu_us, "sender_rate": sender_rate, "rate": 990.0,
                "sent": 1000, "drops": drops, "latency_p50_us": p99 / 2,
                "latency_p99_us": p99}

    def receiver(factor, max_rate):
        return {"32": {
            "1000": {"sweep": [run(0, 10.0 * factor), run(1, 20.0 * factor * 1.2, drops=10)]},
            "max": {"sweep": [run(0, 3.0 * factor, sender_rate=max_rate)],
                    "errors": ["sweep: receiver failed: boom"]}}}
    return {bench_worker.BASELINE: receiver(1.0, 150000.0),
            "UdpcapSocket.recvfrom_into": receiver(2.0, 140000.0),
            bench_worker.ASYNC_SOCKET: receiver(4.0, 90000.0),
            bench_worker.ASYNC_UDPCAP: receiver(3.0, 120000.0)}


def test_sweep_summary_pairs_repeats_and_reports_noise():
    """summarize_sweep: the CPU ratio is the median of per-repeat ratios (a slower repeat
    cancels), with their min-max; the baseline's ratio is 1.0; the asyncio endpoint is also
    compared with asyncio on a socket; rows in rate order, 'max' last."""
    rows = bench_report.summarize_sweep(sweep_runs())
    keyed = {(r["receiver"], r["rate_key"]): r for r in rows}
    assert len(keyed) == len(rows) == 8
    assert [r["rate_key"] for r in rows] == ["1000"] * 4 + ["max"] * 4
    base = keyed[(bench_worker.BASELINE, "1000")]
    assert base["cpu_ratio"] == base["cpu_ratio_min"] == base["cpu_ratio_max"] == 1.0
    udpcap = keyed[("UdpcapSocket.recvfrom_into", "1000")]
    assert udpcap["cpu_us_per_datagram"] == (20.0 + 48.0) / 2
    assert udpcap["cpu_ratio"] == pytest.approx(2.0)          # 20/10 and 48/24
    assert udpcap["cpu_ratio_min"] == pytest.approx(2.0)
    assert udpcap["lost"] == 5 and udpcap["lost_pct"] == 0.5
    assert udpcap["cpu_spread_pct"] == pytest.approx(100.0 * 28 / 34)
    asyncio_udpcap = keyed[(bench_worker.ASYNC_UDPCAP, "max")]
    assert asyncio_udpcap["rate"] is None and asyncio_udpcap["sent_rate"] == 120000.0
    assert asyncio_udpcap["cpu_ratio_counterpart"] == pytest.approx(0.75)
    assert asyncio_udpcap["errors"] == ["sweep: receiver failed: boom"]
    text = bench_report.sweep_table(rows)
    assert "1,000/s" in text and "2.00-2.00" in text and "max" in text
    assert "! udpcap_ctypes.create_datagram_endpoint at max: sweep: receiver failed" in text
    assert "ranged over 82% of its median" in bench_report.sweep_noise_note(rows)


def test_sweep_svg_draws_a_line_per_receiver_on_log_axes():
    """svg_sweep: per size two charts (CPU, p99), a polyline per receiver in each, the 'max'
    point a square at the rate the sender reached, x ticks at whole decades."""
    rows = bench_report.summarize_sweep(sweep_runs())
    root = ET.fromstring(bench_report.svg_sweep(rows))
    ns = "{http://www.w3.org/2000/svg}"
    lines = list(root.iter(ns + "polyline"))
    assert len(lines) == 2 * 4
    assert {line.get("stroke") for line in lines} == {
        bench_report.COLORS[name] for name in sweep_runs()}
    squares = [r for r in root.iter(ns + "rect") if r.get("width") == "7"]
    assert len(squares) == 2 * 4
    labels = [t.text for t in root.iter(ns + "text")]
    assert "32 B: CPU us per datagram" in labels and "32 B: p99 latency, us" in labels
    assert {"1k", "10k", "100k", "1M"} <= set(labels)
    assert bench_report._log_axis([3.0, 40.0]) == [1, 2, 5, 10, 20, 50, 100]


def test_sweep_is_unpinned_unless_asked():
    """The other phases pin where there are two CPUs; the sweep only with --pin."""
    import argparse
    cpus = sorted(os.sched_getaffinity(0))
    plain = bench_run.Bench(argparse.Namespace(port=15000, pin=False))
    pinned = bench_run.Bench(argparse.Namespace(port=15000, pin=True))
    assert plain.sweep_cpus == (None, None)
    assert pinned.sweep_cpus == ((cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None))
    assert bench_run.parse_rates("1000, 2.5e4,max") == [1000.0, 25000.0, None]
    with pytest.raises(ValueError):
        bench_run.parse_rates("1000,-5")
    assert [bench_run.rate_key(r) for r in (1000.0, 1500.5, None)] == ["1000", "1500.5", "max"]


def test_asyncio_receivers_only_with_sweep():
    done = subprocess.run(tool("bench.py") + ["--receivers", bench_worker.ASYNC_SOCKET],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60)
    assert done.returncode == 2
    assert "only with --sweep" in done.stderr


def test_send_end_markers_follow_the_data():
    """--end-marker: after the last datagram, END_SEQ markers (not counted in "sent")."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        port = rx.getsockname()[1]
        result = send.send("127.0.0.1", port, size=32, rate=50000, count=100, end_marker=True)
        got = [_common.parse_header(rx.recv(2048)) for _ in range(100 + send.END_MARKERS)]
    assert result["sent"] == 100
    assert [seq for seq, _ in got[:100]] == list(range(100))
    assert [seq for seq, _ in got[100:]] == [_common.END_SEQ] * send.END_MARKERS
    assert got[100][1] - got[99][1] >= send.END_MARKER_PAUSE * 1e9 * 0.9


# --------------------------------------------------------------------------- send -> recv

def test_send_to_recv_socket_receives_all_without_gaps():
    port = _net.free_udp_port()
    proc = start_recv(["--socket", "--bind", "127.0.0.1:%d" % port, "--count", "2000",
                       "--timeout", "10", "--json", "--quiet"])
    sent = run_send(["127.0.0.1:%d" % port, "--count", "2000", "--rate", "20000",
                     "--size", "200"])
    got = finish_recv(proc)
    assert sent["sent"] == 2000
    assert got["receiver"] == "socket"
    assert got["received"] == 2000 and got["unique"] == 2000
    assert (got["lost"], got["gaps"], got["reorders"], got["duplicates"]) == (0, 0, 0, 0)
    assert got["bytes"] == 2000 * 200
    assert got["latency_p50_us"] is not None and got["latency_p50_us"] > 0


def test_recv_fails_when_count_not_reached():
    port = _net.free_udp_port()
    proc = start_recv(["--socket", "--bind", "127.0.0.1:%d" % port, "--count", "5",
                       "--timeout", "0.5", "--json"])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "only 0 of 5" in err
    assert json.loads(out.strip().splitlines()[-1])["timed_out"] is True


def read_with_libpcap(path):
    """Every record of a savefile through the real libpcap: (datalink, [(caplen, len, bytes)])."""
    from udpcap_ctypes import _loader, _structs
    fns = _loader.get_library().fns
    errbuf = ctypes.create_string_buffer(256)
    handle = fns.pcap_open_offline(path.encode(), errbuf)
    records = []
    try:
        datalink = fns.pcap_datalink(handle)
        header = ctypes.POINTER(_structs.pcap_pkthdr)()
        data = ctypes.c_void_p()
        while True:
            rc = fns.pcap_next_ex(handle, ctypes.byref(header), ctypes.byref(data))
            if rc == -2:            # end of file
                break
            assert rc == 1, "pcap_next_ex returned %d" % rc
            h = header.contents
            records.append((h.caplen, h.len, ctypes.string_at(data.value, h.caplen)))
    finally:
        fns.pcap_close(handle)
    return datalink, records


def check_ipv4_udp(packet, src_port, dst, dst_port):
    assert packet[0] == 0x45 and packet[9] == socket.IPPROTO_UDP
    total = struct.unpack("!H", packet[2:4])[0]
    assert total == len(packet)
    assert _common.ipv4_checksum(packet[:20]) == 0, "IPv4 header checksum must verify"
    assert packet[16:20] == socket.inet_aton(dst)
    sport, dport, ulen, _ = struct.unpack("!HHHH", packet[20:28])
    assert (dport, ulen) == (dst_port, total - 20)
    if src_port is not None:
        assert sport == src_port
    return packet[28:]


def test_pcap_file_of_recv_reads_back_with_libpcap_and_tcpdump(tmp_path):
    port = _net.free_udp_port()
    path = str(tmp_path / "recv.pcap")
    proc = start_recv(["--socket", "--bind", "127.0.0.1:%d" % port, "--count", "20",
                       "--timeout", "10", "--json", "--quiet", "--pcap", path])
    run_send(["127.0.0.1:%d" % port, "--count", "20", "--rate", "1000", "--size", "300"])
    got = finish_recv(proc)
    assert got["pcap_records"] == 20
    datalink, records = read_with_libpcap(path)
    assert datalink in (12, 14, 101), "LINKTYPE_RAW reads back as DLT_RAW, got %d" % datalink
    assert len(records) == 20
    expected = _common.make_payload(300)
    for seq, (caplen, length, packet) in enumerate(records):
        assert caplen == length == 328
        payload = check_ipv4_udp(packet, None, "127.0.0.1", port)
        assert _common.parse_header(payload)[0] == seq
        assert payload[:4] == b"UCT1" and payload[20:] == bytes(expected[20:])
    if shutil.which("tcpdump"):
        done = subprocess.run(["tcpdump", "-n", "-r", path], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.strip().splitlines()
        assert len(lines) == 20
        assert all("127.0.0.1.%d: UDP, length 300" % port in line for line in lines), lines[0]


def test_pcap_writer_large_datagram_reads_back(tmp_path):
    """A 65507-byte datagram (the IPv4 maximum) survives the writer and libpcap whole."""
    path = str(tmp_path / "big.pcap")
    small, big = b"hello", bytes(range(256)) * 255 + bytes(227)
    assert len(big) == 65507
    with _common.PcapWriter(path) as w:
        w.write(small, ("10.1.2.3", 1234), ("239.0.0.1", 14000), timestamp=1700000000.25)
        w.write(big, ("10.1.2.3", 1235), ("239.0.0.1", 14000))
    _, records = read_with_libpcap(path)
    assert [r[1] for r in records] == [33, 65535]
    assert check_ipv4_udp(records[0][2], 1234, "239.0.0.1", 14000) == small
    assert check_ipv4_udp(records[1][2], 1235, "239.0.0.1", 14000) == big
    assert records[0][2][12:16] == socket.inet_aton("10.1.2.3")


# --------------------------------------------------------------------------- UdpcapSocket

def require_udpcap_socket():
    import udpcap_ctypes
    try:
        present = hasattr(udpcap_ctypes, "UdpcapSocket")
    except ImportError as exc:
        pytest.fail("udpcap_ctypes.UdpcapSocket cannot be imported: %s" % exc)
    if not present:
        pytest.fail("udpcap_ctypes.UdpcapSocket is missing: tools/recv.py and tools/bench.py "
                    "need it (udpcap_ctypes/udpcap_socket.py, exported from __init__)")


@pytest.mark.live
def test_send_to_recv_udpcap_socket_receives_all():
    require_udpcap_socket()
    port = _net.free_udp_port()
    proc = start_recv(["--bind", "127.0.0.1:%d" % port, "--count", "500", "--timeout", "10",
                       "--json", "--quiet"])
    run_send(["127.0.0.1:%d" % port, "--count", "500", "--rate", "2000", "--size", "100"])
    got = finish_recv(proc)
    assert got["receiver"] == "UdpcapSocket"
    assert got["received"] == 500 and got["unique"] == 500
    assert (got["lost"], got["gaps"], got["duplicates"]) == (0, 0, 0)
    assert got["counters"].get("delivered") == 500, got["counters"]


@pytest.mark.live
def test_recv_stats_lines_show_udpcap_counters():
    require_udpcap_socket()
    port = _net.free_udp_port()
    proc = start_recv(["--bind", "127.0.0.1:%d" % port, "--count", "1500", "--timeout", "10",
                       "--stats"])
    run_send(["127.0.0.1:%d" % port, "--count", "1500", "--rate", "1000", "--size", "64"])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = out.strip().splitlines()
    live = [line for line in lines if "dgram/s" in line]
    assert live, out
    assert "delivered=" in live[0] and "lat p50" in live[0]
    assert lines[-1].startswith("UdpcapSocket: received 1500 datagrams")
    assert "lost 0" in lines[-1]


@pytest.mark.live
@pytest.mark.parametrize("coalesce,engaged", [("0", False), ("0.001", True)])
def test_recv_coalesce_reaches_the_socket(coalesce, engaged):
    """--coalesce sets UdpcapSocket's moderation: a stream makes pauses only when it is on.

    Paced at 2,000/s (0.5 ms apart, closer than two 1 ms delays) for 0.1 s, so the receiver
    catches up and waits between datagrams even on a loaded machine; an unpaced burst could
    land in the ring before the receiver first reads, and 200 datagrams then need no wait.
    """
    require_udpcap_socket()
    port = _net.free_udp_port()
    proc = start_recv(["--bind", "127.0.0.1:%d" % port, "--count", "200", "--timeout", "10",
                       "--coalesce", coalesce, "--json"])
    run_send(["127.0.0.1:%d" % port, "--count", "200", "--size", "64", "--rate", "2000"])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    assert got["received"] == 200
    assert (got["counters"]["coalesced_waits"] > 0) is engaged, got["counters"]


def test_recv_rejects_a_coalesce_out_of_range():
    require_udpcap_socket()
    done = subprocess.run(tool("recv.py") + ["--bind", "127.0.0.1:%d" % _net.free_udp_port(),
                                             "--coalesce", "-1"], cwd="/",
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=30)
    assert done.returncode == 2
    assert "coalesce must be between 0 and" in done.stderr


# --------------------------------------------------------------------------- IPv6

def test_ipv6_addresses_in_brackets_parse_and_resolve():
    """[HOST]:PORT for IPv6 (a link-local one with its %scope), HOST:PORT as before."""
    assert _common.parse_hostport("[::1]:14000") == ("::1", 14000)
    assert _common.parse_hostport("[fe80::1%eth0]:9") == ("fe80::1%eth0", 9)
    assert _common.parse_hostport("127.0.0.1:5") == ("127.0.0.1", 5)
    assert _common.parse_hostport(":5") == ("0.0.0.0", 5)
    assert _common.parse_hostport("5", default_host="127.0.0.1") == ("127.0.0.1", 5)
    for bad in ("::1:14000", "[::1]", "[::1]14000", "[]:5", "[::1:5", "[::1]:x", "[::1]:70000"):
        with pytest.raises(ValueError):
            _common.parse_hostport(bad)
    assert _common.format_hostport("::1", 5) == "[::1]:5"
    assert _common.format_hostport("127.0.0.1", 5) == "127.0.0.1:5"
    assert _common.family_of("::") == socket.AF_INET6
    assert _common.family_of("0.0.0.0") == socket.AF_INET
    assert _common.sockaddr("::1", 5) == ("::1", 5, 0, 0)
    assert _common.sockaddr("fe80::1%1", 5) == ("fe80::1", 5, 0, 1)
    assert _common.sockaddr("127.0.0.1", 5) == ("127.0.0.1", 5)
    with pytest.raises(OSError):
        _common.sockaddr("fd00::zz", 5)
    assert _common.split_scope("fe80::1%eth0") == ("fe80::1", "eth0")
    assert _common.interface_index("7") == 7 and _common.interface_index("fe80::1%3") == 3
    assert _common.is_multicast("ff15::1") and _common.is_multicast("ff02::1%lo")
    assert not _common.is_multicast("fd00::1") and not _common.is_multicast("::")
    assert _common.is_multicast("239.1.2.3") and not _common.is_multicast("10.0.0.1")


def test_payload_size_limit_per_family():
    assert len(_common.make_payload(65527, socket.AF_INET6)) == 65527
    with pytest.raises(ValueError, match="IPv4 UDP maximum of 65507"):
        _common.make_payload(65508)
    with pytest.raises(ValueError, match="IPv6 UDP maximum of 65527"):
        _common.make_payload(65528, socket.AF_INET6)


def test_ipv6_bad_arguments_say_what_is_wrong():
    """Nothing is sent or opened: the arguments are refused first."""
    cases = [("send.py", ["::1:14000", "--count", "1"], "in brackets"),
             ("send.py", ["[fd00::zz]:14000", "--count", "1"], "[HOST]:PORT"),
             ("recv.py", ["--socket", "--bind", "[::1]:14000", "--join", "239.0.0.1"],
              "not an IPv6 multicast address"),
             ("recv.py", ["--socket", "--bind", "[::1]:14000", "--join", "fd00::1"],
              "not an IPv6 multicast address"),
             ("recv.py", ["--socket", "--bind", "[::]:14000", "--join", "ff15::1%nosuchif0"],
              "no interface is called 'nosuchif0'"),
             ("recv.py", ["--socket", "--bind", "0.0.0.0:14000", "--join", "ff15::1"],
              "an IPv6 group needs an IPv6 bind address"),
             ("recv.py", ["--socket", "--join", "239.0.0.1", "--join", "ff15::1"],
              "an IPv6 group needs an IPv6 bind address")]
    for script, args, text in cases:
        done = subprocess.run(tool(script) + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=60, cwd="/")
        assert done.returncode == 2, (script, args, done.stderr)
        assert text in done.stderr, (script, args, done.stderr)


def check_ipv6_udp(packet, src, dst, dst_port):
    """The synthesized IPv6/UDP *packet*: header fields and a UDP checksum that verifies."""
    assert packet[0] >> 4 == 6 and packet[6] == socket.IPPROTO_UDP
    plen = struct.unpack("!H", packet[4:6])[0]
    assert plen == len(packet) - 40
    assert packet[8:24] == socket.inet_pton(socket.AF_INET6, src)
    assert packet[24:40] == socket.inet_pton(socket.AF_INET6, dst)
    _sport, dport, ulen, checksum = struct.unpack("!HHHH", packet[40:48])
    assert (dport, ulen) == (dst_port, plen) and checksum != 0
    data = packet[8:40] + struct.pack("!IxxxB", ulen, socket.IPPROTO_UDP) + packet[40:]
    if len(data) % 2:
        data += b"\x00"
    assert _common.ipv4_checksum(data) == 0, "the UDP checksum must verify"
    return packet[48:]


def test_pcap_writer_ipv6_reads_back(tmp_path):
    """IPv6 datagrams become IPv6/UDP records (scope dropped, checksum computed, odd lengths
    padded for the sum); with ethernet=True behind ethertype 0x86DD, IPv4 ones behind 0x0800."""
    raw, ether = str(tmp_path / "raw.pcap"), str(tmp_path / "ether.pcap")
    odd, big = b"hello", bytes(range(256)) * 11 + b"x"
    src, dst = ("fe80::b%veth-a", 1234, 0, 7), ("ff15::4242", 14000)
    with _common.PcapWriter(raw) as w:
        w.write(odd, src, dst)
        w.write(big, ("fd00::2", 1235), ("fd00::1", 14001, 0, 0))
    _, records = read_with_libpcap(raw)
    assert [r[1] for r in records] == [53, 48 + len(big)]
    assert check_ipv6_udp(records[0][2], "fe80::b", "ff15::4242", 14000) == odd
    assert check_ipv6_udp(records[1][2], "fd00::2", "fd00::1", 14001) == big
    with _common.PcapWriter(ether, ethernet=True) as w:
        w.write(odd, src, dst)
        w.write(odd, ("10.1.2.3", 1234), ("239.0.0.1", 14000))
    datalink, records = read_with_libpcap(ether)
    assert datalink == 1
    assert records[0][2][:14] == _common.LOOPBACK_ETHERNET_HEADER6
    assert check_ipv6_udp(records[0][2][14:], "fe80::b", "ff15::4242", 14000) == odd
    assert records[1][2][:14] == _common.LOOPBACK_ETHERNET_HEADER
    assert check_ipv4_udp(records[1][2][14:], 1234, "239.0.0.1", 14000) == odd


RECEIVERS6 = ["socket", pytest.param("UdpcapSocket", marks=pytest.mark.live)]


def recv_mode(receiver):
    if receiver == "UdpcapSocket":
        require_udpcap_socket()
        return []
    return ["--socket"]


def check_all_arrived(got, receiver, count, size):
    assert got["receiver"] == receiver
    assert got["received"] == count and got["unique"] == count, got
    assert (got["lost"], got["gaps"], got["reorders"], got["duplicates"]) == (0, 0, 0, 0), got
    assert got["foreign"] == 0 and got["bytes"] == count * size, got
    assert got["latency_p50_us"] is not None and got["latency_p50_us"] > 0
    if receiver == "UdpcapSocket":
        assert got["counters"]["delivered"] == count, got["counters"]
        assert got["counters"]["malformed_total"] == 0, got["counters"]


@pytest.mark.parametrize("receiver", RECEIVERS6)
def test_send_to_recv_over_ipv6_loopback_in_a_namespace(netns, receiver):
    """send.py -> recv.py to [::1] of a test namespace's loopback (AF_INET6 sender; an
    AF_INET6 socket or UdpcapSocket(AF_INET6) receiving): every datagram, once, in order."""
    proc = start_recv(recv_mode(receiver) + ["--bind", "[::1]:14000", "--count", "2000",
                                             "--timeout", "10", "--json", "--quiet"],
                      namespace=netns)
    assert proc.banner == "%s receiving on [::1]:14000" % receiver
    sent = run_send(["[::1]:14000", "--count", "2000", "--rate", "20000", "--size", "200"],
                    namespace=netns)
    assert (sent["sent"], sent["dest"], sent["send_errors"]) == (2000, "::1", 0)
    check_all_arrived(finish_recv(proc), receiver, 2000, 200)


def test_pcap_file_of_recv_over_ipv6_reads_back(netns, tmp_path):
    """recv.py --pcap over IPv6: IPv6/UDP records libpcap reads and tcpdump finds the UDP
    checksum of correct."""
    path = str(tmp_path / "recv6.pcap")
    proc = start_recv(["--socket", "--bind", "[::1]:14000", "--count", "20", "--timeout", "10",
                       "--json", "--quiet", "--pcap", path], namespace=netns)
    run_send(["[::1]:14000", "--count", "20", "--rate", "1000", "--size", "301"],
             namespace=netns)
    assert finish_recv(proc)["pcap_records"] == 20
    datalink, records = read_with_libpcap(path)
    assert datalink in (12, 14, 101), datalink
    assert len(records) == 20
    for seq, (caplen, length, packet) in enumerate(records):
        assert caplen == length == 40 + 8 + 301
        payload = check_ipv6_udp(packet, "::1", "::1", 14000)
        assert _common.parse_header(payload)[0] == seq
    if shutil.which("tcpdump"):
        done = subprocess.run(["tcpdump", "-n", "-vv", "-r", path], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        assert done.returncode == 0, done.stderr
        lines = [line for line in done.stdout.splitlines() if "IP6" in line]
        assert len(lines) == 20
        assert all("::1.14000: [udp sum ok] UDP, length 301" in line for line in lines), lines[0]


@pytest.mark.parametrize("receiver", RECEIVERS6)
@pytest.mark.parametrize("target", ["ula", "link-local", "multicast"])
def test_send_to_recv_over_ipv6_between_namespaces(pair6, receiver, target):
    """send.py in namespace b -> recv.py in namespace a over the veth: to a's ULA address,
    to its link-local address with the %scope on both sides, and to ff15::4242 joined on a's
    veth by name (--join GROUP%IFACE, bound to [::] by default) and sent out of b's
    (--interface)."""
    a, b = pair6.a, pair6.b
    if target == "ula":
        bind, dest, join, via = "[%s]:14000" % pair6.addr6_a, "[%s]:14000" % pair6.addr6_a, [], []
        shown = bind
    elif target == "link-local":
        bind = "[%s%%%s]:14000" % (pair6.LINK_LOCAL_A, pair6.if_a)
        dest = "[%s%%%s]:14000" % (pair6.LINK_LOCAL_A, pair6.if_b)
        join, via, shown = [], [], bind
    else:       # no --bind: [::]:14000, since the only group is IPv6
        bind, dest, shown = None, "[ff15::4242]:14000", "[::]:14000"
        join = ["--join", "ff15::4242%" + pair6.if_a]
        via = ["--interface", pair6.if_b]
    proc = start_recv(recv_mode(receiver) + (["--bind", bind] if bind else [])
                      + ["--count", "500", "--timeout", "10", "--json", "--quiet"] + join,
                      namespace=a)
    assert proc.banner.startswith("%s receiving on %s" % (receiver, shown)), proc.banner
    sent = run_send([dest, "--count", "500", "--rate", "5000", "--size", "1000"] + via,
                    namespace=b)
    assert (sent["sent"], sent["send_errors"]) == (500, 0)
    check_all_arrived(finish_recv(proc), receiver, 500, 1000)


def run_bench_json(script, args, receivers, timeout, sizes=(32, 1400), optional=()):
    """Run a bench tool with --json for *receivers*; ``(report, {(receiver, size): row})``
    after checking that every receiver has a row at each of *sizes* (*optional* receivers:
    at most one row per size)."""
    done = subprocess.run(tool(script) + args + ["--json", "--receivers", ",".join(receivers)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    rows = {(r["receiver"], r["size"]): r for r in report["rows"]}
    assert len(rows) == len(report["rows"])
    required = {(name, size) for name in receivers if name not in optional for size in sizes}
    assert required <= set(rows)
    assert set(rows) <= {(name, size) for name in receivers for size in sizes}
    return report, rows


@pytest.mark.live
def test_bench_quick_json_has_numbers_for_socket_and_udpcap():
    require_udpcap_socket()
    receivers = ["UdpcapSocket.recvfrom_into", "UdpcapSocket.recvfrom", bench_worker.BASELINE]
    started = time.monotonic()
    report, rows = run_bench_json("bench.py", ["--quick", "--port", str(_net.free_udp_port())],
                                  receivers, timeout=300)
    for (name, size), row in rows.items():
        assert not row["errors"], (name, size, row["errors"])
        assert row["drain_rate"] > 0 and row["cpu_us_per_datagram"] > 0, row
        assert row["latency_p50_us"] > 0 and row["latency_p99_us"] >= row["latency_p50_us"]
        assert row["idle_cpu_pct"] is not None and row["idle_cpu_pct"] < 50, row
        assert row["rate_ratio"] > 0 and row["cpu_ratio"] > 0
        assert row["latency_p99_ratio"] > 0
        assert row["latency_drops"] == 0, row
    for size in (32, 1400):
        base = rows[(bench_worker.BASELINE, size)]
        assert base["rate_ratio"] == 1.0 and base["drops"] == 0
        assert base["latency_p99_ratio"] == 1.0
    # stream: every receiver read a paced stream (--quick: fixed rate, 0.5 s) while it arrived
    stream = {(r["receiver"], r["size"]): r for r in report["stream_rows"]}
    assert set(stream) == set(rows)
    for size in (32, 1400):
        info = report["stream"][str(size)]
        assert info["limited_by"] == "quick" and info["rate"] == bench_run.QUICK_STREAM_RATE
        expected = int(bench_run.QUICK_STREAM_RATE * report["settings"]["stream_seconds"])
        for name in (bench_worker.BASELINE, "UdpcapSocket.recvfrom_into"):
            row = stream[(name, size)]
            assert not row["errors"], (name, size, row["errors"])
            assert row["target_rate"] == bench_run.QUICK_STREAM_RATE
            assert row["sender_rate"] > 0.5 * bench_run.QUICK_STREAM_RATE, row
            assert row["received"] + row["drops"] == expected, row
            assert row["drops"] <= expected // 100, row
            assert row["cpu_us_per_datagram"] > 0 and row["cpu_ratio"] > 0, row
            assert row["lag_max_ms"] is not None and row["lag_max_ms"] >= 0, row
            assert row["ended"] == ["complete"] or row["drops"], row
            # CPU and wall time cover the datagrams after the first, not start-up or the tail
            run = report["runs"][name]["sizes"][str(size)]["stream"][0]
            if run["ended"] == "complete":
                assert run["measured"] == run["received"] - 1, run
            assert 0 < run["measured"] < run["received"], run
            assert 0 < run["seconds"] < 2 * report["settings"]["stream_seconds"], run
        assert stream[(bench_worker.BASELINE, size)]["cpu_ratio"] == 1.0
        assert stream[(bench_worker.BASELINE, size)]["drops"] == 0
    assert time.monotonic() - started < 240


@pytest.mark.live
def test_bench_sweep_quick_json_has_a_row_per_receiver_and_rate(tmp_path):
    """bench.py --sweep with tiny settings: a row with numbers for every receiver that ran
    and every rate, the baseline's ratio 1.0, the receivers this checkout lacks named in
    "skipped", the SVG written and parseable, nothing pinned, no namespace left.  Structural
    only: no timed assertions."""
    require_udpcap_socket()
    svg = str(tmp_path / "sweep.svg")
    rates = ["2000", "max"]
    proc = subprocess.Popen(
        tool("bench.py") + ["--sweep", "--quick", "--sweep-rates", ",".join(rates),
                            "--sweep-seconds", "0.3", "--sizes", "200", "--json", "--svg", svg,
                            "--port", str(_net.free_udp_port())],
        cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    out, err = proc.communicate(timeout=300)
    left = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE,
                          universal_newlines=True).stdout
    tag = "%d" % (proc.pid % 100000)
    assert not [line for line in left.splitlines() if line.split()[0].endswith(tag)], left
    assert proc.returncode == 0, err
    report = json.loads(out)
    settings = report["settings"]
    assert settings["repeat"] == 1 and settings["pinned"] is None
    assert settings["sweep_rates"] == rates
    receivers = settings["receivers"]
    assert {bench_worker.BASELINE, "UdpcapSocket.recvfrom_into"} <= set(receivers)
    assert set(receivers) | set(report["skipped"]) == set(bench_worker.SWEEP_RECEIVERS)
    rows = {(r["receiver"], r["rate_key"]): r for r in report["sweep_rows"]}
    assert len(rows) == len(report["sweep_rows"])
    assert set(rows) == {(name, rate) for name in receivers for rate in rates}
    for (name, rate), row in rows.items():
        assert not row["errors"], (name, rate, row["errors"])
        assert row["size"] == 200 and row["repeats"] == 1
        assert row["sent_rate"] > 0 and row["sent"] > 0, row
        assert row["cpu_us_per_datagram"] > 0 and row["cpu_ratio"] > 0, row
        assert 0 <= row["lost"] <= row["sent"], row
        assert 0 < row["latency_p50_us"] <= row["latency_p99_us"], row
        run = report["runs"][name]["200"][rate]["sweep"][0]
        assert run["latency_samples"] == run["received"], run      # every datagram's latency
        if rate != "max":
            assert run["count"] == int(float(rate) * 0.3), run
    for rate in rates:
        assert rows[(bench_worker.BASELINE, rate)]["cpu_ratio"] == 1.0
    assert report["machine"]["kernel"] and report["machine"]["libpcap"]
    root = ET.parse(svg).getroot()
    assert len(list(root.iter("{http://www.w3.org/2000/svg}polyline"))) == 2 * len(receivers)


def run_namespace_bench(argv, ns_prefix, timeout):
    """bench.py with *argv* (a namespace benchmark with --json): its JSON report, after
    checking that it succeeded without errors and left neither of its namespaces
    (*ns_prefix* ``-r``/``-p`` and its process id) behind."""
    proc = subprocess.Popen(tool("bench.py") + argv, cwd="/", stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)
    out, err = proc.communicate(timeout=timeout)
    left = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE,
                          universal_newlines=True).stdout
    tag = "%d" % (proc.pid % 100000)
    assert not [line for line in left.splitlines()
                if line.split()[0] in (ns_prefix + "-r" + tag, ns_prefix + "-p" + tag)], left
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert not report["errors"], report["errors"]
    return report


@pytest.mark.live
def test_bench_sockets_json_has_a_row_for_every_count_and_receiver():
    """bench.py --sockets (tools/bench_sockets.py) with tiny settings: a memory row for every
    N and receiver kind, a stream row for every K, one shared capture per device however many
    UdpcapSockets are bound, far less memory a socket than the 58 MiB of one capture set per
    socket, every socket of a shared stream served, and its namespaces gone afterwards.

    Structural only: no timing, and memory from the process's RSS (which includes the mapped
    capture rings); MemAvailable is machine-wide and moves with whatever else runs."""
    require_udpcap_socket()
    counts, ks = (1, 10), (1, 2)
    report = run_namespace_bench(
        ["--sockets", ",".join(map(str, counts)), "--stream-sockets", ",".join(map(str, ks)),
         "--rates", "5000", "--sizes", "200", "--stream-seconds", "0.5", "--repeat", "1",
         "--port", "21000", "--json"], "uctsock", 300)
    machine = report["machine"]
    assert machine["cpus"] and machine["kernel"] and machine["python"]
    kinds = ("UdpcapSocket", "socket")
    memory = {(r["receiver"], r["n"]): r for r in report["memory_rows"]}
    assert set(memory) == {(kind, n) for kind in kinds for n in counts}
    for (kind, n), row in memory.items():
        assert row["repeats"] == 1
        for name in ("mem_available_drop_mib", "mem_per_socket_mib", "rss_growth_mib",
                     "rss_per_socket_mib", "open_s", "close_s"):
            assert row[name] is not None, (kind, n, name)
        if kind == "UdpcapSocket":
            # lo and the two veths: one capture each, shared by all N sockets
            assert row["captures"] == 3 and len(row["devices"]) == 3, row
            assert row["ring_mib"] < 64, row
        else:
            assert row["captures"] == 0, row
    biggest = memory[("UdpcapSocket", max(counts))]
    assert biggest["rss_per_socket_mib"] < 8, biggest
    stream = {(r["receiver"], r["k"]): r for r in report["stream_rows"]}
    assert set(stream) == {(kind, k) for kind in kinds for k in ks}
    for (kind, k), row in stream.items():
        assert (row["size"], row["rate"], row["repeats"]) == (200, 5000, 1), row
        assert row["sent"] > 0 and not row["cut"], row
        assert row["delivered_per_socket_min"] > 0, row      # every socket got the stream
        for name in ("cpu_us_per_sent", "cpu_us_per_delivered", "sender_cpu_us_per_sent",
                     "total_cpu_us_per_sent", "lost_per_socket_max"):
            assert row[name] is not None, (kind, k, name)
        if kind == "socket":
            assert row["cpu_ratio"] == 1.0
        run = [r for r in report["runs"]["stream"] if (r["kind"], r["k"]) == (kind, k)][0]
        assert len(run["sockets"]) == k


def run_bench_readers(args, port):
    """bench.py --readers with tiny settings and *args* (one run of 0.5 s at 1,000/s): its
    JSON report, after checking that it succeeded, left no namespace behind and has one stream
    row for each of the five receivers (the kernel socket, UdpcapSocket's Linux batch and
    next_ex readers, its Npcap batch and next_ex readers on the emulated Windows), each having
    received datagrams through the reader it names.  Structural only: no timing."""
    require_udpcap_socket()
    import winemu
    reason = winemu.unavailable_reason()
    if reason:
        pytest.skip("the emulated Windows cannot be built: %s" % reason)
    report = run_namespace_bench(
        ["--readers", "--rates", "1000", "--seconds", "0.5", "--repeat", "1", "--no-callgrind",
         "--port", str(port), "--json"] + list(args), "uctrd", 120)
    assert report["machine"]["cpus"] and report["machine"]["kernel"]
    assert report["callgrind_rows"] == []
    size = report["settings"]["sizes"][0]
    rows = {r["receiver"]: r for r in report["stream_rows"]}
    expected = {"socket": None, "linux-batch": "DumpBatchReader",
                "linux-next_ex": "NextExReader", "npcap-batch": "NpfBatchReader",
                "npcap-next_ex": "NextExReader"}
    assert set(rows) == set(expected)
    for name, reader in expected.items():
        row = rows[name]
        assert (row["size"], row["rate"], row["repeats"]) == (size, 1000, 1), row
        assert row["sent"] > 0 and row["received"] > 0 and not row["cut"], row
        assert row["thread_us"] is not None and row["ratio"] is not None, row
        if reader is None:
            assert row["readers"] == {} and row["ratio"] == 1.0, row
        else:
            assert row["readers"] and all(reader in how for how in row["readers"].values()), row
    emulated = rows["npcap-batch"]["readers"]
    assert any(device.startswith("\\Device\\NPF_{") for device in emulated), emulated
    assert rows["npcap-batch"]["counterpart"] == "linux-batch"
    assert rows["npcap-batch"]["counterpart_ratio"] is not None
    return report


@pytest.mark.live
@pytest.mark.windows_emulated
def test_bench_readers_json_has_a_row_for_every_receiver():
    """bench.py --readers (tools/bench_readers.py) with tiny settings: see run_bench_readers."""
    report = run_bench_readers(["--sizes", "200"], 21500)
    assert report["settings"]["ipv6"] is False
    assert report["settings"]["link"] == ["198.18.103.1", "198.18.103.2", 24, 1500]


@pytest.mark.live
@pytest.mark.windows_emulated
def test_bench_readers_ipv6_json_has_a_row_for_every_receiver():
    """bench.py --readers --ipv6: the same five receivers, each bound to the receiving
    namespace's ULA address and receiving IPv6 (a 1400 B datagram, one frame on the veth over
    IPv6 too): every one of them got the stream, nothing went to a wrong family."""
    report = run_bench_readers(["--ipv6", "--sizes", "1400"], 21600)
    settings = report["settings"]
    assert settings["ipv6"] is True and settings["sizes"] == [1400]
    assert settings["link"] == ["fd00:198:18:103::1", "fd00:198:18:103::2", 64, 1500]
    for row in report["stream_rows"]:
        assert row["lost"] <= row["sent"] // 10, row
    for run in report["runs"]["stream"]:
        assert run["foreign"] == 0 and run["duplicates"] == 0, run
        assert run["counters"].get("malformed_total", 0) == 0, run


# --------------------------------------------------------------------------- bench_replay.py

def test_bench_replay_json_covers_every_receiver_and_size():
    """Offline (a savefile, no device): every datagram of the file is delivered by each
    receiver (the tool exits non-zero otherwise), with a CPU figure and the ratio to
    UdpcapSocket.recvfrom_into."""
    require_udpcap_socket()
    receivers = ["UdpcapSocket.recvfrom_into", "UdpcapSocket.recvfrom"]
    _report, rows = run_bench_json("bench_replay.py", ["--count", "300", "--repeat", "2"],
                                   receivers, timeout=120)
    for row in rows.values():
        assert row["datagrams"] == 300 and len(row["samples"]) == 2
        assert row["cpu_us_per_datagram"] > 0 and row["ratio"] > 0
    assert all(rows[(receivers[0], size)]["ratio"] == 1.0 for size in (32, 1400))


def test_bench_replay_delivers_exactly_the_datagrams_for_its_port(tmp_path):
    """The replayed socket applies the real delivery rules: of a savefile with datagrams for
    the bench's port and for another port, it delivers the former, in order, and no more."""
    require_udpcap_socket()
    path = str(tmp_path / "mixed.pcap")
    with _common.PcapWriter(path, ethernet=True) as writer:
        for seq in range(5):
            port = bench_replay.PORT if seq % 2 == 0 else bench_replay.PORT + 1
            writer.write(b"datagram %d" % seq, bench_replay.SOURCE, ("127.0.0.1", port))
    sock = bench_replay.open_offline_socket(path)
    try:
        got = []
        with pytest.raises(BlockingIOError):
            while True:
                got.append(sock.recvfrom(100))
    finally:
        sock.close()
    assert got == [(b"datagram %d" % seq, bench_replay.SOURCE) for seq in (0, 2, 4)]
    assert bench_replay.replay_udpcap(path, "recvfrom_into")[0] == 3


def test_bench_replay_fragments_reassemble_every_datagram():
    """--mtu 1500: 3000-byte datagrams become three fragments each (1480 + 1480 + 48 bytes of
    IP payload), and the replayed socket reassembles every one of them (the tool exits non-zero
    otherwise); pypcap+dpkt, which does not reassemble, has no row."""
    require_udpcap_socket()
    report, rows = run_bench_json("bench_replay.py", ["--count", "50", "--repeat", "1",
                                                      "--sizes", "32,1400,3000", "--mtu", "1500"],
                                  ["UdpcapSocket.recvfrom_into", "pypcap+dpkt"], timeout=120,
                                  sizes=(32, 1400, 3000), optional=("pypcap+dpkt",))
    assert report["mtu"] == 1500
    fragmented = rows[("UdpcapSocket.recvfrom_into", 3000)]
    assert fragmented["frames"] == 150 and fragmented["datagrams"] == 50
    assert rows[("UdpcapSocket.recvfrom_into", 1400)]["frames"] == 50
    assert ("pypcap+dpkt", 3000) not in rows
