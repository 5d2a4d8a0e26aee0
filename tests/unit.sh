#!/usr/bin/env bash
# cargo test over the workspace (unit and integration tests; benches are `make bench`),
# closing with one summary line of the totals across all test binaries.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
cargo test --workspace --lib --bins --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
grep -E '^test result:' "$log" | awk '{ for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;/) p += $i; if ($(i+1) ~ /^failed;/) f += $i } }
  END { printf "tests: %d passed, %d failed\n", p, f }'
rm -f "$log"
exit "$status"
