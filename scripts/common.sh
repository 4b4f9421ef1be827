# Shared by the benchmark scripts (sourced, not run).

# wait_ready BASE: waits up to 30 s for BASE/readyz; fails with a message
# naming the usual cause (the port in use, a setting the binary refuses).
wait_ready() {
  for _ in $(seq 300); do curl -fs "$1/readyz" >/dev/null && return 0; sleep 0.1; done
  echo "troupe did not start at $1 (port in use? a setting it refuses?)" >&2
  return 1
}

# seed_accounts BASE: accounts b-1 .. b-10000, each funded with 1,000,000
# (scripts/wrk/sequential.lua), for scripts/wrk/transfer_many.lua.
seed_accounts() {
  local wrk_dir; wrk_dir="$(dirname "${BASH_SOURCE[0]}")/wrk"
  COUNT=10000 METHOD=PUT PREFIX=b- wrk -t1 -c32 -d6s -s "$wrk_dir/sequential.lua" "$1" >/dev/null
  COUNT=10000 METHOD=FUND PREFIX=b- wrk -t1 -c32 -d6s -s "$wrk_dir/sequential.lua" "$1" >/dev/null
}
