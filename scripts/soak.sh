#!/usr/bin/env bash
# Soak: durable transfers among 10,000 funded accounts for DURATION
# (default 600 s) on the embedded store, in SLICE-second runs of wrk
# (default 30). Prints one Markdown row per slice: req/s, p99, non-2xx,
# resident memory and the data directory's size, so a drift in throughput
# or memory shows. Knobs: WORKERS (1), CONNECTIONS (64), PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
DURATION=${DURATION:-600}
SLICE=${SLICE:-30}
CONNECTIONS=${CONNECTIONS:-64}
PORT=${PORT:-18182}
BASE="http://127.0.0.1:$PORT"
WRK="scripts/wrk"

[ -n "${BIN:-}" ] || cargo build --release --quiet
BIN=${BIN:-target/release/troupe}
DATA=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$DATA"; }
trap cleanup EXIT
# du fails when a compaction deletes a file under it: take what it printed.
data_kb() { du -sk "$DATA" 2>/dev/null | cut -f1 || true; }

env TROUPE__LOG__FILTER=warn TROUPE__SERVER__WORKERS="${WORKERS:-1}" \
  "$BIN" --port "$PORT" --data-dir "$DATA" >/dev/null 2>&1 &
PID=$!
wait_ready "$BASE"
seed_accounts "$BASE"

echo "nproc: $(nproc); workers: ${WORKERS:-1}; $CONNECTIONS connections; command: scripts/soak.sh"
echo
echo "| s | transfers/s | p99 | non-2xx | RSS MB | data MB |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: |"
elapsed=0
total=0
start_kb=$(data_kb)
while [ "$elapsed" -lt "$DURATION" ]; do
  out=$(wrk -t1 -c"$CONNECTIONS" -d"${SLICE}s" --latency -s "$WRK/transfer_many.lua" "$BASE/")
  elapsed=$((elapsed + SLICE))
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  total=$((total + $(awk '/requests in/ {print $1}' <<<"$out") - ${non2xx:-0}))
  rss=$(( $(awk '/VmRSS/ {print $2}' "/proc/$PID/status") / 1024 ))
  data=$(( $(data_kb) / 1024 ))
  echo "| $elapsed | $rps | $p99 | ${non2xx:-0} | $rss | $data |"
done
end_kb=$(data_kb)
echo
echo "transfers answered 2xx: $total; data directory grew $(( (end_kb - start_kb) / 1024 )) MB: $(( (end_kb - start_kb) * 1024 / (total > 0 ? total : 1) )) bytes per transfer"
