#!/usr/bin/env bash
# Runs Autobahn|Testsuite's core cases (autobahn-spec.json: 1-7, 9, 10; 12/13 are permessage-deflate, which
# chatlab does not offer) against `chatlab --echo` with strict closes, and compares each case's result with
# expected.json: every case OK, except 6.4.3/6.4.4 NON-STRICT (invalid UTF-8 inside a fragmented text is found
# when the message is complete, not at the first bad fragment: the RFC allows either) and 7.1.6/7.13.1/7.13.2
# INFORMATIONAL (the suite only reports what the server did). Fails when a case's result differs.
#
#   autobahn/run.sh [CHATLAB_BIN]   (default target/release/chatlab; the first run installs the suite, ~1 min)
#
# AUTOBAHN_HOME (default /tmp/peers/autobahn), AUTOBAHN_OUT (default target/autobahn): see autobahn.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-$here/../target/release/chatlab}"
export AUTOBAHN_OUT="${AUTOBAHN_OUT:-$here/../target/autobahn}" AUTOBAHN_STRICT_CLOSE=1 AUTOBAHN_TIMEOUT="${AUTOBAHN_TIMEOUT:-300}"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin" --bind "127.0.0.1:$port" --echo --broker memory >"${TMPDIR:-/tmp}/chatlab-autobahn.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
status=0
bash "$here/autobahn.sh" "ws://127.0.0.1:$port/echo" || status=$?
python3 - "$AUTOBAHN_OUT/index.json" "$here/expected.json" <<'PY' || status=1
import json, sys
got = {k: {"behavior": v["behavior"], "behaviorClose": v["behaviorClose"]}
       for cases in json.load(open(sys.argv[1])).values() for k, v in cases.items()}
expected = json.load(open(sys.argv[2]))
diff = [(k, expected.get(k), got.get(k)) for k in sorted(set(got) | set(expected)) if got.get(k) != expected.get(k)]
for case, want, have in diff:
    print("autobahn: case %s expected %s, got %s" % (case, want, have))
print("autobahn: %d cases as expected, %d differ" % (len(got) - len(diff), len(diff)))
sys.exit(1 if diff else 0)
PY
exit "$status"
