#!/usr/bin/env bash
# Where resident memory goes: runs the soak's load (10,000 funded accounts,
# transfer_many at 64 connections for DUR seconds, one worker) once per
# configuration and prints a Markdown row each: RSS, the store's block cache
# and memtables (troupe_store_memory_bytes), live activations. A part that
# moves with its setting is bounded by it; what moves with none is the rest
# (allocator, threads, fjall's index and filter blocks, the binary).
#
#   scripts/memory.sh ["LABEL ENV=V ..." ...]
#   e.g. scripts/memory.sh "defaults" "cache 4 MiB TROUPE__STORE__CACHE_MB=4"
#
# Each argument is a label followed by the environment it sets (the words
# containing '='). Without arguments: the defaults and one run with each
# memory setting turned down. Env: BIN (target/release/troupe, built when
# unset), DUR (90), PORT (18183).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
DUR=${DUR:-90}
PORT=${PORT:-18183}
BASE="http://127.0.0.1:$PORT"
WRK="scripts/wrk"
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin troupe
  BIN=target/release/troupe
fi
if [ $# -eq 0 ]; then
  set -- "defaults" \
    "block cache 4 MiB TROUPE__STORE__CACHE_MB=4" \
    "memtables 1 MiB TROUPE__STORE__MEMTABLE_MB=1" \
    "idempotency/fact caches 1 TROUPE__RUNTIME__IDEMPOTENCY_CACHE=1" \
    "activations capped at 2,000 TROUPE__RUNTIME__MAX_ACTIVATIONS=2000"
fi
DATA=""
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; [ -n "$DATA" ] && rm -rf "$DATA"; }
trap cleanup EXIT
mib() { awk -v v="${1:-0}" 'BEGIN { printf "%.1f", v / 1048576 }'; }
metric() { awk -v s="$1" 'index($0, s) == 1 { print $2; exit }' <<<"$2"; }

echo "nproc: $(nproc); one worker; transfer_many, 64 connections, ${DUR} s after seeding 10,000 accounts; command: scripts/memory.sh"
echo
echo "| configuration | transfers (2xx) | RSS MB | block cache MB | memtables MB | live activations |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for config in "$@"; do
  label=() envs=()
  for word in $config; do
    if [[ $word == *=* ]]; then envs+=("$word"); else label+=("$word"); fi
  done
  DATA=$(mktemp -d)
  env TROUPE__LOG__FILTER=warn TROUPE__SERVER__WORKERS=1 ${envs[@]+"${envs[@]}"} \
    "$BIN" --port "$PORT" --data-dir "$DATA" >/dev/null 2>&1 &
  PID=$!
  wait_ready "$BASE" || { echo "(configuration: ${label[*]})" >&2; exit 1; }
  seed_accounts "$BASE"
  out=$(wrk -t1 -c64 -d"${DUR}s" -s "$WRK/transfer_many.lua" "$BASE/")
  sleep 1
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  transfers=$(( $(awk '/requests in/ {print $1}' <<<"$out") - ${non2xx:-0} ))
  rss=$(( $(awk '/VmRSS/ {print $2}' "/proc/$PID/status") / 1024 ))
  text=$(curl -fs "$BASE/metrics")
  cache=$(metric 'troupe_store_memory_bytes{part="block_cache"}' "$text")
  mem=$(metric 'troupe_store_memory_bytes{part="memtables"}' "$text")
  live=$(awk 'index($0, "troupe_actors_live{") == 1 { n += $2 } END { print n + 0 }' <<<"$text")
  echo "| ${label[*]} | $transfers | $rss | $(mib "$cache") | $(mib "$mem") | $live |"
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
  rm -rf "$DATA"; DATA=""
done
