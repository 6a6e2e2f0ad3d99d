"""Rows, tables and a chart from the runs of tools/bench.py (bench_run.Bench.run).

summarize() and summarize_stream() reduce the runs to rows, one per receiver and size: medians
over the repeats, and ratios to the socket.recvfrom_into baseline at the same size.  table(),
stream_table() and svg_chart() format those rows, and report_text() is all that bench.py
prints without --json.  For the rate sweep (bench.py --sweep, bench_run.Bench.sweep),
summarize_sweep() makes a row per receiver, size and rate, sweep_report_text() the tables and
svg_sweep() the charts of CPU per datagram and p99 latency against the rate.  Figures that are
missing (a receiver that failed, no baseline to divide by) are None in the rows and "-" in the
tables.  Nothing here measures or runs anything.
"""

import math

import _common
from bench_run import SENDER_SHORTFALL
from bench_sockets import machine_line
from bench_worker import (
    ASYNC_SOCKET,
    ASYNC_UDPCAP,
    BASELINE,
    BATCH_CALL,
    BATCHED,
    COUNTERPARTS,
    RECEIVERS,
    STREAM_SAMPLE_EVERY,
    UNMODERATED,
)

COLORS = {"UdpcapSocket.recvfrom_into": "#1f77b4", "UdpcapSocket.recvfrom": "#6baed6",
          UNMODERATED: "#9ecae1", BATCHED: "#9467bd", BATCH_CALL: "#17becf",
          BASELINE: "#2ca02c", ASYNC_UDPCAP: "#e377c2", ASYNC_SOCKET: "#8c564b",
          "pypcap+dpkt": "#ff7f0e", "scapy": "#d62728"}


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
    def latency(name):
        return runs.get(name, {}).get("sizes", {}).get(str(size), {}).get("latency", [])
    return _common.median(_repeat_ratios(latency(receiver), latency(BASELINE), field))


def _repeat_ratios(mine, base, field):
    """*field* of each result of *mine* divided by that of the result of *base* with the same
    "repeat" (results without one, or without the figure, are left out)."""
    by_repeat = {r["repeat"]: r.get(field) for r in base if "repeat" in r}
    return [r[field] / by_repeat[r["repeat"]] for r in mine
            if r.get(field) is not None and by_repeat.get(r.get("repeat"))]


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
                         % (label_w, y, width, bar_h, COLORS.get(r["receiver"], "#888")))
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


# --------------------------------------------------------------------------- the rate sweep

def summarize_sweep(runs):
    """A row per receiver, size and rate of Bench.sweep's *runs*, in table order.

    Medians over the repeats of: sent/s (the sender's achieved rate), received/s, datagrams
    lost (sent minus received sequence numbers) and lost %, CPU us a datagram of the receiver
    process, one-way latency p50/p99.  cpu_ratio is the median over the repeats of the CPU per
    datagram divided by socket.recvfrom_into's in the same repeat; cpu_ratio_min/_max are the
    extremes of those per-repeat ratios and cpu_spread_pct the range of the receiver's own
    CPU figure in % of its median (the noise).  A receiver of COUNTERPARTS also gets
    cpu_ratio_counterpart, against its counterpart the same way.
    """
    rows = []
    for receiver, sizes in runs.items():
        for size, rates in sizes.items():
            for key, cell in rates.items():
                rows.append(_sweep_row(runs, receiver, size, key, cell))
    order = {name: i for i, name in enumerate(RECEIVERS)}
    rows.sort(key=lambda r: (r["size"], r["rate"] is None, r["rate"] or 0,
                             order.get(r["receiver"], 99)))
    return rows


def _sweep_row(runs, receiver, size, key, cell):
    """summarize_sweep's row of one receiver at one size and rate."""
    results = cell.get("sweep", [])

    def med(field):
        return _common.median(r.get(field) for r in results)

    def ratios(other):
        base = runs.get(other, {}).get(size, {}).get(key, {}).get("sweep", [])
        return _repeat_ratios(results, base, "cpu_us")

    cpu = [r["cpu_us"] for r in results if r.get("cpu_us") is not None]
    to_base = ratios(BASELINE)
    row = {"receiver": receiver, "size": int(size), "rate_key": key,
           "rate": None if key == "max" else float(key), "repeats": len(results),
           "sent_rate": med("sender_rate"), "receive_rate": med("rate"),
           "sent": med("sent"), "lost": med("drops"),
           "lost_pct": _common.median(100.0 * r["drops"] / r["sent"] for r in results
                                      if r.get("sent")),
           "cpu_us_per_datagram": med("cpu_us"),
           "cpu_ratio": _common.median(to_base),
           "cpu_ratio_min": min(to_base) if to_base else None,
           "cpu_ratio_max": max(to_base) if to_base else None,
           "cpu_spread_pct": 100.0 * (max(cpu) - min(cpu)) / _common.median(cpu)
           if len(cpu) > 1 and _common.median(cpu) else None,
           "latency_p50_us": med("latency_p50_us"), "latency_p99_us": med("latency_p99_us"),
           "errors": cell.get("errors", [])}
    if receiver in COUNTERPARTS:
        row["counterpart"] = COUNTERPARTS[receiver]
        row["cpu_ratio_counterpart"] = _common.median(ratios(COUNTERPARTS[receiver]))
    return row


def _rate_label(rate):
    """1000 -> "1,000/s"; None (as fast as the sender could) -> "max"."""
    return "max" if rate is None else format(rate, ",.0f") + "/s"


def sweep_table(rows):
    """The sweep rows of one size as a text table, then a line for each error of a run."""
    head = ("rate", "receiver", "sent/s", "CPU us/dgram", "CPU x", "x min-max", "lost",
            "lost %", "p50 us", "p99 us")
    lines = []
    for r in rows:
        spread = ("-" if r["cpu_ratio_min"] is None else
                  "%.2f-%.2f" % (r["cpu_ratio_min"], r["cpu_ratio_max"]))
        lines.append((_rate_label(r["rate"]), r["receiver"], _fmt(r["sent_rate"], ",.0f"),
                      _fmt(r["cpu_us_per_datagram"], ".2f"), _fmt(r["cpu_ratio"], ".2f"),
                      spread, _fmt(r["lost"], ",.0f"), _fmt(r["lost_pct"], ".2f"),
                      _fmt(r["latency_p50_us"], ",.0f"), _fmt(r["latency_p99_us"], ",.0f")))
    out = _columns(head, lines)
    for r in rows:
        for err in r["errors"]:
            out.append("! %s at %s: %s" % (r["receiver"], _rate_label(r["rate"]), err))
    return "\n".join(out)


def sweep_noise_note(rows):
    """One line on the noise: how much one receiver's CPU per datagram moved between the
    repeats of one rate (median and widest), or None with a single repeat."""
    spreads = [(r["cpu_spread_pct"], r) for r in rows if r["cpu_spread_pct"] is not None]
    if not spreads:
        return None
    widest, row = max(spreads, key=lambda x: x[0])
    return ("noise: a receiver's CPU us/dgram at one rate ranged over %.0f%% of its median "
            "between repeats (median of all rows; widest %.0f%%: %s %d B at %s); 'x min-max' "
            "is the range of the per-repeat ratios"
            % (_common.median(x for x, _ in spreads), widest, row["receiver"], row["size"],
               _rate_label(row["rate"])))


def sweep_report_text(report):
    """What bench.py --sweep prints for *report* (its JSON output)."""
    settings, rows = report["settings"], report["sweep_rows"]
    out = [machine_line(report["machine"], settings["pinned"]),
           "rate sweep over lo: send.py paces each rate ('max': as fast as it can) for %g s; "
           "each receiver reads with its call in a loop in a process of its own; CPU: that "
           "process's CPU time from its first datagram to its last per datagram; CPU x: that "
           "divided by %s's in the same repeat; lost: sequence numbers sent and never read; "
           "p50/p99: one-way latency of every datagram" % (settings["sweep_seconds"], BASELINE)]
    for size in sorted({r["size"] for r in rows}):
        out += ["", "%d B datagrams" % size, sweep_table([r for r in rows if r["size"] == size])]
    notes = [sweep_noise_note(rows)]
    notes += ["%s %d B at %s: CPU x %s against %s" % (
        r["receiver"], r["size"], _rate_label(r["rate"]), _fmt(r["cpu_ratio_counterpart"], ".2f"),
        r["counterpart"]) for r in rows if r.get("counterpart")]
    notes += ["skipped %s (%s)" % item for item in sorted(report.get("skipped", {}).items())]
    out += [""] + [n for n in notes if n]
    out.append("(medians of %d run(s); %.0f s)" % (settings["repeat"], report["seconds"]))
    return "\n".join(out)


SVG_PANEL_W, SVG_PANEL_H = 460, 270      # one chart, axes and labels included
SVG_PLOT = (70, 34, 440, 226)            # plot area inside a panel: left, top, right, bottom


def svg_sweep(rows):
    """Hand-written SVG of the sweep: for each size a row of two charts, CPU us a datagram
    and p99 one-way latency against the rate, one line per receiver, both axes log-scale.
    A point sits at its target rate; the 'max' point (a square) at the rate the sender
    reached.  The legend above gives the receivers' colours."""
    receivers = sorted({r["receiver"] for r in rows},
                       key=lambda n: RECEIVERS.index(n) if n in RECEIVERS else 99)
    sizes = sorted({r["size"] for r in rows})
    legend_h = 42 + 18 * len(receivers)
    parts = ['<text x="10" y="22" font-size="15" font-weight="bold">rate sweep: receiver CPU '
             'per datagram and p99 latency against the rate (medians)</text>',
             '<text x="14" y="%d">circles: paced rates; squares: as fast as send.py could, '
             'at the rate it reached; both axes log-scale</text>' % (40 + 18 * len(receivers))]
    for i, name in enumerate(receivers):
        y = 40 + 18 * i
        parts.append('<rect x="14" y="%d" width="22" height="4" fill="%s"/>'
                     '<text x="44" y="%d">%s</text>'
                     % (y - 4, COLORS.get(name, "#888"), y, _xml(name)))
    for j, size in enumerate(sizes):
        group = [r for r in rows if r["size"] == size]
        top = legend_h + 10 + j * SVG_PANEL_H
        for k, (field, what) in enumerate((("cpu_us_per_datagram", "CPU us per datagram"),
                                           ("latency_p99_us", "p99 latency, us"))):
            series = [(name, [(r["rate"] or r["sent_rate"], r[field], r["rate"] is None)
                              for r in group if r["receiver"] == name])
                      for name in receivers]
            parts += _svg_panel(k * SVG_PANEL_W, top, "%d B: %s" % (size, what), series)
    return ('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
            'font-family="sans-serif" font-size="12">\n'
            '<rect width="100%%" height="100%%" fill="white"/>\n%s\n</svg>\n'
            % (2 * SVG_PANEL_W, legend_h + 10 + len(sizes) * SVG_PANEL_H, "\n".join(parts)))


def _svg_panel(x0, y0, title, series):
    """The SVG elements of one log-log chart at (*x0*, *y0*): *series* is
    [(receiver, [(rate, value, is_max), ...])]; points without both figures are left out."""
    left, top, right, bottom = SVG_PLOT
    points = [(x, y) for _, pts in series for x, y, _m in pts if x and y]
    out = ['<text x="%d" y="%d" font-weight="bold">%s</text>'
           % (x0 + left, y0 + top - 12, _xml(title))]
    if not points:
        return out + ['<text x="%d" y="%d">no data</text>' % (x0 + left + 10, y0 + top + 20)]
    xs, ys = _log_axis([x for x, _ in points]), _log_axis([y for _, y in points])

    def px(value, axis, lo, hi):
        a, b = axis[0], axis[-1]
        return lo + (hi - lo) * (math.log10(value) - math.log10(a)) / (
            math.log10(b) - math.log10(a))

    def at(x, y):
        return px(x, xs, x0 + left, x0 + right), px(y, ys, y0 + bottom, y0 + top)

    for tick in xs:
        x, _ = at(tick, ys[0])
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>'
                   '<text x="%.1f" y="%d" text-anchor="middle">%s</text>'
                   % (x, y0 + top, x, y0 + bottom, x, y0 + bottom + 15, _short(tick)))
    for tick in ys:
        _, y = at(xs[0], tick)
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>'
                   '<text x="%d" y="%.1f" text-anchor="end">%s</text>'
                   % (x0 + left, y, x0 + right, y, x0 + left - 5, y + 4, _short(tick)))
    out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#444"/>'
               % (x0 + left, y0 + top, right - left, bottom - top))
    out.append('<text x="%d" y="%d" text-anchor="middle">datagrams/s (log)</text>'
               % (x0 + (left + right) // 2, y0 + bottom + 32))
    for name, pts in series:
        color = COLORS.get(name, "#888")
        xy = [(at(x, y), is_max) for x, y, is_max in sorted(pts, key=lambda p: p[0] or 0)
              if x and y]
        if len(xy) > 1:
            out.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>'
                       % (color, " ".join("%.1f,%.1f" % p for p, _ in xy)))
        for (x, y), is_max in xy:
            out.append('<rect x="%.1f" y="%.1f" width="7" height="7" fill="%s"/>'
                       % (x - 3.5, y - 3.5, color) if is_max else
                       '<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>' % (x, y, color))
    return out


def _log_axis(values):
    """Ticks of a log axis covering *values* (> 0): whole decades, with 2 and 5 between them
    when the axis spans two decades or less; the first and last tick are its ends."""
    lo = 10 ** math.floor(math.log10(min(values)))
    hi = 10 ** math.ceil(math.log10(max(values)))
    if hi <= lo:
        hi = lo * 10
    steps = (1, 2, 5) if hi / lo <= 100 else (1,)
    ticks = []
    decade = lo
    while decade < hi:
        ticks += [m * decade for m in steps]
        decade *= 10
    return ticks + [hi]


def _short(value):
    """An axis label: 1000 -> "1k", 2000000 -> "2M", 0.5 -> "0.5"."""
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if value >= div:
            return "%g%s" % (value / div, unit)
    return "%g" % value
