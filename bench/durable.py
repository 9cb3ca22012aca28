#!/usr/bin/env python3
"""The durable-against-memory table of docs/benchmarks.md from the JSON reports of bench/durable-run.sh:
for each bench and broker, the best passing window of `--find-max` (p99 < 100 ms, nothing lost) of each run,
the best of the runs (the one least disturbed by the machine's other load) and the median.

    python3 bench/durable.py [docs/results/DATE-durable-vs-memory]    # default: the newest such folder
"""
import glob, json, os, re, statistics, sys

here = sys.argv[1] if len(sys.argv) > 1 else sorted(glob.glob("docs/results/*-durable-vs-memory"))[-1]
rows = {}
for path in sorted(glob.glob(os.path.join(here, "*-*-senders-*-*.json"))):
    name = os.path.basename(path)[:-5]
    bench, broker, run = re.match(r"(.+-senders)-(durable|memory)-(\d+)", name).groups()
    report = json.load(open(path))
    search = report["searches"][0]
    passed = [s["result"] for s in search["steps"] if s["passed"]]
    best = max(passed, key=lambda r: r["deliveries_per_s"]) if passed else None
    if best is None:
        continue
    accepted = (best["sent"] - best["send_errors"]) / best["elapsed_s"]
    rows.setdefault((bench, broker), []).append((best["deliveries_per_s"], accepted, best["latency_ms"]["p99"]))

print("| bench | broker | best deliveries/s, each run | best of the runs | median | texts/s accepted at the best | durable / memory, best (median) |")
print("|---|---|---:|---:|---:|---:|---:|")
for bench in sorted({b for b, _ in rows}):
    best, med = {}, {}
    for broker in ("durable", "memory"):
        runs = rows.get((bench, broker), [])
        if not runs:
            continue
        top = max(runs, key=lambda r: r[0])
        best[broker], med[broker] = top[0], statistics.median(r[0] for r in runs)
        each = ", ".join(f"{r[0]:,.0f}" for r in runs)
        ratio = ""
        if broker == "memory" and "durable" in best:
            ratio = f"{best['durable'] / best['memory']:.2f} ({med['durable'] / med['memory']:.2f})"
        print(f"| {bench} | {broker} | {each} | {best[broker]:,.0f} | {med[broker]:,.0f} | {top[1]:,.0f} | {ratio} |")
