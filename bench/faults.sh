#!/usr/bin/env bash
# The fault suite (tests/tests/faults.rs) at scale: duplicate deliveries,
# provider 5xx, timeouts, throttles, permanent rejections and dispatcher crashes, with
# sends counted at the provider fake. Prints the suite's figures; asserts lost = 0 and
# double-sent = 0 as the test does. Debug build: the time is moto's (it serialises every
# request), not ours; a release build only adds minutes of LTO.
#   bash bench/faults.sh [messages]   (default 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
make --quiet venv
export PUSHGATE_MOTO_SERVER="$PWD/.pushgate/venv/bin/moto_server" PUSHGATE_FAULT_MESSAGES="$n"
start=$(date +%s)
cargo test --quiet -p pushgate-tests --test faults -- --nocapture 2>&1 |
  sed -n '/^messages /,/^test result/p' | grep -v -E '^ +[0-9]+: |^ +at '
echo "wall time: $(( $(date +%s) - start )) s for $n messages"
