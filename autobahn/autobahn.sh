#!/usr/bin/env bash
# Run the Autobahn|Testsuite fuzzingclient against a running WebSocket server.
#
#   autobahn.sh WS_URL [CASES]
#     WS_URL  e.g. ws://127.0.0.1:9001/ws   (the server must echo text+binary messages)
#     CASES   optional comma list overriding the spec's "cases", e.g. '1.*,5.*,7.1.1'
#             (then the spec's "exclude-cases" is emptied, so '12.*' etc. can be asked for)
#
# Spec: autobahn-spec.json beside this script (core set: 1-7, 9, 10; 12/13 =
# permessage-deflate excluded). Its "servers"/"outdir" are replaced at run time.
#
# Env:
#   AUTOBAHN_HOME      install dir (default /tmp/peers/autobahn); installed on first use
#                      by install_autobahn.sh beside this script
#   AUTOBAHN_OUT       report dir (default ./autobahn-reports); HTML at $AUTOBAHN_OUT/index.html
#   AUTOBAHN_TIMEOUT   seconds for the whole wstest run (default 300; the core set takes
#                      ~12 s and everything incl. compression ~26 s on 2 cores)
#   AUTOBAHN_STRICT_CLOSE=1  also count cases whose close behaviour is UNCLEAN / WRONG CODE
#                      as failed (default: reported as a warning line only)
#
# Counting (per case, field "behavior" of index.json):
#   passed: OK, NON-STRICT, INFORMATIONAL
#   failed: FAILED, UNIMPLEMENTED (and anything else unknown)
# Last line: "N passed, N failed". Exit 0 only if failed == 0 and at least one case ran.
# Loopback only: refuses URLs whose host is not 127.x / localhost / [::1].
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
URL="${1:?usage: autobahn.sh WS_URL [CASES]}"
CASES="${2:-}"
export AUTOBAHN_HOME="${AUTOBAHN_HOME:-/tmp/peers/autobahn}"
OUT="${AUTOBAHN_OUT:-$PWD/autobahn-reports}"
TIMEOUT="${AUTOBAHN_TIMEOUT:-300}"

case "$URL" in
  ws://127.*|ws://localhost[:/]*|ws://localhost|ws://\[::1\]*) ;;
  *) echo "autobahn.sh: refusing non-loopback URL: $URL" >&2; exit 2 ;;
esac

if ! [ -x "$AUTOBAHN_HOME/wstest" ]; then
  echo "autobahn.sh: wstest not found in $AUTOBAHN_HOME, installing..." >&2
  bash "$HERE/install_autobahn.sh" >&2
fi

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
rm -f "$OUT/index.json"
SPEC="$OUT/spec.json"
python3 - "$HERE/autobahn-spec.json" "$SPEC" "$URL" "$OUT" "$CASES" <<'PY'
import json, sys
src, dst, url, out, cases = sys.argv[1:6]
spec = json.load(open(src))
spec["servers"] = [{"agent": "server-under-test", "url": url}]
spec["outdir"] = out
if cases.strip():
    spec["cases"] = [c.strip() for c in cases.split(",") if c.strip()]
    spec["exclude-cases"] = []
json.dump(spec, open(dst, "w"), indent=2)
PY

start=$(date +%s.%N)
# wstest writes reports into "outdir"; run it from $OUT so nothing lands elsewhere.
# Pitfall: with 0 matching cases wstest never exits (reactor keeps running), so watch
# its log and stop it; `timeout` forwards our TERM to wstest.
( cd "$OUT" && exec timeout "$TIMEOUT" "$AUTOBAHN_HOME/wstest" -m fuzzingclient -s "$SPEC" ) \
  > "$OUT/wstest.log" 2>&1 &
wpid=$!
while kill -0 "$wpid" 2>/dev/null; do
  if grep -q "will run 0 test cases" "$OUT/wstest.log" 2>/dev/null; then
    echo "autobahn.sh: no case matches the case list (check CASES / exclude-cases)" >&2
    kill "$wpid" 2>/dev/null || true
    break
  fi
  sleep 0.3
done
set +e
wait "$wpid"
rc=$?
set -e
end=$(date +%s.%N)
if [ $rc -eq 124 ]; then echo "autobahn.sh: wstest timed out after ${TIMEOUT}s (partial results below)" >&2; fi
grep -E "failed \(|refused|Traceback" "$OUT/wstest.log" >&2 || true

python3 - "$OUT/index.json" "$start" "$end" "${AUTOBAHN_STRICT_CLOSE:-0}" <<'PY'
import json, sys, collections
path, secs, strict = sys.argv[1], float(sys.argv[3]) - float(sys.argv[2]), sys.argv[4] == "1"
try:
    data = json.load(open(path))
except Exception as e:
    print("autobahn.sh: no readable %s (%s)" % (path, e)); data = {}
PASS = {"OK", "NON-STRICT", "INFORMATIONAL"}
CLOSE_OK = {"OK", "INFORMATIONAL"}
key = lambda c: [int(x) for x in c.split(".")]
passed = failed = 0
beh, fails, unclean = collections.Counter(), [], []
for agent, cases in data.items():
    for cid in sorted(cases, key=key):
        r = cases[cid]
        b, bc = r.get("behavior"), r.get("behaviorClose")
        beh[b] += 1
        bad_close = bc not in CLOSE_OK
        if bad_close:
            unclean.append("%s(%s)" % (cid, bc))
        if b in PASS and not (strict and bad_close):
            passed += 1
        else:
            failed += 1
            fails.append("%s %s/close=%s" % (cid, b, bc))
print("autobahn: %d cases in %.1fs; behaviors: %s" % (passed + failed, secs, dict(beh)))
for f in fails:
    print("  FAILED case %s" % f)
if unclean:
    print("  %s close behaviour not OK in %d case(s): %s%s" % (
        "FAILED:" if strict else "warning:", len(unclean), " ".join(unclean[:20]),
        " ..." if len(unclean) > 20 else ""))
if passed + failed == 0:
    print("  no case ran (server down, wrong URL/path, or wstest error: see wstest.log) -> counted as 1 failure")
    failed = max(failed, 1)
print("%d passed, %d failed" % (passed, failed))
sys.exit(0 if failed == 0 else 1)
PY
