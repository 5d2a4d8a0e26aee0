#!/usr/bin/env bash
# Release binary sizes and peak memory (VmHWM) of the three functions after serving
# traffic through the local stack (`pushgate dev --release`). Prints figures only.
#   bash bench/footprint.sh [messages]   (default 200)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200}
make --quiet venv
export PATH="$PWD/.pushgate/venv/bin:$PATH" PUSHGATE_MOTO_SERVER="$PWD/.pushgate/venv/bin/moto_server"
target=${CARGO_TARGET_DIR:-target}

for f in ingest dispatcher callback; do cargo build --quiet --release --bin "$f"; done
cargo build --quiet -p pushgate
echo "release binaries (x86_64, opt-level s, LTO, stripped):"
for f in ingest dispatcher callback; do
  printf "  %-10s %6.1f MiB\n" "$f" "$(echo "$(stat -c %s "$target/release/$f") / 1048576" | awk '{print $1/$3}')"
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export PUSHGATE_MOTO_PORT=$(free_port) PUSHGATE_API_PORT=$(free_port) PUSHGATE_RECEIVER_PORT=$(free_port)
log=$(mktemp)
setsid "$target/debug/pushgate" dev --release >"$log" 2>&1 &
pid=$!
trap 'kill -INT -- -"$pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do grep -q "Ctrl-C stops everything" "$log" && break; sleep 1; done
source .pushgate/dev.env
start=$(date +%s.%N)
for i in $(seq 1 "$n"); do
  "$target/debug/pushgate" send --channel webhook --to "$PUSHGATE_RECEIVER/hooks/bench" --text "m$i" >/dev/null
done
"$target/debug/pushgate" send --channel email --to bench@example.com --template welcome --data '{"name":"B","product":"P"}' --wait >/dev/null
end=$(date +%s.%N)
sleep 3
echo "served $n webhook messages + 1 email through ingest, dispatcher and callback in $(awk "BEGIN{printf \"%.1f\", $end-$start}") s"
echo "peak resident memory (VmHWM) of each function process:"
for f in ingest dispatcher callback; do
  p=$(pgrep -f "$target/release/$f\$" | head -1 || true)
  if [ -n "$p" ]; then printf "  %-10s %s\n" "$f" "$(grep VmHWM /proc/"$p"/status | awk '{printf "%.1f MiB", $2/1024}')"; else echo "  $f: not running"; fi
done
