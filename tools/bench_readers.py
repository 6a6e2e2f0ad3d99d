#!/usr/bin/env python3
"""The capture readers side by side: CPU and instructions per datagram of each, on one traffic.

Five receivers read the same paced stream, each in a process of its own, one after the other:

* ``socket.recvfrom_into``: a kernel UDP socket (Linux), the baseline;
* ``Linux batch``: ``UdpcapSocket(reader="batch")`` on the real libpcap (``DumpBatchReader``:
  one ``pcap_dispatch`` per batch, ``pcap_dump`` writing the records into memory);
* ``Linux next_ex``: ``UdpcapSocket(reader="next_ex")`` (``pcap_next_ex`` and a ``memmove``
  per frame);
* ``emulated Npcap batch``: ``UdpcapSocket(reader="batch")`` on the emulated Windows of
  tests/winemu (``_npf.PacketCapture``: one Packet.dll ``PacketReceivePacket`` per batch);
* ``emulated Npcap next_ex``: ``UdpcapSocket(reader="next_ex")`` there (wpcap.dll's
  ``pcap_next_ex``).

As root, it creates two network namespaces joined by a veth pair (MTU 1500; the peer
198.18.103.1, the receiver 198.18.103.2) and deletes them afterwards, also on errors and
Ctrl-C; nothing is sent anywhere else.  ``tools/send.py`` in the peer namespace sends
``--rates`` (1,000, 10,000, 30,000 and 100,000 datagrams/s) of ``--sizes`` (32 and 1400 B)
for ``--seconds`` (3) to 198.18.103.2; the receiver, bound to 198.18.103.2 in the receiving
namespace with the package's defaults (coalesce included), reads with blocking
``recvfrom_into`` in one thread.  Its figures:

* **receiving thread µs/datagram**: ``time.thread_time()`` of that thread from its first
  receive call to the last datagram (or the sender's end marker), per datagram received.  The
  thread does all the reading: on the emulated Windows the NPF driver's copy into the user
  buffer happens inside ``PacketReceivePacket`` in this thread, as on Windows;
* **other threads**: the process's CPU (``time.process_time()``) less that thread's, per
  datagram.  On the emulated Windows that is the emulated driver's capture thread (real
  libpcap filling the driver buffer), which stands in for the kernel and NDIS; elsewhere it
  is about zero;
* **lost**: sequence numbers sent and never received; the ratio ``x`` to
  ``socket.recvfrom_into`` and, for the emulated readers, to their Linux counterparts (the
  median of the per-repeat ratios);
* **ring**: frames dropped by the kernel rings of the emulated driver's capture thread
  (``PACKET_STATISTICS``): lost before the emulated NPF driver, which does not count them, so
  no counter of the package's can; an artifact of the emulation (a real NPF driver taps
  frames in the NDIS receive path).  Those rings hold about 32 frames on the veth: with the
  interface's offloads on, libpcap sizes each frame for 64 KiB, one per 128 KiB block of the
  4 MiB buffer the emulation asks for.

An unread kernel socket is bound on the port beside the emulated receivers (``--guard``, as the
Linux UdpcapSocket's own port guard does by default), so that the namespace does not answer
every datagram with ICMP port unreachable there either.

``--callgrind`` (valgrind): instructions per datagram of the receive path of the UdpcapSocket
receivers (and of ``socket.recvfrom_into`` as the harness's own floor: its kernel work is not
counted) on identical traffic.  The receiver binds with a 64 MiB receive buffer and does not
read while the peer sends N datagrams (``--callgrind-rate``, slow enough for a capture thread
under valgrind); then it drains them in its main thread under ``valgrind --tool=callgrind
--separate-threads=yes``.  ``(Ir(N2) - Ir(N1)) / (N2 - N1)`` of that thread, for the two
``--callgrind-counts``, cancels start-up and binding.

``--ipv6``: the same over IPv6.  The veth pair gets ``nodad`` ULA addresses (duplicate
address detection off, no link-local address generated; the peer fd00:198:18:103::1/64, the
receiver fd00:198:18:103::2), send.py sends from an AF_INET6 socket, and every receiver binds
fd00:198:18:103::2 and receives IPv6: ``socket.recvfrom_into`` on an AF_INET6 socket with
IPV6_V6ONLY, ``UdpcapSocket(socket.AF_INET6)`` with each reader on Linux and on the emulated
Windows (whose emulated driver captures the IPv6 frames on the veth adapter as the IPv4 ones).
The guard socket is an AF_INET6 one.  Sizes up to 1452 B (1452 + 40 + 8 = 1500); the default
1400 B datagram is one frame over IPv6 too.

Every stream figure is the median of ``--repeat`` runs (3); the receivers take turns within a
repeat.  Nothing is pinned unless ``--pin`` is given.

    python3 tools/bench_readers.py                 # the streams, a table (about 7 minutes)
    python3 tools/bench.py --readers               # the same, through bench.py
    python3 tools/bench_readers.py --callgrind     # and callgrind (about 5 minutes more)
    python3 tools/bench_readers.py --quick --json  # 10,000/s of 1400 B for 0.5 s, one repeat
    python3 tools/bench_readers.py --no-stream --callgrind --sizes 1400
    python3 tools/bench_readers.py --readers linux-batch,npcap-batch --rates 100000
    python3 tools/bench_readers.py --ipv6          # the same over IPv6

The receiver processes run this file with ``--worker SPEC``; on the emulated Windows,
tests/winemu/boot.py calls :func:`emulated_worker` of this file.
"""

import argparse
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import _common

TOOLS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TOOLS)
TESTS = os.path.join(REPO, "tests")

SOCKET = "socket"
LINUX_BATCH = "linux-batch"
LINUX_NEXT_EX = "linux-next_ex"
NPCAP_BATCH = "npcap-batch"
NPCAP_NEXT_EX = "npcap-next_ex"
# key -> (label, UdpcapSocket reader or None for a kernel socket, on the emulated Windows)
RECEIVERS = {
    SOCKET: ("socket.recvfrom_into", None, False),
    LINUX_BATCH: ("Linux batch", "batch", False),
    LINUX_NEXT_EX: ("Linux next_ex", "next_ex", False),
    NPCAP_BATCH: ("emulated Npcap batch", "batch", True),
    NPCAP_NEXT_EX: ("emulated Npcap next_ex", "next_ex", True),
}
ORDER = list(RECEIVERS)
# Each receiver's reference beyond the baseline: the reader it is to be compared with.
COUNTERPART = {NPCAP_BATCH: LINUX_BATCH, NPCAP_NEXT_EX: LINUX_NEXT_EX}
BASELINE = SOCKET

# (the receiving namespace's address, the peer's, prefix): a /24 no other tool uses
RECV_ADDR, PEER_ADDR, PREFIX = "198.18.103.2", "198.18.103.1", 24
# --ipv6: the same, a ULA /64 (nodad)
RECV_ADDR6, PEER_ADDR6, PREFIX6 = "fd00:198:18:103::2", "fd00:198:18:103::1", 64
MTU = 1500
MAX_SIZE, MAX_SIZE6 = MTU - 20 - 8, MTU - 40 - 8       # one frame on the veth: 1472, 1452
CALLGRIND_BUFFER = 64 << 20
SEQ = struct.Struct("!Q")
AF_PACKET, SOL_PACKET, PACKET_STATISTICS = 17, 263, 6     # linux/if_packet.h
MISSING_SHOWN = 20        # a stream run reports its first gaps, this many


def label(key):
    return RECEIVERS[key][0]


def link(ipv6):
    """``(receiver address, peer address, prefix length)`` of the veth pair."""
    return (RECV_ADDR6, PEER_ADDR6, PREFIX6) if ipv6 else (RECV_ADDR, PEER_ADDR, PREFIX)


# --------------------------------------------------------------------------- namespaces

class ReadersNamespaces(_common.Namespaces):
    """A receiving namespace and a peer namespace joined by one veth pair (MTU 1500),
    created inside the namespaces (the root namespace never sees the link).  ``with`` deletes
    both, also when setting up fails half-way; :meth:`close` may be called more than once.
    :meth:`exec_argv` is what ``winemu.Machine`` asks a namespace for.

    *ipv6*: the veth ends get the IPv6 addresses of :func:`link` instead, ``nodad``, with
    duplicate address detection off and no link-local address generated (usable at once)."""

    def __init__(self, ipv6=False):
        self.ipv6 = ipv6
        tag = "%d" % (os.getpid() % 100000)
        self.recv_ns, self.peer_ns = "uctrd-r" + tag, "uctrd-p" + tag
        self.recv_if, self.peer_if = "urdR-" + tag, "urdP-" + tag
        self.name = self.recv_ns
        self.created = []

    def __enter__(self):
        try:
            self._add_namespaces()
            self._add_veth(self.recv_if, self.peer_if)
            recv_addr, peer_addr, prefix = link(self.ipv6)
            for ns, dev, addr in ((self.recv_ns, self.recv_if, recv_addr),
                                  (self.peer_ns, self.peer_if, peer_addr)):
                if self.ipv6:
                    for key, value in (("accept_dad", "0"), ("addr_gen_mode", "1")):
                        self._sysctl(ns, "net.ipv6.conf.%s.%s=%s" % (dev, key, value))
                    self._ip("-n", ns, "-6", "addr", "add", "%s/%d" % (addr, prefix), "dev", dev,
                             "nodad")
                else:
                    self._ip("-n", ns, "addr", "add", "%s/%d" % (addr, prefix), "dev", dev)
                self._ip("-n", ns, "link", "set", dev, "mtu", str(MTU), "up")
        except BaseException:
            self.close()
            raise
        return self

    @staticmethod
    def _sysctl(ns, setting):
        done = subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", setting],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=30)
        if done.returncode:
            raise RuntimeError("sysctl %s in %s: %s" % (setting, ns, done.stderr.strip()))

    def exec_argv(self, argv, ns=None):
        return ["ip", "netns", "exec", ns or self.recv_ns] + [str(a) for a in argv]


# --------------------------------------------------------------------------- the workers

def open_receiver(spec):
    """The receiver of *spec* bound to its address and port, and a guard socket or None.
    ``spec["ipv6"]``: AF_INET6 ones (a socket with IPV6_V6ONLY, ``UdpcapSocket(AF_INET6)``)."""
    host, port = spec["bind"], spec["port"]
    reader = spec.get("reader")
    rcvbuf = spec.get("rcvbuf")
    family = socket.AF_INET6 if spec.get("ipv6") else socket.AF_INET
    guard = None
    if reader is None:
        sock = kernel_socket(family)
        try:
            if rcvbuf:
                _common.set_socket_rcvbuf(sock, rcvbuf)
            sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
        return sock, guard
    if spec.get("guard"):
        # An unread kernel socket on the port: the namespace then does not answer each
        # datagram with ICMP port unreachable (what the Linux UdpcapSocket's port guard does).
        guard = kernel_socket(family)
        guard.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        guard.bind((host, port))
    cls = _common.import_udpcap_socket()
    try:
        sock = cls(family, reader=reader)
        try:
            if rcvbuf:
                sock.set_receive_buffer_size(rcvbuf)
            sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
    except BaseException:
        if guard is not None:
            guard.close()
        raise
    return sock, guard


def kernel_socket(family):
    """A UDP socket of *family*; an AF_INET6 one receives IPv6 only (IPV6_V6ONLY)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        except BaseException:
            sock.close()
            raise
    return sock


def describe_readers(sock):
    """{device: how it is read} of an UdpcapSocket (its capture class and reader)."""
    receiver = getattr(sock, "_receiver", None)
    out = {}
    for subscription in getattr(receiver, "captures", ()):
        reader = subscription.shared.reader
        out[subscription.device.name] = "%s/%s: %s" % (
            type(subscription.capture).__name__, type(reader).__name__,
            getattr(reader, "description", "?"))
    return out


def counters(sock):
    stats = _common.receiver_statistics(sock)
    out = {name: stats.get(name) for name in (
        "frames", "delivered", "queue_dropped", "capture_drops", "coalesced_waits",
        "malformed_total", "not_for_us") if name in stats}
    malformed = {k: v for k, v in (stats.get("malformed") or {}).items() if v}
    if malformed:
        out["malformed"] = malformed
    devices = {}
    for subscription in getattr(getattr(sock, "_receiver", None), "captures", ()):
        try:
            devices[subscription.device.name] = device_counters(subscription.capture)
        except Exception as exc:  # diagnostics only
            devices[subscription.device.name] = repr(exc)
    if devices:
        out["devices"] = devices
    return out


def packet_socket_stats():
    """``[[packets, drops], ...]`` of every AF_PACKET socket of this process (Linux
    PACKET_STATISTICS, which also zeroes them): on the emulated Windows, the rings of the
    emulated NPF driver's capture threads, whose drops the driver never sees.  Only there:
    on Linux libpcap keeps these counters (pcap_stats) and must have them."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = os.dup(int(name))
        except (OSError, ValueError):
            continue
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            continue
        with sock:
            if sock.family != AF_PACKET:
                continue
            try:
                raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
            except OSError:
                continue
            out.append(list(struct.unpack_from("=II", raw)))
    return out


def device_counters(capture):
    """What the capture's driver or kernel counted: ``[received, dropped]`` (Packet.dll's
    PacketGetStats bs_recv/bs_drop, else pcap_stats ps_recv/ps_drop) since it was opened or
    its filter last set (Npcap zeroes them then)."""
    import ctypes

    from udpcap_ctypes import _structs
    packet = getattr(capture, "_packet", None)
    if packet is not None:
        stat = _structs.bpf_stat()
        packet.PacketGetStats(capture.handle, ctypes.byref(stat))
        return [stat.bs_recv, stat.bs_drop]
    stat = _structs.pcap_stat()
    capture._fns.pcap_stats(capture.handle, ctypes.byref(stat))
    return [stat.ps_recv, stat.ps_drop]


def missing_runs(seen, unique):
    """The first MISSING_SHOWN gaps of *seen* (a bytearray of flags) as [first, length],
    and how many gaps there were in all: ``{"gaps": n, "first": [[first, length], ...]}``."""
    count = len(seen)
    gaps, first = 0, []
    if unique < count:
        seq = seen.find(0)
        while seq >= 0:
            end = seen.find(1, seq)
            end = count if end < 0 else end
            gaps += 1
            if len(first) < MISSING_SHOWN:
                first.append([seq, end - seq])
            seq = seen.find(0, end)
    return {"gaps": gaps, "first": first}


def stream_worker(spec, sock):
    """Read with blocking recvfrom_into in one thread until the last datagram or the end
    marker: that thread's CPU and the process's, from the thread's first receive call."""
    count = spec["count"]
    out = {}

    def read():
        buf = bytearray(65536)
        into = sock.recvfrom_into
        unpack = SEQ.unpack_from
        seen = bytearray(count)
        received = unique = duplicates = foreign = 0
        ended = "marker"
        thread_time, process_time, clock = time.thread_time, time.process_time, time.perf_counter
        t0, p0, w0 = thread_time(), process_time(), clock()
        first = None
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
                if first is None:
                    first = clock()
                received += 1
                if seen[seq]:
                    duplicates += 1
                    continue
                seen[seq] = 1
                unique += 1
                if unique == count:
                    ended = "complete"
                    break
        except OSError as exc:          # closed by the main thread at the time limit
            ended = "closed (%s)" % type(exc).__name__
        t1, p1, w1 = thread_time(), process_time(), clock()
        out.update(received=received, unique=unique, lost=count - unique,
                   missing=missing_runs(seen, unique),
                   duplicates=duplicates, foreign=foreign, ended=ended,
                   thread_cpu_s=t1 - t0, process_cpu_s=p1 - p0, wall_s=w1 - w0,
                   stream_s=w1 - first if first is not None else None)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    time.sleep(0.05)                    # the thread inside its first receive
    print("READY", flush=True)
    thread.join(spec["max_seconds"])
    cut = thread.is_alive()
    result = {"counters": counters(sock), "cut": cut}
    if cut:
        sock.close()                    # wakes the blocked receive
        thread.join(5.0)
    result.update(out)
    return result


def drain_worker(spec, sock):
    """Wait for a line on stdin (the datagrams are queued by then), then read *count*
    datagrams in this (the main) thread, never waiting while they are queued."""
    count = spec["count"]
    print("READY", flush=True)
    if not sys.stdin.readline().strip():
        raise RuntimeError("no go-ahead on stdin")
    buf = bytearray(65536)
    into = sock.recvfrom_into
    unpack = SEQ.unpack_from
    seen = bytearray(count)
    received = unique = 0
    ended = "marker"
    t0 = time.thread_time()
    while True:
        into(buf)
        seq = unpack(buf, 4)[0]
        if seq >= count:
            break
        received += 1
        if not seen[seq]:
            seen[seq] = 1
            unique += 1
            if unique == count:
                ended = "complete"
                break
    return {"received": received, "unique": unique, "lost": count - unique, "ended": ended,
            "thread_cpu_s": time.thread_time() - t0, "counters": counters(sock)}


def worker_main(spec):
    """In the receiver process: READY, then one line "RESULT <json>", or
    "ERROR <type>: <message>" and exit status 1."""
    return _common.serve_worker(spec, _work)


def _work(spec):
    """The receiver of *spec* through its run: the RESULT."""
    sock = guard = None
    try:
        sock, guard = open_receiver(spec)
        readers = describe_readers(sock)
        if spec["mode"] == "drain":
            result = drain_worker(spec, sock)
        else:
            result = stream_worker(spec, sock)
        result.update(readers=readers, platform=sys.platform)
        if spec.get("emulated"):
            result["emulation_rings"] = packet_socket_stats()
        return result
    finally:
        for s in (sock, guard):
            if s is not None:
                s.close()


def emulated_worker(spec):
    """Entry point on the emulated Windows (tests/winemu/boot.py ``call``): worker_main."""
    return worker_main(spec)


# --------------------------------------------------------------------------- the parent

class ReadersBench(_common.NamespaceBench):
    """The runs of one bench_readers invocation with options *args* in namespaces *ns*."""

    def __init__(self, args, ns, out=sys.stderr):
        super().__init__(args, ns, out)
        self.machine = None
        self.tmp = None

    def start_emulation(self, tmp):
        """Build the shims and one emulated Windows install under *tmp* (tests/winemu)."""
        if TESTS not in sys.path:
            sys.path.insert(0, TESTS)
        import winemu
        reason = winemu.unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        shim_dir = winemu.shims(os.path.join(tmp, "shims"))
        self.machine = winemu.Machine(os.path.join(tmp, "machine"), shim_dir)

    def worker_command(self, key, spec):
        """``(argv, env)`` of the worker process of receiver *key* (without namespace)."""
        text = json.dumps(spec)
        if RECEIVERS[key][2]:
            argv = self.machine.argv(None, ["call", os.path.abspath(__file__) + ":"
                                            "emulated_worker", json.dumps({"spec": spec})])
            env = self.machine.environ({"PYTHONPATH": os.pathsep.join([REPO, TESTS, TOOLS])})
        else:
            argv = [sys.executable, os.path.abspath(__file__), "--worker", text]
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(
                [REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
            env.pop("UDPCAP_CTYPES_READER", None)
            env.pop("UDPCAP_CTYPES_LIBPCAP", None)
        return argv, env

    def start_worker(self, key, spec, wrapper=(), env_extra=None):
        spec = dict(spec, cpu=self.rx_cpu, bind=link(self.args.ipv6)[0], ipv6=self.args.ipv6,
                    reader=RECEIVERS[key][1],
                    emulated=RECEIVERS[key][2], guard=self.args.guard and RECEIVERS[key][2])
        argv, env = self.worker_command(key, spec)
        env.update(env_extra or {})
        return subprocess.Popen(self.ns.exec_argv(list(wrapper) + argv), env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, universal_newlines=True, cwd=REPO)

    @staticmethod
    def wait_ready(proc, timeout):
        """The worker's first line within *timeout* s; raises with its reason otherwise."""
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline().strip() if ready else ""
        if line != "READY":
            if proc.poll() is None:
                proc.kill()
            out, err = proc.communicate(timeout=30)
            ReadersBench.result(line + "\n" + out, err)       # raises with the worker's reason
            raise RuntimeError("receiver did not start within %.0f s" % timeout)

    @staticmethod
    def failure(out, err):
        """The last lines of the worker's stderr (valgrind's "==" lines left out)."""
        tail = [x for x in err.strip().splitlines() if not x.startswith("==")][-3:]
        return " | ".join(tail) or out.strip()[-300:]

    def run_sender(self, port, size, count, rate, duration=None, timeout=120):
        """send.py in the peer namespace to the receiver: its JSON summary."""
        recv_addr, peer_addr, _prefix = link(self.args.ipv6)
        cmd = self.ns.exec_argv([
            sys.executable, os.path.join(TOOLS, "send.py"),
            _common.format_hostport(recv_addr, port),
            "--size", str(size), "--count", str(count), "--rate", str(rate),
            "--interface", peer_addr, "--end-marker", "--json", "--quiet"], ns=self.ns.peer_ns)
        if duration:
            cmd += ["--duration", "%.3f" % duration]
        if self.tx_cpu is not None:
            cmd += ["--cpu", str(self.tx_cpu)]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError("sender failed: %s" % done.stderr.strip())
        return json.loads(done.stdout.strip().splitlines()[-1])

    def stream(self, key, size, rate):
        """One stream run of receiver *key*: its RESULT plus the sender's figures."""
        seconds = self.args.seconds
        count = max(1, int(round(rate * seconds)))
        send_limit = 1.25 * seconds + 0.5       # a sender that cannot keep the rate stops
        cap = send_limit + 3.0                  # the receiver's own limit after READY
        port = self.next_port()
        proc = self.start_worker(key, {"mode": "stream", "port": port, "count": count,
                                       "max_seconds": cap, "rcvbuf": self.args.rcvbuf})
        try:
            self.wait_ready(proc, 60)
            sent = self.run_sender(port, size, count, rate, duration=send_limit,
                                   timeout=3 * seconds + 60)
            try:
                out, err = proc.communicate(timeout=cap + 15)
            except subprocess.TimeoutExpired:
                raise RuntimeError("receiver did not finish within %.0f s" % (cap + 15)) \
                    from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        result = self.result(out, err)
        result.update(receiver=key, size=size, target_rate=rate, count=count,
                      sent=sent["sent"], sender_rate=sent["rate"])
        received = result.get("received") or 0
        result["lost"] = max(0, sent["sent"] - result.get("unique", 0))
        result["thread_us"] = (result["thread_cpu_s"] * 1e6 / received if received else None)
        result["process_us"] = (result["process_cpu_s"] * 1e6 / received if received else None)
        result["other_us"] = ((result["process_cpu_s"] - result["thread_cpu_s"]) * 1e6
                              / received if received else None)
        return result

    def callgrind(self, key, size, n):
        """One drain of *n* queued datagrams under callgrind: the main thread's Ir."""
        args = self.args
        port = self.next_port()
        out_file = os.path.join(self.tmp, "callgrind.%s.%d.%d" % (key, size, n))
        wrapper = ["valgrind", "--tool=callgrind", "--separate-threads=yes",
                   "--callgrind-out-file=" + out_file]
        proc = self.start_worker(key, {"mode": "drain", "port": port, "count": n,
                                       "rcvbuf": CALLGRIND_BUFFER},
                                 wrapper=wrapper, env_extra={"PYTHONHASHSEED": "0"})
        try:
            self.wait_ready(proc, 300)
            sent = self.run_sender(port, size, n, args.callgrind_rate,
                                   timeout=n / args.callgrind_rate + 120)
            time.sleep(args.callgrind_settle)   # a capture thread under valgrind catches up
            proc.stdin.write("go\n")
            proc.stdin.flush()
            try:
                out, err = proc.communicate(timeout=600)
            except subprocess.TimeoutExpired:
                raise RuntimeError("receiver under valgrind did not finish in 600 s") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        result = self.result(out, err)
        threads = sorted(f for f in os.listdir(self.tmp)
                         if f.startswith(os.path.basename(out_file) + "-"))
        irs = {}
        for name in threads:
            irs[name.rsplit("-", 1)[1]] = callgrind_total(os.path.join(self.tmp, name))
            os.remove(os.path.join(self.tmp, name))
        main = irs.get("01")
        if main is None:
            raise RuntimeError("callgrind wrote no file for the main thread (%s)"
                               % ", ".join(threads) or "no files")
        result.update(receiver=key, size=size, n=n, sent=sent["sent"], main_ir=main,
                      thread_irs=irs, lost=max(0, sent["sent"] - result["unique"]))
        return result

    def run(self, keys, callgrind_keys):
        """Every run: ``{"stream": [...], "callgrind": [...], "errors": [...]}``; the
        receivers take turns within each repeat."""
        args = self.args
        runs = {"stream": [], "callgrind": [], "errors": [], "stream_s": None,
                "callgrind_s": None}
        started = time.monotonic()
        if args.stream:
            for rep in range(args.repeat):
                for size in args.size_list:
                    for rate in args.rate_list:
                        for key in keys:
                            self.log("%s: %d B at %s/s for %g s (%d/%d)"
                                     % (label(key), size, format(rate, ","), args.seconds,
                                        rep + 1, args.repeat))
                            got = self.attempt(runs["errors"], "%s, %d B, %d/s" % (
                                label(key), size, rate), self.stream, key, size, rate)
                            if got is not None:
                                got["repeat"] = rep
                                runs["stream"].append(got)
            runs["stream_s"] = time.monotonic() - started
        started = time.monotonic()
        for size in args.size_list if callgrind_keys else ():
            for n in args.callgrind_count_list:
                for key in callgrind_keys:
                    self.log("callgrind: %s drains %d queued datagrams of %d B"
                             % (label(key), n, size))
                    got = self.attempt(runs["errors"], "callgrind %s, %d B, N=%d"
                                       % (label(key), size, n), self.callgrind, key, size, n)
                    if got is not None:
                        runs["callgrind"].append(got)
        if callgrind_keys:
            runs["callgrind_s"] = time.monotonic() - started
        return runs


def callgrind_total(path):
    """The total Ir of a callgrind output file ("totals:" or "summary:")."""
    total = None
    with open(path) as f:
        for line in f:
            if line.startswith(("totals:", "summary:")):
                total = int(line.split()[1])
    if total is None:
        raise RuntimeError("no totals in %s" % path)
    return total


# --------------------------------------------------------------------------- the report

_median = _common.median


def _repeat_ratios(runs, base_runs, field):
    """Per repeat, *field* of a run divided by the same repeat's run of the reference."""
    base = {r["repeat"]: r.get(field) for r in base_runs}
    return [r[field] / base[r["repeat"]] for r in runs
            if r.get(field) is not None and base.get(r["repeat"])]


def ring_drops(run):
    """Frames the rings of the emulated driver's capture threads dropped in *run* (0 for
    the Linux receivers): lost before the emulated NPF driver, which never counts them."""
    return sum(drops for _packets, drops in run.get("emulation_rings") or ())


def summarize_stream(results):
    """One row per (size, rate, receiver): medians over the repeats, their spread, the loss,
    and ratios to socket.recvfrom_into and to the counterpart (the median of the per-repeat
    ratios)."""
    cells = {}
    for r in results:
        cells.setdefault((r["size"], r["target_rate"], r["receiver"]), []).append(r)
    rows = []
    for (size, rate, key), runs in cells.items():
        thread = [r["thread_us"] for r in runs if r.get("thread_us") is not None]
        row = {
            "size": size, "rate": rate, "receiver": key, "label": label(key),
            "repeats": len(runs),
            "sent": _median(r["sent"] for r in runs),
            "sender_rate": _median(r["sender_rate"] for r in runs),
            "received": _median(r.get("received") for r in runs),
            "lost": _median(r["lost"] for r in runs),
            "lost_max": max(r["lost"] for r in runs),
            "lost_pct": _median(100.0 * r["lost"] / r["sent"] for r in runs if r["sent"]),
            "thread_us": _median(thread),
            "thread_us_min": min(thread) if thread else None,
            "thread_us_max": max(thread) if thread else None,
            "process_us": _median(r.get("process_us") for r in runs),
            "other_us": _median(r.get("other_us") for r in runs),
            "capture_drops": max((r.get("counters", {}).get("capture_drops") or 0
                                  for r in runs), default=0),
            "emulation_ring_drops": max((ring_drops(r) for r in runs), default=0),
            "missing_gaps": max((r.get("missing", {}).get("gaps") or 0 for r in runs),
                                default=0),
            "cut": any(r.get("cut") for r in runs),
            "readers": runs[0].get("readers", {}),
        }
        for name, other in (("ratio", BASELINE), ("counterpart_ratio", COUNTERPART.get(key))):
            ratios = _repeat_ratios(runs, cells.get((size, rate, other), []), "thread_us") \
                if other else []
            row[name] = _median(ratios)
            row[name + "_min"] = min(ratios) if ratios else None
            row[name + "_max"] = max(ratios) if ratios else None
        row["counterpart"] = COUNTERPART.get(key)
        rows.append(row)
    rows.sort(key=lambda row: (-row["size"], row["rate"], ORDER.index(row["receiver"])))
    return rows


def summarize_callgrind(results, counts):
    """One row per (size, receiver): Ir of the main thread at each N and the instructions
    per datagram between the smallest and the largest N; ratios to the counterpart."""
    cells = {}
    for r in results:
        cells.setdefault((r["size"], r["receiver"]), {})[r["n"]] = r
    rows = []
    lo, hi = min(counts), max(counts)
    for (size, key), by_n in cells.items():
        a, b = by_n.get(lo), by_n.get(hi)
        per = ((b["main_ir"] - a["main_ir"]) / float(hi - lo)
               if a is not None and b is not None and hi > lo else None)
        rows.append({"size": size, "receiver": key, "label": label(key), "n1": lo, "n2": hi,
                     "ir_n1": a and a["main_ir"], "ir_n2": b and b["main_ir"],
                     "ir_per_datagram": per,
                     "lost": sum(r["lost"] for r in by_n.values()),
                     "capture_drops": sum(r.get("counters", {}).get("capture_drops") or 0
                                          for r in by_n.values()),
                     "emulation_ring_drops": sum(ring_drops(r) for r in by_n.values()),
                     "readers": next(iter(by_n.values())).get("readers", {})})
    index = {(r["size"], r["receiver"]): r for r in rows}
    for row in rows:
        other = index.get((row["size"], COUNTERPART.get(row["receiver"])))
        row["counterpart"] = COUNTERPART.get(row["receiver"])
        row["counterpart_ratio"] = (row["ir_per_datagram"] / other["ir_per_datagram"]
                                    if other and row["ir_per_datagram"] is not None
                                    and other["ir_per_datagram"] else None)
    rows.sort(key=lambda row: (-row["size"], ORDER.index(row["receiver"])))
    return rows


_fmt, _columns = _common.fmt, _common.columns


def _rate(rate):
    return format(rate, ",.0f") + "/s"


def stream_tables(rows, size):
    """The two tables of one size: CPU per datagram, ratios and loss; spread and others."""
    rows = [r for r in rows if r["size"] == size]
    rates = sorted({r["rate"] for r in rows})
    keys = sorted({r["receiver"] for r in rows}, key=ORDER.index)
    cell = {(r["receiver"], r["rate"]): r for r in rows}
    head = ["receiver"]
    for rate in rates:
        head += [_rate(rate) + " us", "x", "lost"]
    lines = []
    for key in keys:
        line = [label(key)]
        for rate in rates:
            r = cell.get((key, rate))
            line += ([_fmt(r["thread_us"], ".2f"), _fmt(r["ratio"], ".2f"),
                      _fmt(r["lost_max"], ",.0f")] if r else ["-", "-", "-"])
        lines.append(line)
    for key, other in COUNTERPART.items():
        if key in keys and other in keys:
            line = ["%s / %s" % (label(key).replace("emulated ", ""), label(other))]
            for rate in rates:
                r = cell.get((key, rate))
                line += [_fmt(r and r["counterpart_ratio"], ".2f"), "", ""]
            lines.append(line)
    out = _columns(head, lines)
    head = ["receiver"]
    for rate in rates:
        head += [_rate(rate) + " min-max", "others", "sent/s", "ring"]
    lines = []
    for key in keys:
        line = [label(key)]
        for rate in rates:
            r = cell.get((key, rate))
            if r is None:
                line += ["-", "-", "-", "-"]
                continue
            spread = ("-" if r["thread_us_min"] is None else
                      "%.2f-%.2f" % (r["thread_us_min"], r["thread_us_max"]))
            line += [spread, _fmt(r["other_us"], ".2f"), _fmt(r["sender_rate"], ",.0f"),
                     _fmt(r["emulation_ring_drops"] if RECEIVERS[key][2] else None, ",.0f")]
        lines.append(line)
    return out, _columns(head, lines)


def callgrind_table(rows, size):
    rows = [r for r in rows if r["size"] == size]
    if not rows:
        return []
    n1, n2 = rows[0]["n1"], rows[0]["n2"]
    head = ("receiver", "Ir N=%d" % n1, "Ir N=%d" % n2, "Ir/datagram", "x counterpart",
            "lost", "drops", "ring drops")
    lines = [(r["label"], _fmt(r["ir_n1"], ",.0f"), _fmt(r["ir_n2"], ",.0f"),
              _fmt(r["ir_per_datagram"], ",.0f"),
              ("%s (/ %s)" % (_fmt(r["counterpart_ratio"], ".2f"), label(r["counterpart"]))
               if r["counterpart"] else ""),
              _fmt(r["lost"], ",.0f"), _fmt(r["capture_drops"], ",.0f"),
              _fmt(r["emulation_ring_drops"], ",.0f")) for r in rows]
    return _columns(head, lines)


def report_text(report):
    """What the tool prints without --json."""
    import bench_sockets
    s = report["settings"]
    ipv6 = s.get("ipv6", False)
    recv_addr, peer_addr, _prefix = link(ipv6)
    out = [bench_sockets.machine_line(report["machine"], s["pinned"]),
           "namespaces: a veth pair (MTU %d), %s -> %s%s; send.py paced in the peer namespace; "
           "each receiver in a process of its own bound to %s with the package's "
           "defaults, reading with blocking recvfrom_into in one thread%s"
           % (MTU, peer_addr, recv_addr,
              " (IPv6, nodad ULA addresses; AF_INET6 receivers: a socket with IPV6_V6ONLY, "
              "UdpcapSocket(AF_INET6))" if ipv6 else "",
              ("[%s]:port" if ipv6 else "%s:port") % recv_addr,
              "; an unread guard socket on the port beside the emulated receivers"
              if s["guard"] else "")]
    rows = report["stream_rows"]
    if rows:
        out += ["", "receiving thread CPU (thread_time, from its first receive call to the last "
                "datagram) us per datagram received, %g s per run; x: to %s in the same repeat "
                "(median of the repeats' ratios); lost: sequence numbers never received (worst "
                "repeat); 'Npcap batch / Linux batch' (and next_ex): the emulated reader's us "
                "over the Linux one's, the same way" % (s["seconds"], label(BASELINE))]
        for size in sorted({r["size"] for r in rows}, reverse=True):
            main, detail = stream_tables(rows, size)
            out += ["", "%d B datagrams" % size] + main
            out += ["", "%d B: spread of the repeats (min-max us of the receiving thread), "
                    "others: the process's CPU less the receiving thread's, us per datagram "
                    "(on the emulated Windows: the emulated NPF driver's capture thread), "
                    "sent/s: the sender's achieved rate, ring: frames the ring of the emulated "
                    "driver's capture thread dropped (worst repeat), lost before the emulated "
                    "driver and counted by nothing of the package's" % size] + detail
        for r in rows:
            if r["cut"]:
                out.append("! %s, %d B at %s: a run was cut at its time limit"
                           % (r["label"], r["size"], _rate(r["rate"])))
            if r["capture_drops"]:
                out.append("  %s, %d B at %s: capture drops %d (worst repeat)"
                           % (r["label"], r["size"], _rate(r["rate"]), r["capture_drops"]))

    crows = report["callgrind_rows"]
    if crows:
        out += ["", "callgrind: Ir of the receiving (main) thread draining N datagrams queued "
                "before it reads (%s MiB receive buffer; sent at %s/s), instructions per "
                "datagram = (Ir(N2) - Ir(N1)) / (N2 - N1); %s: the harness loop and the "
                "syscall wrapper only (kernel not counted); lost, drops (the capture's) and ring "
                "drops (the emulated driver's capture thread's): over both N"
                % (CALLGRIND_BUFFER >> 20, format(s["callgrind_rate"], ",.0f"),
                   label(BASELINE))]
        for size in sorted({r["size"] for r in crows}, reverse=True):
            out += ["", "%d B datagrams" % size] + callgrind_table(crows, size)
    readers = {}
    for r in rows + crows:
        readers.setdefault(r["receiver"], r.get("readers") or {})
    if readers:
        out += ["", "readers in use:"]
        for key in sorted(readers, key=ORDER.index):
            for device, how in sorted(readers[key].items()):
                out.append("  %s: %s: %s" % (label(key), device, how))
    for note in report["notes"]:
        out.append("note: " + note)
    for err in report["errors"]:
        out.append("! " + err)
    phases = ", ".join("%s %.0f s" % (name, report["runs"].get(name + "_s"))
                       for name in ("stream", "callgrind") if report["runs"].get(name + "_s"))
    out.append("(%s%.0f s%s)" % ("medians of %d run(s); " % s["repeat"] if rows else "",
                                 report["seconds"], ": " + phases if phases else ""))
    return "\n".join(out)


# --------------------------------------------------------------------------- the CLI

def _int_list(text, name, minimum=1):
    return _common.int_list(text, name, minimum, number=lambda x: int(float(x)))


def build_parser():
    p = argparse.ArgumentParser(
        prog="bench_readers.py",
        description="The capture readers side by side (as root, in network namespaces it "
                    "creates and deletes): receiving-thread CPU per datagram and losses of "
                    "socket.recvfrom_into, UdpcapSocket's Linux batch and next_ex readers and "
                    "its Npcap batch and next_ex readers on the emulated Windows of "
                    "tests/winemu, on the same paced stream; with --callgrind, instructions "
                    "per datagram of each receive path.")
    p.add_argument("--readers", nargs="?", const=",".join(ORDER), default=",".join(ORDER),
                   metavar="R,R,...",
                   help="receivers, comma-separated: %s (default all)" % ", ".join(
                       "%s (%s)" % (k, label(k)) for k in ORDER))
    p.add_argument("--rates", default="1000,10000,30000,100000", metavar="R,R,...",
                   help="datagrams/s of the streams (default 1000,10000,30000,100000)")
    p.add_argument("--sizes", default="32,1400", metavar="B,B,...",
                   help="datagram sizes, %d..%d, with --ipv6 ..%d (default 32,1400)"
                        % (_common.HEADER_SIZE, MAX_SIZE, MAX_SIZE6))
    p.add_argument("--seconds", type=float, default=3.0,
                   help="length of each stream run (default 3)")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure, median (default 3)")
    _common.add_switch(p, "stream", "stream", True, "the stream runs (default)",
                       "no stream runs (callgrind only)")
    _common.add_switch(p, "callgrind", "callgrind", False,
                       "also instructions per datagram under valgrind's callgrind (about 15 s a "
                       "receiver, size and N: some 5 minutes with the defaults, so not part of "
                       "the default run)", "no callgrind runs (default)")
    p.add_argument("--callgrind-counts", default="2000,6000", metavar="N1,N2",
                   help="datagrams queued and drained under callgrind (default 2000,6000)")
    p.add_argument("--callgrind-rate", type=float, default=5000.0,
                   help="datagrams/s the peer queues them at: a capture thread under "
                        "valgrind must keep up (default 5000)")
    p.add_argument("--callgrind-settle", type=float, default=1.0,
                   help="seconds between the sender's end and the drain (default 1)")
    _common.add_switch(p, "guard", "guard", True,
                       "an unread kernel socket on the port beside the emulated receivers "
                       "(default), as the Linux UdpcapSocket's port guard")
    p.add_argument("--rcvbuf", type=int,
                   help="receive buffer of every stream receiver in bytes (default: none set, "
                        "the kernel's and the package's defaults)")
    p.add_argument("--ipv6", action="store_true",
                   help="over IPv6: nodad ULA addresses on the veth pair (%s -> %s), AF_INET6 "
                        "receivers (a socket with IPV6_V6ONLY, UdpcapSocket(AF_INET6))"
                        % (PEER_ADDR6, RECV_ADDR6))
    _common.add_bench_options(p, 17000, "10000/s of 1400 B for 0.5 s, one repeat (options "
                                        "given explicitly still count)")
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = _common.parse_bench_args(parser, argv, (
        ("rates", "10000"), ("sizes", "1400"), ("seconds", 0.5), ("repeat", 1)))
    if args.worker:
        return args
    try:
        args.rate_list = _int_list(args.rates, "--rates")
        args.size_list = _int_list(args.sizes, "--sizes", _common.HEADER_SIZE)
        args.callgrind_count_list = sorted(set(_int_list(args.callgrind_counts,
                                                         "--callgrind-counts")))
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    largest = MAX_SIZE6 if args.ipv6 else MAX_SIZE
    if any(size > largest for size in args.size_list):
        parser.error("--sizes: at most %d B (one %s frame on the MTU-%d veth)"
                     % (largest, "IPv6" if args.ipv6 else "IPv4", MTU))
    if len(args.callgrind_count_list) != 2:
        parser.error("--callgrind-counts: two different counts, N1,N2")
    args.keys = [k for k in args.readers.split(",") if k] or list(ORDER)
    unknown = [k for k in args.keys if k not in RECEIVERS]
    if unknown:
        parser.error("--readers: choose from %s" % ", ".join(ORDER))
    args.keys = [k for k in ORDER if k in args.keys]
    if args.repeat < 1 or args.seconds <= 0 or args.callgrind_rate <= 0:
        parser.error("--repeat must be at least 1, --seconds and --callgrind-rate positive")
    if not args.stream and not args.callgrind:
        parser.error("--no-stream without --callgrind leaves nothing to run")
    if args.callgrind and shutil.which("valgrind") is None:
        parser.error("--callgrind needs valgrind (apt-get install valgrind)")
    if args.port < 1024 or args.port > 64000:
        parser.error("--port must be in 1024..64000")
    if not _common.is_root():
        parser.error("needs root: it creates network namespaces")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.worker:
        return worker_main(json.loads(args.worker))
    import bench_sockets
    notes = []
    callgrind_keys = [k for k in args.keys if args.callgrind]
    previous = signal.signal(signal.SIGTERM, _common.terminate)
    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="uct-readers-")
    errors = []
    try:
        info = bench_sockets.machine()
        with ReadersNamespaces(args.ipv6) as ns:
            bench = ReadersBench(args, ns)
            bench.tmp = tmp
            keys = list(args.keys)
            if any(RECEIVERS[k][2] for k in keys):
                try:
                    bench.start_emulation(tmp)
                except Exception as exc:  # reported; the other receivers still run
                    errors.append("emulated Windows unavailable: %s" % exc)
                    keys = [k for k in keys if not RECEIVERS[k][2]]
                    callgrind_keys = [k for k in callgrind_keys if not RECEIVERS[k][2]]
            bench.log("namespaces %s (%s, %s) and %s (%s); %s"
                      % (ns.recv_ns, ns.recv_if, link(args.ipv6)[0], ns.peer_ns,
                         link(args.ipv6)[1],
                         "receiver on CPU %s, sender on CPU %s" % (bench.rx_cpu, bench.tx_cpu)
                         if bench.rx_cpu is not None else "nothing pinned"))
            runs = bench.run(keys, callgrind_keys)
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(tmp, ignore_errors=True)
    errors += runs["errors"]
    stream_rows = summarize_stream(runs["stream"])
    for row in stream_rows:
        if row["receiver"] == NPCAP_BATCH and any("PacketCapture" not in how
                                                  for how in row["readers"].values()):
            errors.append("emulated Npcap batch did not read through Packet.dll: %s"
                          % row["readers"])
            break
    report = {
        "machine": info,
        "stream_rows": stream_rows,
        "callgrind_rows": summarize_callgrind(runs["callgrind"], args.callgrind_count_list),
        "errors": errors, "notes": notes, "runs": runs,
        "seconds": time.monotonic() - started,
        "settings": {"receivers": args.keys, "labels": {k: label(k) for k in args.keys},
                     "rates": args.rate_list if args.stream else [],
                     "sizes": args.size_list, "seconds": args.seconds, "repeat": args.repeat,
                     "rcvbuf": args.rcvbuf, "guard": args.guard,
                     "callgrind": bool(callgrind_keys),
                     "callgrind_counts": args.callgrind_count_list,
                     "callgrind_rate": args.callgrind_rate,
                     "callgrind_buffer": CALLGRIND_BUFFER,
                     "pinned": [bench.rx_cpu, bench.tx_cpu] if bench.rx_cpu is not None
                     else None, "ipv6": args.ipv6,
                     "link": [link(args.ipv6)[1], link(args.ipv6)[0], link(args.ipv6)[2], MTU],
                     "clock": _common.clock_name()},
    }
    _common.print_report(report, args.json, report_text)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
