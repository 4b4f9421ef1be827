#!/usr/bin/env bash
# troupe against the Go + Gin peer (go-gin/), side by side in one session on
# one machine: builds troupe's release binary from TROUPE_CHECKOUT and the
# peer from this checkout, then for each backend runs troupe, the peer and
# troupe again (A B A, so that drift shows), each seeded with seed.sh and
# measured with bench.sh; servers pinned to core 0, wrk to core 1.
#
#   benches/peers/compare.sh TROUPE_CHECKOUT [mem|redis|pg|both|all]   (default both)
#
#   mem    troupe on its embedded store (fsync before every reply) against
#          the peer in memory (keeps nothing)
#   redis  both on a redis-server of their own each (AOF, appendfsync everysec)
#   pg     troupe embedded against the peer writing through to Postgres (a
#          fresh cluster per run, fsync and synchronous_commit on, pinned to
#          core 0 with the peer: the whole durable service on one core)
#   both   mem + redis;  all: mem + redis + pg
#
# Rows are bench.sh's plus RSS after the run. Labels: troupe-embedded-A/B and
# go-gin-mem; troupe-redis-A/B and go-gin-redis; troupe-embedded-pg-A/B and
# go-gin-pg (scripts/compare-table.sh summarises them).
# Env: PEER_BIN (where the peer is built: target/peers/ledger-peer), and
# bench.sh's DURATION, CONNS, SCENARIOS. Installs what it needs through
# scripts/deps.sh (bench, or bench-pg for pg and all).
set -euo pipefail
TROUPE_DIR=$(cd "${1:?usage: compare.sh TROUPE_CHECKOUT [mem|redis|pg|both|all]}" && pwd)
MODE=${2:-both}
case "$MODE" in mem|redis|pg|both|all) ;; *) echo "unknown mode $MODE: mem|redis|pg|both|all" >&2; exit 2 ;; esac
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORK=$(mktemp -d /tmp/compare-XXXXXX)
chmod 755 "$WORK" # the postgres user reaches its cluster's socket in it

case "$MODE" in pg|all) "$REPO/scripts/deps.sh" bench-pg >&2 ;; *) "$REPO/scripts/deps.sh" bench >&2 ;; esac

if [ "$(nproc)" -ge 2 ]; then
  SERVER_CPU=(taskset -c 0)
  export WRK_PREFIX="taskset -c 1"
else
  echo "one core: servers and wrk share it" >&2
  SERVER_CPU=()
fi

(cd "$TROUPE_DIR" && cargo build --release --quiet --bin troupe)
TROUPE="$TROUPE_DIR/target/release/troupe"
PEER_BIN=${PEER_BIN:-$REPO/target/peers/ledger-peer}
mkdir -p "$(dirname "$PEER_BIN")"
# Debian's Go packages live in GOPATH form under /usr/share/gocode: no module
# proxy, no network.
(cd "$HERE/go-gin" && GO111MODULE=off GOPATH=/usr/share/gocode go build -o "$PEER_BIN" .)

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_ready() { # url pid
  for _ in $(seq 300); do
    curl -fsS "$1/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  echo "not ready: $1" >&2
  return 1
}
rss_mb() { echo $(( $(awk '/^VmRSS/ {print $2}' "/proc/$1/status") / 1024 )); }

SERVER_PID="" REDIS_PID="" PG_DATA="" PG_PORT=""
pg_bin() { find /usr/lib/postgresql -maxdepth 2 -name bin -type d | sort -V | tail -1; }
# as_pg: Postgres refuses to run as root; the cluster belongs to the postgres user then.
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
start_redis() {
  local port dir
  port=$(free_port); dir="$WORK/redis-$port"; mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save "" \
    --appendonly yes --appendfsync everysec >"$dir.log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  REDIS_URL="redis://127.0.0.1:$port"
}
start_pg() {
  local bin; bin=$(pg_bin)
  PG_PORT=$(free_port); PG_DATA="$WORK/pg-$PG_PORT"; mkdir -p "$PG_DATA"; chmod 700 "$PG_DATA"
  [ "$(id -u)" -ne 0 ] || chown postgres "$PG_DATA"
  as_pg "$bin/initdb" -D "$PG_DATA/data" -A trust -U postgres >/dev/null
  as_pg "${SERVER_CPU[@]}" "$bin/pg_ctl" -D "$PG_DATA/data" -l "$PG_DATA/log" -w -o \
    "-p $PG_PORT -k $PG_DATA -c listen_addresses= -c fsync=on -c synchronous_commit=on -c max_connections=200 -c shared_buffers=256MB" \
    start >/dev/null
}
stop_all() {
  if [ -n "$SERVER_PID" ]; then kill -TERM "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  if [ -n "$REDIS_PID" ]; then kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; fi
  if [ -n "$PG_DATA" ]; then as_pg "$(pg_bin)/pg_ctl" -D "$PG_DATA/data" -m fast stop >/dev/null 2>&1 || true; fi
  SERVER_PID="" REDIS_PID="" PG_DATA=""
}
trap 'stop_all; rm -rf "$WORK"' EXIT

# measure LABEL PORT: seed, the scenarios, RSS; then stop everything.
measure() {
  local base="http://127.0.0.1:$2"
  if wait_ready "$base" "$SERVER_PID" && "$HERE/seed.sh" "$base" >/dev/null; then
    HEADER=0 "$HERE/bench.sh" "$base" "$1"
    echo "| $1 | rss MB after run | $(rss_mb "$SERVER_PID") | | | | |"
  else
    echo "| $1 | did not start or seed: see $1.log | | | | | |"
    cp "$WORK/$1.log" "/tmp/compare-$1.log" 2>/dev/null || true
  fi
  stop_all
}
run_troupe() { # label embedded|redis
  local port env=(TROUPE__LOG__FILTER=warn); port=$(free_port)
  if [ "$2" = redis ]; then
    start_redis
    env+=(TROUPE__STORE__BACKEND=redis TROUPE__STORE__REDIS__URL="$REDIS_URL")
  fi
  env "${env[@]}" "${SERVER_CPU[@]}" "$TROUPE" --bind 127.0.0.1 --port "$port" \
    --data-dir "$WORK/data-$port" >"$WORK/$1.log" 2>&1 &
  SERVER_PID=$!
  measure "$1" "$port"
}
run_peer() { # label mem|redis|pg
  local port store=(); port=$(free_port)
  case "$2" in
    redis) start_redis; store=(-redis "$REDIS_URL/0") ;;
    pg) start_pg; store=(-pg "host=$PG_DATA port=$PG_PORT user=postgres dbname=postgres sslmode=disable") ;;
  esac
  GOMAXPROCS=1 "${SERVER_CPU[@]}" "$PEER_BIN" -addr "127.0.0.1:$port" "${store[@]}" >"$WORK/$1.log" 2>&1 &
  SERVER_PID=$!
  measure "$1" "$port"
}

echo "| label | scenario | req/s | p50 ms | p99 ms | non-2xx | sock err |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
for backend in mem redis pg; do
  case "$MODE" in
    all) ;;
    both) [ "$backend" != pg ] || continue ;;
    *) [ "$MODE" = "$backend" ] || continue ;;
  esac
  case "$backend" in
    mem) troupe=embedded label=troupe-embedded ;;
    redis) troupe=redis label=troupe-redis ;;
    pg) troupe=embedded label=troupe-embedded-pg ;;
  esac
  run_troupe "$label-A" "$troupe"
  run_peer "go-gin-$backend" "$backend"
  run_troupe "$label-B" "$troupe"
done
