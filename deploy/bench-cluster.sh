#!/usr/bin/env bash
# Measures one chatlab (memory broker) against one, two and three chatlab processes sharing a room through Redis,
# with `chatlab bench` spreading its participants over the processes. Writes its reports to OUT, by default
# docs/results/DATE-cluster-over-redis/ (render one with `chatlab bench --from FILE.json`). Everything runs on
# 127.0.0.1; every process started here is stopped at exit.
#
#   deploy/bench-cluster.sh [path/to/chatlab]     (default: target/release/chatlab; needs redis-server)
set -euo pipefail
cd "$(dirname "$0")/.."
chatlab="${1:-target/release/chatlab}"
out=${OUT:-docs/results/$(date -u +%F)-cluster-over-redis}
work="$(mktemp -d)"
mkdir -p "$out"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Redis as docs/deployment.md recommends it: every acknowledged write in the append-only file first.
redis-server --port 6391 --bind 127.0.0.1 --save "" --appendonly yes --appendfsync always --dir "$work" \
  --daemonize no --logfile "$work/redis.log" &
pids+=($!)
for port in 19201 19202 19203; do
  "$chatlab" --bind "127.0.0.1:$port" --broker redis://127.0.0.1:6391 --rate-limit 0 --client-rate-limit 0 --max-sessions-per-client 0 >"$work/$port.log" 2>&1 &
  pids+=($!)
  eval "pid_$port=$!"
done
"$chatlab" --bind 127.0.0.1:19210 --broker memory --rate-limit 0 --client-rate-limit 0 --max-sessions-per-client 0 >"$work/memory.log" 2>&1 &
pids+=($!)
pid_memory=$!
sleep 1

targets() {
  case "$1" in
    mem) echo "--url http://127.0.0.1:19210 --server-pid $pid_memory" ;;
    r1) echo "--url http://127.0.0.1:19201 --server-pid $pid_19201" ;;
    r2) echo "--url http://127.0.0.1:19201 --url http://127.0.0.1:19202 --server-pid $pid_19201 --server-pid $pid_19202" ;;
    r3) echo "--url http://127.0.0.1:19201 --url http://127.0.0.1:19202 --url http://127.0.0.1:19203" \
             "--server-pid $pid_19201 --server-pid $pid_19202 --server-pid $pid_19203" ;;
  esac
}

for setup in mem r1 r2 r3; do
  # Light chat, every technique: 50 participants each sending one text a second.
  "$chatlab" bench $(targets $setup) --scenario chat --participants 50 --send-every 1 --duration 10 --warmup 2 \
    --out "$out/all-$setup.json" >/dev/null
  # Heavy WebSocket bursts: 200 participants each sending 2, 5 or 10 texts at once, every second.
  for burst in 2 5 10; do
    "$chatlab" bench $(targets $setup) --techniques ws --scenario burst --participants 200 --send-every 1 \
      --burst "$burst" --duration 8 --warmup 1 --out "$out/ws-$setup-b$burst.json" >/dev/null
  done
done
echo "reports in $out/"
