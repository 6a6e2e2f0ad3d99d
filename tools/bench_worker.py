#!/usr/bin/env python3
"""The receiver side of tools/bench.py: one receiver, one measurement, in a process of its own.

tools/bench_run.py starts it (inside the receiving namespace when there is one) as::

    python3 tools/bench_worker.py SPEC

SPEC is a JSON object: "receiver" (one of RECEIVERS), "host" and "port" to receive on,
"rcvbuf" (receive buffer, bytes), "iface" (the device pypcap and scapy capture on), "cpu" (the
CPU to pin to; null: not pinned), "mode" ("drain", "stream", "latency" or "idle") and that
mode's parameters: "count" (datagrams expected; drain, stream, latency), "max_seconds"
(stream), "guard" (stream: bind a port guard, see _open_guard), "sample_every" (stream: CPU
and lag sample interval in datagrams, default STREAM_SAMPLE_EVERY), "latency_all" (stream:
also the one-way latency of every datagram, for the rate sweep), "timeout" (latency) and
"seconds" (idle).  The receivers of STREAM_ONLY (asyncio endpoints) have no single-datagram
receive and serve only "stream".

The worker pins itself, opens and binds the receiver, and prints "READY" on stdout; then it
measures and prints one line "RESULT <json>": the mode's figures plus "counters" (the
receiver's own statistics) and "guard".  A receiver that cannot be opened prints
"ERROR <type>: <message>" instead of "READY", and the exit status is 1.  A drain worker reads
nothing until a line arrives on stdin (the parent's "GO": the sender has finished).

Datagrams carry tools/_common.py's header: a sequence number, from which drops and duplicates
are counted, and the send time, from which latency and lag are computed.
"""

import collections
import importlib.util
import json
import socket
import struct
import sys
import time

import _common

BASELINE = "socket.recvfrom_into"
BATCHED = "UdpcapSocket(immediate=False).recvfrom_into"
UNMODERATED = "UdpcapSocket(coalesce=0).recvfrom_into"     # interrupt moderation off
BATCH_CALL = "UdpcapSocket.recvfrom_batch"                 # recvfrom_batch(BATCH_SIZE) in a loop
ASYNC_SOCKET = "loop.create_datagram_endpoint"             # asyncio on a kernel socket
ASYNC_UDPCAP = "udpcap_ctypes.create_datagram_endpoint"    # asyncio on a capture
BATCH_SIZE = 64
RECEIVERS = ("UdpcapSocket.recvfrom_into", "UdpcapSocket.recvfrom", BATCH_CALL, UNMODERATED,
             BATCHED, BASELINE, ASYNC_UDPCAP, ASYNC_SOCKET, "pypcap+dpkt", "scapy")
DEFAULT_RECEIVERS = tuple(r for r in RECEIVERS
                          if r not in (UNMODERATED, BATCH_CALL, ASYNC_UDPCAP, ASYNC_SOCKET))
# tools/bench.py --sweep; ASYNC_SOCKET only together with ASYNC_UDPCAP (its counterpart)
SWEEP_RECEIVERS = (BASELINE, "UdpcapSocket.recvfrom_into", BATCH_CALL, ASYNC_SOCKET,
                   ASYNC_UDPCAP)
KERNEL_SOCKETS = (BASELINE, ASYNC_SOCKET)                  # no capture: no port guard
STREAM_ONLY = (ASYNC_SOCKET, ASYNC_UDPCAP)                 # no drain, latency or idle runs
COUNTERPARTS = {ASYNC_UDPCAP: ASYNC_SOCKET}                # compared with this as well
OPTIONAL = {"pypcap+dpkt": ("pcap", "dpkt"), "scapy": ("scapy",)}
# receivers that exist only once the package has the attribute: (object, attribute)
NEEDS_ATTRIBUTE = {BATCH_CALL: ("UdpcapSocket", "recvfrom_batch"),
                   ASYNC_UDPCAP: ("udpcap_ctypes", "create_datagram_endpoint")}
SEQ = struct.Struct("!Q")
DRAIN_TIMEOUT = 0.5          # after GO everything is queued: a pause this long means "done"
END_SEQ = _common.END_SEQ    # sequence number of send.py's end markers
STREAM_SAMPLE_EVERY = 1024   # stream: CPU/clock/lag sample every this many datagrams


def available_receivers(wanted):
    """``(chosen, skipped)``: the receivers of *wanted* that can run here, and {name: why} for
    the others: pypcap+dpkt and scapy need their modules, the receivers of NEEDS_ATTRIBUTE a
    package that has the call (recvfrom_batch, create_datagram_endpoint)."""
    chosen, skipped = [], {}
    for name in wanted:
        if name in OPTIONAL:
            missing = [m for m in OPTIONAL[name] if importlib.util.find_spec(m) is None]
            if missing:
                skipped[name] = "not installed: %s" % ", ".join(missing)
                continue
        if name in NEEDS_ATTRIBUTE and not _package_has(*NEEDS_ATTRIBUTE[name]):
            skipped[name] = "this udpcap_ctypes has no %s" % ".".join(NEEDS_ATTRIBUTE[name])
            continue
        chosen.append(name)
    return chosen, skipped


def _package_has(owner, attribute):
    """Does udpcap_ctypes (*owner* "udpcap_ctypes") or its UdpcapSocket have *attribute*?"""
    try:
        cls = _common.import_udpcap_socket()
    except ImportError:
        return False
    obj = sys.modules["udpcap_ctypes"] if owner == "udpcap_ctypes" else cls
    return hasattr(obj, attribute)


class BenchReceiver:
    """A receiver reduced to what the benchmark needs.

    recv_one() -> (buffer, length), or None on a timeout (None for STREAM_ONLY receivers).
    drive(sink) reads with the receiver's own call in a loop and calls sink(buffer, length)
    for each datagram until sink returns true (then drive returns True) or a receive times
    out (False); without a *drive*, one made of recv_one.
    """

    def __init__(self, recv_one, settimeout, close, counters=dict, drive=None):
        self.recv_one = recv_one
        self.settimeout = settimeout
        self.close = close
        self.counters = counters
        self.drive = drive or _drive_with(recv_one)


def _drive_with(recv_one):
    """A BenchReceiver.drive that calls *recv_one* in a loop."""
    def drive(sink):
        while True:
            got = recv_one()
            if got is None:
                return False
            if sink(*got):
                return True
    return drive


def open_bench_receiver(name, host, port, rcvbuf, iface):
    """Open receiver *name* (one of RECEIVERS) on *host*:*port* with an *rcvbuf*-byte receive
    buffer, as a BenchReceiver.  Sockets and UdpcapSockets come from _common.open_receiver (a
    plain socket gets SO_RCVBUFFORCE as root, since SO_RCVBUF is capped by
    net.core.rmem_max); pypcap+dpkt and scapy capture on device *iface*; the asyncio
    receivers get a new event loop."""
    if name in (ASYNC_SOCKET, ASYNC_UDPCAP):
        sock = _common.open_receiver(name == ASYNC_SOCKET, (host, port), rcvbuf=rcvbuf)
        try:
            return _open_asyncio(sock, name == ASYNC_SOCKET)
        except BaseException:
            sock.close()
            raise
    if name.startswith(("socket.", "UdpcapSocket")):
        options = {BATCHED: {"immediate": False}, UNMODERATED: {"coalesce": 0}}.get(name)
        sock = _common.open_receiver(name.startswith("socket."), (host, port), rcvbuf=rcvbuf,
                                     options=options)
        call = name.rpartition(".")[2]
        recv_one, drive = {"recvfrom_into": _calls_recvfrom_into, "recvfrom": _calls_recvfrom,
                           "recvfrom_batch": _calls_recvfrom_batch}[call](sock)
        ring = _common.ring_frames(sock)
        return BenchReceiver(recv_one, sock.settimeout, sock.close,
                             lambda: dict(_common.receiver_statistics(sock), ring_frames=ring),
                             drive)
    if name == "pypcap+dpkt":
        return _open_pypcap(host, port, rcvbuf, iface)
    if name == "scapy":
        return _open_scapy(host, port, rcvbuf, iface)
    raise ValueError("unknown receiver %r" % name)


def _calls_recvfrom_into(sock):
    """(recv_one, drive) of ``sock.recvfrom_into(buf)`` into one 64 KiB bytearray."""
    buf = bytearray(65536)
    into, timeout_exc = sock.recvfrom_into, socket.timeout

    def recv_one():
        try:
            return buf, into(buf)[0]
        except timeout_exc:
            return None

    def drive(sink):
        try:
            while not sink(buf, into(buf)[0]):
                pass
        except timeout_exc:
            return False
        return True
    return recv_one, drive


def _calls_recvfrom(sock):
    """(recv_one, drive) of ``sock.recvfrom(65536)``."""
    recvfrom, timeout_exc = sock.recvfrom, socket.timeout

    def recv_one():
        try:
            data = recvfrom(65536)[0]
        except timeout_exc:
            return None
        return data, len(data)
    return recv_one, None


def _calls_recvfrom_batch(sock):
    """(recv_one, drive) of ``sock.recvfrom_batch(BATCH_SIZE)``: drive handles each batch in
    a loop; recv_one (drain, latency, idle) hands out a batch one datagram at a time."""
    batch, timeout_exc = sock.recvfrom_batch, socket.timeout
    pending = collections.deque()

    def recv_one():
        if not pending:
            try:
                pending.extend(batch(BATCH_SIZE))
            except timeout_exc:
                return None
        data = pending.popleft()[0]
        return data, len(data)

    def drive(sink):
        try:
            while True:
                for data, _addr in batch(BATCH_SIZE):
                    if sink(data, len(data)):
                        return True
        except timeout_exc:
            return False
    return recv_one, drive


def _open_asyncio(sock, kernel):
    """A STREAM_ONLY BenchReceiver: an asyncio endpoint on a new event loop over *sock*,
    opened with ``loop.create_datagram_endpoint`` (*kernel*: a socket.socket) or else with
    ``udpcap_ctypes.create_datagram_endpoint`` (an UdpcapSocket); both take ``sock=``.

    The endpoint is made here, before READY.  drive(sink) runs the loop until the protocol's
    datagram_received has handed sink a datagram for which it returned true; the transport
    reads as it does for any user (a readiness callback per datagram for a socket, batches for
    an UdpcapSocket).
    """
    import asyncio
    loop = asyncio.new_event_loop()
    if kernel:
        create = loop.create_datagram_endpoint
    else:
        import udpcap_ctypes
        create = udpcap_ctypes.create_datagram_endpoint

    class SinkProtocol(asyncio.DatagramProtocol):
        sink = done = None

        def datagram_received(self, data, addr):
            if self.sink(data, len(data)) and not self.done.done():
                self.done.set_result(True)

    try:
        transport, protocol = loop.run_until_complete(create(SinkProtocol, sock=sock))
    except BaseException:
        loop.close()
        raise

    def drive(sink):
        protocol.sink, protocol.done = sink, loop.create_future()
        return loop.run_until_complete(protocol.done)

    def close():
        transport.close()
        loop.run_until_complete(asyncio.sleep(0))      # connection_lost runs
        loop.close()

    return BenchReceiver(None, lambda _timeout: None, close,
                         lambda: _common.receiver_statistics(sock), drive)


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
    if rx.recv_one is None and spec["mode"] != "stream":
        rx.close()
        print("ERROR ValueError: %s has only stream runs" % spec["receiver"], flush=True)
        return 1
    guard = None
    if spec.get("guard") and spec["receiver"] not in KERNEL_SOCKETS:
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
    """Drain ceiling: *count* datagrams were queued while nothing read; read them all.

    Reading starts at the parent's GO and stops once every sequence number has arrived or
    nothing has come for DRAIN_TIMEOUT.  The rate is unique datagrams over the time from the
    start to the last datagram; CPU is the process's CPU time per datagram read.
    """
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
    """Read a paced stream as it arrives (the sender starts after READY), with rx.drive.

    Blocking reads (no timeout: a socket with a timeout polls before every recvfrom).  The run
    ends when all *count* sequence numbers have arrived, at the sender's first end marker
    (sequence number END_SEQ, sent 0.2 s after its last datagram), or *max_seconds* after the
    first datagram (a receiver far behind; what it has not read by then counts as dropped).
    The figures are _stream_tally's.
    """
    rx.settimeout(None)
    sink, finish = _stream_tally(spec)
    return finish(rx.drive(sink))


def _stream_tally(spec):
    """``(sink, finish)`` for one stream run of *spec*: ``sink(buf, n)`` takes a datagram and
    returns true when the run is over; ``finish(ended)`` returns the figures (*ended* false: a
    receive timed out).

    CPU time and wall time are taken from just after the first datagram to just after the last
    one (the last sample when the run ends at a marker or the cap), so neither start-up nor the
    wait for the end marker is counted.  Every *sample_every* datagrams (STREAM_SAMPLE_EVERY)
    CPU and clock are read and the lag (receive time - send time stamped in the datagram) is
    sampled: a lag that grows means the receiver does not keep up and lives off its buffer.
    With *latency_all* the one-way latency of every datagram is kept for p50/p99 ("latency_*"
    in the figures).
    """
    count, cap = spec["count"], spec["max_seconds"]
    every = spec.get("sample_every") or STREAM_SAMPLE_EVERY
    seen = bytearray(count)
    seq_time = _common.SEQ_TIME.unpack_from
    cpu, clock, now_ns = time.process_time, time.perf_counter, _common.monotonic_ns
    latencies = [] if spec.get("latency_all") else None
    keep_latency = latencies.append if latencies is not None else None
    lags = []
    received = unique = duplicates = foreign = 0
    cpu0 = t0 = None
    mark_n, mark_cpu, mark_t = 0, None, None     # datagrams, CPU and clock at the last sample
    next_sample = every
    ended = "marker"

    def sink(buf, n):
        nonlocal received, unique, duplicates, foreign, cpu0, t0, next_sample, ended
        nonlocal mark_n, mark_cpu, mark_t
        if n < _common.HEADER_SIZE:
            foreign += 1
            return False
        seq, sent_ns = seq_time(buf, 4)
        if seq >= count:
            if seq == END_SEQ:
                return True
            foreign += 1
            return False
        if keep_latency is not None:
            keep_latency(now_ns() - sent_ns)
        received += 1
        if seen[seq]:
            duplicates += 1
        else:
            seen[seq] = 1
            unique += 1
        if received == 1:
            cpu0, t0 = cpu(), clock()
            return False
        if unique == count or received >= next_sample:
            mark_n, mark_cpu, mark_t = received, cpu(), clock()
            lags.append(now_ns() - sent_ns)
            next_sample = received + every
            if unique == count:
                ended = "complete"
                return True
            if mark_t - t0 > cap:
                ended = "cap"
                return True
        return False

    def finish(finished):
        nonlocal mark_n, mark_cpu, mark_t
        if received and mark_n == 0:         # too few datagrams for a sample: up to the end
            mark_n, mark_cpu, mark_t = received, cpu(), clock()
        measured = max(mark_n - 1, 0)
        wall = (mark_t - t0) if received else 0.0
        lags.sort()
        result = {"count": count, "received": received, "unique": unique,
                  "drops": count - unique, "duplicates": duplicates, "foreign": foreign,
                  "ended": ended if finished else "timeout", "measured": measured, "seconds": wall,
                  "rate": measured / wall if measured > 0 and wall > 0 else None,
                  "cpu_us": (mark_cpu - cpu0) * 1e6 / measured if measured > 0 else None,
                  "lag_max_ms": lags[-1] / 1e6 if lags else None,
                  "lag_p50_ms": _common.percentile(lags, 0.5) / 1e6 if lags else None,
                  "lag_samples": len(lags), "latency_samples": len(latencies or ()),
                  "sample_every": every}
        if latencies is not None:
            result.update(_latency_figures(latencies, "latency_"))
        return result

    return sink, finish


def _latency_figures(latencies_ns, prefix=""):
    """{prefix + "p50_us", prefix + "p99_us"} of one-way latencies in ns (sorts them); None
    without any."""
    latencies_ns.sort()
    p50, p99 = (_common.percentile(latencies_ns, f) for f in (0.5, 0.99))
    return {prefix + "p50_us": p50 / 1e3 if p50 is not None else None,
            prefix + "p99_us": p99 / 1e3 if p99 is not None else None}


def _latency(rx, spec):
    """One-way latency p50/p99 (microseconds) of a paced stream, from the send time in each
    datagram (sender and receiver on this host read the same clock)."""
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
    return dict(_latency_figures(lat), received=len(seen), drops=count - len(seen),
                duplicates=duplicates)


def _idle(rx, spec):
    """CPU % of a receiver blocked in a receive with a 1 s timeout and no traffic."""
    seconds = spec["seconds"]
    rx.settimeout(1.0)
    cpu0, t0 = time.process_time(), time.monotonic()
    while time.monotonic() - t0 < seconds:
        rx.recv_one()
    cpu_s, wall = time.process_time() - cpu0, time.monotonic() - t0
    return {"cpu_pct": 100.0 * cpu_s / wall, "seconds": wall}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: bench_worker.py SPEC (a JSON object; tools/bench_run.py writes it)")
    sys.exit(worker_main(json.loads(sys.argv[1])))
