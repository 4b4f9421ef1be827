#!/usr/bin/env bash
# Issue 11's comparison: troupe against the Go + Gin peer in one run of
# ../shared/peers/compare.sh (server pinned to core 0, wrk on core 1, order
# troupe A, peer, troupe B), summarised as one table per backend: req/s of
# each, the ratio of troupe's mean to the peer, the aim, and p99.
#
#   scripts/compare-table.sh [mem|redis|both]      (default both)
#
# Env: PEERS (../shared/peers). Needs what compare.sh needs (wrk,
# redis-server, golang-go with gin and redigo from Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-both}
PEERS=$(cd "${PEERS:-../shared/peers}" && pwd)
RAW=$(mktemp)
trap 'rm -f "$RAW"' EXIT
echo "nproc: $(nproc); commit: $(git rev-parse --short HEAD); command: $PEERS/compare.sh . $MODE"
"$PEERS/compare.sh" . "$MODE" | tee "$RAW" >&2 || echo "compare.sh failed: the tables below are partial" >&2
for backend in embedded redis; do
  peer=$([ "$backend" = embedded ] && echo go-gin-mem || echo go-gin-redis)
  grep -q "troupe-$backend-A" "$RAW" || continue
  echo
  if [ "$backend" = embedded ]; then
    echo "troupe embedded (fsync before every reply) against $peer (in memory):"
  else
    echo "troupe on Redis against $peer (each on its own redis-server, AOF everysec):"
  fi
  echo
  echo "| scenario | troupe A | peer | troupe B | ratio (mean of A, B) | aim | p99 ms A / peer / B |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | --- |"
  awk -F'|' -v a="troupe-$backend-A" -v b="troupe-$backend-B" -v p="$peer" -v backend="$backend" '
    function trim(s) { gsub(/^ +| +$/, "", s); return s }
    { label = trim($2); sc = trim($3); rps = trim($4); p99 = trim($6) }
    label == a { ra[sc] = rps; pa[sc] = p99 }
    label == b { rb[sc] = rps; pb[sc] = p99 }
    label == p { rp[sc] = rps; pp[sc] = p99 }
    END {
      n = split("get_many deposit_hot deposit_many transfer_many", order, " ")
      if (backend == "embedded") { aim["get_many"] = "1.1x"; aim["deposit_hot"] = "1.0x"; aim["deposit_many"] = "1.0x"; aim["transfer_many"] = "0.6x" }
      else { aim["get_many"] = "-"; aim["deposit_hot"] = "1.5x"; aim["deposit_many"] = "1.5x"; aim["transfer_many"] = "1.5x" }
      for (i = 1; i <= n; i++) {
        sc = order[i]
        va = (sc in ra) ? ra[sc] : "missing"; vb = (sc in rb) ? rb[sc] : "missing"; vp = (sc in rp) ? rp[sc] : "missing"
        if (va !~ /^[0-9]+$/ || vb !~ /^[0-9]+$/ || vp !~ /^[0-9]+$/ || vp == 0) {
          printf "| %s | %s | %s | %s | n/a | %s | |\n", sc, va, vp, vb, aim[sc]
          continue
        }
        ratio = (ra[sc] + rb[sc]) / 2 / rp[sc]
        printf "| %s | %d | %d | %d | %.2fx | %s | %s / %s / %s |\n", sc, ra[sc], rp[sc], rb[sc], ratio, aim[sc], pa[sc], pp[sc], pb[sc]
      }
    }' "$RAW"
done
