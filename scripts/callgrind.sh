#!/usr/bin/env bash
# Instructions per request of one ledger scenario under callgrind: the same
# count for the same binary and input whatever else the machine does, where
# wall-clock A/Bs on a small VM spread by a quarter. Starts BIN under
# valgrind, seeds it with benches/peers/seed.sh, warms the scenario (one of
# scripts/wrk/*.lua: get_many, deposit_hot, deposit_many, transfer_many) up for 3 s,
# zeroes the counters, runs wrk -t1 -c64 for SECS, dumps and divides.
#
#   scripts/callgrind.sh BIN [SCENARIO] [SECS]   e.g. target/release/troupe deposit_many 10
#
# BREAKDOWN=1 also splits the count by where it runs (inclusive costs, per
# request): actix actors (shards, activations), the HTTP dispatcher, the
# store writer thread and within it fjall's memtable inserts
# and its compare-and-set reads; the rest is fjall's background threads,
# timers and the runtime. KEEP=DIR keeps the profile.
#
# Needs valgrind, wrk, curl, python3.
set -euo pipefail
BIN=${1:?usage: callgrind.sh BIN [SCENARIO] [SECS]}
SC=${2:-deposit_many}; SECS=${3:-10}
REPO=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(mktemp -d /tmp/callgrind-XXXX)
PID=""
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; [ -n "${KEEP:-}" ] && cp "$DIR"/cg.* "$KEEP"/ 2>/dev/null; rm -rf "$DIR"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
valgrind --tool=callgrind --callgrind-out-file="$DIR/cg.%p" "$BIN" --bind 127.0.0.1 --port "$port" \
  --data-dir "$DIR/data" >"$DIR/log" 2>&1 & PID=$!
for _ in $(seq 600); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
"$REPO/benches/peers/seed.sh" "http://127.0.0.1:$port" >/dev/null
wrk -t1 -c64 -d3s -s "$REPO/scripts/wrk/$SC.lua" "http://127.0.0.1:$port/" >/dev/null 2>&1
callgrind_control -z "$PID" >/dev/null
out=$(wrk -t1 -c64 -d"${SECS}s" -s "$REPO/scripts/wrk/$SC.lua" "http://127.0.0.1:$port/" 2>&1)
callgrind_control -d "$PID" >/dev/null
sleep 1
reqs=$(awk '/requests in/ {print $1}' <<<"$out")
# The dump after zeroing is the file with suffix .1.
ir=$(awk '/^summary:/ {print $2; exit}' "$DIR/cg.$PID.1")
echo "$(basename "$BIN") $SC: $reqs requests, $(( ir / reqs )) instructions per request"
if [ -n "${BREAKDOWN:-}" ]; then
  ann=$(callgrind_annotate --inclusive=yes "$DIR/cg.$PID.1" 2>/dev/null)
  part() { # label, pattern of the function's line
    local n; n=$(grep -E "$2" <<<"$ann" | head -1 | awk '{gsub(",", "", $1); print $1}')
    echo "  $1: $(( ${n:-0} / reqs ))"
  }
  part "actix actors" 'context_impl.rs:<actix::context_impl::ContextFut<A,C> as core::future::future::Future>::poll \['
  part "HTTP dispatcher" 'h1::dispatcher::Dispatcher<T,S,B,X,U> as core::future::future::Future>::poll \['
  part "store writer" 'embedded::Writer::run \['
  part "  of which memtable inserts" 'lsm_tree::tree::Tree::append_entry \['
  part "fjall point reads (writer and actors)" 'fjall::keyspace::Keyspace::get \['
fi
