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


summary = []  # issue 18's targets: [target, kind, rserv, logical, met]


def target_row(target, kind, rs, lr, ok):
    summary.append([target, kind, rs, lr, check(ok)])


def cmp(x, op, limit):
    if x is None:
        return None
    return x >= limit if op == ">=" else x <= limit


CAPTURE_TPS, CAPTURE_BULK = 0.95, 1.3
REPL_TPS, REPL_BULK = 0.85, 1.2
CATCHUP_X, BIG_X = 2.0, 1.2
LAG_300, LAG_HALF = 0.025, 0.25
COPY_X, RSS_MB = 1.0, 100


def config_row(phase, kind, label, metric, op=None, limit=None, summary_label=None):
    """One figure of a phase with the three configurations none / rserv / logical: the medians
    (with ranges), each ratio to none, rserv ÷ logical and the target (rserv's ratio to none)."""
    m = {c: med(phase, metric, c) for c in ("none", "rserv", "logical")}
    r_rs, r_lr = ratio(m["rserv"], m["none"]), ratio(m["logical"], m["none"])
    ok = cmp(r_rs, op, limit) if op else None
    if summary_label:
        target_row(summary_label, kind, f"{fmt(r_rs)}×", f"{fmt(r_lr)}×", ok)
    return [
        label,
        spread(phase, metric, "none"),
        spread(phase, metric, "rserv"),
        spread(phase, metric, "logical"),
        fmt(r_rs), fmt(r_lr), fmt(ratio(m["rserv"], m["logical"])),
        f"rserv {'≥' if op == '>=' else '≤'} {limit}×: {check(ok)}" if op else "–",
    ]


RATIO_COLUMNS = ["rserv ratio", "logical ratio", "rserv ÷ logical", "target"]

# ------------------------------------------------------------------ 1. capture only
if any(k[0] == "capture" for k in data):
    body = [
        config_row("capture", "capture only", "TPC-B TPS (higher is better)", "tpcb_tps", ">=", CAPTURE_TPS,
                   f"TPC-B TPS with capture ≥ {CAPTURE_TPS}× no replication"),
        config_row("capture", "capture only", f"single-row UPDATE loop, {info.get('loop')} updates, s", "loop_secs"),
        config_row("capture", "capture only", "bulk UPDATE … WHERE aid <= 200000, s", "bulk_secs", "<=", CAPTURE_BULK,
                   f"bulk UPDATE of 200k rows with capture ≤ {CAPTURE_BULK}× no replication"),
    ]
    table(
        "1. Capture only (master; median (min–max) of interleaved rounds)",
        ["figure", "no replication", "rserv: capture triggers, no slave, no replicate",
         "logical: slot decoded to /dev/null, no apply"] + RATIO_COLUMNS,
        body,
    )
    lb, lr = med("capture", "bulk_log_bytes", "rserv"), med("capture", "bulk_log_rows", "rserv")
    tb, tr = med("capture", "tpcb_log_bytes", "rserv"), med("capture", "tpcb_log_rows", "rserv")
    drain = med("capture", "dec_drain", "logical")
    note(
        "**Capture only, both sides:** rserv's rounds run its capture triggers with no slave and no "
        "`replicate` (the log is emptied before each round); built-in logical replication's run a "
        "publication of the same tables and a fresh `pgoutput` slot whose changes `pg_recvlogical` "
        "receives into /dev/null (the walsender decodes everything, nothing is applied). Ratios are "
        "configuration ÷ no replication (for times, > 1 is slower). `_rserv_log_` bytes per captured change "
        f"(pg_total_relation_size ÷ rows): {fmt(ratio(lb, lr))} after the bulk UPDATE ({fmt(lr)} rows), "
        f"{fmt(ratio(tb, tr))} after a TPC-B round ({fmt(tr)} rows). The logical decoder still needed a "
        f"median {fmt(drain)} s after a round to reach the end of the round's WAL."
    )

# ------------------------------------------------------------------ 2. replicating
if any(k[0] == "replicating" for k in data):
    rep = "replicating"
    body = [
        config_row(rep, rep, "TPC-B TPS (higher is better)", "tpcb_tps", ">=", REPL_TPS,
                   f"TPC-B TPS replicating ≥ {REPL_TPS}× no replication"),
        config_row(rep, rep, "TPC-B: the slave still behind after the round, s", "tpcb_drain_secs"),
        config_row(rep, rep, "bulk workload, script wall time, s", "bulk_secs", "<=", REPL_BULK,
                   f"bulk workload with replication running ≤ {REPL_BULK}× no replication"),
    ]
    # until the slave has it all: compared with the script's time without replication
    none_bulk = med(rep, "bulk_secs", "none")
    all_rs, all_lr = med(rep, "bulk_slave_secs", "rserv"), med(rep, "bulk_slave_secs", "logical")
    body.append([
        "bulk workload, from its start until the slave has it all, s",
        "–", spread(rep, "bulk_slave_secs", "rserv"), spread(rep, "bulk_slave_secs", "logical"),
        fmt(ratio(all_rs, none_bulk)), fmt(ratio(all_lr, none_bulk)), fmt(ratio(all_rs, all_lr)), "reported",
    ])
    target_row("bulk workload: until the slave has it all, s (reported)", rep, fmt(all_rs), fmt(all_lr), None)
    rss = values(rep, "rss_kb_tpcb", "rserv") + values(rep, "rss_kb_bulk", "rserv")
    table(
        "2. Replicating (master and slave on the same 2 cores; median (min–max) of interleaved rounds)",
        ["figure", "no replication", "rserv: `replicate run` applying", "logical: subscription applying"]
        + RATIO_COLUMNS,
        body,
    )
    note(
        "**Replicating, both sides:** rserv's rounds run `replicate run` (the daemon) applying into the "
        "slave cluster; built-in logical replication's run an enabled subscription on the slave cluster. "
        "Each starts its round with the slave current and is stopped (daemon SIGTERM / subscription "
        "disabled) once the slave has everything, so neither runs during the other rounds; after every "
        "round the slave was compared with the master (row counts and md5 of every row of the four "
        "tables). The **bulk workload** (issue 18) is one psql script of autocommit statements into "
        "pgbench_accounts: 20 UPDATEs of 10,000 rows and 50 INSERTs of 1,000 fresh rows, interleaved "
        "(200k + 50k changed rows). Ratios are configuration ÷ no replication (for times, > 1 is slower); "
        "\"until the slave has it all\" is divided by the script's time without replication; \"the slave "
        "still behind\" is the time from the end of the round until the slave had everything. "
        f"`replicate run` peak RSS (VmHWM): {fmt(max(rss) / 1024) if rss else '–'} MB."
    )

# ------------------------------------------------------------------ 3. catch-up
if any(k[0] == "catchup" for k in data):
    body = []
    for kind, label in (("large", "few large transactions (4)"), ("small", "many small (1000-row) transactions"),
                        ("big", f"few large transactions (4), table 10× ({int(info.get('big_scale', '0')) * 100000:,} rows)")):
        rs = med("catchup", f"rows_per_s_{kind}", "rserv")
        lr = med("catchup", f"rows_per_s_{kind}", "logical")
        if rs is None and lr is None:
            continue
        rr = ratio(rs, lr)
        rss = values("catchup", f"rss_kb_{kind}", "rserv")
        ok = cmp(rr, ">=", CATCHUP_X)
        body.append([
            label,
            spread("catchup", f"rows_per_s_{kind}", "rserv"),
            spread("catchup", f"rows_per_s_{kind}", "logical"),
            fmt(rr),
            f"{fmt(med('catchup', f'secs_{kind}', 'rserv'))} / {fmt(med('catchup', f'secs_{kind}', 'logical'))}",
            fmt(max(rss) / 1024) if rss else "–",
            f"≥ {CATCHUP_X:g}×: {check(ok)}",
        ])
        if kind != "big":
            target_row(f"catch-up ≥ {CATCHUP_X:g}× built-in rows/s, {label}", "catch-up",
                       f"{fmt(rs)} rows/s ({fmt(rr)}×)", f"{fmt(lr)} rows/s", ok)
    table(
        f"3. Catch-up of a {int(float(info.get('backlog', 0))):,}-row backlog (updates + inserts), rows/s, median (min–max)",
        ["backlog", "rserv rows/s (one `replicate` cycle)", "logical rows/s (subscription re-enabled)",
         "rserv ÷ logical", "seconds rserv / logical", "replicate peak RSS, MB", "target"],
        body,
    )
    if values("catchup", "secs_big", "rserv") or values("catchup", "secs_big", "logical"):
        body = []
        for sysname, label in (("rserv", "rserv"), ("logical", "built-in logical")):
            small_t, big_t = med("catchup", "secs_large", sysname), med("catchup", "secs_big", sysname)
            rr = ratio(big_t, small_t)
            ok = cmp(rr, "<=", BIG_X) if sysname == "rserv" else None
            body.append([label, fmt(small_t), fmt(big_t), fmt(rr),
                         f"≤ {BIG_X}×: {check(ok)}" if sysname == "rserv" else "–"])
        r_rs = ratio(med("catchup", "secs_big", "rserv"), med("catchup", "secs_large", "rserv"))
        r_lr = ratio(med("catchup", "secs_big", "logical"), med("catchup", "secs_large", "logical"))
        target_row(f"catch-up time follows the backlog: 10× the table, same backlog ≤ {BIG_X}× the time", "catch-up",
                   f"{fmt(r_rs)}×", f"{fmt(r_lr)}×", cmp(r_rs, "<=", BIG_X))
        table(
            "3b. Catch-up time follows the backlog, not the table (the same few-large-transactions backlog)",
            ["system", f"seconds, {int(info.get('scale', '10')) * 100000:,}-row table",
             f"seconds, {int(info.get('big_scale', '0')) * 100000:,}-row table", "ratio 10× ÷ 1×", "target"],
            body,
        )
    parts = []
    for kind in ("large", "small", "big"):
        b, r = med("catchup", f"log_bytes_{kind}", "rserv"), med("catchup", f"log_rows_{kind}", "rserv")
        if b is None:
            continue
        parts.append(
            f"{kind}: {fmt(ratio(b, r))} B/change ({fmt(r)} rows, {fmt(b / 1048576 if b else None)} MB); "
            f"after the cycle's rserv_clean_log() {fmt(med('catchup', f'log_bytes_after_clean_{kind}', 'rserv') / 1048576 if b else None)} MB "
            f"({fmt(med('catchup', f'log_rows_after_clean_{kind}', 'rserv'))} rows left), after VACUUM "
            f"{fmt(med('catchup', f'log_bytes_after_vacuum_{kind}', 'rserv') / 1024 if b else None)} kB"
        )
    note("`_rserv_log_` with the backlog: " + "; ".join(parts) + ".")
    note(
        "**Catch-up, both sides:** the backlog is built on the master with the slave stopped (rserv: no "
        "`replicate` running; logical: subscription disabled); time runs from starting `replicate` (one "
        "cycle, which must drain everything: a second cycle finds nothing) / `ALTER SUBSCRIPTION … ENABLE` "
        "until the slave has everything. After each catch-up the slave was compared with the master (row "
        "counts and md5 of every row of the four tables; on the 10× table md5 of the accounts rows the "
        "backlogs touched and the row count). Building the backlog on the master took a median "
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
        target = LAG_300 if rate <= 300 else LAG_HALF
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
                f"p95 ≤ {target}: {check(None if p95 is None else p95 <= target)}"
                if sysname == "daemon" or not DAEMON else "–",
            ])
        daemon_run = lag_runs.get(("daemon" if DAEMON else "rserv", rate))
        logical_run = lag_runs.get(("logical", rate))
        if daemon_run or logical_run:
            p_rs = pct([x for _, x in daemon_run["delay"]], 95) if daemon_run else None
            p_lr = pct([x for _, x in logical_run["delay"]], 95) if logical_run else None
            where = "300 TPS" if rate <= 300 else f"{rate} TPS (half the maximum)"
            target_row(f"lag p95 ≤ {target} s at {where}, `replicate run`", "replicating",
                       f"{fmt(p_rs)} s", f"{fmt(p_lr)} s", cmp(p_rs, "<=", target))
    table(
        "4. Continuous lag while replicating, seconds (heartbeat every 100 ms on the master; the slave sampled every 10 ms)",
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
            "and a loop of one-cycle `replicate` processes run back to back (each connecting anew); the targets "
            f"are for the daemon. `replicate run` peak RSS (VmHWM): "
            f"{fmt(max(values('lag', 'rss_kb', 'daemon')) / 1024) if values('lag', 'rss_kb', 'daemon') else '–'} MB."
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
            ax.axhline(LAG_300 if rate <= 300 else LAG_HALF, color="grey", ls="--", lw=0.8, label="p95 target (issue 18)")
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

# ------------------------------------------------------------------ 5. initial copy
if any(k[0] == "copy" for k in data):
    first_rows = med("copy", "first_cycle_rows", "rserv") or 0
    first_secs = med("copy", "first_cycle_secs", "rserv")
    if first_rows >= int(info.get("scale", "10")) * 100000:
        note(f"The first `replicate` cycle after registration (catch-up setup, slave already holding the rows) sent "
             f"{fmt(first_rows)} rows in {fmt(first_secs)} s ({fmt(first_rows / first_secs)} rows/s): this build "
             "copies every newly registered slave table on its first cycle, even one that already holds the "
             "rows (they are replaced); not counted as the initial-copy figure.")
if values("copy", "dump_secs", "pg_dump"):
    rps = med("copy", "dump_rows_per_s", "pg_dump")
    size = med("copy", "bytes", "pg_dump")
    rs_rps = med("copy", "dump_rows_per_s", "rserv")
    rr = ratio(rs_rps, rps)
    rss = values("copy", "copy_rss_kb", "rserv")
    if rs_rps is None:
        rs_row = ["rserv", "not implemented (issue 4)", "–", "–", "–", f"≥ {COPY_X} × pg_dump | psql: –"]
    else:
        rs_row = ["rserv: `replicate --create-tables` into an empty database", spread("copy", "dump_secs", "rserv"),
                  fmt(rs_rps), fmt(rr), fmt(max(rss) / 1024) if rss else "–",
                  f"≥ {COPY_X} × pg_dump | psql: {check(rr >= COPY_X)}"]
        target_row(f"initial copy ≥ {COPY_X}× `pg_dump | psql`", "initial copy", f"{fmt(rr)}×", "–", rr >= COPY_X)
    table(
        f"5. Initial copy of pgbench_accounts ({int(info.get('scale', '10')) * 100000:,} rows, "
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

# ------------------------------------------------------------------ RSS
rss_kb = (values("catchup", "rss_kb_large", "rserv") + values("catchup", "rss_kb_small", "rserv")
          + values("catchup", "rss_kb_big", "rserv") + values("replicating", "rss_kb_tpcb", "rserv")
          + values("replicating", "rss_kb_bulk", "rserv") + values("lag", "rss_kb", "daemon")
          + values("copy", "copy_rss_kb", "rserv"))
if rss_kb:
    target_row(f"`replicate` peak RSS < {RSS_MB} MB (catch-up, daemon, initial copy)", "all", f"{fmt(max(rss_kb) / 1024)} MB",
               "–", max(rss_kb) / 1024 < RSS_MB)

# ------------------------------------------------------------------ 6. peers
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

# issue 18's targets first, the detailed tables after them
detail_md, detail_txt = rows_md[:], rows_txt[:]
rows_md.clear()
rows_txt.clear()
if summary:
    table(
        "Issue 18's targets, like with like (figures from the tables below)",
        ["target", "kind", "rserv", "built-in logical", "rserv meets it?"],
        summary,
    )
    note(
        "**capture only**: rserv's capture triggers without slave or `replicate` against a logical slot "
        "decoded to nowhere; **replicating**: `replicate run` applying into the slave against a subscription "
        "applying, both on the same 2 cores as the master; **catch-up**: a backlog built with replication "
        "stopped, then drained (one `replicate` cycle / the subscription re-enabled). Ratios are to the "
        "same run's no-replication figure unless the target says otherwise."
    )
summary_md, summary_txt = rows_md[:], rows_txt[:]
rows_md[:] = summary_md + detail_md
rows_txt[:] = summary_txt + detail_txt

print("\n".join(rows_txt))
print()
print("Note: " + noise)

dur = int(info.get("duration_s", "0"))
md = [
    "# rserv benchmark results",
    "",
    "Generated by `bench/run.sh` (see `bench/README.md`); targets from issue 18. Every figure is the",
    "median of interleaved rounds in one run, with the range in parentheses, and each ratio is",
    "taken against the reference measured in the same run. Like is measured with like: **capture",
    "only** (section 1: rserv's triggers with no slave against a logical slot decoded to /dev/null),",
    "**replicating** (sections 2 and 4: `replicate run` applying against a subscription applying),",
    "**catch-up** (section 3: a backlog drained by one `replicate` cycle against a re-enabled",
    "subscription).",
    "",
    f"- **Command:** `{info.get('command', '').strip()}` — {info.get('date')}, took {dur // 60} min {dur % 60} s",
    f"- **Machine:** {info.get('nproc')} cores ({info.get('cpu')}), memory {info.get('memory')}",
    f"- **PostgreSQL:** {info.get('pg_version')}",
    f"- **Settings** (both clusters, defaults otherwise; fsync on): {info.get('settings')}; "
    "unix sockets only, master and slave clusters on the same machine",
    f"- **rserv:** commit {info.get('rserv_commit')}, release build",
    f"- **Parameters:** pgbench scale {info.get('scale')}, `-c 4 -j 2 -T {info.get('secs')}` (simple protocol), "
    f"rounds {info.get('rounds')}, single-row loop {info.get('loop')} updates, backlog {info.get('backlog')} rows "
    f"(and the same on a pgbench scale {info.get('big_scale', '–')} table), "
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
