#!/usr/bin/env bash
# Runs chatlab's browser tests: headless Chromium (Debian's /usr/bin/chromium,
# never a downloaded one) driven by playwright-core, against a chatlab server
# that each spec spawns on a free port.
#
#   tests/browser/run.sh                 # builds target/release/chatlab if needed
#   CHATLAB_BIN=/path/to/chatlab tests/browser/run.sh
#   tests/browser/run.sh specs/chat.test.mjs   # one spec
#   CHATLAB_TLS=1 tests/browser/run.sh specs/chat.test.mjs   # over HTTPS (HTTP/2), self-signed
#
# Exits non-zero when a spec fails. Screenshots go to docs/screenshots/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$here"

if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  echo "run.sh: Chromium not found at ${CHROMIUM:-/usr/bin/chromium} (Debian: apt-get install chromium)" >&2
  exit 1
fi

export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
timeout 300 npm ci --no-audit --no-fund --loglevel=error

if [ -z "${CHATLAB_BIN:-}" ]; then
  (cd "$root" && timeout 1200 cargo build --release --bin chatlab)
fi

if ! fc-list :lang=zh 2>/dev/null | grep -q .; then
  echo "run.sh: note: no CJK font installed, Chinese text in the screenshots will show as boxes (apt-get install fonts-wqy-microhei)" >&2
fi

if [ "${CHATLAB_TLS:-}" = 1 ]; then
  # The specs' own requests from Node (health checks, stats) believe the self-signed certificate too.
  export NODE_TLS_REJECT_UNAUTHORIZED=0
fi

if [ "$#" -eq 0 ]; then set -- specs/*.test.mjs; fi
# One spec file at a time: each starts its own server and browser, and the
# machine has two cores. Every test also carries its own timeout.
timeout 900 node --test --test-concurrency=1 --test-timeout=180000 "$@"
