"""Running tools/bench.py's measurements: senders and receiver workers, each a process.

Bench(args) takes bench.py's parsed options.  Bench.run(receivers, sizes, fragmented) runs,
--repeat times with the receivers taking turns, each receiver's idle CPU, then per size its
drain and latency runs, then (with --stream) the stream runs, and returns the raw results::

    {receiver: {"idle": {"idle": [result, ...], "errors": [...]},
                "sizes": {"32": {"path": ..., "count": ..., "drain": [result, ...],
                                 "latency": [...], "stream": [...], "errors": [...]}}}}

A result is a worker's RESULT (see bench_worker) plus what the parent knows: the sender's
figures for drain and stream runs, the repeat a latency or sweep run belongs to.  A run that fails
adds "<phase>: <why>" to "errors"; it does not end the benchmark.  Bench.stream_info holds,
per size, the stream rate and how it was chosen (search_rate).  bench_report reduces the
results to rows.

Bench.sweep(receivers, sizes, rates) is the rate sweep of bench.py --sweep instead: stream
runs at each rate of SWEEP_RATES (None: as fast as send.py can), recording the one-way latency
of every datagram, and returns {receiver: {size: {rate_key(rate): {"sweep": [result, ...],
"errors": [...]}}}}.  Nothing is pinned there unless --pin is given.

Receivers run tools/bench_worker.py, senders tools/send.py.  Where this process may run on
two CPUs or more, workers are pinned to the first and senders to the second (in the sweep only
with --pin).  Loopback traffic
goes to 127.0.0.1; fragmented traffic between the two network namespaces of a NamespacePair.
"""

import json
import os
import subprocess
import sys
import time

from bench_worker import BASELINE, OPTIONAL, STREAM_SAMPLE_EVERY

TOOLS = os.path.dirname(os.path.abspath(__file__))
SLOW_RECEIVER_CAP = {"scapy": 10000}     # drain count cap: scapy takes ~0.3 ms a datagram
FRAGMENTED_SIZE = 60000
LOOPBACK = "127.0.0.1"
NS_SEND_ADDR, NS_RECV_ADDR = "198.18.99.1", "198.18.99.2"
STREAM_LADDER = (25000, 50000, 100000, 150000, 200000, 300000)     # datagrams/s, <= 1472 B
STREAM_FRAG_LADDER = (1000, 2000, 4000, 8000, 12000, 16000, 24000)  # datagrams/s, fragmented
STREAM_MIN_RATE = 500        # the search does not go below this
STREAM_MAX_LAG = 0.1         # s: a receiver this far behind the sender is not keeping up
SENDER_SHORTFALL = 0.97      # the sender reached the rate if it achieved this fraction of it
QUICK_STREAM_RATE = 20000    # --quick: one fixed rate, no search (fragmented: 1000)
QUICK_STREAM_FRAG_RATE = 1000
SWEEP_RATES = (1000, 10000, 30000, 100000, None)   # datagrams/s; None: the sender's ceiling
MAX_RATE_BOUND = 1000000     # /s no send.py reaches: sizes a ceiling run's sequence space
SWEEP_SAMPLES_PER_SECOND = 200   # CPU readings a second of a sweep run (process_time costs)


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
    """The measurements of one bench.py run with options *args*; progress goes to *out*
    (with --json only under --verbose)."""

    def __init__(self, args, out=sys.stderr):
        self.args = args
        self.out = out
        self.port = args.port
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.rx_cpu, self.tx_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
        # the sweep runs unpinned unless --pin: what a user's receiver sees
        pin = getattr(args, "pin", False)
        self.sweep_cpus = (self.rx_cpu, self.tx_cpu) if pin else (None, None)
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
        """A bench_worker process for *spec* on the receiving side of *path*, once READY."""
        spec = dict({"cpu": self.rx_cpu}, rcvbuf=self.args.rcvbuf, iface=path.iface, **spec)
        cmd = path.prefix(path.recv_ns) + [sys.executable,
                                           os.path.join(TOOLS, "bench_worker.py"),
                                           json.dumps(spec)]
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
        """The worker's RESULT, after sending it GO first when *go* is true."""
        try:
            out, err = proc.communicate("GO\n" if go else None, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError("receiver did not finish within %.0f s" % timeout) from None
        return self._result((out, err))

    def run_sender(self, path, port, size, count, rate=None, timeout=120, end_marker=False,
                   duration=None, cpu=Ellipsis):
        """Run send.py on the sending side of *path* to the end; its JSON summary.  *cpu*:
        the CPU to pin it to (None: not pinned; by default the senders' CPU)."""
        cmd = path.prefix(path.send_ns) + [
            sys.executable, os.path.join(TOOLS, "send.py"), "%s:%d" % (path.send_to, port),
            "--size", str(size), "--count", str(count), "--json", "--quiet"]
        if rate:
            cmd += ["--rate", str(rate)]
        if end_marker:
            cmd += ["--end-marker"]
        if duration:
            cmd += ["--duration", "%.3f" % duration]
        cpu = self.tx_cpu if cpu is Ellipsis else cpu
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError("sender failed: %s" % done.stderr.strip())
        return json.loads(done.stdout.strip().splitlines()[-1])

    def drain(self, path, receiver, size, count):
        """One drain run: *count* datagrams sent to a receiver that reads only afterwards."""
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
        """One latency run: --latency-rate datagrams/s for --latency-seconds."""
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

    def stream(self, path, receiver, size, rate, sweep=False):
        """One stream run: the receiver reads while the sender sends *rate*/s (None: as fast
        as it can) for --stream-seconds; returns the receiver's figures plus the sender's.
        A *sweep* run lasts --sweep-seconds, is pinned only with --pin and records the
        latency of every datagram."""
        port = self.next_port()
        seconds = self.args.sweep_seconds if sweep else self.args.stream_seconds
        rx_cpu, tx_cpu = self.sweep_cpus if sweep else (self.rx_cpu, self.tx_cpu)
        if rate:
            count = max(1, int(round(rate * seconds)))
            send_limit = 1.25 * seconds + 0.5    # a sender that cannot reach the rate stops
        else:
            count, send_limit = int(MAX_RATE_BOUND * seconds), seconds
        cap = 1.5 * seconds + 2.0            # > the sender's own limit
        spec = {"mode": "stream", "receiver": receiver, "host": path.send_to, "port": port,
                "count": count, "max_seconds": cap, "guard": self.args.stream_guard,
                "cpu": rx_cpu}
        if sweep:
            spec.update(latency_all=True, sample_every=sweep_sample_every(rate))
        proc = self.start_worker(path, spec)
        try:
            sent = self.run_sender(path, port, size, count, rate=rate, end_marker=True,
                                   duration=send_limit, timeout=3 * seconds + 60, cpu=tx_cpu)
            try:
                out = proc.communicate(timeout=cap + 5)
            except subprocess.TimeoutExpired:
                # every end marker lost (or nothing received): send more, then give up
                self.run_sender(path, port, size, 0, end_marker=True, timeout=60, cpu=tx_cpu)
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
        """The RESULT in a finished worker's ``(stdout, stderr)``; RuntimeError without one."""
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
        """One idle run: no traffic for --idle-seconds."""
        port = self.next_port()
        proc = self.start_worker(path, {"mode": "idle", "receiver": receiver, "host":
                                        path.send_to, "port": port,
                                        "seconds": self.args.idle_seconds})
        return self.finish_worker(proc, timeout=self.args.idle_seconds + 30)

    def attempt(self, record, key, func, *args, repeat=None):
        """Append ``func(*args)`` to ``record[key]``, or what went wrong to record["errors"]."""
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

    def sweep(self, receivers, sizes, rates):
        """The rate sweep: for each size (over loopback) and rate of *rates* (None: the
        sender's ceiling), every receiver streams --repeat times, taking turns within a repeat
        (each repeat starts one receiver later, so that none always goes first).  Returns
        {receiver: {size: {rate_key(rate): {"sweep": [result, ...], "errors": [...]}}}},
        each result with its "repeat"."""
        runs = {}
        for size in sizes:
            for rate in rates:
                for rep in range(self.args.repeat):
                    turn = rep % len(receivers)
                    for receiver in receivers[turn:] + receivers[:turn]:
                        cell = runs.setdefault(receiver, {}).setdefault(
                            str(size), {}).setdefault(rate_key(rate), {})
                        self.log("%s: %d B, sweep at %s for %.1f s (%d/%d)"
                                 % (receiver, size, "%g/s" % rate if rate else "max",
                                    self.args.sweep_seconds,
                                    rep + 1, self.args.repeat))
                        self.attempt(cell, "sweep", self.stream, LOOPBACK_PATH, receiver,
                                     size, rate, True, repeat=rep)
        return runs

    def run(self, receivers, sizes, fragmented):
        """Every phase for *receivers*: *sizes* over loopback, FRAGMENTED_SIZE between two
        namespaces when *fragmented*.  Returns the runs (see the module's docstring)."""
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


def rate_key(rate):
    """How a sweep rate is named in the runs and rows: "1000", ..., "max" for None."""
    if rate is None:
        return "max"
    return "%d" % rate if rate == int(rate) else "%g" % rate


def parse_rates(text):
    """``"1000,10000,max"`` -> [1000.0, 10000.0, None]; ValueError for anything else."""
    rates = []
    for item in (x.strip() for x in text.split(",")):
        if item == "max":
            rates.append(None)
        elif item:
            rate = float(item)
            if not rate > 0:
                raise ValueError("rate %r is not positive" % item)
            rates.append(rate)
    if not rates:
        raise ValueError("no rate given")
    return rates


def sweep_sample_every(rate):
    """Datagrams between CPU readings of a sweep run at *rate*/s: SWEEP_SAMPLES_PER_SECOND
    readings a second (at least every datagram, at most every STREAM_SAMPLE_EVERY)."""
    if not rate:
        return STREAM_SAMPLE_EVERY
    return max(1, min(STREAM_SAMPLE_EVERY, int(rate / SWEEP_SAMPLES_PER_SECOND)))
