#!/usr/bin/env bash
# What the start-up checks of the embedded store cost: fills a journal with
# durable deposits (SECS seconds of wrk, the NEW binary), SIGKILLs, then times
# restarts to /readyz 200 with the OLD and NEW binaries in turn (A B A B).
# Usage: OLD=path/to/troupe-before NEW=target/release/troupe scripts/start-cost.sh
set -u
NEW=${NEW:?the binary to measure}; OLD=${OLD:?the binary to compare with}
D=$(mktemp -d)
export TROUPE__STORE__PATH=$D/data TROUPE__SERVER__PORT=18080 RUST_LOG=warn
cd "$(dirname "$0")/.."
ready() { for i in $(seq 1 4000); do curl -sf localhost:18080/readyz >/dev/null && return 0; sleep 0.002; done; echo "not ready"; return 1; }
run() { "$1" >"$D/$2.log" 2>&1 & PID=$!; }
run $NEW fill; ready
curl -s -XPUT localhost:18080/v1/accounts/hot -H 'Content-Type: application/json' -d '{"currency":"EUR"}' >/dev/null
taskset -c 1 wrk -t1 -c32 -d${SECS:-20}s -s scripts/wrk/deposit_hot.lua http://localhost:18080/v1/accounts/hot/deposits | grep -E "Requests/sec|Non-2xx"
kill -9 $PID; wait $PID 2>/dev/null
for f in $D/data/troupe.fjall/*.jnl; do echo "$f: $(python3 -c "
b=open('$f','rb').read();i=len(b)
while i>0 and b[i-1]==0: i-=1
print(i, 'bytes written')")"; done
for r in 1 2 3 4; do
  for bin in OLD NEW; do
    B=${!bin}
    t0=$(date +%s%N); run $B $bin; ready; t1=$(date +%s%N)
    echo "$bin start $r: $(( (t1 - t0) / 1000000 )) ms"
    kill -9 $PID; wait $PID 2>/dev/null
  done
done
run $NEW check; ready; curl -s localhost:18080/v1/accounts/hot; echo; kill -9 $PID
rm -rf $D
