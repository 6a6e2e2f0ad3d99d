#!/usr/bin/env python3
"""Benchmark UdpcapSocket against a plain UDP socket (and pypcap+dpkt / scapy if installed).

One run sends the same traffic to every receiver and prints a table side by side:

* drain ceiling -- N datagrams are queued while the receiver is bound but not reading (receive
  buffer --rcvbuf; a plain socket uses SO_RCVBUFFORCE as root, since SO_RCVBUF is capped by
  net.core.rmem_max); then the receiver drains them: datagrams/s and CPU microseconds per
  datagram (time.process_time of the receiver process / datagrams), drops and duplicates from
  the sequence numbers;
* latency -- 1000 datagrams/s for 2 s: one-way latency p50/p99 from the CLOCK_MONOTONIC send
  time in each datagram (sender and receiver on this host);
* idle CPU -- a receiver blocked in recvfrom with a 1 s timeout for 2 s: CPU %;
* ratios to the socket.recvfrom_into baseline (rate and CPU per datagram).

Receivers: UdpcapSocket.recvfrom_into, UdpcapSocket.recvfrom, UdpcapSocket(immediate=False)
.recvfrom_into (TPACKET_V3 blocks: more burst tolerance per buffer byte, ~1 ms latency),
socket.recvfrom_into (the baseline), and pypcap+dpkt and scapy when they are importable
(skipped otherwise; not run on fragmented traffic, which they do not reassemble).

Sizes: 32 B and 1400 B over loopback (127.0.0.1), and, when running as root, 60000 B (41 IPv4
fragments each) between two network namespaces this tool creates (veth pair, MTU 1500,
198.18.99.1 -> 198.18.99.2) and deletes afterwards.  Each receiver runs in its own process
pinned to CPU 0, each sender in another pinned to CPU 1; every figure is the median of --repeat
runs.  Traffic goes only to 127.0.0.1 or inside those namespaces.

    python3 tools/bench.py                 # full run, table
    python3 tools/bench.py --quick --json  # small counts, one repeat, machine-readable
    python3 tools/bench.py --svg rates.svg # also draw the drain rates as a bar chart
"""

import argparse
import collections
import importlib.util
import json
import os
import socket
import struct
import subprocess
import sys
import time

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TOOLS)
import _common  # noqa: E402

BASELINE = "socket.recvfrom_into"
BATCHED = "UdpcapSocket(immediate=False).recvfrom_into"
RECEIVERS = ("UdpcapSocket.recvfrom_into", "UdpcapSocket.recvfrom", BATCHED, BASELINE,
             "pypcap+dpkt", "scapy")
OPTIONAL = {"pypcap+dpkt": ("pcap", "dpkt"), "scapy": ("scapy",)}
SLOW_RECEIVER_CAP = {"scapy": 10000}     # drain count cap: scapy takes ~0.3 ms a datagram
FRAGMENTED_SIZE = 60000
LOOPBACK = "127.0.0.1"
NS_SEND_ADDR, NS_RECV_ADDR = "198.18.99.1", "198.18.99.2"
SEQ = struct.Struct("!Q")
DRAIN_TIMEOUT = 0.5          # after GO everything is queued: a pause this long means "done"


# =========================================================================== worker side

class BenchReceiver:
    """A receiver reduced to what the benchmark needs: recv_one() -> (buffer, length) | None."""

    def __init__(self, recv_one, settimeout, close, counters=dict):
        self.recv_one = recv_one
        self.settimeout = settimeout
        self.close = close
        self.counters = counters


def open_bench_receiver(name, host, port, rcvbuf, iface):
    if name.startswith(("socket.", "UdpcapSocket")):
        options = {"immediate": False} if name == BATCHED else None
        sock = _common.open_receiver(name.startswith("socket."), (host, port), rcvbuf=rcvbuf,
                                     options=options)
        buf = bytearray(65536)
        timeout_exc = socket.timeout
        if name.endswith(".recvfrom_into"):
            into = sock.recvfrom_into

            def recv_one():
                try:
                    n = into(buf)[0]
                except timeout_exc:
                    return None
                return buf, n
        else:
            recvfrom = sock.recvfrom

            def recv_one():
                try:
                    data = recvfrom(65536)[0]
                except timeout_exc:
                    return None
                return data, len(data)
        return BenchReceiver(recv_one, sock.settimeout, sock.close,
                             lambda: _common.receiver_statistics(sock))
    if name == "pypcap+dpkt":
        return _open_pypcap(host, port, rcvbuf, iface)
    if name == "scapy":
        return _open_scapy(host, port, rcvbuf, iface)
    raise ValueError("unknown receiver %r" % name)


def _open_pypcap(host, port, rcvbuf, iface):
    import select
    import dpkt
    import pcap
    state = {"timeout": None}
    handle = pcap.pcap(name=iface, snaplen=65535, promisc=False, timeout_ms=50, immediate=True,
                       buffer_size=min(rcvbuf, 1 << 30))
    handle.setfilter("udp and dst host %s and dst port %d" % (host, port))
    try:
        handle.setdirection(pcap.PCAP_D_IN)     # loopback shows every packet twice otherwise
    except Exception:
        pass
    handle.setnonblock(True)
    ethernet = handle.datalink() == 1
    fd = handle.fileno()
    got = collections.deque()
    keep = got.append
    dispatch = handle.dispatch

    def callback(_ts, frame):
        keep(frame)

    def recv_one():
        # non-blocking dispatch, select() on the capture fd when nothing is buffered
        while not got:
            if dispatch(-1, callback) > 0:      # everything buffered, in one call
                break
            if not select.select([fd], [], [], state["timeout"])[0]:
                return None
        frame = got.popleft()
        ip = dpkt.ethernet.Ethernet(frame).data if ethernet else dpkt.ip.IP(frame)
        data = ip.data.data
        return data, len(data)

    def settimeout(value):
        state["timeout"] = value

    return BenchReceiver(recv_one, settimeout, handle.close,
                         lambda: dict(zip(("ps_recv", "ps_drop", "ps_ifdrop"), handle.stats())))


def _open_scapy(host, port, rcvbuf, iface):
    import logging
    import select
    logging.getLogger("scapy").setLevel(logging.ERROR)
    from scapy.config import conf
    from scapy.layers.inet import UDP
    sock = conf.L2listen(iface=iface, filter="udp and dst host %s and dst port %d"
                                             % (host, port))
    try:
        _common.set_socket_rcvbuf(sock.ins, rcvbuf)    # scapy's default buffer drops at once
    except (AttributeError, OSError):
        pass
    state = {"timeout": None}

    def recv_one():
        while True:
            if state["timeout"] is not None:
                ready = select.select([sock], [], [], state["timeout"])[0]
                if not ready:
                    return None
            pkt = sock.recv()
            if pkt is None or UDP not in pkt:
                continue
            data = bytes(pkt[UDP].payload)
            return data, len(data)

    def settimeout(value):
        state["timeout"] = value

    return BenchReceiver(recv_one, settimeout, sock.close)


def worker_main(spec):
    """Runs in the receiver process: open, say READY, measure, print RESULT <json>."""
    _common.pin_to_cpu(spec.get("cpu"))
    try:
        rx = open_bench_receiver(spec["receiver"], spec["host"], spec["port"], spec["rcvbuf"],
                                 spec["iface"])
    except Exception as exc:  # reported to the parent, which shows it in the table
        print("ERROR %s: %s" % (type(exc).__name__, exc), flush=True)
        return 1
    try:
        print("READY", flush=True)
        mode = spec["mode"]
        if mode == "drain":
            result = _drain(rx, spec)
        elif mode == "latency":
            result = _latency(rx, spec)
        else:
            result = _idle(rx, spec)
        result["counters"] = rx.counters()
    finally:
        rx.close()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def _drain(rx, spec):
    count = spec["count"]
    sys.stdin.readline()                       # "GO": the sender has finished
    rx.settimeout(DRAIN_TIMEOUT)
    seen = bytearray(count)
    unique = received = duplicates = foreign = 0
    recv_one, unpack = rx.recv_one, SEQ.unpack_from
    clock, cpu = time.perf_counter, time.process_time
    cpu0, t0 = cpu(), clock()
    last = t0
    while unique < count:
        got = recv_one()
        if got is None:
            break
        last = clock()
        received += 1
        buf, n = got
        if n < _common.HEADER_SIZE:
            foreign += 1
            continue
        seq = unpack(buf, 4)[0]
        if seq < count and not seen[seq]:
            seen[seq] = 1
            unique += 1
        else:
            duplicates += 1
    cpu_s = cpu() - cpu0
    wall = last - t0
    return {"received": received, "unique": unique, "drops": count - unique,
            "duplicates": duplicates, "foreign": foreign, "seconds": wall,
            "rate": unique / wall if wall > 0 else None,
            "cpu_us": cpu_s * 1e6 / received if received else None}


def _latency(rx, spec):
    count = spec["count"]
    rx.settimeout(spec.get("timeout", 2.0))
    lat = []
    seen = set()
    duplicates = 0
    now_ns = _common.monotonic_ns
    while len(seen) < count:
        got = rx.recv_one()
        if got is None:
            break
        rx_ns = now_ns()
        header = _common.parse_header(*got)
        if header is None:
            continue
        if header[0] in seen:
            duplicates += 1
            continue
        seen.add(header[0])
        lat.append(rx_ns - header[1])
    lat.sort()
    p50, p99 = _common.percentile(lat, 0.5), _common.percentile(lat, 0.99)
    return {"received": len(seen), "drops": count - len(seen), "duplicates": duplicates,
            "p50_us": p50 / 1e3 if p50 is not None else None,
            "p99_us": p99 / 1e3 if p99 is not None else None}


def _idle(rx, spec):
    seconds = spec["seconds"]
    rx.settimeout(1.0)
    cpu0, t0 = time.process_time(), time.monotonic()
    while time.monotonic() - t0 < seconds:
        rx.recv_one()
    cpu_s, wall = time.process_time() - cpu0, time.monotonic() - t0
    return {"cpu_pct": 100.0 * cpu_s / wall, "seconds": wall}


# =========================================================================== parent side

class Path:
    """Where traffic goes: loopback, or a namespace pair created (and deleted) by us."""

    def __init__(self, name, send_ns, recv_ns, send_to, iface):
        self.name, self.send_ns, self.recv_ns = name, send_ns, recv_ns
        self.send_to, self.iface = send_to, iface

    def prefix(self, ns):
        return ["ip", "netns", "exec", ns] if ns else []


LOOPBACK_PATH = Path("loopback", None, None, LOOPBACK, "lo")


class NamespacePair:
    """Two network namespaces joined by a veth pair with MTU 1500, 198.18.99.1 <-> .2."""

    def __init__(self):
        tag = "%d" % (os.getpid() % 100000)
        self.send_ns, self.recv_ns = "uctbench-s" + tag, "uctbench-r" + tag
        self.send_if, self.recv_if = "uctS" + tag, "uctR" + tag
        self.created = []

    def _ip(self, *args):
        subprocess.run(("ip",) + args, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)

    def __enter__(self):
        try:
            for ns in (self.send_ns, self.recv_ns):
                self._ip("netns", "add", ns)
                self.created.append(ns)
            self._ip("link", "add", self.send_if, "netns", self.send_ns, "type", "veth",
                     "peer", "name", self.recv_if, "netns", self.recv_ns)
            for ns, dev, addr in ((self.send_ns, self.send_if, NS_SEND_ADDR),
                                  (self.recv_ns, self.recv_if, NS_RECV_ADDR)):
                self._ip("-n", ns, "addr", "add", addr + "/24", "dev", dev)
                self._ip("-n", ns, "link", "set", dev, "mtu", "1500", "up")
                self._ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return Path("namespaces", self.send_ns, self.recv_ns, NS_RECV_ADDR, self.recv_if)

    def __exit__(self, *exc):
        while self.created:
            ns = self.created.pop()
            subprocess.run(["ip", "netns", "del", ns], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        return False


class Bench:
    def __init__(self, args, out=sys.stderr):
        self.args = args
        self.out = out
        self.port = args.port
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.rx_cpu, self.tx_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)

    def log(self, text):
        if not self.args.json or self.args.verbose:
            self.out.write(text + "\n")
            self.out.flush()

    def next_port(self):
        self.port += 1
        if self.port > 65000:
            self.port = self.args.port
        return self.port

    def start_worker(self, path, spec):
        spec = dict(spec, cpu=self.rx_cpu, rcvbuf=self.args.rcvbuf, iface=path.iface)
        cmd = path.prefix(path.recv_ns) + [sys.executable, os.path.join(TOOLS, "bench.py"),
                                           "--worker", json.dumps(spec)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, universal_newlines=True)
        line = proc.stdout.readline().strip()
        if line != "READY":
            err = line or proc.stderr.read().strip().splitlines()[-1:] or ["worker died"]
            proc.kill()
            proc.communicate()
            raise RuntimeError(line[6:] if line.startswith("ERROR ") else str(err))
        return proc

    def finish_worker(self, proc, timeout, go=False):
        try:
            out, err = proc.communicate("GO\n" if go else None, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError("receiver did not finish within %.0f s" % timeout)
        for line in out.splitlines():
            if line.startswith("RESULT "):
                return json.loads(line[7:])
        raise RuntimeError("receiver failed: %s" % (err.strip().splitlines()[-1:] or out))

    def run_sender(self, path, port, size, count, rate=None, timeout=120):
        cmd = path.prefix(path.send_ns) + [
            sys.executable, os.path.join(TOOLS, "send.py"), "%s:%d" % (path.send_to, port),
            "--size", str(size), "--count", str(count), "--json", "--quiet"]
        if rate:
            cmd += ["--rate", str(rate)]
        if self.tx_cpu is not None:
            cmd += ["--cpu", str(self.tx_cpu)]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError("sender failed: %s" % done.stderr.strip())
        return json.loads(done.stdout.strip().splitlines()[-1])

    def drain(self, path, receiver, size, count):
        port = self.next_port()
        proc = self.start_worker(path, {"mode": "drain", "receiver": receiver, "host":
                                        path.send_to, "port": port, "count": count})
        try:
            sent = self.run_sender(path, port, size, count)
            time.sleep(0.3)                    # the last datagrams and fragments land
        except BaseException:
            proc.kill()
            proc.communicate()
            raise
        result = self.finish_worker(proc, timeout=60 + count / 1000.0, go=True)
        result["sent"] = sent["sent"]
        result["sender_rate"] = sent["rate"]
        return result

    def latency(self, path, receiver, size):
        port = self.next_port()
        count = int(self.args.latency_rate * self.args.latency_seconds)
        proc = self.start_worker(path, {"mode": "latency", "receiver": receiver, "host":
                                        path.send_to, "port": port, "count": count,
                                        "timeout": 2.0})
        try:
            self.run_sender(path, port, size, count, rate=self.args.latency_rate)
        except BaseException:
            proc.kill()
            proc.communicate()
            raise
        return self.finish_worker(proc, timeout=30)

    def idle(self, path, receiver):
        port = self.next_port()
        proc = self.start_worker(path, {"mode": "idle", "receiver": receiver, "host":
                                        path.send_to, "port": port,
                                        "seconds": self.args.idle_seconds})
        return self.finish_worker(proc, timeout=self.args.idle_seconds + 30)

    def attempt(self, record, key, func, *args):
        try:
            record.setdefault(key, []).append(func(*args))
        except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
            record.setdefault("errors", []).append("%s: %s" % (key, exc))
            self.log("    %s failed: %s" % (key, exc))

    def run(self, receivers, sizes, fragmented):
        runs = {}
        cases = [(LOOPBACK_PATH, size) for size in sizes]
        pair = NamespacePair() if fragmented else None
        try:
            if pair is not None:
                cases.append((pair.__enter__(), FRAGMENTED_SIZE))
            for receiver in receivers:
                rec = runs.setdefault(receiver, {"idle": {}, "sizes": {}})
                for rep in range(self.args.repeat):
                    self.log("%s: idle CPU (%d/%d)" % (receiver, rep + 1, self.args.repeat))
                    self.attempt(rec["idle"], "idle", self.idle, LOOPBACK_PATH, receiver)
                for path, size in cases:
                    if size > 1472 and receiver in OPTIONAL:
                        continue                  # no IPv4 reassembly in these: not comparable
                    count = self.args.count if size <= 1472 else self.args.frag_count
                    count = min(count, SLOW_RECEIVER_CAP.get(receiver, count))
                    cell = rec["sizes"].setdefault(str(size), {"path": path.name,
                                                               "count": count})
                    for rep in range(self.args.repeat):
                        self.log("%s: %d B over %s, drain %d then latency (%d/%d)"
                                 % (receiver, size, path.name, count, rep + 1,
                                    self.args.repeat))
                        self.attempt(cell, "drain", self.drain, path, receiver, size, count)
                        self.attempt(cell, "latency", self.latency, path, receiver, size)
        finally:
            if pair is not None:
                pair.__exit__()
        return runs


def summarize(runs):
    """Medians per receiver and size, plus ratios to the socket baseline."""
    rows = []
    for receiver, rec in runs.items():
        idle = _common.median(r["cpu_pct"] for r in rec["idle"].get("idle", []))
        for size, cell in rec["sizes"].items():
            drain = cell.get("drain", [])
            lat = cell.get("latency", [])
            rows.append({
                "receiver": receiver, "size": int(size), "path": cell["path"],
                "count": cell["count"], "repeats": len(drain),
                "drain_rate": _common.median(r["rate"] for r in drain),
                "cpu_us_per_datagram": _common.median(r["cpu_us"] for r in drain),
                "drops": _common.median(r["drops"] for r in drain),
                "duplicates": _common.median(r["duplicates"] for r in drain),
                "latency_p50_us": _common.median(r["p50_us"] for r in lat),
                "latency_p99_us": _common.median(r["p99_us"] for r in lat),
                "latency_drops": _common.median(r["drops"] for r in lat),
                "idle_cpu_pct": idle,
                "errors": cell.get("errors", []) + rec["idle"].get("errors", []),
            })
    base = {row["size"]: row for row in rows if row["receiver"] == BASELINE}
    for row in rows:
        b = base.get(row["size"])
        row["rate_ratio"] = _ratio(row["drain_rate"], b and b["drain_rate"])
        row["cpu_ratio"] = _ratio(row["cpu_us_per_datagram"], b and b["cpu_us_per_datagram"])
    order = {name: i for i, name in enumerate(RECEIVERS)}
    rows.sort(key=lambda r: (r["size"], order.get(r["receiver"], 99)))
    return rows


def _ratio(value, base):
    if value is None or not base:
        return None
    return value / base


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def table(rows):
    head = ("size B", "receiver", "drain dgram/s", "CPU us/dgram", "drops", "lat p50 us",
            "lat p99 us", "idle CPU %", "rate x", "CPU x")
    lines = []
    for r in rows:
        lines.append((str(r["size"]), r["receiver"], _fmt(r["drain_rate"], ",.0f"),
                      _fmt(r["cpu_us_per_datagram"], ".2f"), _fmt(r["drops"], ".0f"),
                      _fmt(r["latency_p50_us"], ".0f"), _fmt(r["latency_p99_us"], ".0f"),
                      _fmt(r["idle_cpu_pct"], ".2f"), _fmt(r["rate_ratio"], ".2f"),
                      _fmt(r["cpu_ratio"], ".2f")))
    widths = [max(len(x[i]) for x in [head] + lines) for i in range(len(head))]
    fmt_row = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    out = [fmt_row(head), "  ".join("-" * w for w in widths)]
    out.extend(fmt_row(line) for line in lines)
    for r in rows:
        for err in r["errors"]:
            out.append("! %s %d B: %s" % (r["receiver"], r["size"], err))
    return "\n".join(out)


def svg_chart(rows, title="drain rate, datagrams/s (median)"):
    """Horizontal bar chart of the drain rates, one group per size, hand-written SVG."""
    colors = {"UdpcapSocket.recvfrom_into": "#1f77b4", "UdpcapSocket.recvfrom": "#6baed6",
              BATCHED: "#9467bd", BASELINE: "#2ca02c", "pypcap+dpkt": "#ff7f0e",
              "scapy": "#d62728"}
    label_w, bar_w, bar_h, gap = 230, 420, 18, 4
    y = 40
    parts = []
    for size in sorted({r["size"] for r in rows}):
        group = [r for r in rows if r["size"] == size]
        top = max([r["drain_rate"] or 0 for r in group] + [1])
        parts.append('<text x="10" y="%d" font-weight="bold">%d B datagrams (%s)</text>'
                     % (y + 12, size, group[0]["path"]))
        y += 20
        for r in group:
            rate = r["drain_rate"] or 0
            width = bar_w * rate / top
            parts.append('<text x="%d" y="%d" text-anchor="end">%s</text>'
                         % (label_w - 6, y + 13, _xml(r["receiver"])))
            parts.append('<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>'
                         % (label_w, y, width, bar_h, colors.get(r["receiver"], "#888")))
            parts.append('<text x="%.1f" y="%d">%s</text>'
                         % (label_w + width + 4, y + 13,
                            "%s/s" % _fmt(r["drain_rate"], ",.0f") if r["drain_rate"]
                            else "n/a"))
            y += bar_h + gap
        y += 12
    width = label_w + bar_w + 120
    return ('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
            'font-family="sans-serif" font-size="12">\n'
            '<rect width="100%%" height="100%%" fill="white"/>\n'
            '<text x="10" y="22" font-size="15" font-weight="bold">%s</text>\n%s\n</svg>\n'
            % (width, y + 10, _xml(title), "\n".join(parts)))


def _xml(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def available_receivers(wanted):
    chosen, skipped = [], {}
    for name in wanted:
        if name in OPTIONAL:
            missing = [m for m in OPTIONAL[name] if importlib.util.find_spec(m) is None]
            if missing:
                skipped[name] = "not installed: %s" % ", ".join(missing)
                continue
        chosen.append(name)
    return chosen, skipped


def build_parser():
    p = argparse.ArgumentParser(
        description="Benchmark UdpcapSocket against a plain UDP socket (and pypcap+dpkt / "
                    "scapy when installed): drain rate, CPU per datagram, latency, idle CPU.")
    p.add_argument("--count", type=int, default=100000,
                   help="datagrams queued per drain run, 32/1400 B (default 100000)")
    p.add_argument("--frag-count", type=int, default=2000,
                   help="datagrams queued per drain run, %d B fragmented (default 2000)"
                        % FRAGMENTED_SIZE)
    p.add_argument("--repeat", type=int, default=3, help="runs per figure, median (default 3)")
    p.add_argument("--sizes", default="32,1400",
                   help="loopback datagram sizes, comma-separated (default 32,1400)")
    frag = p.add_mutually_exclusive_group()
    frag.add_argument("--fragmented", dest="fragmented", action="store_true", default=None,
                      help="also %d B fragmented datagrams between two network namespaces "
                           "(needs root; default when root, except with --quick)"
                           % FRAGMENTED_SIZE)
    frag.add_argument("--no-fragmented", dest="fragmented", action="store_false")
    p.add_argument("--receivers", default=",".join(RECEIVERS),
                   help="comma-separated subset of: %s" % ", ".join(RECEIVERS))
    p.add_argument("--latency-rate", type=float, default=1000.0,
                   help="datagrams/s of the latency run (default 1000)")
    p.add_argument("--latency-seconds", type=float, default=2.0,
                   help="length of the latency run (default 2)")
    p.add_argument("--idle-seconds", type=float, default=2.0,
                   help="length of the idle CPU run (default 2)")
    p.add_argument("--rcvbuf", type=int, default=256 << 20,
                   help="receive buffer of every receiver in bytes (default 256 MiB)")
    p.add_argument("--port", type=int, default=15500, help="first UDP port used (default 15500)")
    p.add_argument("--quick", action="store_true",
                   help="small counts and one repeat (for tests; about half a minute)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--svg", metavar="FILE", help="write the drain rates as an SVG bar chart")
    p.add_argument("--verbose", action="store_true", help="progress on stderr also with --json")
    p.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(json.loads(args.worker))
    if args.quick:
        args.count = min(args.count, 5000)
        args.frag_count = min(args.frag_count, 300)
        args.repeat = 1
        args.latency_seconds = min(args.latency_seconds, 0.5)
        args.idle_seconds = min(args.idle_seconds, 1.0)
        if args.fragmented is None:
            args.fragmented = False
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
        for size in sizes:
            _common.make_payload(size)
            if size > 1472:
                raise ValueError("loopback size %d would not be fragmented on lo (MTU 65536); "
                                 "fragmented traffic is --fragmented" % size)
    except ValueError as exc:
        parser.error("--sizes: %s" % exc)
    wanted = [r for r in args.receivers.split(",") if r]
    unknown = [r for r in wanted if r not in RECEIVERS]
    if unknown:
        parser.error("unknown receiver(s) %s; choose from %s" % (", ".join(unknown),
                                                                 ", ".join(RECEIVERS)))
    if args.repeat < 1 or args.count < 1:
        parser.error("--repeat and --count must be at least 1")
    if args.fragmented is None:
        args.fragmented = _common.is_root()
    if args.fragmented and not _common.is_root():
        parser.error("--fragmented creates network namespaces and needs root")
    receivers, skipped = available_receivers(wanted)
    bench = Bench(args)
    for name, why in skipped.items():
        bench.log("skipping %s (%s)" % (name, why))
    started = time.monotonic()
    runs = bench.run(receivers, sizes, args.fragmented)
    rows = summarize(runs)
    report = {"rows": rows, "runs": runs, "skipped": skipped, "seconds":
              time.monotonic() - started, "settings": {
                  "count": args.count, "frag_count": args.frag_count, "repeat": args.repeat,
                  "sizes": sizes, "fragmented": args.fragmented,
                  "latency_rate": args.latency_rate, "latency_seconds": args.latency_seconds,
                  "idle_seconds": args.idle_seconds, "rcvbuf": args.rcvbuf,
                  "cpus": {"receiver": bench.rx_cpu, "sender": bench.tx_cpu},
                  "clock": _common.clock_name()}}
    if args.svg:
        with open(args.svg, "w") as f:
            f.write(svg_chart(rows))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(table(rows))
        print("(medians of %d run(s); ratios vs %s; %.0f s)"
              % (args.repeat, BASELINE, report["seconds"]))
        if any(row["drops"] for row in rows):
            print("drops: datagrams of the drain run that did not fit the receiver's buffer "
                  "(--rcvbuf %d) while it was not reading" % args.rcvbuf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
