#!/usr/bin/env bash
# The ledger scenarios under wrk against any server with troupe's ledger
# routes, seeded first with seed.sh; one Markdown row per scenario.
#
#   benches/peers/bench.sh BASE_URL LABEL   e.g. benches/peers/bench.sh http://127.0.0.1:18080 go-gin-mem
#
# Scenarios (scripts/wrk/<name>.lua, called with the server's root):
#   static         GET /healthz: the stack's ceiling
#   get_many       GET one of b-1 .. b-10000 at random
#   deposit_hot    POST a deposit of 1 to "hot"
#   deposit_many   POST a deposit of 1 to one of b-1 .. b-10000
#   transfer_many  POST /v1/transfers of 1 between two of b-1 .. b-10000, fresh ids
# Columns: req/s, p50 and p99 in ms, non-2xx answers, socket errors.
#
# Env: WRK_PREFIX (e.g. "taskset -c 1"), THREADS (1), CONNS (64),
# DURATION (8s), SCENARIOS (all five), HEADER (1: print the table's header),
# RAW_DIR (keep each wrk output there), ACCOUNTS (10000, as seeded).
set -euo pipefail
BASE_URL=${1:?usage: bench.sh BASE_URL LABEL}
LABEL=${2:?usage: bench.sh BASE_URL LABEL}
BASE_URL=${BASE_URL%/}
WRK_DIR=$(cd "$(dirname "$0")/../../scripts/wrk" && pwd)
WRK_PREFIX=${WRK_PREFIX:-}
THREADS=${THREADS:-1}
CONNS=${CONNS:-64}
DURATION=${DURATION:-8s}
SCENARIOS=${SCENARIOS:-"static get_many deposit_hot deposit_many transfer_many"}

if [ "${HEADER:-1}" = 1 ]; then
  echo "| label | scenario | req/s | p50 ms | p99 ms | non-2xx | sock err |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
fi
for scenario in $SCENARIOS; do
  if [ "$scenario" = static ]; then
    target=("$BASE_URL/healthz")
  elif [ -f "$WRK_DIR/$scenario.lua" ]; then
    target=(-s "$WRK_DIR/$scenario.lua" "$BASE_URL/")
  else
    echo "| $LABEL | $scenario | no such scenario ($WRK_DIR/$scenario.lua) | | | | |"
    continue
  fi
  # shellcheck disable=SC2086 # WRK_PREFIX is a command and its arguments
  if ! out=$($WRK_PREFIX wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "${target[@]}" 2>&1); then
    echo "| $LABEL | $scenario | wrk failed: $(tail -1 <<<"$out") | | | | |"
    continue
  fi
  if [ -n "${RAW_DIR:-}" ]; then
    mkdir -p "$RAW_DIR"
    printf '%s\n' "$out" >"$RAW_DIR/$LABEL-$scenario.txt"
  fi
  awk -v label="$LABEL" -v scenario="$scenario" '
    # wrk prints durations as 512.00us, 1.23ms, 1.02s or 1.50m.
    function ms(d) {
      if (d ~ /us$/) return substr(d, 1, length(d) - 2) / 1000
      if (d ~ /ms$/) return substr(d, 1, length(d) - 2) + 0
      if (d ~ /m$/)  return substr(d, 1, length(d) - 1) * 60000
      if (d ~ /s$/)  return substr(d, 1, length(d) - 1) * 1000
      return d + 0
    }
    $1 == "Requests/sec:"      { rps = $2 }
    $1 == "50%"                { p50 = ms($2) }
    $1 == "99%"                { p99 = ms($2) }
    /Non-2xx or 3xx/           { non2xx = $NF }
    $1 == "Socket" && $2 == "errors:" {
      gsub(/,/, "")            # connect 0, read 0, write 0, timeout 0
      socket = $4 + $6 + $8 + $10
    }
    END { printf "| %s | %s | %.0f | %.3f | %.3f | %d | %d |\n", label, scenario, rps, p50, p99, non2xx, socket }
  ' <<<"$out"
done
