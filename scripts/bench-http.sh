#!/usr/bin/env bash
# HTTP load benchmark: builds release, starts troupe, and runs wrk against
#   baseline  GET /healthz (a static JSON route: the ceiling of the stack)
#   read      GET /v1/accounts/{id}
#   hot       durable POST deposits on one account
#   spread    durable POST deposits over 10,000 accounts
# with 1 and 2 workers, then measures resident memory per idle activation.
# Prints a Markdown table: req/s, p99 and the ratio to the baseline of the
# same worker count. Knobs: DURATION (default 10s), CONNECTIONS (64).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
PORT=${PORT:-18181}
BASE="http://127.0.0.1:$PORT"
WRK="scripts/wrk"

cargo build --release --quiet
BIN=target/release/troupe
DATA=$(mktemp -d)
PID=
REDIS_PID=
REDIS_PORT=${REDIS_PORT:-18279}
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null
  [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null
  wait 2>/dev/null; rm -rf "$DATA"
}
trap cleanup EXIT

start() { # workers [extra env...]
  local workers=$1; shift
  env TROUPE__LOG__FILTER=warn TROUPE__SERVER__WORKERS="$workers" TROUPE__RUNTIME__IDLE_TIMEOUT_MS=600000 "$@" \
    "$BIN" --port "$PORT" --data-dir "$DATA" >/dev/null 2>&1 &
  PID=$!
  for _ in $(seq 100); do curl -fs "$BASE/readyz" >/dev/null && return; sleep 0.1; done
  echo "troupe did not start" >&2; exit 1
}
stop() { kill -TERM "$PID"; wait "$PID" || true; PID=; }

# run name workers url [script]: prints "req/s p99"
run() {
  local args=(-t2 -c"$CONNECTIONS" -d"$DURATION" --latency)
  [ -n "${4:-}" ] && args+=(-s "$4")
  local out; out=$(wrk "${args[@]}" "$3")
  local rps p99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  echo "$rps $p99 ${non2xx:-0}"
}

setup_accounts() {
  curl -fs -XPUT "$BASE/v1/accounts/hot" -H 'content-type: application/json' -d '{}' >/dev/null || true
  COUNT=10000 METHOD=PUT PREFIX=b- wrk -t1 -c32 -d6s -s "$WRK/sequential.lua" "$BASE" >/dev/null
}

rows=()
# measure workers label [env...]: the baseline, then each durable and read
# scenario, against a server started with env; appends table rows.
measure() {
  local workers=$1 label=$2; shift 2
  start "$workers" "$@"
  setup_accounts
  local b_rps b_p99 rps p99 err
  read -r b_rps b_p99 _ < <(run baseline "$workers" "$BASE/healthz")
  rows+=("| $workers | ${label}GET /healthz (baseline) | $b_rps | $b_p99 | 100% | 0 |")
  local scenario
  for scenario in "GET account|$BASE/v1/accounts/hot|" \
                  "POST deposit, 1 hot account|$BASE/v1/accounts/hot/deposits|$WRK/deposit_hot.lua" \
                  "POST deposit, 10,000 accounts|$BASE|$WRK/deposit_many.lua"; do
    IFS='|' read -r name url script <<<"$scenario"
    read -r rps p99 err < <(run "$name" "$workers" "$url" "$script")
    rows+=("| $workers | $label$name | $rps | $p99 | $(awk -v a="$rps" -v b="$b_rps" 'BEGIN { printf "%.0f%%", 100 * a / b }') | $err |")
  done
  stop
}

for workers in ${WORKERS:-1 2}; do
  measure "$workers" ""
done

# The Redis store: a redis-server of our own with AOF on, per appendfsync policy.
for fsync in ${REDIS_FSYNC:-everysec always}; do
  rdir=$(mktemp -d -p "$DATA")
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$rdir" --save "" --appendonly yes --appendfsync "$fsync" >/dev/null 2>&1 &
  REDIS_PID=$!
  sleep 0.5
  for workers in ${WORKERS:-1 2}; do
    measure "$workers" "redis ($fsync): " TROUPE__STORE__BACKEND=redis TROUPE__STORE__REDIS__URL="redis://127.0.0.1:$REDIS_PORT"
  done
  kill "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true; REDIS_PID=
done

# The cost of metrics and trace export, one worker, embedded store.
if [ -z "${SKIP_TELEMETRY:-}" ]; then
  cargo build --release --quiet --example otlp_sink
  OTLP_PORT=${OTLP_PORT:-18317}
  target/release/examples/otlp_sink "$OTLP_PORT" >/dev/null 2>&1 &
  SINK_PID=$!
  trows=()
  for mode in "no-metrics" "metrics" "export-0.01" "export-1.0"; do
    case $mode in
      no-metrics) env=(TROUPE__TELEMETRY__HTTP_METRICS=false) ;;
      metrics) env=() ;;
      export-*) env=(TROUPE__TELEMETRY__OTLP__ENDPOINT="http://127.0.0.1:$OTLP_PORT" TROUPE__TELEMETRY__OTLP__SAMPLING_RATIO="${mode#export-}") ;;
    esac
    start 1 "${env[@]}"
    setup_accounts
    read -r r_rps r_p99 _ < <(run read 1 "$BASE/v1/accounts/hot")
    read -r h_rps h_p99 _ < <(run hot 1 "$BASE/v1/accounts/hot/deposits" "$WRK/deposit_hot.lua")
    stop
    trows+=("$mode $r_rps $r_p99 $h_rps $h_p99")
  done
  kill "$SINK_PID" 2>/dev/null || true
  read -r _ base_r _ base_h _ <<<"${trows[0]}"
  echo
  echo "Telemetry cost (1 worker, embedded store; ratio to no HTTP metrics and no export):"
  echo
  echo "| mode | GET account req/s | p99 | vs off | POST deposit req/s | p99 | vs off |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
  for row in "${trows[@]}"; do
    read -r mode r_rps r_p99 h_rps h_p99 <<<"$row"
    awk -v m="$mode" -v r="$r_rps" -v rp="$r_p99" -v h="$h_rps" -v hp="$h_p99" -v br="$base_r" -v bh="$base_h" \
      'BEGIN { printf "| %s | %s | %s | %.0f%% | %s | %s | %.0f%% |\n", m, r, rp, 100*r/br, h, hp, 100*h/bh }'
  done
fi

# Resident memory per idle activation: RSS after activating 100,000 accounts
# (over the default cap of live activations: raised for this).
start 2
COUNT=100000 METHOD=PUT wrk -t2 -c64 -d20s -s "$WRK/sequential.lua" "$BASE" >/dev/null
stop
start 2 TROUPE__RUNTIME__MAX_ACTIVATIONS=200000
# Warm connection buffers and allocator caches before the first reading.
wrk -t2 -c"$CONNECTIONS" -d2s "$BASE/healthz" >/dev/null
rss0=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
COUNT=100000 METHOD=GET wrk -t1 -c64 -d10s -s "$WRK/sequential.lua" "$BASE" >/dev/null
sleep 1
rss1=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
stop

echo
echo "wrk -t2 -c$CONNECTIONS -d$DURATION, $(nproc) cores; ratio = req/s over the baseline with the same workers"
echo
echo "| workers | scenario | req/s | p99 | vs baseline | non-2xx |"
echo "| --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
echo
awk -v a="$rss0" -v b="$rss1" -v db="$(du -sk "$DATA" 2>/dev/null | cut -f1 || true)" 'BEGIN { printf "Memory: RSS %d KiB warm, %d KiB after activating 100,000 accounts: %.0f bytes per activation (data directory %d KiB)\n", a, b, (b - a) * 1024 / 100000, db }'
