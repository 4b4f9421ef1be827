#!/usr/bin/env bash
# What authentication and TLS cost per request: reads of one account
# (GET /v1/accounts/a, the cheapest route, so the added cost shows most)
# with auth off, with an API key, with an HS256 and an RS256 JWT, and over
# TLS; one worker pinned to core 0, wrk on core 1, 64 connections (kept
# alive: TLS handshakes happen once per connection, so the TLS row is the
# cost of encryption, not of handshakes), DUR seconds per row, ROUNDS
# rounds interleaved. Prints requests/s, p99 and the ratio to the first row.
#
#   scripts/auth-cost.sh   Env: BIN (built when unset), DUR (8), ROUNDS (2), PORT
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
DUR=${DUR:-8}
ROUNDS=${ROUNDS:-2}
PORT=${PORT:-18185}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin troupe
  BIN=target/release/troupe
fi
WORK=$(mktemp -d)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
# jwt ALG KEYARG: a token for ledger:read and ledger:write, valid for an hour.
jwt() {
  local header payload signing
  header=$(printf '{"alg":"%s","typ":"JWT"}' "$1" | b64url)
  payload=$(printf '{"iss":"bench","aud":"troupe","sub":"wrk","exp":%s,"scope":"ledger:read ledger:write"}' \
    "$(( $(date +%s) + 3600 ))" | b64url)
  signing="$header.$payload"
  case "$1" in
    HS256) printf '%s.%s' "$signing" "$(printf '%s' "$signing" | openssl dgst -sha256 -hmac "$2" -binary | b64url)" ;;
    RS256) printf '%s.%s' "$signing" "$(printf '%s' "$signing" | openssl dgst -sha256 -sign "$2" -binary | b64url)" ;;
  esac
}

SECRET="a-bench-secret-of-at-least-thirty-two-bytes"
openssl genrsa -out "$WORK/rsa.pem" 2048 2>/dev/null
openssl rsa -in "$WORK/rsa.pem" -pubout -out "$WORK/rsa.pub" 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=localhost -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
KEY=trp_bench_key
printf '[[key]]\nname = "bench"\nsha256 = "%s"\nscopes = ["ledger:read", "ledger:write"]\n' \
  "$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)" > "$WORK/keys.toml"
HS=$(jwt HS256 "$SECRET")
RS=$(jwt RS256 "$WORK/rsa.pem")

# start NAME: the server for row NAME on a fresh data directory with account a.
start() {
  local envs=(TROUPE__LOG__FILTER=warn TROUPE__SERVER__WORKERS=1)
  local scheme=http
  case "$1" in
    key) envs+=(TROUPE__AUTH__ENABLED=true "TROUPE__AUTH__KEYS_FILE=$WORK/keys.toml") ;;
    jwt_hs256) envs+=(TROUPE__AUTH__ENABLED=true TROUPE__AUTH__JWT__ISSUER=bench
      TROUPE__AUTH__JWT__AUDIENCE=troupe "TROUPE__AUTH__JWT__HS256_SECRET=$SECRET") ;;
    jwt_rs256) envs+=(TROUPE__AUTH__ENABLED=true TROUPE__AUTH__JWT__ISSUER=bench
      TROUPE__AUTH__JWT__AUDIENCE=troupe "TROUPE__AUTH__JWT__PUBLIC_KEY_FILE=$WORK/rsa.pub") ;;
    tls) envs+=("TROUPE__SERVER__TLS__CERT_FILE=$WORK/tls.crt" "TROUPE__SERVER__TLS__KEY_FILE=$WORK/tls.key")
      scheme=https ;;
  esac
  rm -rf "$WORK/data"
  env "${envs[@]}" taskset -c 0 "$BIN" --port "$PORT" --data-dir "$WORK/data" >/dev/null 2>&1 &
  PID=$!
  BASE="$scheme://localhost:$PORT"
  for _ in $(seq 300); do curl -kfs "$BASE/readyz" >/dev/null && break; sleep 0.1; done
  curl -kfs -X PUT "$BASE/v1/accounts/a" -H 'Content-Type: application/json' \
    -H "Authorization: Bearer $(token_for "$1")" -d '{"currency":"EUR"}' >/dev/null
}
stop() { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; PID=""; }
token_for() {
  case "$1" in key) echo "$KEY" ;; jwt_hs256) echo "$HS" ;; jwt_rs256) echo "$RS" ;; *) echo none ;; esac
}

ROWS="none key jwt_hs256 jwt_rs256 tls"
declare -A RPS P99
for round in $(seq "$ROUNDS"); do
  for row in $ROWS; do
    start "$row"
    out=$(taskset -c 1 wrk -t1 -c64 -d"${DUR}s" --latency \
      -H "Authorization: Bearer $(token_for "$row")" "$BASE/v1/accounts/a")
    stop
    rps=$(awk '/Requests\/sec/ { print $2 }' <<<"$out")
    p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
    non2xx=$(awk '/Non-2xx/ { print $NF }' <<<"$out")
    [ -n "$non2xx" ] && { echo "row $row: $non2xx answers were not 2xx" >&2; exit 1; }
    RPS[$row]="${RPS[$row]:-} $rps"; P99[$row]="${P99[$row]:-} $p99"
    echo "round $round $row: $rps req/s, p99 $p99" >&2
  done
done
mean() { tr ' ' '\n' | awk 'NF { s += $1; n++ } END { printf "%.0f", s / n }'; }
base=$(mean <<<"${RPS[none]}")
echo "| row | req/s (mean of $ROUNDS) | runs | p99 | ratio to none |"
echo "| --- | ---: | --- | --- | ---: |"
for row in $ROWS; do
  m=$(mean <<<"${RPS[$row]}")
  printf '| %s | %s | %s | %s | %.2fx |\n' "$row" "$m" "$(echo ${RPS[$row]})" "$(echo ${P99[$row]})" \
    "$(awk -v a="$m" -v b="$base" 'BEGIN { print a / b }')"
done
echo "($(nproc) cores, $(git rev-parse --short HEAD), scripts/auth-cost.sh DUR=$DUR ROUNDS=$ROUNDS)"
