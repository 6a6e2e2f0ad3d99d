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
* ratios to the socket.recvfrom_into baseline (rate and CPU per datagram; p99 latency as the
  median over the repeats of the ratio to the baseline's run of the same repeat -- the
  receivers take turns within each repeat, so load that drifts over minutes cancels);
* stream -- the speed target is defined on streaming traffic, which the drain phase cannot
  show for UdpcapSocket in its default immediate mode on loopback (its ring holds only ~1,000
  datagrams there, see README "Buffer sizes and latency"), so: the receiver starts first and
  reads continuously (blocking, no timeout) while send.py sends at a fixed rate for
  --stream-seconds (default 3) with sequence numbers, then end markers.  The rate is the
  socket baseline's sustainable rate, found per size by a search: a ladder (25k, 50k, 100k,
  150k, 200k, 300k datagrams/s; fragmented 1000..24000/s), then --stream-bisect steps, at most
  --stream-search-seconds; a step passes when the socket loses nothing, never falls more than
  100 ms behind, and the sender reached the rate.  When send.py itself cannot reach a rate
  (about 150-200k/s of 32 B from one Python process) and the socket kept up with what it sent,
  the sender's rate is the ceiling and the table says so.  Every receiver then streams at that
  rate (--repeat runs, receivers taking turns, medians): datagrams received, drops (from the
  sequence numbers), CPU microseconds per datagram measured between the first and the last
  datagram (start-up and the wait for the end marker excluded), its ratio to the socket's, and
  the worst sampled lag.  --stream-rate / --stream-frag-rate skip the search, --no-stream
  skips the phase.  Kernel work that the capture adds runs on the *sender's* CPU (softirq of
  loopback/veth: ring copies): it shows as a lower "sent/s" for capture receivers, not in
  their CPU per datagram.  By default
  (--stream-guard) a capture receiver's worker also binds an unread plain socket on the port,
  like UdpcapSocket(port_guard=True), so the kernel does not answer each datagram with an ICMP
  port-unreachable (unlimited on loopback; it cut the sender's rate by a third).

Receivers: UdpcapSocket.recvfrom_into, UdpcapSocket.recvfrom, UdpcapSocket(immediate=False)
.recvfrom_into (TPACKET_V3 blocks: more burst tolerance per buffer byte, ~1 ms latency),
socket.recvfrom_into (the baseline), and pypcap+dpkt and scapy when they are importable
(skipped otherwise; not run on fragmented traffic, which they do not reassemble).
UdpcapSocket(coalesce=0).recvfrom_into (interrupt moderation off) runs only when named in
--receivers.

Sizes: 32 B and 1400 B over loopback (127.0.0.1), and, when running as root, 60000 B (41 IPv4
fragments each) between two network namespaces this tool creates (veth pair, MTU 1500,
198.18.99.1 -> 198.18.99.2) and deletes afterwards.  Each receiver runs in its own process
pinned to CPU 0, each sender in another pinned to CPU 1; every figure is the median of --repeat
runs.  Traffic goes only to 127.0.0.1 or inside those namespaces.

    python3 tools/bench.py                 # full run, table
    python3 tools/bench.py --quick --json  # small counts, one repeat, stream at 20k/s 0.5 s
    python3 tools/bench.py --stream-rate 100000 --no-fragmented  # stream at a given rate
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
UNMODERATED = "UdpcapSocket(coalesce=0).recvfrom_into"     # interrupt moderation off
RECEIVERS = ("UdpcapSocket.recvfrom_into", "UdpcapSocket.recvfrom", UNMODERATED, BATCHED,
             BASELINE, "pypcap+dpkt", "scapy")
DEFAULT_RECEIVERS = tuple(r for r in RECEIVERS if r != UNMODERATED)
OPTIONAL = {"pypcap+dpkt": ("pcap", "dpkt"), "scapy": ("scapy",)}
SLOW_RECEIVER_CAP = {"scapy": 10000}     # drain count cap: scapy takes ~0.3 ms a datagram
FRAGMENTED_SIZE = 60000
LOOPBACK = "127.0.0.1"
NS_SEND_ADDR, NS_RECV_ADDR = "198.18.99.1", "198.18.99.2"
SEQ = struct.Struct("!Q")
DRAIN_TIMEOUT = 0.5          # after GO everything is queued: a pause this long means "done"
END_SEQ = _common.END_SEQ    # sequence number of send.py's end markers
STREAM_SAMPLE_EVERY = 1024   # stream: CPU/clock/lag sample every this many datagrams
STREAM_LADDER = (25000, 50000, 100000, 150000, 200000, 300000)     # datagrams/s, <= 1472 B
STREAM_FRAG_LADDER = (1000, 2000, 4000, 8000, 12000, 16000, 24000)  # datagrams/s, fragmented
STREAM_MIN_RATE = 500        # the search does not go below this
STREAM_MAX_LAG = 0.1         # s: a receiver this far behind the sender is not keeping up
SENDER_SHORTFALL = 0.97      # the sender reached the rate if it achieved this fraction of it
QUICK_STREAM_RATE = 20000    # --quick: one fixed rate, no search (fragmented: 1000)
QUICK_STREAM_FRAG_RATE = 1000


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
        options = {BATCHED: {"immediate": False}, UNMODERATED: {"coalesce": 0}}.get(name)
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
        ring = _common.ring_frames(sock)
        return BenchReceiver(recv_one, sock.settimeout, sock.close,
                             lambda: dict(_common.receiver_statistics(sock), ring_frames=ring))
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


def _open_guard(host, port):
    """An unread plain socket on the port, so the kernel does not answer every datagram with
    ICMP port-unreachable (on loopback unlimited, and paid in the sender's softirq on the
    sender's CPU: it cuts send.py's rate by a third).  Its small buffer fills at once; later
    datagrams are dropped for it alone, which costs the kernel less than the ICMP reply.  The
    same as UdpcapSocket(port_guard=True), applied to every capture receiver alike."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((host, port))
    return sock


def worker_main(spec):
    """Runs in the receiver process: open, say READY, measure, print RESULT <json>."""
    _common.pin_to_cpu(spec.get("cpu"))
    try:
        rx = open_bench_receiver(spec["receiver"], spec["host"], spec["port"], spec["rcvbuf"],
                                 spec["iface"])
    except Exception as exc:  # reported to the parent, which shows it in the table
        print("ERROR %s: %s" % (type(exc).__name__, exc), flush=True)
        return 1
    guard = None
    if spec.get("guard") and not spec["receiver"].startswith("socket."):
        guard = _open_guard(spec["host"], spec["port"])
    try:
        print("READY", flush=True)
        mode = spec["mode"]
        if mode == "drain":
            result = _drain(rx, spec)
        elif mode == "stream":
            result = _stream(rx, spec)
        elif mode == "latency":
            result = _latency(rx, spec)
        else:
            result = _idle(rx, spec)
        result["counters"] = rx.counters()
        result["guard"] = guard is not None
    finally:
        rx.close()
        if guard is not None:
            guard.close()
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


def _stream(rx, spec):
    """Read a paced stream as it arrives (the sender starts after READY).

    Blocking reads (no timeout: a socket with a timeout polls before every recvfrom).  The run
    ends when all *count* sequence numbers have arrived, at the sender's first end marker
    (sequence number END_SEQ, sent 0.2 s after its last datagram), or *max_seconds* after the
    first datagram (a receiver far behind; what it has not read by then counts as dropped).
    CPU time and wall time are taken from just after the first datagram to just after the last
    one (the last STREAM_SAMPLE_EVERY sample when the run ends at a marker or the cap), so
    neither start-up nor the wait for the end marker is counted.  Every STREAM_SAMPLE_EVERY
    datagrams the lag (receive time - send time stamped in the datagram) is sampled: a lag
    that grows means the receiver does not keep up and lives off its buffer.
    """
    count, cap = spec["count"], spec["max_seconds"]
    rx.settimeout(None)
    seen = bytearray(count)
    recv_one, unpack = rx.recv_one, SEQ.unpack_from
    seq_time = _common.SEQ_TIME.unpack_from
    cpu, clock, now_ns = time.process_time, time.perf_counter, _common.monotonic_ns
    received = unique = duplicates = foreign = 0
    cpu0 = t0 = None
    mark_n, mark_cpu, mark_t = 0, None, None
    lags = []
    next_sample = STREAM_SAMPLE_EVERY
    ended = "marker"
    while True:
        got = recv_one()
        if got is None:                      # a receiver that cannot block forever
            ended = "timeout"
            break
        buf, n = got
        if n < _common.HEADER_SIZE:
            foreign += 1
            continue
        seq = unpack(buf, 4)[0]
        if seq >= count:
            if seq == END_SEQ:
                break
            foreign += 1
            continue
        received += 1
        if seen[seq]:
            duplicates += 1
        else:
            seen[seq] = 1
            unique += 1
        if received == 1:
            cpu0, t0 = cpu(), clock()
            continue
        if unique == count or received >= next_sample:
            mark_cpu, mark_t, mark_n = cpu(), clock(), received
            lags.append(now_ns() - seq_time(buf, 4)[1])
            next_sample = received + STREAM_SAMPLE_EVERY
            if unique == count:
                ended = "complete"
                break
            if mark_t - t0 > cap:
                ended = "cap"
                break
    if received and mark_n == 0:             # too few datagrams for a sample: up to the end
        mark_cpu, mark_t, mark_n = cpu(), clock(), received
    measured = mark_n - 1
    wall = (mark_t - t0) if received else 0.0
    lags.sort()
    return {"count": count, "received": received, "unique": unique, "drops": count - unique,
            "duplicates": duplicates, "foreign": foreign, "ended": ended,
            "measured": max(measured, 0), "seconds": wall,
            "rate": measured / wall if measured > 0 and wall > 0 else None,
            "cpu_us": (mark_cpu - cpu0) * 1e6 / measured if measured > 0 else None,
            "lag_max_ms": lags[-1] / 1e6 if lags else None,
            "lag_p50_ms": _common.percentile(lags, 0.5) / 1e6 if lags else None,
            "lag_samples": len(lags)}


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
        self.stream_info = {}        # size -> {"rate", "limited_by", "steps", "path"}

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
            raise RuntimeError("receiver did not finish within %.0f s" % timeout) from None
        for line in out.splitlines():
            if line.startswith("RESULT "):
                return json.loads(line[7:])
        raise RuntimeError("receiver failed: %s" % (err.strip().splitlines()[-1:] or out))

    def run_sender(self, path, port, size, count, rate=None, timeout=120, end_marker=False,
                   duration=None):
        cmd = path.prefix(path.send_ns) + [
            sys.executable, os.path.join(TOOLS, "send.py"), "%s:%d" % (path.send_to, port),
            "--size", str(size), "--count", str(count), "--json", "--quiet"]
        if rate:
            cmd += ["--rate", str(rate)]
        if end_marker:
            cmd += ["--end-marker"]
        if duration:
            cmd += ["--duration", "%.3f" % duration]
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

    def stream(self, path, receiver, size, rate):
        """One stream run: the receiver reads while the sender sends *rate*/s for
        --stream-seconds; returns the receiver's figures plus the sender's."""
        port = self.next_port()
        seconds = self.args.stream_seconds
        count = max(1, int(round(rate * seconds)))
        cap = 1.5 * seconds + 2.0            # > the sender's own limit below
        send_limit = 1.25 * seconds + 0.5    # a sender that cannot reach the rate stops here
        proc = self.start_worker(path, {"mode": "stream", "receiver": receiver, "host":
                                        path.send_to, "port": port, "count": count,
                                        "max_seconds": cap, "guard": self.args.stream_guard})
        try:
            sent = self.run_sender(path, port, size, count, rate=rate, end_marker=True,
                                   duration=send_limit, timeout=3 * seconds + 60)
            try:
                out = proc.communicate(timeout=cap + 5)
            except subprocess.TimeoutExpired:
                # every end marker lost (or nothing received): send more, then give up
                self.run_sender(path, port, size, 0, end_marker=True, timeout=60)
                out = proc.communicate(timeout=5)
        except BaseException:
            proc.kill()
            proc.communicate()
            raise
        result = self._result(out)
        # the sender may have stopped at its time limit, short of count
        result.update(target_rate=rate, sent=sent["sent"], sender_rate=sent["rate"],
                      sender_seconds=sent["seconds"], drops=sent["sent"] - result["unique"])
        return result

    @staticmethod
    def _result(out_err):
        out, err = out_err
        for line in out.splitlines():
            if line.startswith("RESULT "):
                return json.loads(line[7:])
        raise RuntimeError("receiver failed: %s" % (err.strip().splitlines()[-1:] or out))

    def judge(self, result, rate):
        """(ok, why) of one baseline stream run at *rate*: nothing lost, kept up, sender on time."""
        if result["drops"]:
            return False, "%d drops" % result["drops"]
        lag = result.get("lag_max_ms")
        if lag is not None and lag > STREAM_MAX_LAG * 1e3:
            return False, "fell %.0f ms behind" % lag
        if result["sender_rate"] < SENDER_SHORTFALL * rate:
            return False, "sender reached only %.0f/s" % result["sender_rate"]
        return True, "0 drops"

    def search_rate(self, path, size):
        """The highest rate from the ladder (then bisected) at which the baseline loses nothing.

        Returns {"rate", "limited_by", "steps"}: limited_by is "receiver" (a higher rate lost
        datagrams or fell behind), "sender" (send.py could not reach the next rate, and the
        baseline kept up with what it sent: the rate is the sender's), "ladder" (the top of
        the ladder passed) or "time" (--stream-search-seconds ran out while climbing).
        """
        ladder = STREAM_LADDER if size <= 1472 else STREAM_FRAG_LADDER
        deadline = time.monotonic() + self.args.stream_search_seconds
        steps = []
        good = bad = None
        sender_cap = None

        def probe(rate):
            self.log("  %s: %d B, search: stream at %d/s" % (BASELINE, size, rate))
            try:
                result = self.stream(path, BASELINE, size, rate)
            except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
                steps.append({"rate": rate, "ok": False, "why": str(exc)})
                return False, None
            ok, why = self.judge(result, rate)
            steps.append({"rate": rate, "ok": ok, "why": why, "drops": result["drops"],
                          "sender_rate": result["sender_rate"],
                          "lag_max_ms": result.get("lag_max_ms"),
                          "cpu_us": result.get("cpu_us")})
            self.log("    -> %s" % why)
            return ok, result

        for rate in ladder:
            ok, result = probe(rate)
            if ok:
                good = rate
            elif (result is not None and not result["drops"] and
                  result["sender_rate"] < SENDER_SHORTFALL * rate and
                  (result.get("lag_max_ms") or 0) <= STREAM_MAX_LAG * 1e3):
                # the receiver kept up with all the sender could do: that is the ceiling
                sender_cap = _round_down(result["sender_rate"] * 0.95)
                break
            else:
                bad = rate
                break
            if time.monotonic() > deadline:
                break
        if sender_cap is not None:
            return {"rate": max(sender_cap, good or 0), "limited_by": "sender", "steps": steps}
        if bad is None:
            return {"rate": good, "limited_by": "ladder" if good == ladder[-1] else "time",
                    "steps": steps}
        # below the first step: halve until one passes
        while good is None and bad / 2.0 >= STREAM_MIN_RATE and time.monotonic() < deadline:
            rate = int(bad / 2.0)
            ok, _ = probe(rate)
            if ok:
                good = rate
            else:
                bad = rate
        # then narrow the gap between the last good and the first bad rate
        for _ in range(self.args.stream_bisect):
            if good is None or time.monotonic() > deadline:
                break
            mid = _round_down((good + bad) / 2.0)
            if mid <= good or mid >= bad:
                break
            ok, _ = probe(mid)
            if ok:
                good = mid
            else:
                bad = mid
        if good is None:
            good = STREAM_MIN_RATE
        return {"rate": good, "limited_by": "receiver", "first_failing_rate": bad,
                "steps": steps}

    def idle(self, path, receiver):
        port = self.next_port()
        proc = self.start_worker(path, {"mode": "idle", "receiver": receiver, "host":
                                        path.send_to, "port": port,
                                        "seconds": self.args.idle_seconds})
        return self.finish_worker(proc, timeout=self.args.idle_seconds + 30)

    def attempt(self, record, key, func, *args, repeat=None):
        try:
            result = func(*args)
            if repeat is not None:
                result["repeat"] = repeat        # pairs it with the baseline's run (summarize)
            record.setdefault(key, []).append(result)
        except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
            record.setdefault("errors", []).append("%s: %s" % (key, exc))
            self.log("    %s failed: %s" % (key, exc))

    def stream_rate(self, path, size):
        """The rate of the stream runs for one size: given, --quick, or searched."""
        given = self.args.stream_rate if size <= 1472 else self.args.stream_frag_rate
        if given:
            return {"rate": given, "limited_by": "given", "steps": []}
        if self.args.quick:
            return {"rate": QUICK_STREAM_RATE if size <= 1472 else QUICK_STREAM_FRAG_RATE,
                    "limited_by": "quick", "steps": []}
        self.log("%d B over %s: searching the rate %s sustains" % (size, path.name, BASELINE))
        return self.search_rate(path, size)

    def stream_phase(self, runs, receivers, cases):
        """Every receiver streamed at the baseline's sustainable rate, --repeat times each,
        the receivers taking turns within a repeat (so that load changes hit all alike)."""
        for path, size in cases:
            info = self.stream_rate(path, size)
            info["path"] = path.name
            self.stream_info[str(size)] = info
            self.log("%d B over %s: stream at %d/s (%s)" % (size, path.name, info["rate"],
                                                            info["limited_by"]))
            names = [r for r in receivers if not (size > 1472 and r in OPTIONAL)]
            for rep in range(self.args.repeat):
                for receiver in names:
                    cell = runs[receiver]["sizes"].setdefault(
                        str(size), {"path": path.name, "count": 0})
                    self.log("%s: %d B over %s, stream %d/s for %.1f s (%d/%d)"
                             % (receiver, size, path.name, info["rate"],
                                self.args.stream_seconds, rep + 1, self.args.repeat))
                    self.attempt(cell, "stream", self.stream, path, receiver, size,
                                 info["rate"])

    def run(self, receivers, sizes, fragmented):
        runs = {}
        cases = [(LOOPBACK_PATH, size) for size in sizes]
        pair = NamespacePair() if fragmented else None
        try:
            if pair is not None:
                cases.append((pair.__enter__(), FRAGMENTED_SIZE))
            # The receivers take turns within each repeat, as in the stream phase, so that a
            # change in the machine's load between minutes hits every receiver alike.
            for rep in range(self.args.repeat):
                for receiver in receivers:
                    rec = runs.setdefault(receiver, {"idle": {}, "sizes": {}})
                    self.log("%s: idle CPU (%d/%d)" % (receiver, rep + 1, self.args.repeat))
                    self.attempt(rec["idle"], "idle", self.idle, LOOPBACK_PATH, receiver)
                    for path, size in cases:
                        if size > 1472 and receiver in OPTIONAL:
                            continue              # no IPv4 reassembly in these: not comparable
                        count = self.args.count if size <= 1472 else self.args.frag_count
                        count = min(count, SLOW_RECEIVER_CAP.get(receiver, count))
                        cell = rec["sizes"].setdefault(str(size), {"path": path.name,
                                                                   "count": count})
                        self.log("%s: %d B over %s, drain %d then latency (%d/%d)"
                                 % (receiver, size, path.name, count, rep + 1,
                                    self.args.repeat))
                        self.attempt(cell, "drain", self.drain, path, receiver, size, count)
                        self.attempt(cell, "latency", self.latency, path, receiver, size,
                                     repeat=rep)
            if self.args.stream:
                self.stream_phase(runs, receivers, cases)
        finally:
            if pair is not None:
                pair.__exit__()
        return runs


def _round_down(rate):
    """A round figure at most *rate* (thousands from 10,000, else hundreds), >= STREAM_MIN_RATE."""
    step = 1000 if rate >= 10000 else 100
    return max(STREAM_MIN_RATE, int(rate // step * step))


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
                "ring_frames": next((r["counters"].get("ring_frames") for r in drain
                                     if r.get("counters", {}).get("ring_frames")), None),
                "duplicates": _common.median(r["duplicates"] for r in drain),
                "latency_p50_us": _common.median(r["p50_us"] for r in lat),
                "latency_p99_us": _common.median(r["p99_us"] for r in lat),
                "latency_drops": _common.median(r["drops"] for r in lat),
                "idle_cpu_pct": idle,
                "errors": [e for e in cell.get("errors", []) if not e.startswith("stream:")]
                          + rec["idle"].get("errors", []),
            })
    base = {row["size"]: row for row in rows if row["receiver"] == BASELINE}
    for row in rows:
        b = base.get(row["size"])
        row["rate_ratio"] = _ratio(row["drain_rate"], b and b["drain_rate"])
        row["cpu_ratio"] = _ratio(row["cpu_us_per_datagram"], b and b["cpu_us_per_datagram"])
        row["latency_p99_ratio"] = _paired_ratio(runs, row["receiver"], row["size"], "p99_us")
    order = {name: i for i, name in enumerate(RECEIVERS)}
    rows.sort(key=lambda r: (r["size"], order.get(r["receiver"], 99)))
    return rows


def _paired_ratio(runs, receiver, size, field):
    """Median over the repeats of latency *field* divided by the baseline's in the same repeat.

    Runs of one repeat are minutes apart at most, runs of different repeats can be far apart:
    on a shared machine the pairing takes the drift out of the ratio.
    """
    def by_repeat(name):
        cell = runs.get(name, {}).get("sizes", {}).get(str(size), {})
        return {r["repeat"]: r[field] for r in cell.get("latency", []) if "repeat" in r}
    mine, base = by_repeat(receiver), by_repeat(BASELINE)
    return _common.median(mine[k] / base[k] for k in mine if base.get(k))


def summarize_stream(runs, info):
    """Medians of the stream runs per receiver and size, CPU ratio to the socket baseline."""
    rows = []
    for receiver, rec in runs.items():
        for size, cell in rec["sizes"].items():
            streams = cell.get("stream", [])
            errors = [e for e in cell.get("errors", []) if e.startswith("stream:")]
            if not streams and not errors:
                continue
            med = lambda key, streams=streams: _common.median(  # noqa: E731
                r.get(key) for r in streams)
            rows.append({
                "receiver": receiver, "size": int(size), "path": cell["path"],
                "target_rate": (info.get(size) or {}).get("rate"), "repeats": len(streams),
                "sender_rate": med("sender_rate"), "receive_rate": med("rate"),
                "count": med("count"), "received": med("unique"), "drops": med("drops"),
                "max_drops": max(r["drops"] for r in streams) if streams else None,
                "cpu_us_per_datagram": med("cpu_us"), "lag_max_ms": med("lag_max_ms"),
                "ended": sorted({r.get("ended") for r in streams}),
                "errors": errors,
            })
    base = {row["size"]: row for row in rows if row["receiver"] == BASELINE}
    for row in rows:
        b = base.get(row["size"])
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
            "lat p99 us", "idle CPU %", "rate x", "CPU x", "p99 x")
    lines = []
    for r in rows:
        lines.append((str(r["size"]), r["receiver"], _fmt(r["drain_rate"], ",.0f"),
                      _fmt(r["cpu_us_per_datagram"], ".2f"), _fmt(r["drops"], ".0f"),
                      _fmt(r["latency_p50_us"], ".0f"), _fmt(r["latency_p99_us"], ".0f"),
                      _fmt(r["idle_cpu_pct"], ".2f"), _fmt(r["rate_ratio"], ".2f"),
                      _fmt(r["cpu_ratio"], ".2f"), _fmt(r["latency_p99_ratio"], ".2f")))
    out = _columns(head, lines)
    for r in rows:
        for err in r["errors"]:
            out.append("! %s %d B: %s" % (r["receiver"], r["size"], err))
    return "\n".join(out)


def _columns(head, lines, left=2):
    widths = [max(len(x[i]) for x in [head] + lines) for i in range(len(head))]
    fmt_row = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return [fmt_row(head), "  ".join("-" * w for w in widths)] + [fmt_row(x) for x in lines]


def stream_table(rows, info):
    """The stream runs: every receiver at the rate the socket baseline sustains."""
    head = ("size B", "receiver", "rate/s", "sent/s", "received", "drops", "CPU us/dgram",
            "CPU x", "lag max ms")
    lines = []
    for r in rows:
        lines.append((str(r["size"]), r["receiver"], _fmt(r["target_rate"], ",.0f"),
                      _fmt(r["sender_rate"], ",.0f"), _fmt(r["received"], ",.0f"),
                      _fmt(r["drops"], ",.0f"), _fmt(r["cpu_us_per_datagram"], ".2f"),
                      _fmt(r["cpu_ratio"], ".2f"), _fmt(r["lag_max_ms"], ".1f")))
    out = _columns(head, lines)
    for size in sorted(info, key=int):
        i = info[size]
        steps = ", ".join("%s/s %s" % (format(st["rate"], ",.0f"), st["why"])
                          for st in i.get("steps", []))
        why = {"receiver": "the next rate tried lost datagrams or fell behind",
               "sender": "send.py could not send faster; the socket kept up with all it sent",
               "ladder": "the top of the ladder; higher rates were not tried",
               "time": "the search ran out of time (--stream-search-seconds)",
               "given": "given with --stream-rate / --stream-frag-rate",
               "quick": "fixed rate of --quick, not searched"}.get(i["limited_by"], "")
        out.append("%s B: stream rate %s/s (%s)%s" % (size, format(i["rate"], ",.0f"), why,
                                                     "; search: " + steps if steps else ""))
    short = ["%s %d B (%s/s)" % (r["receiver"], r["size"], _fmt(r["sender_rate"], ",.0f"))
             for r in rows if r["sender_rate"] and r["target_rate"]
             and r["sender_rate"] < SENDER_SHORTFALL * r["target_rate"]]
    if short:
        out.append("sender short of the rate with: %s -- the sender's CPU also runs the softirq "
                   "of the receive path (for captures: a ring copy per frame; without "
                   "--stream-guard, ICMP port-unreachable replies)"
                   % "; ".join(short))
    for r in rows:
        for err in r["errors"]:
            out.append("! %s %d B: %s" % (r["receiver"], r["size"], err))
    return "\n".join(out)


def svg_chart(rows, title="drain rate, datagrams/s (median)"):
    """Horizontal bar chart of the drain rates, one group per size, hand-written SVG."""
    colors = {"UdpcapSocket.recvfrom_into": "#1f77b4", "UdpcapSocket.recvfrom": "#6baed6",
              UNMODERATED: "#9ecae1", BATCHED: "#9467bd", BASELINE: "#2ca02c",
              "pypcap+dpkt": "#ff7f0e", "scapy": "#d62728"}
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
    p.add_argument("--receivers", default=",".join(DEFAULT_RECEIVERS),
                   help="comma-separated subset of: %s" % ", ".join(RECEIVERS))
    p.add_argument("--latency-rate", type=float, default=1000.0,
                   help="datagrams/s of the latency run (default 1000)")
    p.add_argument("--latency-seconds", type=float, default=2.0,
                   help="length of the latency run (default 2)")
    p.add_argument("--idle-seconds", type=float, default=2.0,
                   help="length of the idle CPU run (default 2)")
    stream = p.add_mutually_exclusive_group()
    stream.add_argument("--stream", dest="stream", action="store_true", default=True,
                        help="stream runs: the receiver reads while the sender sends at the "
                             "rate socket.recvfrom_into sustains (default)")
    stream.add_argument("--no-stream", dest="stream", action="store_false",
                        help="no stream runs (drain, latency and idle CPU only)")
    guard = p.add_mutually_exclusive_group()
    guard.add_argument("--stream-guard", dest="stream_guard", action="store_true", default=True,
                       help="in stream runs, bind an unread plain socket on the port of capture "
                            "receivers, so that the kernel does not answer each datagram with "
                            "ICMP port-unreachable on the sender's CPU (default)")
    guard.add_argument("--no-stream-guard", dest="stream_guard", action="store_false",
                       help="no such socket: capture receivers get ICMP-answered traffic")
    p.add_argument("--stream-rate", type=float,
                   help="datagrams/s of the stream runs of the loopback sizes; skips the "
                        "search for the socket's sustainable rate")
    p.add_argument("--stream-frag-rate", type=float,
                   help="the same for the %d B fragmented case" % FRAGMENTED_SIZE)
    p.add_argument("--stream-seconds", type=float, default=3.0,
                   help="length of each stream run (default 3)")
    p.add_argument("--stream-search-seconds", type=float, default=90.0,
                   help="time limit of the sustainable-rate search per size (default 90)")
    p.add_argument("--stream-bisect", type=int, default=1,
                   help="bisection steps after the ladder %s (fragmented %s) found the first "
                        "failing rate (default 1)"
                        % ("/".join("%dk" % (r // 1000) for r in STREAM_LADDER),
                           "/".join(str(r) for r in STREAM_FRAG_LADDER)))
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
        args.stream_seconds = min(args.stream_seconds, 0.5)
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
    if args.stream_seconds <= 0 or any(r is not None and r <= 0 for r in
                                       (args.stream_rate, args.stream_frag_rate)):
        parser.error("--stream-seconds, --stream-rate and --stream-frag-rate must be positive")
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
    stream_rows = summarize_stream(runs, bench.stream_info)
    report = {"rows": rows, "stream_rows": stream_rows, "stream": bench.stream_info,
              "runs": runs, "skipped": skipped, "seconds":
              time.monotonic() - started, "settings": {
                  "count": args.count, "frag_count": args.frag_count, "repeat": args.repeat,
                  "sizes": sizes, "fragmented": args.fragmented,
                  "latency_rate": args.latency_rate, "latency_seconds": args.latency_seconds,
                  "idle_seconds": args.idle_seconds, "rcvbuf": args.rcvbuf,
                  "stream_seconds": args.stream_seconds if args.stream else None,
                  "stream_guard": args.stream_guard,
                  "stream_max_lag_ms": STREAM_MAX_LAG * 1e3,
                  "cpus": {"receiver": bench.rx_cpu, "sender": bench.tx_cpu},
                  "clock": _common.clock_name()}}
    if args.svg:
        with open(args.svg, "w") as f:
            f.write(svg_chart(rows))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print("drain ceiling (queue --count datagrams, then read them), latency at %g/s, "
              "idle CPU" % args.latency_rate)
        print(table(rows))
        if any(row["drops"] for row in rows):
            print("drops: datagrams of the drain run that did not fit the receiver's buffer "
                  "(--rcvbuf %d) while it was not reading" % args.rcvbuf)
            for row in rows:
                if row["drops"] and row.get("ring_frames"):
                    print("  %s %d B: %.0f dropped; its capture ring holds %s frames "
                          "(immediate mode on Linux: one slot a frame, sized from the MTU)"
                          % (row["receiver"], row["size"], row["drops"],
                             "{:,}".format(row["ring_frames"])))
        if args.stream:
            print()
            print("stream (read while the sender sends at the socket's sustainable rate for "
                  "%g s; CPU between the first and the last datagram)" % args.stream_seconds)
            print(stream_table(stream_rows, bench.stream_info))
            print("drops: sequence numbers that never arrived (or were unread when the run "
                  "was cut at 1.5x its length + 2 s); lag max: worst receive-minus-send time "
                  "sampled every %d datagrams" % STREAM_SAMPLE_EVERY)
        print("(medians of %d run(s); ratios vs %s; %.0f s)"
              % (args.repeat, BASELINE, report["seconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
