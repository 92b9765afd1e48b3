#!/usr/bin/env bash
# WebSocket conformance: the Autobahn|Testsuite fuzzing client against the
# server's WebSocket endpoint (its accept path, limits, ping/pong and close
# handling), with the server in its echo test mode (Autobahn expects an echo
# endpoint). Results are compared with the committed golden file
# expected.json; any FAILED case or any difference fails the run.
#
#   conformance/autobahn/run.sh            # run and compare
#   conformance/autobahn/run.sh --bless    # run and rewrite expected.json
#
# Needs Python 2.7 (autobahntestsuite is Python 2 only; found as python2.7
# on PATH, through pyenv, or in $AUTOBAHN_PYTHON) and network access to PyPI
# on the first run (installed into target/autobahn/).
set -euo pipefail
cd "$(dirname "$0")/../.."
here=conformance/autobahn
work=target/autobahn
mkdir -p "$work"

py="${AUTOBAHN_PYTHON:-}"
if [ -z "$py" ]; then
  if command -v pyenv >/dev/null && pyenv prefix 2.7.18 >/dev/null 2>&1; then
    py="$(pyenv prefix 2.7.18)/bin/python2.7"
  elif command -v python2.7 >/dev/null; then
    py="$(command -v python2.7)"
  else
    echo "autobahn: Python 2.7 not found (set AUTOBAHN_PYTHON)" >&2
    exit 2
  fi
fi
if [ ! -d "$work/site/autobahntestsuite" ]; then
  echo "autobahn: installing autobahntestsuite into $work/site"
  "$py" -m pip install --quiet --disable-pip-version-check --target "$work/site" autobahntestsuite
fi

cargo build --release -p chatify-harness
db="$(mktemp -d)"
./target/release/chatify-harness __serve --conformance-echo \
  --listen 127.0.0.1:0 --db "$db/chatify.db" --log warn >"$work/server.out" 2>"$work/server.log" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$db"' EXIT
for _ in $(seq 1 100); do
  grep -q "listening on" "$work/server.out" 2>/dev/null && break
  sleep 0.1
done
url="$(sed -n 's/^listening on //p' "$work/server.out")"
[ -n "$url" ] || { echo "autobahn: the server did not start" >&2; cat "$work/server.log" >&2; exit 2; }

rm -rf "$work/reports"
cat >"$work/fuzzingclient.json" <<JSON
{
  "outdir": "$PWD/$work/reports",
  "servers": [{"agent": "chatify-server", "url": "$url"}],
  "cases": ["*"],
  "exclude-cases": $(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["exclude-cases"]))' "$here/expected.json"),
  "exclude-agent-cases": {}
}
JSON
echo "autobahn: fuzzing client against $url"
# addsitedir, not PYTHONPATH: it reads the .pth files of namespace packages (zope).
(cd "$work" && "$py" -c 'import site, sys; site.addsitedir(sys.argv[1]); sys.argv = ["wstest"] + sys.argv[2:]; from autobahntestsuite.wstest import run; run()' \
  "$PWD/site" -m fuzzingclient -s fuzzingclient.json) >"$work/wstest.log" 2>&1 || {
  tail -20 "$work/wstest.log" >&2; exit 2; }
python3 "$here/compare.py" "$work/reports/index.json" "$here/expected.json" "$@"
