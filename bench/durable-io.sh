#!/usr/bin/env bash
# What the durable room asks of the disk under a steady chat load: syncs (fdatasync/fsync) per second and bytes
# written per text, counted for the whole server process over a 10 s stretch of the bench's measured window
# (perf's syscall tracepoints, /proc/PID/io's write_bytes; texts from the room's head before and after).
# Prints one line; keep it in the run's folder (docs/results/DATE-durable-vs-memory/io.txt).
#   RATE=1000 bench/durable-io.sh              # from the repository root; needs perf
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CHATLAB_BIN:-target/release/chatlab}
rate=${RATE:-1000}
senders=${SENDERS:-100}
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" --bind "127.0.0.1:$port" --data-dir "$dir/data" --rate-limit 0 --client-rate-limit 0 --max-sessions-per-client 0 \
  > /dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
until curl -sf "http://127.0.0.1:$port/healthz" > /dev/null; do sleep 0.1; done
"$bin" bench --url "http://127.0.0.1:$port" --server-pid "$pid" --techniques ws --participants 100 \
  --senders "$senders" --rate "$rate" --duration 25 --warmup 3 --format json --out "$dir/bench.json" > /dev/null &
bench=$!
head() { curl -s -X POST "http://127.0.0.1:$port/api/sessions" -d '{"transport":"poll"}' |
  python3 -c 'import sys, json; print(json.load(sys.stdin)["seq"])'; }
written() { awk '/^write_bytes/ {print $2}' "/proc/$pid/io"; }
sleep 12
s0=$(head); w0=$(written)
perf stat -x, -e syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync -p "$pid" -o "$dir/perf.txt" -- sleep 10
s1=$(head); w1=$(written)
wait "$bench"
syncs=$(awk -F, '/sys_enter_f/ {n += $1} END {print n}' "$dir/perf.txt")
texts=$((s1 - s0 - 1))
python3 - "$rate" "$senders" "$syncs" "$texts" "$((w1 - w0))" "$dir/bench.json" <<'PY'
import json, sys
rate, senders, syncs, texts, written, report = sys.argv[1:]
syncs, texts, written = int(syncs), int(texts), int(written)
r = json.load(open(report))["results"][0]
print(f"offered {rate} texts/s from {senders} senders, 100 receivers (ws): over 10 s, {texts} texts, "
      f"{syncs / 10:.0f} syncs/s, {texts / max(syncs, 1):.1f} texts per sync, {written / max(texts, 1):.0f} bytes "
      f"written per text; the bench's window: p99 {r['latency_ms']['p99']:.1f} ms, {r['deliveries_per_s']:.0f} "
      f"deliveries/s, {r['missed']} missed")
PY
