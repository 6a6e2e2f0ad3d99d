"""Rows, tables and a chart from the runs of tools/bench.py (bench_run.Bench.run).

summarize() and summarize_stream() reduce the runs to rows, one per receiver and size: medians
over the repeats, and ratios to the socket.recvfrom_into baseline at the same size.  table(),
stream_table() and svg_chart() format those rows, and report_text() is all that bench.py
prints without --json.  Figures that are missing (a receiver that failed, no baseline to
divide by) are None in the rows and "-" in the tables.  Nothing here measures or runs
anything.
"""

import _common
from bench_run import SENDER_SHORTFALL
from bench_worker import BASELINE, BATCHED, RECEIVERS, STREAM_SAMPLE_EVERY, UNMODERATED


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
    """The rows of summarize() as a text table, then a line for each error of a run."""
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


def report_text(report):
    """The text bench.py prints for *report* (its JSON output): the tables and their notes."""
    settings, rows = report["settings"], report["rows"]
    out = ["drain ceiling (queue --count datagrams, then read them), latency at %g/s, "
           "idle CPU" % settings["latency_rate"], table(rows)]
    if any(row["drops"] for row in rows):
        out.append("drops: datagrams of the drain run that did not fit the receiver's buffer "
                   "(--rcvbuf %d) while it was not reading" % settings["rcvbuf"])
        for row in rows:
            if row["drops"] and row.get("ring_frames"):
                out.append("  %s %d B: %.0f dropped; its capture ring holds %s frames "
                           "(immediate mode on Linux: one slot a frame, sized from the MTU)"
                           % (row["receiver"], row["size"], row["drops"],
                              "{:,}".format(row["ring_frames"])))
    if settings["stream_seconds"] is not None:        # None: --no-stream
        out.append("")
        out.append("stream (read while the sender sends at the socket's sustainable rate for "
                   "%g s; CPU between the first and the last datagram)"
                   % settings["stream_seconds"])
        out.append(stream_table(report["stream_rows"], report["stream"]))
        out.append("drops: sequence numbers that never arrived (or were unread when the run "
                   "was cut at 1.5x its length + 2 s); lag max: worst receive-minus-send time "
                   "sampled every %d datagrams" % STREAM_SAMPLE_EVERY)
    out.append("(medians of %d run(s); ratios vs %s; %.0f s)"
               % (settings["repeat"], BASELINE, report["seconds"]))
    return "\n".join(out)
