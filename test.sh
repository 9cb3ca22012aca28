#!/usr/bin/env bash
# Runs every chatlab test: Rust unit and integration tests (the Redis cluster tests against a real
# redis-server they start themselves), Autobahn|Testsuite's core cases against `chatlab --echo`
# (autobahn/run.sh, about a minute to install and half a minute to run), then the browser tests in headless
# Chromium.
# Installs what is missing first: Debian's chromium, redis-server, nginx, wrk and a CJK font; the browser tests'
# npm packages. The Redis and nginx tests start their own servers on free ports.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
[ -x /usr/bin/chromium ] || missing+=(chromium)
fc-list :lang=zh 2>/dev/null | grep -q . || missing+=(fonts-wqy-microhei)
# Autobahn's installer builds wsaccel (gcc) and makes a virtualenv; run.sh waits for the server with curl.
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
command -v curl >/dev/null 2>&1 || missing+=(curl)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Everything builds once, in release: the tests, and the server binary the browser tests spawn.
export CHATLAB_REQUIRE_REDIS=1 CHATLAB_REQUIRE_NGINX=1 CHATLAB_REQUIRE_WRK=1
cargo build --release --bin chatlab
cargo test --release --workspace --all-targets
# Every core case as in autobahn/expected.json, strict closes; bounded so a hung suite cannot stall the run.
timeout 900 autobahn/run.sh "$PWD/target/release/chatlab"
CHATLAB_BIN="$PWD/target/release/chatlab" tests/browser/run.sh
# The specs whose page behaves differently over HTTP/2 run again over HTTPS (self-signed), where Chromium speaks h2.
CHATLAB_TLS=1 CHATLAB_BIN="$PWD/target/release/chatlab" tests/browser/run.sh specs/wire.test.mjs specs/limit.test.mjs specs/sending.test.mjs
