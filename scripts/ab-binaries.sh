#!/usr/bin/env bash
# Two built troupe binaries, interleaved in one session (A B A B ...), on the
# ledger scenarios of benches/peers/bench.sh (scripts/wrk/*.lua): each run a
# fresh data directory, the server pinned to core 0, seeded with
# benches/peers/seed.sh, wrk -t1 -c64 on core 1. Besides req/s and p99 it prints the server's CPU
# per request (utime + stime over the scenario / requests): on a saturated
# core it moves with 1/throughput, and says when it does not.
#
#   scripts/ab-binaries.sh BIN_A BIN_B      e.g. a build of an older commit copied to /tmp, and target/release/troupe
#
# Env: ROUNDS ("1 2"; "1 2 3" for three rounds),
# SCEN (the four ledger scenarios), DUR (8s), ENVS (extra VAR=value for
# both servers). A runs first in every round.
set -euo pipefail
A=${1:?usage: ab-binaries.sh BIN_A BIN_B}
B=${2:?usage: ab-binaries.sh BIN_A BIN_B}
REPO=$(cd "$(dirname "$0")/.." && pwd)
SCEN=${SCEN:-"get_many deposit_hot deposit_many transfer_many"}
HZ=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pid=""; dir=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; [ -n "$dir" ] && rm -rf "$dir"' EXIT
run() { # binary label
  local port c0 c1 out reqs rps p99 non
  dir=$(mktemp -d /tmp/ab-XXXX); port=$(free_port)
  # shellcheck disable=SC2086 # ENVS is split into words on purpose
  env ${ENVS:-} taskset -c 0 "$1" --bind 127.0.0.1 --port "$port" --data-dir "$dir/data" >"$dir/log" 2>&1 & pid=$!
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  "$REPO/benches/peers/seed.sh" "http://127.0.0.1:$port" >/dev/null
  for sc in $SCEN; do
    c0=$(cpu "$pid")
    out=$(taskset -c 1 wrk -t1 -c64 -d"${DUR:-8s}" --latency -s "$REPO/scripts/wrk/$sc.lua" "http://127.0.0.1:$port/" 2>&1)
    c1=$(cpu "$pid")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    if [ "${reqs:-0}" -eq 0 ]; then echo "| $2 | $sc | wrk failed: $(tail -1 <<<"$out") | | | |"; continue; fi
    rps=$(awk '/Requests\/sec/ {printf "%d", $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    non=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    echo "| $2 | $sc | $rps | $p99 | $(( (c1 - c0) * 1000000 / HZ / reqs )) µs | ${non:-0} |"
  done
  echo "| $2 | RSS after the run | $(( $(awk '/VmRSS/ {print $2}' "/proc/$pid/status") / 1024 )) MB | data $(du -sm "$dir/data" | cut -f1) MB | | |"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; rm -rf "$dir"; pid=""; dir=""
}
echo "| run | scenario | req/s | p99 | CPU per request | non-2xx |"
echo "| --- | --- | ---: | ---: | ---: | ---: |"
for r in ${ROUNDS:-1 2}; do run "$A" "A$r"; run "$B" "B$r"; done
