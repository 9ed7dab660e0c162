#!/usr/bin/env bash
# Builds every cargo-fuzz target (nightly, AddressSanitizer, release with debug assertions and
# overflow checks) and runs each for FUZZ_SECONDS (default 60) from its committed corpus
# (fuzz/corpus/<target>, read-only: new inputs go to fuzz/target/corpus/<target>).
# Exits non-zero on any crash, panic, leak, out-of-memory (-rss_limit_mb) or slow input
# (-timeout), after printing the reproducer.
#
#   bash fuzz/run.sh                          # all targets, 60 s each
#   FUZZ_SECONDS=600 FUZZ_TARGETS="image_input checkpoint" bash fuzz/run.sh
#
# Reproduce a failure (the path is printed):
#   cd fuzz && cargo +nightly fuzz run -O -a TARGET artifacts/TARGET/crash-...
set -euo pipefail
cd "$(dirname "$0")"

SECONDS_EACH="${FUZZ_SECONDS:-60}"
TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"
FLAGS=(-O -a) # release, debug assertions

if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
  rustup toolchain install "$TOOLCHAIN" --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

TARGETS="${FUZZ_TARGETS:-$(cargo +"$TOOLCHAIN" fuzz list)}"
echo "fuzz targets: $(echo $TARGETS)"

start=$(date +%s)
cargo +"$TOOLCHAIN" fuzz build "${FLAGS[@]}"
echo "built in $(($(date +%s) - start)) s"

failed=()
summary=()
for t in $TARGETS; do
  scratch="target/corpus/$t"
  log="target/fuzz-$t.log"
  mkdir -p "$scratch" "corpus/$t" "artifacts/$t"
  echo "== fuzz $t for ${SECONDS_EACH} s"
  rc=0
  cargo +"$TOOLCHAIN" fuzz run "${FLAGS[@]}" "$t" "$scratch" "corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    >"$log" 2>&1 || rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 || true)
  line="$t: ${runs:-?} runs, ${rate:-?} exec/s, ${cov:-cov: ?}"
  if [ "$rc" -ne 0 ]; then
    failed+=("$t")
    line="$line: FAILED (exit $rc)"
    tail -n 60 "$log"
    for a in $(grep -o 'artifacts/[^ ]*' "$log" | sort -u); do
      [ -f "$a" ] && echo "reproducer: fuzz/$a  (cd fuzz && cargo +$TOOLCHAIN fuzz run ${FLAGS[*]} $t $a)"
    done
  fi
  echo "$line"
  summary+=("$line")
done

echo "== fuzz summary ($(($(date +%s) - start)) s in all)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
  echo "fuzz targets failed: ${failed[*]} (logs in fuzz/target/fuzz-<target>.log)"
  exit 1
fi
