#!/usr/bin/env bash
# Runs every coverage-guided fuzz target in turn for SECONDS each (default 120) and prints, per
# target, the executions, the corpus size and whether it found a crash. Needs the nightly
# toolchain and cargo-fuzz (`cargo install cargo-fuzz`); see fuzz/README.md.
#   bash fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh >/dev/null
dualign_env
set +e
# The fuzz binaries link libtorch without the rpath build.rs gives `host`.
export LD_LIBRARY_PATH="$("$DUALIGN_PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
secs=${1:-120}
shift || true
# The seed corpus comes from the same code as the mutation tests (tests/mutation.rs).
cargo test -q --test mutation -- --ignored write_the_fuzz_seed_corpus >/dev/null || { echo "error: could not write fuzz/seeds" >&2; exit 1; }
cargo +nightly fuzz build -s none || exit 1
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
mkdir -p target/fuzz-logs
status=0
printf '%-16s %12s %8s %s\n' target executions corpus result
for t in "${targets[@]}"; do
  mkdir -p "target/fuzz-corpus/$t"
  log="target/fuzz-logs/$t.log"
  # New inputs go to the first folder (kept under target/); fuzz/seeds stays as written.
  cargo +nightly fuzz run -s none "$t" "target/fuzz-corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  corpus=$(ls "target/fuzz-corpus/$t" | wc -l)
  if [ $rc -eq 0 ]; then result=ok; else result="FAILED (rc $rc): $(grep -m1 -E 'panicked|ERROR|Test unit written' "$log")"; status=1; fi
  printf '%-16s %12s %8s %s\n' "$t" "${execs:-?}" "$corpus" "$result"
done
exit $status
