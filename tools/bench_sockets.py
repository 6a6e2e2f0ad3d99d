#!/usr/bin/env python3
"""Many sockets in one process: what N UdpcapSockets cost against N kernel sockets.

As root, creates two network namespaces (and deletes them, also on errors and Ctrl-C): a
receiving one with ``lo`` and two veth interfaces (MTU 1500, 198.18.101.2/24 and
198.18.102.2/24) and a peer holding the other ends (198.18.101.1, 198.18.102.1).  Nothing
is sent anywhere else.  Every measurement runs in a fresh receiver process inside the
receiving namespace:

* **memory, open, close**: N sockets bound to 0.0.0.0 on distinct ports (``--sockets``,
  1, 10 and 100), opened and closed MEMORY_CYCLES times in a row; the drop of MemAvailable
  (``/proc/meminfo``, machine-wide: it includes the kernel's capture rings, and moves with
  whatever else runs) against the mean of the readings before opening and after closing
  (median of the cycles), and from the first cycle the growth of the process's RSS (the
  mapped rings included), the rings as laid out, and the time to open (construct and bind)
  and to close them all;
* **stream**: one multicast stream (``--group``, 239.0.0.0/8), sent by ``tools/send.py``
  from the peer over the first veth, received by K sockets of one process (``--stream-sockets``,
  1 and 10), each bound to 0.0.0.0 on the same port, joined to the group and read by a thread
  of its own with blocking ``recvfrom_into``; the process's CPU time (all its threads, from the
  first datagram to the end marker) per datagram sent and per datagram delivered to a socket,
  the sender's CPU time per datagram less its start-up (on a veth it includes the kernel's
  receive path, run in the sender's softirq), and the datagrams each socket lost (sequence
  numbers).  Kernel sockets use SO_REUSEADDR.  ``--rates`` 1,000, 10,000 and 30,000/s,
  ``--sizes`` 1400 and 32 B, ``--stream-seconds`` 3.

Every figure is the median of ``--repeat`` runs (3); the receiver kinds take turns within a
repeat.  Nothing is pinned unless ``--pin`` is given.

    python3 tools/bench_sockets.py                  # everything, a table (about 6 minutes)
    python3 tools/bench.py --sockets                # the same, through bench.py
    python3 tools/bench_sockets.py --quick --json   # small counts, one repeat
    python3 tools/bench_sockets.py --no-stream --sockets 1,100,200

The receiver processes run this file with ``--worker SPEC``.
"""

import argparse
import gc
import json
import os
import platform
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import _common

TOOLS = os.path.dirname(os.path.abspath(__file__))
UDPCAP = "UdpcapSocket"
KERNEL = "socket"
KINDS = (UDPCAP, KERNEL)
# The receiving namespace's two veth links, (its address, the peer's address, prefix).
LINKS = (("198.18.101.2", "198.18.101.1", 24), ("198.18.102.2", "198.18.102.1", 24))
DEFAULT_GROUP = "239.198.18.1"
MIB = 1 << 20
SETTLE = 0.3              # s: let the allocator and the kernel settle before reading memory
MEMORY_CYCLES = 3         # open-measure-close cycles in each memory worker
LAG_SAMPLE_EVERY = 256    # stream: lag sampled every this many datagrams of a socket
SEQ = struct.Struct("!Q")


# --------------------------------------------------------------------------- namespaces

class SocketsNamespaces(_common.Namespaces):
    """A receiving namespace with lo and two veth links to a peer namespace, MTU 1500, a
    multicast route (224.0.0.0/4) over the first link in both.  ``with`` deletes both, also
    when setting up fails half-way; :meth:`close` may be called more than once."""

    def __init__(self):
        tag = "%d" % (os.getpid() % 100000)
        self.recv_ns, self.peer_ns = "uctsock-r" + tag, "uctsock-p" + tag
        # (receiving side, peer side) interface names, at most 15 characters
        self.ifaces = [("uskR%d-%s" % (i, tag), "uskP%d-%s" % (i, tag))
                       for i in range(len(LINKS))]
        self.created = []

    def __enter__(self):
        try:
            self._add_namespaces()
            for (recv_if, peer_if), (recv_addr, peer_addr, prefix) in zip(self.ifaces, LINKS):
                self._add_veth(recv_if, peer_if)
                for ns, dev, addr in ((self.recv_ns, recv_if, recv_addr),
                                      (self.peer_ns, peer_if, peer_addr)):
                    self._ip("-n", ns, "addr", "add", "%s/%d" % (addr, prefix), "dev", dev)
                    self._ip("-n", ns, "link", "set", dev, "mtu", "1500", "up")
            self._ip("-n", self.recv_ns, "route", "add", "224.0.0.0/4", "dev", self.ifaces[0][0])
            self._ip("-n", self.peer_ns, "route", "add", "224.0.0.0/4", "dev", self.ifaces[0][1])
        except BaseException:
            self.close()
            raise
        return self

    def prefix(self, ns):
        return ["ip", "netns", "exec", ns]


# --------------------------------------------------------------------------- the machine

def machine():
    """What the figures were measured on."""
    info = {"cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(),
            "implementation": platform.python_implementation(), "cpu_model": None,
            "libpcap": None, "mem_total_mib": None}
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    meminfo = read_meminfo()
    if "MemTotal" in meminfo:
        info["mem_total_mib"] = round(meminfo["MemTotal"] / MIB)
    try:
        _common.ensure_package_importable()
        from udpcap_ctypes import _loader
        info["libpcap"] = _loader.get_library().version
    except Exception as exc:  # shown, not fatal: the workers will say what is wrong
        info["libpcap"] = "unavailable (%s)" % exc
    return info


def machine_line(m, pinned):
    """One line of what machine() found, and *pinned* ([receiver CPU, sender CPU] or None)."""
    return ("machine: %s CPUs (%s usable), %s, Linux %s, %s %s, %s, %s MiB RAM; %s"
            % (m["cpus"], m.get("cpus_usable", "?"), m["cpu_model"] or "CPU unknown",
               m["kernel"], m["implementation"], m["python"], m["libpcap"],
               m["mem_total_mib"], "receiver on CPU %d, sender on CPU %d" % tuple(pinned)
               if pinned else "nothing pinned"))


def read_meminfo():
    """/proc/meminfo as {name: bytes}."""
    values = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if parts:
                    values[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return values


def read_rss():
    """This process's resident set (bytes), from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def read_cpu_busy():
    """Busy CPU seconds of the whole machine so far (/proc/stat: everything but idle, iowait
    and steal), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = sum(fields[3:5]) + (fields[7] if len(fields) > 7 else 0)
    total = sum(fields[:8])
    return (total - idle) / float(os.sysconf("SC_CLK_TCK"))


# --------------------------------------------------------------------------- the workers

def open_socket(kind, port, groups=()):
    """One receiver of *kind* bound to 0.0.0.0:*port*, joined to *groups*, defaults
    otherwise (no receive buffer size is set; kernel sockets with SO_REUSEADDR, so that K of
    them can share a port)."""
    return _common.open_receiver(kind == KERNEL, ("0.0.0.0", port), groups)


def capture_info(socks):
    """The shared captures under *socks* (UdpcapSockets): their count, devices, and the
    memory of their rings as the platform lays them out (immediate mode), in bytes."""
    seen = {}
    for sock in socks:
        receiver = getattr(sock, "_receiver", None)
        for subscription in getattr(receiver, "captures", ()):
            shared = subscription.shared
            seen[id(shared)] = (receiver, shared)
    ring = 0
    for receiver, shared in seen.values():
        layout = getattr(receiver.platform, "ring_layout", None)
        capture = shared.capture
        if layout is not None and receiver.options.immediate:
            ring += layout(capture.buffer_size, capture.snaplen)[1]
        else:
            ring += capture.buffer_size
    return {"captures": len(seen), "ring_bytes": ring,
            "devices": sorted(shared.device.name for _r, shared in seen.values())}


def memory_cycle(kind, n, port):
    """Open *n* sockets of *kind* on ports *port*.., measure, close them all, measure."""
    gc.collect()
    time.sleep(SETTLE)
    mem0, rss0 = read_meminfo().get("MemAvailable"), read_rss()
    socks = []
    clock = time.perf_counter
    started = clock()
    first = None
    try:
        for i in range(n):
            socks.append(open_socket(kind, port + i))
            if first is None:
                first = clock() - started
        open_s = clock() - started
        info = capture_info(socks) if kind == UDPCAP else {"captures": 0, "ring_bytes": 0,
                                                           "devices": []}
        gc.collect()
        time.sleep(SETTLE)
        mem1, rss1 = read_meminfo().get("MemAvailable"), read_rss()
        fds = len(os.listdir("/proc/self/fd"))
    finally:
        started = clock()
        for sock in socks:
            sock.close()
        close_s = clock() - started
    del socks
    gc.collect()
    time.sleep(SETTLE)
    mem2, rss2 = read_meminfo().get("MemAvailable"), read_rss()
    # MemAvailable is machine-wide: whatever else runs moves it.  Against the mean of the
    # readings before opening and after closing, a steady drift cancels out.
    return dict(info, open_s=open_s, first_open_s=first, close_s=close_s, fds=fds,
                mem_available_drop=(mem0 + mem2) / 2.0 - mem1, rss_growth=rss1 - rss0,
                mem_available_not_returned=mem0 - mem2, rss_not_returned=rss2 - rss0)


def memory_worker(spec):
    """*cycles* times: open *n* sockets of *kind* on distinct ports, measure, close them.
    One RESULT: the first cycle's times, RSS and captures (a fresh process, as a program
    that starts), the median of the cycles' MemAvailable drops, and every cycle."""
    kind, n, port = spec["kind"], spec["n"], spec["port"]
    if kind == UDPCAP:
        # Load the capture library and make the first objects before the baseline: the
        # figures are the sockets', not the import's.
        _common.import_udpcap_socket()().close()
    cycles = [memory_cycle(kind, n, port) for _ in range(spec.get("cycles", MEMORY_CYCLES))]
    result = dict(cycles[0], kind=kind, n=n, cycles=cycles)
    result["mem_available_drop"] = _common.median(c["mem_available_drop"] for c in cycles)
    return result


def stream_worker(spec):
    """K sockets on one port joined to the group, a thread each reading with blocking
    recvfrom_into until the sender's end marker; one RESULT with the process's CPU."""
    kind, k, port, count = spec["kind"], spec["k"], spec["port"], spec["count"]
    group = spec["group"]
    clock = time.perf_counter
    started = clock()
    socks = []
    try:
        for _ in range(k):
            socks.append(open_socket(kind, port, [group]))
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    open_s = clock() - started
    results = [None] * k
    start = []                          # (rusage, machine busy s, clock) at the first datagram
    start_lock = threading.Lock()

    def mark_start():
        with start_lock:
            if not start:
                start.append((resource.getrusage(resource.RUSAGE_SELF), read_cpu_busy(),
                              clock()))

    def read(slot, sock):
        buf = bytearray(65536)
        into = sock.recvfrom_into
        unpack, seq_time = SEQ.unpack_from, _common.SEQ_TIME.unpack_from
        now_ns = _common.monotonic_ns
        seen = bytearray(count)
        received = unique = duplicates = foreign = 0
        lag_max = 0
        next_sample = LAG_SAMPLE_EVERY
        ended = "marker"
        cpu0 = time.thread_time()
        try:
            while True:
                n = into(buf)[0]
                if n < _common.HEADER_SIZE:
                    foreign += 1
                    continue
                seq = unpack(buf, 4)[0]
                if seq >= count:
                    if seq == _common.END_SEQ:
                        break
                    foreign += 1
                    continue
                if not start:
                    mark_start()
                received += 1
                if seen[seq]:
                    duplicates += 1
                    continue
                seen[seq] = 1
                unique += 1
                if unique == count:
                    ended = "complete"
                    break
                if received >= next_sample:
                    lag_max = max(lag_max, now_ns() - seq_time(buf, 4)[1])
                    next_sample = received + LAG_SAMPLE_EVERY
        except OSError as exc:          # closed by the main thread at the time limit
            ended = "closed (%s)" % type(exc).__name__
        results[slot] = {"received": received, "unique": unique, "lost": count - unique,
                         "duplicates": duplicates, "foreign": foreign, "ended": ended,
                         "lag_max_ms": lag_max / 1e6, "thread_cpu_s": time.thread_time() - cpu0}

    threads = [threading.Thread(target=read, args=(i, sock), daemon=True)
               for i, sock in enumerate(socks)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)                    # every thread inside its first receive
    print("READY", flush=True)
    deadline = time.monotonic() + spec["max_seconds"]
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    cut = any(thread.is_alive() for thread in threads)
    usage1, busy1, t1 = resource.getrusage(resource.RUSAGE_SELF), read_cpu_busy(), clock()
    if not start:                       # nothing arrived: no figures
        start.append((usage1, busy1, t1))
    usage0, busy0, t0 = start[0]
    counters = []
    for sock in socks:
        stats = _common.receiver_statistics(sock)
        counters.append({name: stats.get(name) for name in (
            "delivered", "queue_dropped", "capture_drops", "coalesced_waits") if name in stats})
    started = clock()
    for sock in socks:
        if cut and kind == KERNEL:
            try:
                sock.shutdown(socket.SHUT_RDWR)     # wakes a blocked recvfrom_into on Linux
            except OSError:
                pass
        sock.close()                    # an UdpcapSocket wakes its blocked thread itself
    close_s = clock() - started
    for thread in threads:
        thread.join(5.0)
    user = usage1.ru_utime - usage0.ru_utime
    system = usage1.ru_stime - usage0.ru_stime
    return {"kind": kind, "k": k, "count": count, "open_s": open_s, "close_s": close_s,
            "cpu_s": user + system, "cpu_sys_s": system, "wall_s": t1 - t0, "cut": cut,
            "machine_cpu_s": busy1 - busy0 if busy0 is not None and busy1 is not None
            else None,
            "voluntary_switches": usage1.ru_nvcsw - usage0.ru_nvcsw,
            "involuntary_switches": usage1.ru_nivcsw - usage0.ru_nivcsw,
            "sockets": [r or {"received": 0, "unique": 0, "lost": count, "ended": "unfinished"}
                        for r in results], "counters": counters}


def worker_main(spec):
    """In the receiver process: READY (stream) and then one line "RESULT <json>", or
    "ERROR <type>: <message>" and exit status 1."""
    return _common.serve_worker(spec, lambda spec: (memory_worker if spec["mode"] == "memory"
                                                    else stream_worker)(spec))


# --------------------------------------------------------------------------- the parent

class SocketsBench(_common.NamespaceBench):
    """The runs of one bench_sockets invocation with options *args*, in namespaces *ns*."""

    def start_worker(self, spec):
        spec = dict(spec, cpu=self.rx_cpu)
        cmd = self.ns.prefix(self.ns.recv_ns) + [
            sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, universal_newlines=True)

    def memory(self, kind, n):
        port = self.next_port(n)
        proc = self.start_worker({"mode": "memory", "kind": kind, "n": n, "port": port})
        try:
            out, err = proc.communicate(timeout=120 + n)
        except BaseException:
            proc.kill()
            proc.communicate()
            raise
        return self.result(out, err)

    def run_sender(self, port, size, count, rate, duration=None, timeout=120):
        """send.py in the peer namespace to the group: its JSON summary plus "cpu_s", the
        user+sys time of its process.  The veth hands each frame to the receiving namespace
        in the sender's own softirq, so that time includes the kernel's receive path:
        queueing to every kernel socket, or copying into the capture rings."""
        cmd = self.ns.prefix(self.ns.peer_ns) + [
            sys.executable, os.path.join(TOOLS, "send.py"),
            "%s:%d" % (self.args.group, port), "--size", str(size), "--count", str(count),
            "--interface", LINKS[0][1], "--ttl", "1", "--end-marker", "--json", "--quiet"]
        if rate:
            cmd += ["--rate", str(rate)]
        if duration:
            cmd += ["--duration", "%.3f" % duration]
        if self.tx_cpu is not None:
            cmd += ["--cpu", str(self.tx_cpu)]
        # "ip netns exec" execs the command, so the child is send.py's process, and the
        # growth of RUSAGE_CHILDREN while it is reaped is its CPU time (no other child of
        # this process is reaped meanwhile: the receiver is waited for afterwards).
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                universal_newlines=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            proc.kill()
            proc.communicate()
            raise
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise RuntimeError("sender failed: %s" % err.strip())
        result = json.loads(out.strip().splitlines()[-1])
        result["cpu_s"] = ((after.ru_utime + after.ru_stime)
                           - (before.ru_utime + before.ru_stime))
        return result

    def sender_overhead(self):
        """CPU time of a sender that sends nothing but its end markers (start-up, markers,
        exit): the median of three, taken off every stream run's sender CPU."""
        port = self.next_port()
        return _common.median([self.run_sender(port, 32, 0, None)["cpu_s"]
                               for _ in range(3)])

    def stream(self, kind, k, size, rate):
        """One stream run: K receivers of *kind* in one process, *rate*/s of *size* B for
        --stream-seconds; the worker's RESULT plus the sender's figures."""
        seconds = self.args.stream_seconds
        count = max(1, int(round(rate * seconds)))
        send_limit = 1.25 * seconds + 0.5       # a sender that cannot keep the rate stops
        cap = send_limit + 3.0                  # the receiver's own limit after READY
        port = self.next_port()
        proc = self.start_worker({"mode": "stream", "kind": kind, "k": k, "port": port,
                                  "count": count, "group": self.args.group,
                                  "max_seconds": cap})
        try:
            line = proc.stdout.readline().strip()
            if line != "READY":
                out, err = proc.communicate(timeout=30)
                self.result(line + "\n" + out, err)     # raises with the worker's reason
                raise RuntimeError("receiver did not start: %s" % line)
            sent = self.run_sender(port, size, count, rate, duration=send_limit,
                                   timeout=3 * seconds + 60)
            try:
                out, err = proc.communicate(timeout=cap + 10)
            except subprocess.TimeoutExpired:
                raise RuntimeError("receiver did not finish within %.0f s" % (cap + 10)) \
                    from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        result = self.result(out, err)
        result.update(size=size, target_rate=rate, sent=sent["sent"],
                      sender_rate=sent["rate"], sender_seconds=sent["seconds"],
                      sender_cpu_s=sent["cpu_s"])
        return result

    def run(self):
        """Every run: ``{"memory": [...], "stream": [...], "sender_overhead_s": s,
        "errors": [...]}``; the kinds take turns within each repeat."""
        args = self.args
        runs = {"memory": [], "stream": [], "sender_overhead_s": None, "errors": []}
        for rep in range(args.repeat):
            for n in args.socket_counts:
                for kind in args.kinds:
                    self.log("%s x %d: memory, open, close (%d/%d)"
                             % (kind, n, rep + 1, args.repeat))
                    got = self.attempt(runs["errors"], "memory %s x %d" % (kind, n),
                                       self.memory, kind, n)
                    if got is not None:
                        got["repeat"] = rep
                        runs["memory"].append(got)
        if not args.stream:
            return runs
        runs["sender_overhead_s"] = self.attempt(runs["errors"], "sender start-up",
                                                 self.sender_overhead)
        for rep in range(args.repeat):
            for size in args.size_list:
                for rate in args.rate_list:
                    for k in args.stream_counts:
                        for kind in args.kinds:
                            self.log("%s x %d: %d B multicast at %d/s for %g s (%d/%d)"
                                     % (kind, k, size, rate, args.stream_seconds, rep + 1,
                                        args.repeat))
                            got = self.attempt(runs["errors"], "stream %s x %d, %d B, %d/s"
                                               % (kind, k, size, rate), self.stream, kind, k,
                                               size, rate)
                            if got is not None:
                                got["repeat"] = rep
                                runs["stream"].append(got)
        return runs


# --------------------------------------------------------------------------- the report

_median = _common.median


def summarize_memory(results):
    """One row per (kind, n): medians over the repeats."""
    cells = {}
    for r in results:
        cells.setdefault((r["kind"], r["n"]), []).append(r)
    rows = []
    for (kind, n), runs in cells.items():
        drop = _median(r["mem_available_drop"] for r in runs)
        rss = _median(r["rss_growth"] for r in runs)
        rows.append({
            "receiver": kind, "n": n, "repeats": len(runs),
            "mem_available_drop_mib": drop / MIB, "mem_per_socket_mib": drop / MIB / n,
            "rss_growth_mib": rss / MIB, "rss_per_socket_mib": rss / MIB / n,
            "ring_mib": _median(r["ring_bytes"] for r in runs) / MIB,
            "captures": _median(r["captures"] for r in runs),
            "devices": runs[0]["devices"],
            "open_s": _median(r["open_s"] for r in runs),
            "first_open_s": _median(r["first_open_s"] for r in runs),
            "close_s": _median(r["close_s"] for r in runs),
            "rss_not_returned_mib": _median(r["rss_not_returned"] for r in runs) / MIB,
            "fds": _median(r["fds"] for r in runs),
            "samples_mem_available_drop_mib": [c["mem_available_drop"] / MIB for r in runs
                                               for c in r["cycles"]],
        })
    rows.sort(key=lambda row: (row["n"], KINDS.index(row["receiver"])))
    return rows


def summarize_stream(results, sender_overhead=None):
    """One row per (size, rate, k, kind): medians over the repeats, the worst loss of any
    socket in any repeat, and CPU ratios to kernel sockets in the same case.

    Losses are sequence numbers sent and never received (a sender cut short by its time limit
    sent fewer: those are not losses).  Sender CPU is less *sender_overhead* (its start-up)."""
    cells = {}
    for r in results:
        cells.setdefault((r["size"], r["target_rate"], r["k"], r["kind"]), []).append(r)
    overhead = sender_overhead or 0.0
    rows = []
    for (size, rate, k, kind), runs in cells.items():
        def per_sent(r, seconds):
            return seconds * 1e6 / r["sent"] if seconds is not None and r["sent"] else None

        def delivered(r):
            return sum(s["unique"] for s in r["sockets"])

        lost = [s["lost"] - (r["count"] - r["sent"]) for r in runs for s in r["sockets"]]
        counters = [c for r in runs for c in r.get("counters", [])]
        row = {
            "size": size, "rate": rate, "k": k, "receiver": kind, "repeats": len(runs),
            "sent": _median(r["sent"] for r in runs),
            "sender_rate": _median(r["sender_rate"] for r in runs),
            "delivered_per_socket_min": _median(min(s["unique"] for s in r["sockets"])
                                                for r in runs),
            "lost_per_socket_max": max(lost) if lost else None,
            "lost_total": sum(lost),
            "cpu_us_per_delivered": _median(r["cpu_s"] * 1e6 / delivered(r)
                                            if delivered(r) else None for r in runs),
            "cpu_us_per_sent": _median(per_sent(r, r["cpu_s"]) for r in runs),
            "sender_cpu_us_per_sent": _median(
                per_sent(r, max(0.0, r["sender_cpu_s"] - overhead)) for r in runs),
            "total_cpu_us_per_sent": _median(
                per_sent(r, r["cpu_s"] + max(0.0, r["sender_cpu_s"] - overhead))
                for r in runs),
            "machine_cpu_us_per_sent": _median(per_sent(r, r.get("machine_cpu_s"))
                                               for r in runs),
            "cpu_sys_share": _median(r["cpu_sys_s"] / r["cpu_s"] if r["cpu_s"] else None
                                     for r in runs),
            "switches_per_sent": _median(
                (r["voluntary_switches"] + r["involuntary_switches"]) / r["sent"]
                if r["sent"] else None for r in runs),
            "thread_cpu_share_min": _median(
                min(s.get("thread_cpu_s", 0.0) for s in r["sockets"])
                / max(max(s.get("thread_cpu_s", 0.0) for s in r["sockets"]), 1e-9)
                for r in runs),
            "lag_max_ms": max(s.get("lag_max_ms") or 0.0 for r in runs for s in r["sockets"]),
            "open_s": _median(r["open_s"] for r in runs),
            "close_s": _median(r["close_s"] for r in runs),
            "queue_dropped": (sum(c.get("queue_dropped") or 0 for c in counters)
                              if kind == UDPCAP else None),
            "capture_drops_max": (max((c.get("capture_drops") or 0 for c in counters),
                                      default=0) if kind == UDPCAP else None),
            "cut": any(r["cut"] for r in runs),
            "ended": sorted({s["ended"] for r in runs for s in r["sockets"]}),
        }
        rows.append(row)
    base = {(r["size"], r["rate"], r["k"]): r for r in rows if r["receiver"] == KERNEL}
    for row in rows:
        b = base.get((row["size"], row["rate"], row["k"]))
        for name, ratio in (("cpu_us_per_sent", "cpu_ratio"),
                            ("total_cpu_us_per_sent", "total_cpu_ratio")):
            value, reference = row[name], b and b[name]
            row[ratio] = value / reference if value is not None and reference else None
    rows.sort(key=lambda row: (-row["size"], row["rate"], row["k"],
                               KINDS.index(row["receiver"])))
    return rows


_fmt, _columns = _common.fmt, _common.columns


def memory_table(rows):
    head = ("receiver", "N", "captures", "MemAvail MiB", "/socket", "RSS MiB", "/socket",
            "rings MiB", "open s", "close s")
    lines = [(r["receiver"], str(r["n"]), _fmt(r["captures"], ".0f"),
              _fmt(r["mem_available_drop_mib"], ".1f"), _fmt(r["mem_per_socket_mib"], ".2f"),
              _fmt(r["rss_growth_mib"], ".1f"), _fmt(r["rss_per_socket_mib"], ".2f"),
              _fmt(r["ring_mib"], ".1f"), _fmt(r["open_s"], ".3f"), _fmt(r["close_s"], ".3f"))
             for r in rows]
    return "\n".join(_columns(head, lines, left=1))


def stream_table(rows):
    head = ("size B", "rate/s", "K", "receiver", "sent", "min got", "max lost",
            "us/dgram/socket", "us/dgram sent", "x", "sender us/dgram", "total us/dgram", "x")
    lines = [(str(r["size"]), format(r["rate"], ",.0f"), str(r["k"]), r["receiver"],
              _fmt(r["sent"], ",.0f"), _fmt(r["delivered_per_socket_min"], ",.0f"),
              _fmt(r["lost_per_socket_max"], ",.0f"), _fmt(r["cpu_us_per_delivered"], ".2f"),
              _fmt(r["cpu_us_per_sent"], ".2f"), _fmt(r["cpu_ratio"], ".2f"),
              _fmt(r["sender_cpu_us_per_sent"], ".2f"), _fmt(r["total_cpu_us_per_sent"], ".2f"),
              _fmt(r["total_cpu_ratio"], ".2f"))
             for r in rows]
    return "\n".join(_columns(head, lines, left=0))


def report_text(report):
    """What the tool prints without --json."""
    s = report["settings"]
    out = [machine_line(report["machine"], s["pinned"]),
           "namespace: lo + 2 veth (MTU 1500) to a peer namespace; every socket bound to "
           "0.0.0.0 with default settings (no receive buffer size set)", ""]
    if report["memory_rows"]:
        out.append("memory: N sockets on distinct ports in a fresh process. MemAvail: drop of "
                   "MemAvailable (/proc/meminfo, machine-wide: kernel memory included, and "
                   "whatever else runs); RSS: growth of the process (the mapped capture rings "
                   "included); rings: ring memory of the shared captures as libpcap lays it "
                   "out; open: construct and bind all N; close: close all N")
        out.append(memory_table(report["memory_rows"]))
        out.append("")
    if report["stream_rows"]:
        out.append("stream: one multicast stream (%s) from the peer namespace over one veth "
                   "for %g s, read by K sockets of one process on one port (a thread each, "
                   "blocking recvfrom_into). us/dgram: the receiving process's CPU (all "
                   "threads, user+sys, first datagram to end marker) per datagram delivered "
                   "to a socket (/socket) and per datagram sent; sender: send.py's CPU per "
                   "datagram, less its start-up (%s s), which includes the kernel's receive "
                   "path (the veth delivers in the sender's softirq); total: both; x: ratio "
                   "to kernel sockets in the same case; lost: sequence numbers a socket "
                   "never got"
                   % (s["group"], s["stream_seconds"], _fmt(report["sender_overhead_s"],
                                                             ".3f")))
        out.append(stream_table(report["stream_rows"]))
        for r in report["stream_rows"]:
            if r["cut"]:
                out.append("! %s x %d, %d B, %d/s: a run was cut at its time limit (no end "
                           "marker received)" % (r["receiver"], r["k"], r["size"], r["rate"]))
            if r["receiver"] == UDPCAP and (r["capture_drops_max"] or r["queue_dropped"]):
                out.append("  %s x %d, %d B, %d/s: capture drops %d (ring full), queue drops "
                           "%d (a socket's queue full)" % (r["receiver"], r["k"], r["size"],
                                                          r["rate"], r["capture_drops_max"],
                                                          r["queue_dropped"]))
        out.append("")
    for err in report["errors"]:
        out.append("! " + err)
    out.append("(medians of %d run(s); %.0f s)" % (s["repeat"], report["seconds"]))
    return "\n".join(out)


# --------------------------------------------------------------------------- the CLI

_int_list = _common.int_list


def build_parser():
    p = argparse.ArgumentParser(
        prog="bench_sockets.py",
        description="Many sockets in one process (as root, in network namespaces it creates "
                    "and deletes): memory, open and close time of N UdpcapSockets bound to "
                    "0.0.0.0, and the CPU and losses of K sockets reading one multicast "
                    "stream, each against kernel sockets.")
    p.add_argument("--sockets", default="1,10,100", nargs="?", const="1,10,100",
                   metavar="N,N,...",
                   help="socket counts of the memory, open and close runs (default 1,10,100)")
    p.add_argument("--stream-sockets", default="1,10", metavar="K,K,...",
                   help="sockets reading the multicast stream, a thread each (default 1,10)")
    p.add_argument("--rates", default="1000,10000,30000", metavar="R,R,...",
                   help="datagrams/s of the stream (default 1000,10000,30000)")
    p.add_argument("--sizes", default="1400,32", metavar="B,B,...",
                   help="datagram sizes of the stream, %d..1472 (default 1400,32)"
                        % _common.HEADER_SIZE)
    p.add_argument("--stream-seconds", type=float, default=3.0,
                   help="length of each stream run (default 3)")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure, median (default 3)")
    p.add_argument("--receivers", default=",".join(KINDS),
                   help="comma-separated subset of: %s (default both)" % ", ".join(KINDS))
    _common.add_switch(p, "stream", "stream", True, "the stream runs (default)",
                       "memory, open and close only")
    p.add_argument("--group", default=DEFAULT_GROUP,
                   help="multicast group of the stream, in 239.0.0.0/8 (default %s)"
                        % DEFAULT_GROUP)
    _common.add_bench_options(p, 16000, "N 1,10; K 1,2; 10000/s of 1400 B for 0.5 s; one "
                                        "repeat (options given explicitly still count)")
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = _common.parse_bench_args(parser, argv, (
        ("sockets", "1,10"), ("stream_sockets", "1,2"), ("rates", "10000"), ("sizes", "1400"),
        ("stream_seconds", 0.5), ("repeat", 1)))
    if args.worker:
        return args
    try:
        args.socket_counts = _int_list(args.sockets, "--sockets")
        args.stream_counts = _int_list(args.stream_sockets, "--stream-sockets")
        args.rate_list = _int_list(args.rates, "--rates")
        args.size_list = _int_list(args.sizes, "--sizes", _common.HEADER_SIZE)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if any(size > 1472 for size in args.size_list):
        parser.error("--sizes: at most 1472 B (one frame on the MTU-1500 veth)")
    args.kinds = [k for k in args.receivers.split(",") if k]
    if not args.kinds or any(k not in KINDS for k in args.kinds):
        parser.error("--receivers: choose from %s" % ", ".join(KINDS))
    if args.repeat < 1 or args.stream_seconds <= 0:
        parser.error("--repeat must be at least 1 and --stream-seconds positive")
    try:
        group = socket.inet_aton(args.group)
    except OSError:
        parser.error("--group %r is not an IPv4 address" % args.group)
    if group[0] != 239:
        parser.error("--group must be in 239.0.0.0/8 (administratively scoped), got %s"
                     % args.group)
    if args.port < 1024 or args.port + max(args.socket_counts) + 1 > 65000:
        parser.error("--port: the ports from --port to --port + N must be in 1024..65000")
    if not _common.is_root():
        parser.error("needs root: it creates network namespaces")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker_main(json.loads(args.worker))
    previous = signal.signal(signal.SIGTERM, _common.terminate)
    started = time.monotonic()
    try:
        info = machine()
        with SocketsNamespaces() as ns:
            bench = SocketsBench(args, ns)
            bench.log("namespaces %s (lo, %s) and %s; %s"
                      % (ns.recv_ns, ", ".join(i[0] for i in ns.ifaces), ns.peer_ns,
                         "receiver on CPU %s, sender on CPU %s" % (bench.rx_cpu, bench.tx_cpu)
                         if bench.rx_cpu is not None else "nothing pinned"))
            runs = bench.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    report = {
        "machine": info,
        "memory_rows": summarize_memory(runs["memory"]),
        "stream_rows": summarize_stream(runs["stream"], runs["sender_overhead_s"]),
        "sender_overhead_s": runs["sender_overhead_s"],
        "errors": runs["errors"], "runs": runs, "seconds": time.monotonic() - started,
        "settings": {"sockets": args.socket_counts, "stream_sockets": args.stream_counts,
                     "rates": args.rate_list, "sizes": args.size_list,
                     "stream_seconds": args.stream_seconds if args.stream else None,
                     "repeat": args.repeat, "group": args.group, "receivers": args.kinds,
                     "pinned": [bench.rx_cpu, bench.tx_cpu] if bench.rx_cpu is not None
                     else None, "links": [list(link) for link in LINKS]},
    }
    _common.print_report(report, args.json, report_text)
    return 1 if runs["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
