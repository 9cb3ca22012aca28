#!/bin/bash
# Instructions per empty short poll, chatlab against the bare axum handler of `chatlab bench --wrk`, counted by
# callgrind (repeatable where wall-clock figures on a shared machine are not). Each server runs under callgrind
# and answers 1,000 and then, in a second run, 6,000 polls sent one at a time on one keep-alive connection; the
# difference of the two totals over 5,000 is the cost of one poll (start-up and shutdown cancel out).
#
# Run from the repository root after `cargo build --release`; needs valgrind, curl and python3. Ports 8297, 8298.
set -euo pipefail
BIN=${BIN:-target/release/chatlab}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

# N keep-alive GETs of PATH on one connection to PORT, each answer read whole before the next request.
client() {
  python3 - "$@" <<'PY'
import socket, sys
port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port))
request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
buf = b""
for _ in range(n):
    s.sendall(request)
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].decode()
            length = next(int(l.split(":")[1]) for l in head.split("\r\n") if l.lower().startswith("content-length"))
            if len(buf) >= end + 4 + length:
                assert head.startswith("HTTP/1.1 200"), head
                buf = buf[end + 4 + length:]
                break
        buf += s.recv(65536)
PY
}

# total N: instructions of both servers over N polls, as "chatlab bare".
total() {
  local n=$1
  valgrind --tool=callgrind --callgrind-out-file="$OUT/chatlab.$n" "$BIN" --bind 127.0.0.1:8297 --rate-limit 0 \
    --threads 1 >/dev/null 2>&1 &
  local chatlab=$!
  valgrind --tool=callgrind --callgrind-out-file="$OUT/bare.$n" "$BIN" bench-bare --bind 127.0.0.1:8298 \
    >/dev/null 2>&1 &
  local bare=$!
  for _ in $(seq 100); do
    curl -sf http://127.0.0.1:8297/healthz >/dev/null && curl -sf http://127.0.0.1:8298/ >/dev/null && break
    sleep 0.3
  done
  local session
  session=$(curl -sf -X POST -H 'content-type: application/json' -d '{"transport":"poll"}' \
    http://127.0.0.1:8297/api/sessions | python3 -c 'import json,sys; print(json.load(sys.stdin)["session"])')
  client 8297 "/api/poll?session=$session&since=1" "$n"
  client 8298 "/api/poll?session=$session&since=1" "$n"
  kill -TERM "$chatlab" "$bare"
  wait "$chatlab" "$bare" || true
  for server in chatlab bare; do
    sed -n 's/^summary: //p' "$OUT/$server.$n"* | head -1
  done | paste -sd' '
}

read -r c1 b1 <<<"$(total 1000)"
read -r c6 b6 <<<"$(total 6000)"
echo "instructions per empty poll: chatlab $(((c6 - c1) / 5000)), bare axum $(((b6 - b1) / 5000))"
