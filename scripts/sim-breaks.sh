#!/usr/bin/env bash
# Proof that the simulator can fail: breaks the runtime's core on purpose,
# one way at a time, in a scratch worktree of HEAD, and runs the simulator
# with the budget `make test` gives it. Prints, for each break, the first
# seed that fails and what it found, or that none did (a break the
# simulator misses is a missing invariant or a missing fault).
#
#   scripts/sim-breaks.sh            every break
#   scripts/sim-breaks.sh NAME...    some of them
#
# Env: SEEDS (the test's own budget when unset).
set -euo pipefail
top=$(git rev-parse --show-toplevel)
work=$(mktemp -d /tmp/sim-breaks-XXXX)
# The main target directory: dependencies are shared, the worktree's own
# crate builds beside the checkout's.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$top/target}
trap 'git -C "$top" worktree remove --force "$work" >/dev/null 2>&1 || true' EXIT
git -C "$top" worktree add --detach "$work" HEAD >/dev/null 2>&1

# name ~ file ~ text ~ replacement
breaks=(
  "lru_and_store_only~src/runtime/core/serve.rs~self.open.as_ref().and_then(|b| b.recall(key))~None::<&[u8]>"
  "no_epoch_check~src/runtime/core/asks.rs~self.in_flight.clear();~"
  "answer_before_commit~src/runtime/core/serve.rs~Some(batch) if batch.writes() =>~Some(batch) if false && batch.writes() =>"
  "passivate_with_asks_in_flight~src/runtime/core/mod.rs~|| !self.asks.is_idle()~"
  "passivate_with_unfinished_work~src/runtime/core/mod.rs~|| !self.parked.is_empty()\n                    || self.durable_pending~|| !self.parked.is_empty()"
  "passivate_with_an_open_batch~src/runtime/core/mod.rs~self.open.is_some()\n                    || self.lazy~self.lazy"
  "drop_a_waiting_message~src/runtime/core/serve.rs~_ => self.queue.push_back(incoming),~_ => drop(incoming),"
  "drop_a_retry~src/runtime/core/asks.rs~let Some(ask) = self.asks.in_flight.iter().find(|a| a.id == id) else {~let Some(ask) = self.asks.in_flight.iter().find(|a| a.id == id && false) else {"
  "forget_a_parked_caller~src/runtime/core/load.rs~self.parked.push(parked);~drop(parked);"
  "trust_an_unknown_outcome~src/runtime/core/commit.rs~let landed = found >= doubt.version && found_digest == Some(digest);~let landed = true;"
  "fence_by_version_only~src/runtime/core/commit.rs~let landed = found >= doubt.version && found_digest == Some(digest);~let landed = found >= doubt.version;"
  "forget_stored_unfinished_work~src/runtime/core/load.rs~doubt.is_some() || self.durable_pending ||~doubt.is_some() ||"
  "retry_a_failed_load_at_once~src/runtime/core/load.rs~self.timer(now.at + self.options.retry_interval, Timer::Reload);~self.timer(now.at, Timer::Reload);"
  "ask_retries_without_backoff~src/runtime/core/asks.rs~ask.attempt += 1;~"
  "ignore_a_live_reload~src/runtime/core/mod.rs~self.options = options;~let _ = options;"
)

wanted=("$@")
for entry in "${breaks[@]}"; do
  IFS='~' read -r name file text replacement <<<"$entry"
  if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " == *" $name "* ]]; then continue; fi
  git -C "$work" checkout -q -- .
  if ! python3 - "$work/$file" "$text" "$replacement" <<'PY'
import sys
path, old, new = (a.replace("\\n", "\n") for a in sys.argv[1:])
s = open(path).read()
if old not in s:
    sys.exit(1)
open(path, "w").write(s.replace(old, new, 1))
PY
  then
    echo "| $name | the text to break is gone from $file: update this script |"
    continue
  fi
  out=$(cd "$work" && SIM_SEEDS=${SEEDS:-} cargo test -q --test simulate 2>&1 || true)
  seed=$(grep -oE 'seed [0-9]+ failed at [^:]+: .{0,140}' <<<"$out" | head -1 || true)
  if [ -n "$seed" ]; then
    echo "| $name | $seed |"
  elif grep -q 'error\[' <<<"$out"; then
    echo "| $name | does not compile: $(grep -m1 'error\[' <<<"$out" || true) |"
  else
    echo "| $name | NOT FOUND within the budget |"
  fi
done
