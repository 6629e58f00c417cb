#!/usr/bin/env python3
"""Turn bench/run.sh's raw data into the figures table (stdout), RESULTS.md and lag.png.

Usage: python3 bench/report.py OUT_DIR BENCH_DIR

OUT_DIR holds results.tsv (phase, metric, config, round, value), info.tsv (key, value) and
lag-<system>-<rate>.csv (sample epoch, lag seconds). BENCH_DIR receives RESULTS.md and lag.png;
its notes.md (hand-written findings) is appended to RESULTS.md.
"""

import csv
import os
import statistics
import sys
from collections import defaultdict

out_dir, bench_dir = sys.argv[1], sys.argv[2]

data = defaultdict(list)  # (phase, metric, config) -> [(round, value)]
path = os.path.join(out_dir, "results.tsv")
if os.path.exists(path):
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 5 or parts[4] == "":
                continue
            phase, metric, config, rnd, value = parts
            data[(phase, metric, config)].append((rnd, float(value)))

info = {}
with open(os.path.join(out_dir, "info.tsv")) as f:
    for line in f:
        k, _, v = line.rstrip("\n").partition("\t")
        info[k] = v


def values(phase, metric, config):
    return [v for _, v in data.get((phase, metric, config), [])]


def med(phase, metric, config):
    v = values(phase, metric, config)
    return statistics.median(v) if v else None


def fmt(x, digits=3):
    if x is None:
        return "–"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def spread(phase, metric, config):
    v = values(phase, metric, config)
    if not v:
        return "–"
    if len(v) == 1:
        return fmt(v[0])
    return f"{fmt(statistics.median(v))} ({fmt(min(v))}–{fmt(max(v))})"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def check(ok):
    return "–" if ok is None else ("met" if ok else "**missed**")


rows_md = []  # markdown lines of the figures section
rows_txt = []  # plain-text lines for stdout


def table(title, header, body):
    rows_md.append(f"\n### {title}\n")
    rows_md.append("| " + " | ".join(header) + " |")
    rows_md.append("|" + "|".join("---" for _ in header) + "|")
    for r in body:
        rows_md.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    rows_txt.append("")
    rows_txt.append(title)
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    rows_txt.append(line)
    rows_txt.append("-" * len(line))
    for r in body:
        rows_txt.append("  ".join(str(x).replace("**", "").ljust(w) for x, w in zip(r, widths)))


def note(text):
    rows_md.append(f"\n{text}")
    rows_txt.append(text.replace("**", "").replace("`", ""))


# ------------------------------------------------------------------ 1. capture
if any(k[0] == "capture" for k in data):
    body = []
    tps = {c: med("capture", "tpcb_tps", c) for c in ("none", "rserv", "logical")}
    r_rs, r_lr = ratio(tps["rserv"], tps["none"]), ratio(tps["logical"], tps["none"])
    body.append([
        "TPC-B TPS (higher is better)",
        spread("capture", "tpcb_tps", "none"),
        spread("capture", "tpcb_tps", "rserv"),
        spread("capture", "tpcb_tps", "logical"),
        fmt(r_rs), fmt(r_lr),
        f"rserv ≥ 0.90: {check(None if r_rs is None else r_rs >= 0.90)}",
    ])
    loop = {c: med("capture", "loop_secs", c) for c in ("none", "rserv", "logical")}
    body.append([
        f"single-row UPDATE loop, {info.get('loop')} updates, s",
        spread("capture", "loop_secs", "none"),
        spread("capture", "loop_secs", "rserv"),
        spread("capture", "loop_secs", "logical"),
        fmt(ratio(loop["rserv"], loop["none"])), fmt(ratio(loop["logical"], loop["none"])),
        "–",
    ])
    bulk = {c: med("capture", "bulk_secs", c) for c in ("none", "rserv", "logical")}
    b_rs = ratio(bulk["rserv"], bulk["none"])
    body.append([
        "bulk UPDATE … WHERE aid <= 200000, s",
        spread("capture", "bulk_secs", "none"),
        spread("capture", "bulk_secs", "rserv"),
        spread("capture", "bulk_secs", "logical"),
        fmt(b_rs), fmt(ratio(bulk["logical"], bulk["none"])),
        f"rserv ≤ 1.5×: {check(None if b_rs is None else b_rs <= 1.5)}",
    ])
    table(
        "1. Capture overhead (master; median (min–max) of interleaved rounds)",
        ["figure", "no replication", "rserv (capture only)", "logical (pub+sub)", "rserv ratio", "logical ratio", "target"],
        body,
    )
    lb, lr = med("capture", "bulk_log_bytes", "rserv"), med("capture", "bulk_log_rows", "rserv")
    tb, tr = med("capture", "tpcb_log_bytes", "rserv"), med("capture", "tpcb_log_rows", "rserv")
    drain = med("capture", "lr_drain", "logical")
    note(
        "Ratios are configuration ÷ no replication (for times, > 1 is slower). `_rserv_log_` bytes per "
        f"captured change (pg_total_relation_size ÷ rows): {fmt(ratio(lb, lr))} after the bulk UPDATE "
        f"({fmt(lr)} rows), {fmt(ratio(tb, tr))} after a TPC-B round ({fmt(tr)} rows). The logical "
        f"configuration's subscriber (same machine) still needed a median {fmt(drain)} s after a round "
        "to catch up; rserv's capture-only rounds run no slave at all."
    )

# ------------------------------------------------------------------ 2. catch-up
if any(k[0] == "catchup" for k in data):
    body = []
    for kind, label in (("large", "few large transactions (4)"), ("small", "many small (1000-row) transactions")):
        rs = med("catchup", f"rows_per_s_{kind}", "rserv")
        lr = med("catchup", f"rows_per_s_{kind}", "logical")
        rr = ratio(rs, lr)
        rss = values("catchup", f"rss_kb_{kind}", "rserv")
        body.append([
            label,
            spread("catchup", f"rows_per_s_{kind}", "rserv"),
            spread("catchup", f"rows_per_s_{kind}", "logical"),
            fmt(rr),
            f"{fmt(med('catchup', f'secs_{kind}', 'rserv'))} / {fmt(med('catchup', f'secs_{kind}', 'logical'))}",
            fmt(max(rss) / 1024) if rss else "–",
            f"≥ 2×: {check(None if rr is None else rr >= 2)}; RSS < 100 MB: {check(None if not rss else max(rss) / 1024 < 100)}",
        ])
    table(
        f"2. Catch-up of a {int(float(info.get('backlog', 0))):,}-row backlog (updates + inserts), rows/s, median (min–max)",
        ["backlog", "rserv rows/s", "logical rows/s", "rserv ÷ logical", "seconds rserv / logical", "replicate peak RSS, MB", "target"],
        body,
    )
    parts = []
    for kind in ("large", "small"):
        b, r = med("catchup", f"log_bytes_{kind}", "rserv"), med("catchup", f"log_rows_{kind}", "rserv")
        parts.append(
            f"{kind}: {fmt(ratio(b, r))} B/change ({fmt(r)} rows, {fmt(b / 1048576 if b else None)} MB); "
            f"after the cycle's rserv_clean_log() {fmt(med('catchup', f'log_bytes_after_clean_{kind}', 'rserv') / 1048576 if b else None)} MB "
            f"({fmt(med('catchup', f'log_rows_after_clean_{kind}', 'rserv'))} rows left), after VACUUM "
            f"{fmt(med('catchup', f'log_bytes_after_vacuum_{kind}', 'rserv') / 1024 if b else None)} kB"
        )
    note("`_rserv_log_` with the backlog: " + "; ".join(parts) + ".")
    note(
        "Time runs from starting `replicate` (one cycle) / `ALTER SUBSCRIPTION … ENABLE` until the slave has "
        "everything; the slave was compared with the master (row counts and md5 of every row of the four "
        "tables) after each catch-up. Building the backlog on the master took a median "
        f"{fmt(med('catchup', 'build_secs_large', 'rserv'))} s / {fmt(med('catchup', 'build_secs_small', 'rserv'))} s "
        f"(large / small) with rserv capture, {fmt(med('catchup', 'build_secs_large', 'logical'))} s / "
        f"{fmt(med('catchup', 'build_secs_small', 'logical'))} s with a publication."
    )

# ------------------------------------------------------------------ 3. lag
def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def read_pairs(path):
    pts = []
    with open(path) as f:
        for row in csv.reader(f):
            try:
                pts.append(tuple(float(x) for x in row))
            except ValueError:
                pass
    return pts


lag_runs = {}  # (system, rate) -> dict(stale=[(t, s)], delay=[(ts, d)], unseen=n)
for name in sorted(os.listdir(out_dir)):
    if not (name.startswith("lag-") and name.endswith(".csv")):
        continue
    sysname, rate = name[4:-4].split("-")
    samples = sorted(p for p in read_pairs(os.path.join(out_dir, name)) if len(p) == 2)
    hb_path = os.path.join(out_dir, f"hb-{sysname}-{rate}.csv")
    beats = sorted(p[0] for p in read_pairs(hb_path) if len(p) == 1) if os.path.exists(hb_path) else []
    if not samples:
        continue
    stale = [(t, t - ts) for t, ts in samples]
    # delivery delay of heartbeat h: first sample whose visible ts >= h, minus h (10 ms
    # resolution); a heartbeat overwritten before the slave saw it counts as delivered with the
    # first later one the slave shows (its change is then contained in the slave's state)
    delay, unseen, k = [], 0, 0
    first_t = samples[0][0]
    last_t = samples[-1][0]
    for h in beats:
        # only heartbeats written while sampling ran (the writer runs 2 s longer on each side);
        # those of the last second may legitimately still be on their way
        if h < first_t or h > last_t - 1.0:
            continue
        while k < len(samples) and samples[k][1] < h - 1e-7:
            k += 1
        if k == len(samples):
            unseen += 1
            continue
        delay.append((h, max(0.0, samples[k][0] - h)))
    lag_runs[(sysname, int(rate))] = {"stale": stale, "delay": delay, "unseen": unseen}

DAEMON = "daemon" in info.get("lag_systems", "")
LABELS = {
    "daemon": "rserv: replicate run (daemon)",
    "rserv": "rserv: replicate cycle loop" if DAEMON else "rserv (cycle loop, no daemon yet)",
    "logical": "built-in logical replication",
}
if lag_runs:
    body = []
    rates = sorted({r for _, r in lag_runs})
    for rate in rates:
        target = 0.1 if rate <= 300 else 0.5
        for sysname in ("daemon", "rserv", "logical"):
            run = lag_runs.get((sysname, rate))
            if not run:
                continue
            d = [x for _, x in run["delay"]]
            st = [x for _, x in run["stale"]]
            p95 = pct(d, 95)
            label = LABELS[sysname]
            extra = ""
            if sysname == "rserv":
                cyc = [v for r, v in data.get(("lag", "cycles", "rserv"), []) if int(r) == rate]
                cs = [v for r, v in data.get(("lag", "cycle_secs", "rserv"), []) if int(r) == rate]
                extra = f"{int(cyc[0])} cycles, {fmt(cs[0])} s each" if cyc and cs else ""
            ach = [v for r, v in data.get(("lag", "achieved_tps", sysname), []) if int(r) == rate]
            body.append([
                f"{rate}", label, fmt(ach[0]) if ach else "–",
                fmt(pct(d, 50)), fmt(p95), fmt(pct(d, 99)), fmt(max(d) if d else None),
                f"{fmt(pct(st, 50))} / {fmt(pct(st, 95))} / {fmt(pct(st, 99))} / {fmt(max(st))}",
                f"{len(d)}" + (f" (+{run['unseen']} unseen)" if run["unseen"] else ""), extra,
                f"p95 ≤ {target}: {check(None if p95 is None else p95 <= target)}",
            ])
    table(
        "3. Continuous lag, seconds (heartbeat every 100 ms on the master; the slave sampled every 10 ms)",
        ["pgbench -R", "system", "achieved TPS", "delay p50", "p95", "p99", "max",
         "staleness p50 / p95 / p99 / max", "heartbeats", "cycles", "target (delay p95)"],
        body,
    )
    note(
        "**Delay** of a heartbeat = first time the slave shows it (or a later one) − the time it was written on "
        "the master: the replication lag, to 10 ms. **Staleness** = sample time − heartbeat timestamp visible "
        "on the slave (`now() - hb.ts`), which adds the heartbeat's own age (0–0.1 s, p50 ≈ 0.05 s) even for a "
        "slave that is never behind. " + (
            "rserv is measured twice: `replicate run` (the daemon: woken by the master's NOTIFY, connections kept) "
            "and a loop of one-cycle `replicate` processes run back to back (each connecting anew)."
            if DAEMON else
            "rserv has no daemon yet (`replicate run`): its figures come from `replicate` one-cycle processes "
            "run back to back, each connecting to both databases anew.")
    )

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(len(rates), 1, figsize=(10, 4.6 * len(rates)), squeeze=False)
        colors = {"daemon": "tab:green", "rserv": "tab:red", "logical": "tab:blue"}
        for ax, rate in zip(axes[:, 0], rates):
            for sysname in ("daemon", "rserv", "logical"):
                run = lag_runs.get((sysname, rate))
                if not run:
                    continue
                t0 = run["stale"][0][0]
                name = LABELS[sysname]
                d = [x for _, x in run["delay"]]
                ax.plot([t - t0 for t, _ in run["stale"]], [max(x, 1e-3) for _, x in run["stale"]],
                        lw=0.5, alpha=0.2, color=colors[sysname])
                ax.plot([h - t0 for h, _ in run["delay"]], [max(x, 1e-3) for x in d], lw=1.2,
                        marker=".", ms=3, color=colors[sysname],
                        label=f"{name}: delay p50 {pct(d, 50):.3f} s, p95 {pct(d, 95):.3f} s, max {max(d):.3f} s")
            ax.axhline(0.1 if rate <= 300 else 0.5, color="grey", ls="--", lw=0.8, label="p95 target")
            ax.set_yscale("log")
            ax.set_ylim(1e-3, None)
            ax.set_title(f"pgbench TPC-B at -R {rate} TPS" + (" (about half the maximum)" if rate != 300 else ""))
            ax.set_xlabel("seconds since sampling started")
            ax.set_ylabel("seconds (log scale)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=8, ncol=1, frameon=False)
        fig.suptitle("Slave lag from a 100 ms heartbeat — bold: delay of each heartbeat; faint: staleness (now − hb.ts) every 10 ms\n"
                     + info.get("date", ""), fontsize=9)
        fig.tight_layout()
        fig.savefig(os.path.join(bench_dir, "lag.png"), dpi=110)
        note("The lag-over-time plot is `bench/lag.png`.")
    except ImportError:
        note("matplotlib is missing: no lag.png was drawn.")

# ------------------------------------------------------------------ 4. initial copy
if any(k[0] == "copy" for k in data):
    first_rows = med("copy", "first_cycle_rows", "rserv") or 0
    first_secs = med("copy", "first_cycle_secs", "rserv")
    if first_rows >= int(info.get("scale", "10")) * 100000:
        note(f"The first `replicate` cycle after registration (catch-up setup, slave already holding the rows) sent "
             f"{fmt(first_rows)} rows in {fmt(first_secs)} s ({fmt(first_rows / first_secs)} rows/s): this build "
             "copies every newly registered slave table on its first cycle, even one that already holds the "
             "rows (they are replaced); not counted as the initial-copy figure.")
    secs = med("copy", "dump_secs", "pg_dump")
    rps = med("copy", "dump_rows_per_s", "pg_dump")
    size = med("copy", "bytes", "pg_dump")
    rs_rps = med("copy", "dump_rows_per_s", "rserv")
    rr = ratio(rs_rps, rps)
    rss = values("copy", "copy_rss_kb", "rserv")
    if rs_rps is None:
        rs_row = ["rserv", "not implemented (issue 4)", "–", "–", "–", "≥ 0.8 × pg_dump | psql: –"]
    else:
        rs_row = ["rserv: `replicate --create-tables` into an empty database", spread("copy", "dump_secs", "rserv"),
                  fmt(rs_rps), fmt(rr), fmt(max(rss) / 1024) if rss else "–",
                  f"≥ 0.8 × pg_dump | psql: {check(rr >= 0.8)}"]
    table(
        f"4. Initial copy of pgbench_accounts ({int(info.get('scale', '10')) * 100000:,} rows, "
        f"{fmt(size / 1048576 if size else None)} MB with its index)",
        ["method", "seconds", "rows/s", "ratio to pg_dump", "peak RSS, MB", "target"],
        [
            rs_row,
            ["`pg_dump -t pgbench_accounts | psql`", spread("copy", "dump_secs", "pg_dump"), fmt(rps), "1", "–", "reference"],
        ],
    )
    if rs_rps is not None:
        note("Both copy into an empty database on the slave cluster, rounds interleaved; rserv's copy is "
             "checked equal to the master (md5 of every row).")

# ------------------------------------------------------------------ 5. peers
peer_lines = [f"`{k[5:]}`: {v}" for k, v in info.items() if k.startswith("peer_")]
note("**Peers (Londiste, Bucardo, Slony-I):** " + info.get("peers", "skipped")
     + (" — Debian candidates: " + ", ".join(peer_lines) if peer_lines else ""))

# ------------------------------------------------------------------ output
quick = info.get("quick") == "1"
noise = (
    f"Load average {info.get('loadavg_start')} at the start and {info.get('loadavg_end')} at the end; "
    f"{info.get('other_postgres')}. The machine is shared: other engineers' test clusters and builds "
    "may have run during the measurement, so the figures are noisy; compare ratios taken in the same "
    "run, not absolute numbers across runs."
)
if quick:
    noise += " This was a --quick run (short rounds, 100k-row backlog): indicative only."

print("\n".join(rows_txt))
print()
print("Note: " + noise)

dur = int(info.get("duration_s", "0"))
md = [
    "# rserv benchmark results",
    "",
    "Generated by `bench/run.sh` (see `bench/README.md`); targets from issue 6. Every figure is the",
    "median of interleaved rounds in one run, with the range in parentheses, and each ratio is",
    "taken against the reference measured in the same run.",
    "",
    f"- **Command:** `{info.get('command', '').strip()}` — {info.get('date')}, took {dur // 60} min {dur % 60} s",
    f"- **Machine:** {info.get('nproc')} cores ({info.get('cpu')}), memory {info.get('memory')}",
    f"- **PostgreSQL:** {info.get('pg_version')}",
    f"- **Settings** (both clusters, defaults otherwise; fsync on): {info.get('settings')}; "
    "unix sockets only, master and slave clusters on the same machine",
    f"- **rserv:** commit {info.get('rserv_commit')}, release build",
    f"- **Parameters:** pgbench scale {info.get('scale')}, `-c 4 -j 2 -T {info.get('secs')}` (simple protocol), "
    f"rounds {info.get('rounds')}, single-row loop {info.get('loop')} updates, backlog {info.get('backlog')} rows, "
    f"lag runs {info.get('lag_secs')} s at 300 TPS and at half of the {fmt(float(info['max_tps'])) if info.get('max_tps') else '–'} TPS maximum",
    f"- **Noise:** {noise}",
    "",
    "## Figures",
] + rows_md + [""]
notes = os.path.join(bench_dir, "notes.md")
if os.path.exists(notes):
    with open(notes) as f:
        md += ["", f.read().rstrip(), ""]
with open(os.path.join(bench_dir, "RESULTS.md"), "w") as f:
    f.write("\n".join(md))
