#!/usr/bin/env bash
# troupe against the Go + Gin peer of
# benches/peers/go-gin in one run of benches/peers/compare.sh (server pinned
# to core 0, wrk on core 1, order troupe A, peer, troupe B), summarised as
# one table per backend: req/s of each, the ratio of troupe's mean to the
# peer, the aim, and p99.
#
#   scripts/compare-table.sh [mem|redis|pg|both|all]      (default both)
#
# Needs what compare.sh needs and installs it through scripts/deps.sh (wrk,
# redis-server, Go with Debian's gin, redigo and lib/pq; postgresql for pg).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-both}
RAW=$(mktemp)
trap 'rm -f "$RAW"' EXIT
echo "nproc: $(nproc); commit: $(git rev-parse --short HEAD); command: benches/peers/compare.sh . $MODE"
benches/peers/compare.sh . "$MODE" | tee "$RAW" >&2 || echo "compare.sh failed: the tables below are partial" >&2
for round in mem redis pg; do
  case "$round" in
    mem) troupe=troupe-embedded peer=go-gin-mem aims=embedded
      title="troupe embedded (fsync before every reply) against go-gin-mem (in memory):" ;;
    redis) troupe=troupe-redis peer=go-gin-redis aims=redis
      title="troupe on Redis against go-gin-redis (each on its own redis-server, AOF everysec):" ;;
    pg) troupe=troupe-embedded-pg peer=go-gin-pg aims=none
      title="troupe embedded against go-gin-pg (Postgres write-through, fsync and synchronous_commit on, on the server's core):" ;;
  esac
  grep -q "| $troupe-A |" "$RAW" || continue
  echo
  echo "$title"
  echo
  echo "| scenario | troupe A | peer | troupe B | ratio (mean of A, B) | aim | p99 ms A / peer / B |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | --- |"
  awk -F'|' -v a="$troupe-A" -v b="$troupe-B" -v p="$peer" -v aims="$aims" '
    function trim(s) { gsub(/^ +| +$/, "", s); return s }
    { label = trim($2); sc = trim($3); rps = trim($4); p99 = trim($6) }
    label == a { ra[sc] = rps; pa[sc] = p99 }
    label == b { rb[sc] = rps; pb[sc] = p99 }
    label == p { rp[sc] = rps; pp[sc] = p99 }
    END {
      n = split("get_many deposit_hot deposit_many transfer_many", order, " ")
      for (i = 1; i <= n; i++) aim[order[i]] = "-"
      if (aims == "embedded") { aim["get_many"] = "1.1x"; aim["deposit_hot"] = "1.0x"; aim["deposit_many"] = "1.0x"; aim["transfer_many"] = "0.6x" }
      if (aims == "redis") { aim["deposit_hot"] = "1.5x"; aim["deposit_many"] = "1.5x"; aim["transfer_many"] = "1.5x" }
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
