#!/usr/bin/env python3
"""Prints the tables of docs/techniques.md (and the matching ones of docs/benchmarks.md) from the bench reports in
docs/results/2026-11-26-techniques/.

Run from the repository root: python3 bench/tables.py [chat|burst|idle|bandwidth|rfc6202 ...]. Medians of several
runs are computed by `chatlab bench --from A --from B ... --format json`, so the figures are the bench's own;
CHATLAB_BIN names the binary (default: target/release/chatlab).
"""
import json
import os
import subprocess
import sys

BENCH = os.environ.get("CHATLAB_BIN", "./target/release/chatlab")
HERE = "docs/results/2026-11-26-techniques/"


def report(*names):
    args = [BENCH, "bench", "--format", "json"]
    for name in names:
        args += ["--from", HERE + name]
    return json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)


def num(x, digits=None):
    if x is None:
        return "–"
    if x == 0:
        return "0"
    if digits is None:
        digits = 0 if abs(x) >= 100 else 1 if abs(x) >= 10 else 2 if abs(x) >= 1 else 3
    return f"{x:,.{digits}f}"


def name(r):
    return {"seed": "seed (Node.js)"}.get(r["technique"], r["technique"])


def table(rep, rows):
    results = rep["results"]
    out = ["| | " + " | ".join(name(r) for r in results) + " |", "|---|" + "---:|" * len(results)]
    for title, cell in rows:
        out.append(f"| {title} | " + " | ".join(cell(r) for r in results) + " |")
    return "\n".join(out)


def latency(r):
    l = r["latency_ms"]
    return f"{num(l['p50'])} / {num(l['p99'])} / {num(l['max'])}" if r["deliveries"] else "–"


PER_DELIVERY = [
    ("latency p50 / p99 / max (ms)", latency),
    ("wire bytes down per delivery", lambda r: num(r["bytes_down_per_delivery"])),
    ("wire bytes up per delivery", lambda r: num(r["bytes_up_per_delivery"])),
    ("HTTP requests per delivery", lambda r: num(r["requests_per_delivery"])),
    ("empty polls", lambda r: str(r["empty_polls"])),
    ("server CPU ms per 1,000 deliveries", lambda r: num(r["server_cpu_ms_per_1000"])),
]
IDLE = [
    ("wire bytes down", lambda r: num(r["bytes_down_per_participant_min"])),
    ("wire bytes up", lambda r: num(r["bytes_up_per_participant_min"])),
    ("HTTP requests", lambda r: num(r["requests_per_participant_min"])),
    ("empty polls", lambda r: num(r["empty_polls"] / r["participants"] / (r["elapsed_s"] / 60))),
    ("server CPU ms", lambda r: num(r["server_cpu_ms_per_participant_min"])),
]


def bandwidth(minimal, browser):
    lines = ["| clients | " + " | ".join(f"{name(r)}" for r in minimal["results"]) + " |",
             "|---|" + "---:|" * len(minimal["results"])]
    per = {r["technique"]: r for r in minimal["results"]}
    lines.append("| bytes per delivery, minimal headers (down + up) | " + " | ".join(
        f"{num(r['bytes_down_per_delivery'])} + {num(r['bytes_up_per_delivery'])}" for r in minimal["results"]) + " |")
    for clients in (1_000, 10_000, 100_000):
        cells = []
        for r in minimal["results"]:
            bits = clients * (r["bytes_down_per_delivery"] + r["bytes_up_per_delivery"]) * 8
            cells.append(f"{num(bits / 1e6)} Mbit/s")
        lines.append(f"| {clients:,}, minimal headers | " + " | ".join(cells) + " |")
    bper = {r["technique"]: r for r in browser["results"]}
    lines.append("| bytes per delivery, browser headers (down + up) | " + " | ".join(
        f"{num(bper[t]['bytes_down_per_delivery'])} + {num(bper[t]['bytes_up_per_delivery'])}" if t in bper else "–"
        for t in per) + " |")
    for clients in (1_000, 10_000, 100_000):
        cells = []
        for t in per:
            r = bper.get(t)
            cells.append("–" if r is None else
                         f"{num(clients * (r['bytes_down_per_delivery'] + r['bytes_up_per_delivery']) * 8 / 1e6)} Mbit/s")
        lines.append(f"| {clients:,}, browser headers | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rfc6202(chat, burst):
    lines = ["| 25 ms each way | " + " | ".join(f"{name(r)} (chat)" for r in chat["results"]) + " | "
             + " | ".join(f"{name(r)} (burst)" for r in burst["results"]) + " |",
             "|---|" + "---:|" * (len(chat["results"]) + len(burst["results"]))]
    both = chat["results"] + burst["results"]
    lines.append("| p50 (ms) | " + " | ".join(num(r["latency_ms"]["p50"]) for r in both) + " |")
    lines.append("| p99 (ms) | " + " | ".join(num(r["latency_ms"]["p99"]) for r in both) + " |")
    lines.append("| max (ms) | " + " | ".join(num(r["latency_ms"]["max"]) for r in both) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    which = sys.argv[1:] or ["chat", "burst", "idle", "bandwidth", "rfc6202"]
    if "chat" in which:
        print("CHAT\n" + table(report("chat-50-run1.json", "chat-50-run2.json", "chat-50-run3.json"), PER_DELIVERY))
    if "burst" in which:
        print("BURST\n" + table(report("burst-50.json"), PER_DELIVERY))
    if "idle" in which:
        print("IDLE\n" + table(report("idle-50.json"), IDLE))
    if "bandwidth" in which:
        print("BANDWIDTH\n" + bandwidth(report("rate1-50.json"), report("rate1-50-browser.json")))
    if "rfc6202" in which:
        print("RFC6202\n" + rfc6202(report("chat-50-delay25.json"), report("burst-50-delay25.json")))
