#!/usr/bin/env bash
# A 10,000-recipient batch through ingest against moto: prints the ingest time and the
# AWS calls it made (figures, not assertions; moto's SQS is quadratic in queue length,
# so the local time is an upper bound far above AWS's).
#   bash bench/batch.sh [recipients]   (default 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
make --quiet venv
export PATH="$PWD/.pushgate/venv/bin:$PATH" PUSHGATE_MOTO_SERVER="$PWD/.pushgate/venv/bin/moto_server"
PUSHGATE_BATCH_RECIPIENTS=${1:-10000} cargo test -q -p pushgate-tests --test batch a_big_batch -- --nocapture 2>&1 \
  | grep -E "batch of|AWS calls|test result"
