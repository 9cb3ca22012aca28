#!/usr/bin/env python3
"""The durable-against-memory table of docs/benchmarks.md from the JSON reports in this directory:
for each bench and broker, the best passing window of `--find-max` (p99 < 100 ms, nothing lost) of each round,
and the median over rounds."""
import glob, json, os, re, statistics

here = os.path.dirname(os.path.abspath(__file__))
rows = {}
for path in sorted(glob.glob(os.path.join(here, "*-*-senders-*-*.json"))):
    name = os.path.basename(path)[:-5]
    bench, broker, round_ = re.match(r"(.+-senders)-(durable|memory)-(\d+)", name).groups()
    report = json.load(open(path))
    search = report["searches"][0]
    passed = [s["result"] for s in search["steps"] if s["passed"]]
    best = max(passed, key=lambda r: r["deliveries_per_s"]) if passed else None
    if best is None:
        continue
    accepted = (best["sent"] - best["send_errors"]) / best["elapsed_s"]
    rows.setdefault((bench, broker), []).append((best["deliveries_per_s"], accepted, best["latency_ms"]["p99"]))

print("| bench | broker | rounds | deliveries/s (median) | texts/s accepted | p99 ms | durable / memory |")
print("|---|---|---:|---:|---:|---:|---:|")
for bench in sorted({b for b, _ in rows}):
    med = {}
    for broker in ("durable", "memory"):
        runs = rows.get((bench, broker), [])
        if not runs:
            continue
        med[broker] = statistics.median(r[0] for r in runs)
        texts = statistics.median(r[1] for r in runs)
        p99 = statistics.median(r[2] for r in runs)
        each = ", ".join(f"{r[0]:,.0f}" for r in runs)
        ratio = f"{med['durable'] / med['memory']:.2f}" if broker == "memory" and "durable" in med else ""
        print(f"| {bench} | {broker} | {len(runs)} ({each}) | {med[broker]:,.0f} | {texts:,.0f} | {p99:.1f} | {ratio} |")
