#!/usr/bin/env bash
# The durable room (the default broker) against the in-memory one (--broker memory), the same run, same machine:
#
#  1. WebSocket deliveries/s within 100 ms p99 (`--find-max`): 100 participants, 10 senders;
#  2. the same with 100 senders (every participant sends): texts/s accepted at the best rate;
#  3. SSE (texts sent by POST, answered 202 once durable), 100 participants, 100 senders;
#  4. the durable room's syncs per second and bytes written per text under a steady load (io.sh).
#
# Every bench starts its own chatlab (a durable one in a temporary --data-dir). Results go to OUT, by default
# docs/results/DATE-durable-vs-memory/ (today's date); RUN numbers the run (1, 2, 3: run it three times).
#   RUN=1 bench/durable-run.sh                 # from the repository root, after cargo build --release
#   python3 bench/durable.py                   # the table of docs/benchmarks.md from the newest such folder
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CHATLAB_BIN:-target/release/chatlab}
out=${OUT:-docs/results/$(date -u +%F)-durable-vs-memory}
round=${RUN:-${ROUND:-1}}
mkdir -p "$out"
# Each search runs on both rooms one right after the other, so a pair sees the same machine.
search() {
  local name=$1; shift
  for broker in durable memory; do
    extra=()
    [ "$broker" = memory ] && extra=(--server-arg=--broker=memory)
    "$bin" bench "$@" --find-max --rate 400 --duration 5 --warmup 3 "${extra[@]}" --format json \
      --out "$out/$name-$broker-$round.json" > /dev/null
  done
}
search ws-10-senders --techniques ws --participants 100 --senders 10
search ws-100-senders --techniques ws --participants 100 --senders 100
search sse-100-senders --techniques sse --participants 100 --senders 100
