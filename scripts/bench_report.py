#!/usr/bin/env python3
"""Writes docs/BENCHMARKS.md and an SVG chart from the JSONL results of
scripts/bench-vs-rabbitmq.sh (standard library only).

Every number in the report comes from the results file (or the --before
file): medians, min-max spreads and ratios are computed from the recorded
JSON lines of herald-bench and of the stomp.js generator (case `stompjs`,
bench/stompjs; results files older than that case simply lack it) and
of the relay (server `relay`: `herald-bench relay`, a STOMP broker that
stores and checks nothing, the machine's ceiling; older results files lack
it, and then so does the report); nothing is estimated or filled in.

Usage:
  scripts/bench_report.py docs/bench/results-<ts>.jsonl \
      [--before docs/bench/results-<older>.jsonl] \
      [--out docs/BENCHMARKS.md] [--svg docs/bench/latency-vs-rate.svg]
"""

import argparse
import html
import json
import math
import os
import statistics
import sys

SERVERS = ("herald", "rabbitmq")
# Not a server under test: what any server can reach on the machine.
RELAY = "relay"
LABEL = {"herald": "Herald", "rabbitmq": "RabbitMQ Web-STOMP", RELAY: "relay (stores nothing)"}
RELAY_COLUMN = "relay (stores nothing: the machine's ceiling)"
COLOR = {"herald": "#1f77b4", "rabbitmq": "#ff7f0e", RELAY: "#2ca02c", "before": "#7f7f7f"}

# What the issue's bar is measured with; a run with other knobs says so.
BAR_CONFIG = {
    "CLIENTS": "1000",
    "P99_MS": "50",
    "IDLE_CONNECTIONS": "10000",
    "FANOUT_MEMBERS": "1000",
    "SYNC_MESSAGES": "10000",
    "FIXED_RATE": "2500",
}
MIN_ROUNDS = 3


class ResultsError(Exception):
    pass


# ---------------------------------------------------------------- loading


class Results:
    """The records of one results file."""

    def __init__(self, path):
        self.path = path
        self.meta = {}
        self.end = {}
        self.records = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ResultsError(f"{path}:{lineno}: not JSON: {e}") from e
                if not isinstance(rec, dict):
                    raise ResultsError(f"{path}:{lineno}: not a JSON object")
                case = rec.get("case")
                if case == "meta":
                    self.meta = rec
                elif case == "end":
                    self.end = rec
                elif rec.get("server") in SERVERS + (RELAY,) and case:
                    self.records.append(rec)

    def rounds(self):
        return sorted({r["round"] for r in self.records if isinstance(r.get("round"), int)})

    def runs(self, server, case):
        """round -> the records of that round's run of (server, case)."""
        out = {}
        for r in self.records:
            if r.get("server") == server and r.get("case") == case:
                out.setdefault(r.get("round"), []).append(r)
        return out

    def knob(self, name):
        return self.meta.get(name)


# ---------------------------------------------------------------- metrics


def num(x):
    """x if it is a (non-bool) finite number, else None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def headline(recs):
    for r in recs:
        if r.get("headline") is True:
            return r
    return None


def single(recs):
    """The one result line of a non-find-max run (None if it failed)."""
    for r in recs:
        if "error" not in r and r.get("scenario"):
            return r
    return None


def ended_without_failing(h):
    """Whether a find-max headline ended at the step or rate limit instead
    of at a failing step (its highest good rate is then a lower bound)."""
    reason = str(h.get("stop_reason", ""))
    return reason.endswith("steps done") or reason.startswith("--max-rate")


def lower_bound_note(res, server):
    runs = res.runs(server, "find-max")
    n = sum(1 for recs in runs.values() if ended_without_failing(headline(recs) or {}))
    if not n:
        return None
    return (f"find-max for {LABEL[server]} ended at its step or rate limit, not at a failing "
            f"step, in {n} of {len(runs)} round(s): its highest good rate is a lower bound "
            "(raise MAX_STEPS).")


def field(pick, key):
    def get(recs):
        r = pick(recs)
        return None if r is None else num(r.get(key))

    return get


class Metric:
    def __init__(self, case, label, unit, better, get, ratio=True):
        self.case = case
        self.label = label
        self.unit = unit
        self.better = better  # "higher" or "lower"
        self.get = get
        self.ratio = ratio

    def values(self, res, server):
        """round -> value (rounds whose run lacks the value are left out)."""
        out = {}
        for rnd, recs in sorted(res.runs(server, self.case).items(), key=lambda kv: str(kv[0])):
            v = self.get(recs)
            if v is not None:
                out[rnd] = v
        return out


METRICS = [
    Metric("find-max", "find-max: highest good rate (durable 1:1)", "msg/s", "higher",
           field(headline, "max_good_rate")),
    Metric("find-max", "find-max: p99 at that rate", "ms", "lower", field(headline, "p99_ms")),
    Metric("find-max", "find-max: server CPU at that rate", "%", "lower",
           field(headline, "server_cpu_pct"), ratio=False),
    Metric("fixed", "fixed rate: p50", "ms", "lower", field(single, "p50_ms")),
    Metric("fixed", "fixed rate: p99", "ms", "lower", field(single, "p99_ms")),
    Metric("fixed", "fixed rate: p99.9", "ms", "lower", field(single, "p999_ms")),
    Metric("fixed", "fixed rate: delivered", "msg/s", "higher", field(single, "delivered_rate")),
    Metric("fixed", "fixed rate: lost", "msgs", "lower", field(single, "lost"), ratio=False),
    Metric("fixed", "fixed rate: server CPU", "%", "lower", field(single, "server_cpu_pct")),
    Metric("stompjs", "stomp.js fixed rate: p50", "ms", "lower", field(single, "p50_ms")),
    Metric("stompjs", "stomp.js fixed rate: p99", "ms", "lower", field(single, "p99_ms")),
    Metric("stompjs", "stomp.js fixed rate: p99.9", "ms", "lower", field(single, "p999_ms")),
    Metric("stompjs", "stomp.js fixed rate: delivered", "msg/s", "higher",
           field(single, "delivered_rate")),
    Metric("stompjs", "stomp.js fixed rate: lost", "msgs", "lower", field(single, "lost"),
           ratio=False),
    Metric("stompjs", "stomp.js fixed rate: server CPU", "%", "lower",
           field(single, "server_cpu_pct")),
    Metric("stompjs", "stomp.js fixed rate: generator CPU", "%", "lower",
           field(single, "generator_cpu_pct"), ratio=False),
    Metric("idle", "idle: server RSS per connection", "KiB", "lower",
           field(single, "kib_per_connection")),
    Metric("idle", "idle: connections", "", "higher", field(single, "clients"), ratio=False),
    Metric("fanout", "fanout: deliveries", "deliveries/s", "higher",
           field(single, "delivered_rate")),
    Metric("fanout", "fanout: p99", "ms", "lower", field(single, "p99_ms")),
    Metric("fanout", "fanout: lost deliveries", "", "lower", field(single, "lost"), ratio=False),
    Metric("sync", "sync: time to pull all messages", "s", "lower", field(single, "duration_s")),
    Metric("sync", "sync: messages per second", "msg/s", "higher",
           field(single, "delivered_rate")),
    Metric("sync", "sync: lost", "msgs", "lower", field(single, "lost"), ratio=False),
]


def summary(values):
    """(median, min, max, n) of a round -> value dict, or None."""
    vs = list(values.values())
    if not vs:
        return None
    return statistics.median(vs), min(vs), max(vs), len(vs)


def ratio_of(metric, h, r):
    """Herald's advantage: Herald/RabbitMQ for higher-is-better metrics,
    RabbitMQ/Herald for lower-is-better ones (above 1 = Herald better)."""
    if not metric.ratio or h is None or r is None:
        return None
    a, b = (h[0], r[0]) if metric.better == "higher" else (r[0], h[0])
    if b == 0:
        return None
    return a / b


# ---------------------------------------------------------------- formatting


def fmt(x):
    if x is None:
        return "–"
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) >= 1000):
        return f"{int(x):,}"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1 or ax == 0:
        return f"{x:.2f}"
    return f"{x:.3g}"


def fmt_summary(s):
    if s is None:
        return "–"
    med, lo, hi, n = s
    if n == 1:
        return f"{fmt(med)} (1 run)"
    return f"{fmt(med)} ({fmt(lo)}–{fmt(hi)}, {n} runs)"


def fmt_ratio(x):
    if x is None:
        return "–"
    return f"{x:.1f}×" if x >= 10 else f"{x:.2f}×"


def md_escape(s):
    return str(s).replace("|", "\\|")


def short_cmd(cmd, res):
    work = res.meta.get("work_dir")
    if work and isinstance(cmd, str):
        cmd = cmd.replace(work, "$WORK")
    return cmd


# ---------------------------------------------------------------- sections


def machine_section(res):
    m = res.meta
    out = ["## Machine and versions", ""]
    if not m:
        return out + ["The results file has no `meta` record.", ""]
    mem = num(int(m["mem_total_kib"])) if str(m.get("mem_total_kib", "")).isdigit() else None
    rows = [
        ("Run", f"{m.get('started_utc', '?')} – {res.end.get('finished_utc', '(unfinished)')}"),
        ("Kernel", m.get("kernel")),
        ("OS", m.get("os")),
        ("CPU", f"{m.get('cpu_model', '?')}, nproc {m.get('nproc', '?')}"),
        ("Memory", f"{mem / 1048576:.1f} GiB ({mem} KiB)" if mem else None),
        ("Load average at start", m.get("loadavg_start")),
        ("Herald", f"{m.get('herald_version', '?')}, git {m.get('herald_git', '?')}"),
        ("Rust", m.get("rustc")),
        ("Node (stomp.js generator)",
         f"{m['node_version']}, @stomp/stompjs {m.get('stompjs_version') or '?'}"
         if m.get("node_version") else None),
        ("RabbitMQ", m.get("rabbitmq_version") or None),
        ("Erlang (erlang-base)", m.get("erlang_version") or None),
        ("RabbitMQ open-files limit", m.get("rabbitmq_nofile") or None),
        ("Open-files limit (generator, Herald)", m.get("nofile")),
        ("File system of the data (Herald / RabbitMQ)",
         f"{m['herald_data_fs']} / {m.get('rabbitmq_data_fs', '?')}"
         if m.get("herald_data_fs") else None),
        ("Generator threads", m.get("GEN_THREADS")),
    ]
    out += ["| | |", "|---|---|"]
    out += [f"| {k} | {md_escape(v)} |" for k, v in rows if v]
    out.append("")
    out.append("Generator (herald-bench, or the stomp.js generator) and server run on the same "
               "machine.")
    out.append("")
    return out


def config_note(res):
    m = res.meta
    diffs = [f"{k}={m.get(k)}" for k, v in BAR_CONFIG.items() if m.get(k) not in (None, v)]
    rounds = m.get("ROUNDS")
    if rounds is not None and rounds.isdigit() and int(rounds) < MIN_ROUNDS:
        diffs.append(f"ROUNDS={rounds}")
    if not diffs:
        return []
    return [
        "> **Reduced configuration:** " + ", ".join(diffs) + " (the issue's bar uses "
        + ", ".join(f"{k}={v}" for k, v in BAR_CONFIG.items())
        + f", at least {MIN_ROUNDS} rounds). These numbers do not test the bar.",
        "",
    ]


def results_section(res):
    out = ["## Results", ""]
    rounds = res.rounds()
    out.append(
        f"Medians over {len(rounds)} round(s), spread (min–max) in brackets. "
        "Ratio: Herald's advantage, i.e. Herald/RabbitMQ for rates and "
        "RabbitMQ/Herald for latencies, CPU and KiB per connection "
        "(above 1× = Herald better)."
        + (" Last column: `herald-bench relay`, a STOMP broker that stores and checks "
           "nothing, driven with the same frames as RabbitMQ: the most any server can reach "
           "on this machine with the generator beside it (find-max and fixed rate only)."
           if relay_ran(res) else "")
    )
    out.append("")
    relay = relay_ran(res)
    head = "| Metric | Unit | Herald | RabbitMQ Web-STOMP | Ratio |"
    out += [head + (f" {RELAY_COLUMN} |" if relay else ""),
            "|---|---|---|---|---|" + ("---|" if relay else "")]
    any_row = False
    for m in METRICS:
        h = summary(m.values(res, "herald"))
        r = summary(m.values(res, "rabbitmq"))
        c = summary(m.values(res, RELAY))
        if h is None and r is None and c is None:
            continue
        any_row = True
        out.append(
            f"| {m.label} | {m.unit} | {fmt_summary(h)} | {fmt_summary(r)} | "
            f"{fmt_ratio(ratio_of(m, h, r))} |" + (f" {fmt_summary(c)} |" if relay else "")
        )
    if not any_row:
        out.append("| (no results) | | | | |")
    out.append("")
    for server in SERVERS + (RELAY,):
        note = lower_bound_note(res, server)
        if note:
            out += [f"Note: {note}", ""]
    idle = summary(METRICS_BY_LABEL["idle: server RSS per connection"].values(res, "herald"))
    ridle = summary(METRICS_BY_LABEL["idle: server RSS per connection"].values(res, "rabbitmq"))
    per_gib = [
        f"{LABEL[s]} about {fmt(1048576 / v[0])}"
        for s, v in (("herald", idle), ("rabbitmq", ridle))
        if v and v[0] > 0
    ]
    if per_gib:
        out.append(
            "Idle connections per GiB of server RSS (1 GiB / median KiB per connection): "
            + "; ".join(per_gib) + "."
        )
        out.append("")
    return out


METRICS_BY_LABEL = {m.label: m for m in METRICS}

# The headline figures: per-round table and before/after comparison.
KEY_METRICS = [
    "find-max: highest good rate (durable 1:1)",
    "find-max: p99 at that rate",
    "fixed rate: p99",
    "fixed rate: server CPU",
    "stomp.js fixed rate: p99",
    "idle: server RSS per connection",
    "fanout: p99",
    "sync: time to pull all messages",
]


def per_round_section(res):
    rounds = res.rounds()
    out = ["### Per round", ""]
    if not rounds:
        return out + ["No rounds recorded.", ""]
    out.append("| Metric | Server | " + " | ".join(f"round {r}" for r in rounds) + " |")
    out.append("|---|---|" + "---|" * len(rounds))
    for label in KEY_METRICS:
        m = METRICS_BY_LABEL[label]
        for s in SERVERS + (RELAY,):
            vals = m.values(res, s)
            if not vals:
                continue
            cells = [fmt(vals.get(r)) for r in rounds]
            out.append(f"| {m.label} | {LABEL[s]} | " + " | ".join(cells) + " |")
    out.append("")
    return out


def find_max_steps(res, server):
    """offered rate -> list of (p99_ms, good) over the rounds' find-max steps."""
    steps = {}
    for recs in res.runs(server, "find-max").values():
        for r in recs:
            if r.get("headline") is True or num(r.get("step")) is None:
                continue
            rate, p99 = num(r.get("offered_rate")), num(r.get("p99_ms"))
            if rate is None or p99 is None:
                continue
            steps.setdefault(round(rate, 3), []).append((p99, r.get("good") is True))
    return steps


def steps_section(res):
    out = ["### Find-max steps", ""]
    per = {s: find_max_steps(res, s) for s in SERVERS}
    rates = sorted(set(per["herald"]) | set(per["rabbitmq"]))
    if not rates:
        return out + ["No find-max steps recorded.", ""]
    out.append(
        "p99 latency (ms) per offered rate: median over the rounds that reached the "
        "rate (min–max); `good/failed` counts the steps that passed or failed the criteria."
    )
    out.append("")
    out += ["| Offered msg/s | Herald p99 | good/failed | RabbitMQ p99 | good/failed |",
            "|---|---|---|---|---|"]
    for rate in rates:
        cells = []
        for s in SERVERS:
            pts = per[s].get(rate, [])
            if pts:
                vals = {i: p for i, (p, _) in enumerate(pts)}
                good = sum(1 for _, g in pts if g)
                cells += [fmt_summary(summary(vals)), f"{good}/{len(pts) - good}"]
            else:
                cells += ["–", "–"]
        out.append(f"| {fmt(rate)} | " + " | ".join(cells) + " |")
    out.append("")
    stops = []
    for s in SERVERS + (RELAY,):
        for rnd, recs in sorted(res.runs(s, "find-max").items(), key=lambda kv: str(kv[0])):
            h = headline(recs)
            if h and h.get("stop_reason"):
                stops.append(f"- {LABEL[s]}, round {rnd}: stopped: {h['stop_reason']}")
    if stops:
        out += ["Why each find-max stopped:", ""] + stops + [""]
    return out


def bar_section(res):
    out = ["## Against the issue's bar", ""]

    def med(label, server):
        s = summary(METRICS_BY_LABEL[label].values(res, server))
        return None if s is None else s[0]

    def verdict(ok):
        return "not measured" if ok is None else ("**yes**" if ok else "**no**")

    rows = []
    h, r = med("find-max: highest good rate (durable 1:1)", "herald"), med(
        "find-max: highest good rate (durable 1:1)", "rabbitmq")
    ratio = h / r if h is not None and r else None
    headline_loss = sum(
        num((headline(recs) or {}).get("lost")) or 0
        for s in SERVERS for recs in res.runs(s, "find-max").values()
    )
    ok = None if ratio is None else (ratio >= 10 and headline_loss == 0)
    bounds = [s for s in SERVERS if lower_bound_note(res, s)]
    met = verdict(ok)
    # A lower bound can only decide the verdict one way.
    if (ok is True and "rabbitmq" in bounds) or (
            ok is False and headline_loss == 0 and "herald" in bounds):
        met = "inconclusive"
    rows.append((
        f"find-max durable, {res.knob('CLIENTS') or '?'} clients: Herald/RabbitMQ ≥ 10, zero loss",
        f"{fmt(h)} / {fmt(r)} msg/s = {fmt_ratio(ratio)}, lost {headline_loss}"
        + (f" (lower bound for {', '.join(LABEL[s] for s in bounds)}: see the note under "
           "Results)" if bounds else ""),
        met))
    k = med("idle: server RSS per connection", "herald")
    rows.append((
        f"idle, {res.knob('IDLE_CONNECTIONS') or '?'} connections: Herald ≤ 10 KiB per connection",
        f"{fmt(k)} KiB", verdict(None if k is None else k <= 10)))
    p = med("fanout: p99", "herald")
    lost = med("fanout: lost deliveries", "herald")
    rows.append((
        f"fanout, {res.knob('FANOUT_MEMBERS') or '?'} members online: Herald p99 < 100 ms, all delivered",
        f"p99 {fmt(p)} ms, lost {fmt(lost)}",
        verdict(None if p is None else (p < 100 and lost == 0))))
    t = med("sync: time to pull all messages", "herald")
    rows.append((
        f"sync of {res.knob('SYNC_MESSAGES') or '?'} offline messages over REST: Herald < 1 s",
        f"{fmt(t)} s", verdict(None if t is None else t < 1)))
    hp, rp = med("fixed rate: p99", "herald"), med("fixed rate: p99", "rabbitmq")
    rows.append((
        f"fixed {res.knob('FIXED_RATE') or '?'} msg/s (herald-bench): Herald p99 ≤ RabbitMQ p99",
        f"{fmt(hp)} ms vs {fmt(rp)} ms",
        verdict(None if hp is None or rp is None else hp <= rp)))
    has_stompjs = stompjs_ran(res)
    if has_stompjs:
        sh, sr = med("stomp.js fixed rate: p99", "herald"), med("stomp.js fixed rate: p99", "rabbitmq")
        rows.append((
            f"fixed {res.knob('FIXED_RATE') or '?'} msg/s (stomp.js generator): "
            "Herald p99 ≤ RabbitMQ p99",
            f"{fmt(sh)} ms vs {fmt(sr)} ms",
            verdict(None if sh is None or sr is None else sh <= sr)))
    out += ["| Target | Measured (medians) | Met |", "|---|---|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    out.append("")
    out += ceiling_lines(res, h, r)
    if has_stompjs:
        out.append(
            "The fixed rate is measured twice per server and round: with herald-bench and with "
            "an independent generator on stomp.js (bench/stompjs), see "
            "[Fixed rate: two generators](#fixed-rate-two-generators)."
        )
    else:
        out.append(
            "The fixed-rate comparison here uses herald-bench for both servers; the issue's "
            "bar also names an independent stomp.js generator, which this run did not include "
            "(the `stompjs` case of scripts/bench-vs-rabbitmq.sh)."
        )
    out.append("")
    return out


def ceiling_lines(res, h, r):
    """The relay's find-max (the machine's ceiling) against RabbitMQ × 10 and
    Herald's share of it (h, r: Herald's and RabbitMQ's medians); nothing for
    results without the relay."""
    s = summary(METRICS_BY_LABEL["find-max: highest good rate (durable 1:1)"].values(res, RELAY))
    if s is None or not s[0]:
        return []
    c = s[0]
    line = (f"**The machine's ceiling** (find-max of `herald-bench relay`, a STOMP broker that "
            f"stores and checks nothing, median of {s[3]} run(s)): ceiling {fmt(c)} msg/s")
    if lower_bound_note(res, RELAY):
        line += " (a lower bound: see the note under Results)"
    if r:
        bar = 10 * r
        if c < bar:
            line += f" < 10 × RabbitMQ {fmt(bar)} msg/s: "
            line += ("inconclusive, the ceiling is a lower bound." if lower_bound_note(res, RELAY)
                     else "no server can meet the 10× bar on this machine.")
        else:
            line += f" ≥ 10 × RabbitMQ {fmt(bar)} msg/s: "
            line += ("inconclusive, RabbitMQ's rate is a lower bound."
                     if lower_bound_note(res, "rabbitmq")
                     else "the machine leaves room for the 10× bar.")
    else:
        line += ": RabbitMQ not measured."
    if h is not None:
        line += (f" Herald reaches {100 * h / c:.0f}% of the ceiling "
                 f"(Herald/relay = {fmt(h)} / {fmt(c)} msg/s = {fmt_ratio(h / c)}).")
    return [line, ""]


def relay_ran(res):
    """Whether the results have any record of the relay."""
    return any(r.get("server") == RELAY for r in res.records)


def stompjs_ran(res):
    """Whether the results have any record of the stompjs case."""
    return any(r.get("case") == "stompjs" for r in res.records)


def generators_section(res):
    """The fixed-rate case measured with herald-bench and with the stomp.js
    generator, side by side (omitted for results without the stompjs case)."""
    if not stompjs_ran(res):
        return []
    out = ["## Fixed rate: two generators", ""]
    rate, clients = res.knob("FIXED_RATE") or "?", res.knob("CLIENTS") or "?"
    out.append(
        f"Durable 1:1 chat, {clients} clients at {rate} msg/s, the same flow driven by "
        "herald-bench (Rust, tokio) and by an independent generator on stomp.js "
        "(bench/stompjs/stompjs-bench.mjs, one Node process: its latencies include Node's "
        "event-loop and 1 ms timer granularity; its CPU is in the last column). Medians over "
        "the rounds (min–max); ratio: RabbitMQ/Herald (above 1× = Herald better)."
    )
    out.append("")
    out += ["| Generator | Percentile | Herald | RabbitMQ Web-STOMP | Ratio | Generator CPU % (Herald / RabbitMQ) |",
            "|---|---|---|---|---|---|"]
    gens = (("herald-bench", "fixed", "fixed rate"), ("stomp.js", "stompjs", "stomp.js fixed rate"))
    for gen, case, prefix in gens:
        gcpu = [summary(Metric(case, "", "%", "lower", field(single, "generator_cpu_pct"))
                        .values(res, s)) for s in SERVERS]
        gcell = " / ".join(fmt(g[0]) if g else "–" for g in gcpu)
        for pct in ("p50", "p99", "p99.9"):
            m = METRICS_BY_LABEL[f"{prefix}: {pct}"]
            h, r = summary(m.values(res, "herald")), summary(m.values(res, "rabbitmq"))
            if h is None and r is None:
                continue
            out.append(f"| {gen} | {pct} | {fmt_summary(h)} | {fmt_summary(r)} | "
                       f"{fmt_ratio(ratio_of(m, h, r))} | {gcell} |")
    out.append("")
    sat = sorted({(r.get("round"), r.get("server")) for r in res.records
                  if r.get("case") == "stompjs" and r.get("generator_saturated") is True},
                 key=str)
    if sat:
        out.append("Note: the stomp.js generator used a whole core in "
                   + ", ".join(f"round {rnd} ({LABEL.get(s, s)})" for rnd, s in sat)
                   + "; its latencies there include its own queueing.")
        out.append("")
    return out


def health_section(res):
    out = ["## Run health", ""]
    quiet = float(res.meta["QUIET_PCT"]) if _isfloat(res.meta.get("QUIET_PCT")) else None
    problems = []
    runs = {}
    for r in res.records:
        runs.setdefault((r.get("round"), r.get("server"), r.get("case")), []).append(r)
    for (rnd, server, case), recs in runs.items():
        issues = []
        first = recs[0]
        if first.get("exit") not in (0, None):
            tail = first.get("stderr_tail")
            issues.append(f"exit status {first.get('exit')}" + (f" ({tail})" if tail else ""))
        busy = num(first.get("cpu_busy_before_pct"))
        if busy is not None and quiet is not None and busy > quiet:
            issues.append(f"machine {busy}% busy before the run")
        for r in recs:
            tag = ""
            if case == "find-max" and r.get("headline") is not True:
                if r.get("good") is False:
                    continue  # failing a step is how find-max ends
                tag = f"step {r.get('step')}: "
            elif case == "find-max":
                continue  # a copy of the best step
            if "error" in r:
                issues.append(f"{tag}error: {r['error']}")
            for key in ("lost", "dropped", "disconnects", "server_errors", "duplicated"):
                v = num(r.get(key))
                if v:
                    issues.append(f"{tag}{key} {v}")
            if num(r.get("stale")):
                issues.append(f"{tag}stale {r['stale']} (deliveries of an earlier run)")
            if r.get("drained") is False:
                issues.append(f"{tag}not drained")
            if r.get("generator_saturated") is True:
                issues.append(f"{tag}generator CPU saturated")
            if num(r.get("setup_password_hashes")):
                issues.append(f"{tag}{r['setup_password_hashes']} password hashes during setup "
                              "(RSS per connection reads low)")
        if issues:
            problems.append(f"- round {rnd}, {LABEL.get(server, server)}, {case}: "
                            + "; ".join(issues))
    if problems:
        out += problems
    else:
        out.append("No problems recorded (exit status, loss, drops, disconnects, server "
                   "errors, duplicates, generator saturation, a busy machine before a run).")
    out.append("")
    return out


def _isfloat(x):
    try:
        float(x)
        return True
    except (TypeError, ValueError):
        return False


def commands_section(res):
    m = res.meta
    out = ["## Commands", ""]
    if m.get("invocation"):
        out += ["Whole run:", "", "```sh", m["invocation"], "```", ""]
    out += [
        "Herald: each round registers its users (not measured) on a fresh temporary data "
        "directory and keeps a snapshot of it; every case runs on a fresh Herald process "
        "started on a copy of that snapshot and stopped with SIGTERM afterwards, so Herald "
        "is not running while RabbitMQ is measured:",
        "",
        "```sh",
        short_cmd(m.get("herald_cmd", "(not recorded)"), res),
        "```",
        "",
    ]
    out += [
        "Durability: Herald runs with its default `HERALD_DURABILITY=full` (a send is "
        "acknowledged once its group commit is fsynced). RabbitMQ gets durable "
        "queues and `persistent:true` messages; herald-bench sends without `receipt` "
        "headers, so RabbitMQ does not wait for its disk before routing a message.",
        "",
    ]
    if relay_ran(res):
        out += [
            "The relay (the machine's ceiling): every case on a fresh process, killed "
            "afterwards; herald-bench drives it with `--target stomp --durable`, the same "
            "frames as RabbitMQ's (the relay ignores the headers):",
            "",
            "```sh",
            short_cmd(m.get("relay_cmd") or "(not recorded)", res),
            "```",
            "",
        ]
    if m.get("herald_env_inherited", "").strip():
        out += [f"Other HERALD_* settings in the environment: `{m['herald_env_inherited'].strip()}`", ""]
    if any(r.get("server") == "rabbitmq" for r in res.records):
        out += [
            f"RabbitMQ {m.get('rabbitmq_version', '')} from the Debian package, plugins "
            f"`rabbitmq_stomp` and `rabbitmq_web_stomp`, Web-STOMP at `{m.get('rabbitmq_url', '?')}`, "
            f"guest/guest, durable queues and persistent messages. Its benchmark queues live in "
            f"the vhost `{m.get('rabbitmq_vhost', '?')}`, created fresh for each case and deleted "
            "at the end of RabbitMQ's turn; RabbitMQ keeps running, idle, while Herald runs.",
            "",
        ]
    out += ["Generator commands (round 1; `$WORK` is the run's temporary directory):", ""]
    first = min(res.rounds(), default=None)
    out.append("```sh")
    for s in SERVERS + (RELAY,):
        for case in ("find-max", "fixed", "stompjs", "fanout", "sync", "idle"):
            recs = res.runs(s, case).get(first, [])
            if recs and recs[0].get("cmd"):
                out.append(f"# {LABEL[s]}: {case}")
                out.append(short_cmd(recs[0]["cmd"], res))
    out += ["```", ""]
    return out




def before_section(res, before):
    out = ["## Before/after optimizations", ""]
    if before is None:
        out += [
            "No earlier results were given. To fill this section, run "
            "`scripts/bench_report.py <new results.jsonl> --before <old results.jsonl>` "
            "(or `BEFORE=<old results.jsonl> scripts/bench-vs-rabbitmq.sh`).",
            "",
        ]
        return out
    bm, am = before.meta, res.meta
    out += [
        f"Before: `{os.path.basename(before.path)}` (git {bm.get('herald_git', '?')}, "
        f"{bm.get('started_utc', '?')}). After: `{os.path.basename(res.path)}` "
        f"(git {am.get('herald_git', '?')}, {am.get('started_utc', '?')}).",
        "",
        "Change: after/before for rates, before/after for latencies, CPU and KiB "
        "(above 1× = better now). RabbitMQ's rows are a control for drift of the machine.",
        "",
        "| Metric | Server | Before | After | Change |",
        "|---|---|---|---|---|",
    ]
    any_row = False
    for label in KEY_METRICS:
        m = METRICS_BY_LABEL[label]
        for s in SERVERS:
            b, a = summary(m.values(before, s)), summary(m.values(res, s))
            if b is None and a is None:
                continue
            any_row = True
            change = None
            if a is not None and b is not None:
                x, y = (a[0], b[0]) if m.better == "higher" else (b[0], a[0])
                change = x / y if y else None
            out.append(f"| {label} ({m.unit}) | {LABEL[s]} | {fmt_summary(b)} | "
                       f"{fmt_summary(a)} | {fmt_ratio(change)} |")
    if not any_row:
        out.append("| (no comparable results) | | | | |")
    out.append("")
    return out


def reproduce_section(res):
    return [
        "## How to reproduce",
        "",
        "```sh",
        "scripts/bench-vs-rabbitmq.sh            # ROUNDS=3, the issue's bar configuration",
        "ROUNDS=5 CLIENTS=1000 IDLE_CONNECTIONS=10000 scripts/bench-vs-rabbitmq.sh",
        "BEFORE=docs/bench/results-<older>.jsonl scripts/bench-vs-rabbitmq.sh",
        "python3 scripts/bench_report.py docs/bench/results-<ts>.jsonl "
        "--before docs/bench/results-<older>.jsonl",
        "```",
        "",
        "The script installs RabbitMQ (`apt-get install rabbitmq-server`) if needed, puts "
        "STOMP and Web-STOMP on loopback, enables `rabbitmq_stomp` and `rabbitmq_web_stomp` "
        "(restarting RabbitMQ only when needed, e.g. to raise its open-files limit for the "
        "idle case), builds with `cargo build --release --bins`, then runs the rounds: per "
        "round Herald's cases (fixed, stompjs, find-max, fanout, sync, idle), then RabbitMQ's, "
        "then the relay's (`herald-bench relay`: fixed and find-max only); "
        "the stompjs case runs bench/stompjs/stompjs-bench.mjs (Node >= 20, `npm ci` there "
        "when needed) at FIXED_RATE with CLIENTS clients for FIXED_DURATION s. "
        "Knobs are environment variables, listed at the top of the script: ROUNDS, SERVERS, "
        "SCENARIOS, CLIENTS, START_RATE, STEP, STEP_DURATION, P99_MS, MAX_STEPS, FIXED_RATE, "
        "FIXED_DURATION, FANOUT_MEMBERS, FANOUT_RATE, FANOUT_DURATION, SYNC_MESSAGES, "
        "IDLE_CONNECTIONS, IDLE_CONNS_PER_USER, IDLE_SETTLE, GEN_THREADS, RELAY_PORT. Keep the "
        "machine otherwise idle: the script waits for a quiet machine before each case and records "
        "how busy it was.",
        "",
    ]


# ---------------------------------------------------------------- chart


def nice_ticks(lo, hi):
    """1-2-5 ticks between lo and hi (log scale)."""
    ticks = []
    for d in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0 ** d
            if lo <= v <= hi:
                ticks.append(v)
    return ticks


def tick_label(v, rate):
    if rate and v >= 1000:
        k = v / 1000
        return f"{k:g}k"
    return f"{v:g}"


def chart_svg(series, threshold, title):
    """series: list of (name, color, dashed, {rate: [(p99, good)]})."""
    w, h = 760, 480
    left, right, top, bottom = 70, 20, 78, 60
    pw, ph = w - left - right, h - top - bottom
    esc = html.escape
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{w / 2}" y="22" text-anchor="middle" font-size="15">{esc(title)}</text>',
    ]
    xs = [r for _, _, _, pts in series for r in pts]
    ys = [p for _, _, _, pts in series for v in pts.values() for p, _ in v]
    if not xs or not ys:
        out.append(f'<text x="{w / 2}" y="{h / 2}" text-anchor="middle">'
                   "no find-max steps in the results</text></svg>")
        return "\n".join(out) + "\n"
    if threshold:
        ys.append(threshold)
    x0, x1 = min(xs) / 1.15, max(xs) * 1.15
    y0, y1 = max(min(ys) / 1.5, 1e-3), max(ys) * 1.5
    lx0, lx1, ly0, ly1 = map(math.log10, (x0, x1, y0, y1))

    def px(x):
        return left + (math.log10(x) - lx0) / (lx1 - lx0) * pw

    def py(y):
        return top + ph - (math.log10(y) - ly0) / (ly1 - ly0) * ph

    xticks = nice_ticks(x0, x1)
    if len(xticks) < 3:
        xticks = sorted(set(xticks) | set(xs))
    for v in xticks:
        x = px(v)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">'
                   f"{tick_label(v, True)}</text>")
    for v in nice_ticks(y0, y1):
        y = py(v)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick_label(v, False)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{left + pw / 2}" y="{h - 18}" text-anchor="middle">'
               "offered rate, messages per second (log scale)</text>")
    out.append(f'<text x="18" y="{top + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 18 {top + ph / 2})">p99 latency, ms (log scale)</text>')
    if threshold:
        y = py(threshold)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" '
                   'stroke="#d62728" stroke-dasharray="6 4"/>')
        out.append(f'<text x="{left + pw - 4}" y="{y - 5:.1f}" text-anchor="end" fill="#d62728">'
                   f"p99 limit {threshold:g} ms</text>")
    for i, (name, color, dashed, pts) in enumerate(series):
        rates = sorted(pts)
        meds = [(r, statistics.median(p for p, _ in pts[r])) for r in rates]
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        line = " ".join(f"{px(r):.1f},{py(m):.1f}" for r, m in meds)
        out.append(f'<g class="series" data-name="{esc(name)}">')
        out.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        for r, m in meds:
            vals = [p for p, _ in pts[r]]
            x = px(r)
            if len(vals) > 1:
                out.append(f'<line x1="{x:.1f}" y1="{py(min(vals)):.1f}" x2="{x:.1f}" '
                           f'y2="{py(max(vals)):.1f}" stroke="{color}"/>')
            all_good = all(g for _, g in pts[r])
            fill = color if all_good else "white"
            out.append(f'<circle cx="{x:.1f}" cy="{py(m):.1f}" r="4" fill="{fill}" stroke="{color}" '
                       f'stroke-width="1.5"><title>{esc(name)}: {fmt(r)} msg/s, p99 median '
                       f"{fmt(m)} ms over {len(vals)} run(s)</title></circle>")
        out.append("</g>")
    # Legend above the plot: the series on one row, the markers below.
    lx, ly = left, 44
    for name, color, dashed, _ in series:
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 24}" y2="{ly}" stroke="{color}" '
                   f'stroke-width="2"{dash}/>')
        out.append(f'<text x="{lx + 30}" y="{ly + 4}">{esc(name)}</text>')
        lx += 30 + 7 * len(name) + 24
    ly += 18
    out.append(f'<circle cx="{left + 12}" cy="{ly}" r="4" fill="white" stroke="#333"/>')
    out.append(f'<text x="{left + 30}" y="{ly + 4}">a step failed the criteria at that rate; '
               "bars: min–max over rounds; points: median</text>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def threshold_of(res):
    for recs in res.runs("herald", "find-max").values():
        h = headline(recs)
        if h and num(h.get("p99_threshold_ms")):
            return h["p99_threshold_ms"]
    for recs in res.runs("rabbitmq", "find-max").values():
        h = headline(recs)
        if h and num(h.get("p99_threshold_ms")):
            return h["p99_threshold_ms"]
    p = res.knob("P99_MS")
    return float(p) if _isfloat(p) else None


# ---------------------------------------------------------------- main


def report(res, before, svg_rel, results_rel, notes):
    out = [
        "# Benchmarks: Herald vs RabbitMQ Web-STOMP",
        "",
        "<!-- Generated by scripts/bench_report.py from the results file below; do not edit. -->",
        "",
        f"Results: [`{os.path.basename(res.path)}`]({results_rel}), produced by "
        "`scripts/bench-vs-rabbitmq.sh` with `herald-bench`"
        + (" and, for the `stompjs` case, the stomp.js generator in `bench/stompjs`"
           if stompjs_ran(res) else "")
        + " (open loop: latency is measured "
        "from each message's due time, so a slow server cannot hide its delays). Every "
        "number below is computed from that file.",
        "",
    ]
    out += config_note(res)
    out += bar_section(res)
    out += results_section(res)
    out += [f"![p99 latency against offered rate]({svg_rel})", ""]
    out += generators_section(res)
    out += steps_section(res)
    out += per_round_section(res)
    out += health_section(res)
    out += before_section(res, before)
    out += notes
    out += machine_section(res)
    out += commands_section(res)
    out += reproduce_section(res)
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="JSONL written by scripts/bench-vs-rabbitmq.sh")
    ap.add_argument("--before", help="an earlier results file (Before/after section)")
    ap.add_argument("--out", default="docs/BENCHMARKS.md", help="Markdown output ('-': stdout)")
    ap.add_argument("--svg", default="docs/bench/latency-vs-rate.svg", help="SVG chart output")
    ap.add_argument(
        "--notes",
        default="docs/bench/NOTES.md",
        help="hand-written profiling notes included verbatim, if the file exists",
    )
    a = ap.parse_args(argv)
    try:
        res = Results(a.results)
        before = Results(a.before) if a.before else None
    except (OSError, ResultsError) as e:
        print(f"bench_report: {e}", file=sys.stderr)
        return 1
    if not res.records:
        print(f"bench_report: {a.results} has no benchmark records", file=sys.stderr)
        return 1

    series = [
        (LABEL[s], COLOR[s], False, find_max_steps(res, s))
        for s in SERVERS + (RELAY,)
        if find_max_steps(res, s)
    ]
    if before is not None and find_max_steps(before, "herald"):
        series.append(("Herald (before)", COLOR["before"], True, find_max_steps(before, "herald")))
    clients = res.knob("CLIENTS") or "?"
    title = f"p99 latency vs offered rate: find-max steps, durable 1:1, {clients} clients"
    svg = chart_svg(series, threshold_of(res), title)
    os.makedirs(os.path.dirname(os.path.abspath(a.svg)), exist_ok=True)
    with open(a.svg, "w", encoding="utf-8") as f:
        f.write(svg)

    out_dir = os.path.dirname(os.path.abspath(a.out)) if a.out != "-" else os.getcwd()
    svg_rel = os.path.relpath(os.path.abspath(a.svg), out_dir)
    results_rel = os.path.relpath(os.path.abspath(a.results), out_dir)
    notes = []
    if a.notes and os.path.exists(a.notes):
        with open(a.notes, encoding="utf-8") as f:
            notes = [f.read().rstrip("\n"), ""]
    text = report(res, before, svg_rel, results_rel, notes)
    if a.out == "-":
        sys.stdout.write(text)
    else:
        os.makedirs(out_dir, exist_ok=True)
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"bench_report: wrote {a.out} and {a.svg}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
