#!/usr/bin/env bash
# Overload on one hot account: durable deposits of 1 with 64 connections,
# then with each of CONNS (256 2000), DUR seconds each, server pinned to
# core 0 and wrk to core 1 (as benches/peers/compare.sh). Prints goodput
# (2xx per second) per row and its ratio to the 64-connection row, the
# answers that were not 2xx by status (from /metrics), and whether
# anything acknowledged was lost, as a net check: the account's balance
# must have grown by at least the deposits answered 2xx. It may grow by
# more: requests still in flight when wrk stops are applied, not counted.
#
#   scripts/overload.sh   Env: BIN (built when unset), DUR (10), CONNS, PORT,
#                         ENVS (settings for the server, e.g. "TROUPE__RUNTIME__MAILBOX_CAPACITY=4096")
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
DUR=${DUR:-10}
CONNS=${CONNS:-"256 2000"}
PORT=${PORT:-18184}
BASE="http://127.0.0.1:$PORT"
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin troupe
  BIN=target/release/troupe
fi
ulimit -n 65536 2>/dev/null || [ "$(ulimit -n)" -gt 4200 ] \
  || echo "warning: open files limited to $(ulimit -n): the 2,000-connection row may measure socket errors" >&2
DATA=$(mktemp -d)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$DATA"; }
trap cleanup EXIT
# shellcheck disable=SC2086
env TROUPE__LOG__FILTER=warn TROUPE__SERVER__WORKERS=1 ${ENVS:-} \
  taskset -c 0 "$BIN" --port "$PORT" --data-dir "$DATA" >/dev/null 2>&1 &
PID=$!
wait_ready "$BASE"
curl -fs -X PUT "$BASE/v1/accounts/hot" -H 'Content-Type: application/json' \
  -d '{"currency":"EUR"}' >/dev/null
# The server's user + system CPU time so far, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$PID/stat"; }
balance() { curl -fs "$BASE/v1/accounts/hot" | python3 -c 'import json,sys; print(json.load(sys.stdin)["balance"])'; }
# Answers to deposits by status so far, as "status=count ..." (non-2xx only).
statuses() {
  curl -fs "$BASE/metrics" | grep '^troupe_http_requests_total{.*deposits' \
    | sed -n 's/.*status="\([0-9]*\)"} \([0-9]*\)$/\1=\2/p' | grep -v '^2' || true
}
diff_statuses() { # before after
  join -t= -a2 -e0 -o 0,1.2,2.2 <(sort <<<"$1") <(sort <<<"$2") | awk -F= '$3 > $2 { printf "%s%s: %d", sep, $1, $3 - $2; sep = ", " }'
}

echo "nproc: $(nproc); one worker on core 0, wrk -t1 on core 1, ${DUR} s per row; command: scripts/overload.sh"
echo
echo "| connections | goodput (2xx/s) | of 64 connections | server CPU | p99 | not 2xx | wrk timeouts | acknowledged | balance grew | acknowledged lost |"
echo "| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |"
base=""
for c in 64 $CONNS; do
  before=$(balance); seen=$(statuses); cpu0=$(cpu_ticks)
  t0=$(date +%s%N)
  out=$(taskset -c 1 wrk -t1 -c"$c" -d"${DUR}s" --timeout 10s --latency -s scripts/wrk/deposit_hot.lua "$BASE/v1/accounts/hot/deposits")
  busy=$(awk -v t="$(cpu_ticks)" -v t0="$cpu0" -v n="$(date +%s%N)" -v n0="$t0" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%.0f%%", 100 * (t - t0) / hz / ((n - n0) / 1e9) }')
  sleep 1
  after=$(balance); other=$(diff_statuses "$seen" "$(statuses)")
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); non2xx=${non2xx:-0}
  timeouts=$(sed -n 's/.*timeout \([0-9]*\).*/\1/p' <<<"$out"); timeouts=${timeouts:-0}
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  ok=$((total - non2xx))
  goodput=$((ok / DUR))
  [ -z "$base" ] && base=$goodput
  grew=$((after - before))
  lost=$([ "$grew" -lt "$ok" ] && echo "**yes**" || echo no)
  ratio=$(awk -v a="$goodput" -v b="$base" 'BEGIN { printf "%.0f%%", b ? 100 * a / b : 0 }')
  echo "| $c | $goodput | $ratio | $busy | $p99 | $non2xx${other:+ ($other)} | $timeouts | $ok | $grew | $lost |"
done
