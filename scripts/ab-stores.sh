#!/usr/bin/env bash
# Two builds of troupe, interleaved in one session (A B A B), on the ledger
# scenarios of benches/peers/bench.sh: each server pinned to core 0 with
# its own checkout's config/, wrk on core 1, seeded with benches/peers/seed.sh.
#
#   scripts/ab-stores.sh CHECKOUT_A CHECKOUT_B      e.g. a worktree of an older commit, and .
#
# Env: ROUNDS (2), BACKEND (embedded; redis: each
# run gets its own redis-server with AOF everysec, as compare.sh gives the
# peer). Prints one Markdown table.
set -euo pipefail
A=$(cd "${1:?usage: ab-stores.sh CHECKOUT_A CHECKOUT_B}" && pwd)
B=$(cd "${2:?usage: ab-stores.sh CHECKOUT_A CHECKOUT_B}" && pwd)
PEERS=$(cd "$(dirname "$0")/../benches/peers" && pwd)
export WRK_PREFIX="taskset -c 1"
for checkout in "$A" "$B"; do (cd "$checkout" && cargo build --release --quiet --bin troupe); done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
one() { # label checkout
  local port data pid env=() redis_pid=""
  port=$(free_port); data=$(mktemp -d)
  if [ "${BACKEND:-embedded}" = redis ]; then
    local rport; rport=$(free_port)
    redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync everysec \
      --dir "$data" --daemonize no >/dev/null 2>&1 & redis_pid=$!
    sleep 0.5
    env=(TROUPE__STORE__BACKEND=redis TROUPE__STORE__REDIS__URL="redis://127.0.0.1:$rport")
  fi
  env "${env[@]}" taskset -c 0 "$2/target/release/troupe" --config-dir "$2/config" --bind 127.0.0.1 --port "$port" \
    --data-dir "$data" >/dev/null 2>&1 & pid=$!
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  "$PEERS/seed.sh" "http://127.0.0.1:$port" >/dev/null
  SCENARIOS="get_many deposit_hot deposit_many transfer_many" HEADER=0 "$PEERS/bench.sh" "http://127.0.0.1:$port" "$1"
  echo "| $1 | data MB after | $(( $(du -sk "$data" | cut -f1) / 1024 )) | RSS MB after | $(( $(awk '/VmRSS/{print $2}' "/proc/$pid/status") / 1024 )) | | |"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  if [ -n "$redis_pid" ]; then kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true; fi
  rm -rf "$data"
}
echo "nproc: $(nproc); backend: ${BACKEND:-embedded}; A = $A ($(git -C "$A" rev-parse --short HEAD)); B = $B ($(git -C "$B" rev-parse --short HEAD))"
echo
echo "| label | scenario | req/s | p50 ms | p99 ms | non-2xx | sock err |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
for round in $(seq "${ROUNDS:-2}"); do
  one "A-$round" "$A"
  one "B-$round" "$B"
done
