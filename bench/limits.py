#!/usr/bin/env python3
"""Prints the tables of docs/benchmarks-history.md that compare chatlab with the Node.js seed and with a bare axum
handler (deliveries/s within 100 ms p99, CPU per 1,000 deliveries, idle memory and joins, 15,000 mixed
participants, wrk against the polls), from the bench reports in docs/results/.

One folder per series of runs; each folder's README.md names the server commit and the commands. Inside a folder
the file names keep the prefix they were written with (`s5t1-` is the series' server with --threads 1, `sN-paceM-`
or `sN-flushM-` with --flush-interval-ms=M, `*-100k-*` and `*-150k-*` the CPU comparison at 100,000 and 150,000
deliveries/s, `*-p1000-*` among 1,000 participants, `*-redis-*` with --broker redis://).

Run from the repository root: python3 bench/limits.py. Every figure comes from a `chatlab bench --out FILE.json`
report; where a measurement was run several times the median is printed next to each run's figure.
"""
import json
import os
import statistics

from tables import num

RESULTS = "docs/results/"
HERE = RESULTS
# A search ran "clean" when the machine's other processes took under this many CPU seconds per second.
CLEAN = 0.1


def folder(name):
    """Reads the reports that follow from docs/results/NAME/."""
    global HERE
    HERE = RESULTS + name + "/"


def load(name):
    path = HERE + name
    return json.load(open(path)) if os.path.exists(path) else None


def runs(prefix):
    out = []
    for i in range(1, 10):
        report = load(f"{prefix}-run{i}.json")
        if report is not None:
            out.append(report)
    return out


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def best(report, technique):
    for search in report.get("searches", []):
        if search["technique"] == technique:
            return search["best_deliveries_per_s"]
    return None


def others(p):
    """CPU s/s other processes took during a window (machine busy minus server minus bench)."""
    if p.get("machine_cpu_s") is None:
        return None
    used = (p.get("server_cpu_s") or 0) + (p.get("client_cpu_s") or 0)
    return max(0.0, p["machine_cpu_s"] - used) / p["elapsed_s"]


def search_others(report, technique):
    """The median over a search's windows of the other processes' CPU s/s."""
    for search in report.get("searches", []):
        if search["technique"] == technique:
            return med([others(step["result"]) for step in search["steps"]])
    return None


def result(report, technique):
    for r in report["results"]:
        if r["technique"] == technique:
            return r
    return None


def row(cells):
    """One Markdown table row."""
    return "| " + " | ".join(cells) + " |"


def find_max(participants, techniques, prefix=""):
    reports = runs(f"{prefix}max{participants}")
    if not reports:
        return
    print(f"\n### {prefix}Highest deliveries/s with p99 < 100 ms and nothing lost, {participants} participants\n")
    ratios = [t for t in techniques if t != "ws"]
    ratio_heads = [f"ws / {t}" if t == "seed" else f"{t} / ws" for t in ratios]
    print(row(["run", *techniques, *ratio_heads, "other processes' CPU s/s (" + ", ".join(techniques) + ")"]))
    print("|---|" + "---:|" * (len(techniques) + len(ratios) + 1))
    rows = []
    for i, report in enumerate(reports, 1):
        b = {t: best(report, t) for t in techniques}
        r = {}
        for t in ratios:
            if b.get("ws") and b.get(t):
                r[t] = b["ws"] / b[t] if t == "seed" else b[t] / b["ws"]
            else:
                r[t] = None
        rows.append((b, r))
        load = ", ".join(num(search_others(report, t), 2) for t in techniques)
        print(row([str(i), *(num(b[t]) for t in techniques), *(num(r[t], 2) for t in ratios), load]))
    print(row(["**median**", *(num(med([b[t] for b, _ in rows])) for t in techniques),
               *(num(med([r[t] for _, r in rows]), 2) for t in ratios), ""]))
    # Clean: a technique's search during which other processes took under 0.1 CPU s/s (median of its windows).
    clean = {t: med([b[t] for (b, _), rep in zip(rows, reports) if (search_others(rep, t) or 0) < CLEAN])
             for t in techniques}
    cr = {t: (clean["ws"] / clean[t] if t == "seed" else clean[t] / clean["ws"]) if clean["ws"] and clean[t] else None
          for t in ratios}
    counts = ", ".join(
        f"{t} {sum(1 for rep in reports if (search_others(rep, t) or 0) < CLEAN)}" for t in techniques)
    print(row(["**median of clean runs**", *(num(clean[t]) for t in techniques), *(num(cr[t], 2) for t in ratios),
               f"clean runs: {counts}"]))


def cpu(prefix=""):
    reports = runs(f"{prefix}cpu100")
    if not reports:
        return
    print(f"\n### {prefix}Server CPU ms per 1,000 deliveries at the same offered load\n")
    print("| run | deliveries/s (ws / seed) | p99 ms (ws / seed) | ws | seed | seed / ws | other processes' CPU s/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    ratios, ws_all, seed_all = [], [], []
    for i, report in enumerate(reports, 1):
        ws, seed = result(report, "ws"), result(report, "seed")
        ratio = seed["server_cpu_ms_per_1000"] / ws["server_cpu_ms_per_1000"]
        ratios.append(ratio)
        ws_all.append(ws["server_cpu_ms_per_1000"])
        seed_all.append(seed["server_cpu_ms_per_1000"])
        print(f"| {i} | {num(ws['deliveries_per_s'])} / {num(seed['deliveries_per_s'])} | "
              f"{num(ws['latency_ms']['p99'])} / {num(seed['latency_ms']['p99'])} | "
              f"{num(ws['server_cpu_ms_per_1000'])} | {num(seed['server_cpu_ms_per_1000'])} | {num(ratio, 2)} | "
              f"{num(others(ws), 2)}, {num(others(seed), 2)} |")
    print(f"| **median** | | | {num(med(ws_all))} | {num(med(seed_all))} | {num(med(ratios), 2)} | |")


def before_after(title, technique, before, after):
    """One technique's runs at two commits, side by side: CPU per 1,000 deliveries and latency."""
    pairs = list(zip(runs(before), runs(after)))
    if not pairs:
        return
    print(f"\n### {title}\n")
    print("| run | ms per 1,000 deliveries (before / after) | p50 ms (before / after) | p99 ms (before / after) |")
    print("|---|---:|---:|---:|")
    cpu = ([], [])
    for i, reports in enumerate(pairs, 1):
        b, a = (result(r, technique) for r in reports)
        cpu[0].append(b["server_cpu_ms_per_1000"])
        cpu[1].append(a["server_cpu_ms_per_1000"])
        print(f"| {i} | {num(b['server_cpu_ms_per_1000'])} / {num(a['server_cpu_ms_per_1000'])} | "
              f"{num(b['latency_ms']['p50'])} / {num(a['latency_ms']['p50'])} | "
              f"{num(b['latency_ms']['p99'])} / {num(a['latency_ms']['p99'])} |")
    print(f"| **median** | {num(med(cpu[0]))} / {num(med(cpu[1]))} | | |")


def idle(prefix=""):
    reports = runs(f"{prefix}idle10k")
    seeds = [(n, load(f"idleseed{n}.json")) for n in (1000, 2000, 3000, 5000)] if not prefix else []
    seeds = [(n, r) for n, r in seeds if r is not None]
    if not reports and not seeds:
        return
    print(f"\n### {prefix}Idle WebSocket participants: server RSS per participant and time to join\n")
    print("| server, run | participants | joined in (s) | joins in flight | RSS before / after (MiB) | KiB per participant |")
    print("|---|---:|---:|---:|---:|---:|")
    per, joins = [], []
    for i, report in enumerate(reports, 1):
        r = report["results"][0]
        rss = r["server_rss"]
        per.append(rss["per_participant_bytes"] / 1024)
        joins.append(r["join_s"])
        print(f"| chatlab, run {i} | {r['participants']:,} | {num(r['join_s'])} | {r['join_concurrency']} | "
              f"{num(rss['before_join_kib'] / 1024)} / {num(rss['after_join_kib'] / 1024)} | {num(per[-1])} |")
    if reports:
        print(f"| **chatlab, median** | | {num(med(joins))} | | | {num(med(per))} |")
    for n, report in seeds:
        r = report["results"][0]
        rss = r["server_rss"]
        print(f"| seed | {r['participants']:,} | {num(r['join_s'])} | {r['join_concurrency']} | "
              f"{num(rss['before_join_kib'] / 1024)} / {num(rss['after_join_kib'] / 1024)} | "
              f"{num(rss['per_participant_bytes'] / 1024)} |")
    if len(seeds) >= 2:
        # The seed announces every join to everyone: time ~ a * N^2. Least squares on the runs.
        xs = [r["results"][0]["participants"] for _, r in seeds]
        ys = [r["results"][0]["join_s"] for _, r in seeds]
        a = sum(y * x * x for x, y in zip(xs, ys)) / sum(x ** 4 for x in xs)
        fit = ", ".join(f"{x:,}: {num(y)} s measured, {num(a * x * x)} s fitted" for x, y in zip(xs, ys))
        print(f"\nSeed join time fitted as a·N² (a = {a:.3g} s): {fit}; "
              f"extrapolated 5,000: {num(a * 25e6)} s, 10,000: {num(a * 1e8)} s.")


def mix(prefix=""):
    reports = runs(f"{prefix}mix15k")
    if not reports:
        return
    print(f"\n### {prefix}15,000 participants mixed across the four techniques\n")
    print("| run | participants (join errors) | joined in (s) | texts sent / failed | deliveries/s | missed | "
          "p50 / p99 / max (ms) | RSS in the window: first / max / last (MiB) | samples |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, report in enumerate(reports, 1):
        r = report["results"][0]
        w = r["server_rss"]["window_kib"]
        lat = r["latency_ms"]
        print(f"| {i} | {r['participants']:,} ({r['join_errors']}) | {num(r['join_s'])} | {r['sent']:,} / "
              f"{r['send_errors']} | {num(r['deliveries_per_s'])} | {r['missed']} | {num(lat['p50'])} / "
              f"{num(lat['p99'])} / {num(lat['max'])} | {num(w[0] / 1024)} / {num(max(w) / 1024)} / "
              f"{num(w[-1] / 1024)} | {len(w)} |")


def wrk(name="wrk"):
    report = load(f"{name}.json")
    if report is None:
        return
    w = report["wrk"]
    bare = f", bare server `{w['bare']}`" if w.get("bare") else ""
    print(f"\n### {name}: polls against a bare axum handler (`{w['wrk']}`{bare})\n")
    # Reports from s7e-wrk on say what the machine's other processes took in each round.
    others = any(t.get("others_cpu_s_per_s") for t in w["targets"])
    extra = " other processes' CPU s/s each round |" if others else ""
    print("| target | requests/s, median | of bare | each round | non-2xx | rounds the room moved |" + extra)
    print("|---|---:|---:|---|---:|---:|" + ("---|" if others else ""))
    for t in w["targets"]:
        rounds = ", ".join(num(x) for x in t["requests_per_s"])
        shares = " " + ", ".join(num(x, 2) for x in t.get("others_cpu_s_per_s", [])) + " |" if others else ""
        print(f"| {t['name']} `{t['path']}` | {num(t['median_requests_per_s'])} | {t['ratio_to_bare'] * 100:.0f}% | "
              f"{rounds} | {t['non_2xx']} | {t['rounds_room_moved']} |" + shares)


folder("2026-11-26-seed-81c40cd")
find_max(100, ["ws", "sse", "longpoll", "seed"])
find_max(1000, ["ws", "seed"])
cpu()
folder("2026-11-26-seed-d01403c")
find_max(100, ["ws", "sse", "longpoll", "seed"], "head-")
find_max(1000, ["ws", "seed"], "head-")
cpu("head-")
folder("2026-11-26-seed-81c40cd")
idle()
mix()
wrk()
# One broker call per visit, jemalloc, --flush-interval-ms (s2-flushN-* with --flush-interval-ms=N).
folder("2026-11-26-one-broker-call-per-visit")
find_max(100, ["ws", "sse", "longpoll", "seed"], "s2-")
find_max(1000, ["ws", "seed"], "s2-")
find_max(1000, ["ws", "seed"], "s2-flush20-")
cpu("s2-")
cpu("s2-flush20-")
cpu("s2-flush50-")
idle("s2-")
mix("s2-")
wrk("s2-wrk")
wrk("s2-wrk-run2")
wrk("s2-wrk-run3")
# Streams paced when the server is busy, at 20 ms (the default) and at 50 ms.
folder("2026-11-26-pacing-when-busy")
find_max(100, ["ws", "sse", "longpoll", "seed"], "s3-")
find_max(1000, ["ws", "seed"], "s3-")
find_max(1000, ["ws", "seed"], "s3-flush50-")
cpu("s3-")
cpu("s3-100k-")
cpu("s3-flush50-")
cpu("s3-flush50-100k-")
mix("s3-")
find_max(100, ["ws", "sse", "longpoll"], "s3-lp-")
find_max(100, ["ws", "sse", "longpoll", "seed"], "s3b-")
find_max(1000, ["ws", "seed"], "s3b-")
wrk("s3-wrk")
folder("2026-11-26-own-websocket-frames")
cpu("s4-")
cpu("s4-100k-")
cpu("s4-150k-")
idle("s4-")
find_max(100, ["ws", "sse", "longpoll", "seed"], "s4-")
find_max(1000, ["ws", "seed"], "s4-")
mix("s4-")
wrk("s4-wrk")
# The ring fan-out drained by paced streams, with the default threads and with --threads 1.
folder("2026-11-26-ring-and-threads")
cpu("s5-")
cpu("s5-100k-")
cpu("s5-150k-")
cpu("s5t1-")
cpu("s5t1-100k-")
cpu("s5t1-150k-")
idle("s5-")
find_max(100, ["ws", "sse", "longpoll", "seed"], "s5-")
find_max(1000, ["ws", "seed"], "s5-")
find_max(100, ["ws"], "s5t1-")
mix("s5-")
wrk("s5-wrk")
# The cheaper empty poll (wrk, idle), and the pacing interval against CPU at 30,000 deliveries/s.
folder("2026-11-26-cheaper-empty-poll")
for pace in (20, 40, 60, 80):
    cpu(f"s6-pace{pace}-")
idle("s6-")
wrk("s6-wrk")
wrk("s6t1-wrk")
find_max(1000, ["ws"], "s6t1-")
# One broker call per poll (wrk, two runs, and on one thread); CPU at 30,000/s among 1,000.
folder("2026-11-26-one-broker-call-per-poll")
wrk("s7-wrk")
wrk("s7b-wrk")
wrk("s7t1-wrk")
wrk("s7c-wrk")
wrk("s7d-wrk")
wrk("s7e-wrk")
cpu("s7-p1000-")
wrk("s7-redis-before-wrk")
wrk("s7-redis-after-wrk")
before_after("s7-redis-lp: long polls over Redis before and after the one-step open", "longpoll",
             "s7-redis-lp-before", "s7-redis-lp-after")
# CPU at 30,000/s among 1,000 with the default flags, never paced, and on one thread.
folder("2026-11-27-cpu-among-1000")
cpu("s8-p1000-")
cpu("s8-p1000-pace0-")
cpu("s8-p1000-t1-")
idle("s8-")
