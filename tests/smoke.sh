#!/usr/bin/env bash
# README command 1, for real: `make dev` starts the whole local pipeline; we run the
# example command it prints, exactly as printed, and expect `delivered`; we invoke the
# ingest function with a re-signed sample event through `cargo lambda invoke`; we run
# the operator commands (quota, routes, dlq) against the local AWS; then
# Ctrl-C (SIGINT to the process group, as a terminal sends it) must stop everything.
set -euo pipefail
cd "$(dirname "$0")/.."

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export PUSHGATE_MOTO_PORT=$(free_port) PUSHGATE_API_PORT=$(free_port) PUSHGATE_RECEIVER_PORT=$(free_port)
export PUSHGATE_FAKES_PORT=$(free_port) PUSHGATE_SMTP_PORT=$(free_port)
log=$(mktemp)
fail() { echo "smoke: FAIL: $*"; echo "--- make dev output ---"; tail -n 60 "$log"; exit 1; }

setsid make dev >"$log" 2>&1 &
pid=$!
trap 'kill -INT -- -"$pid" 2>/dev/null || true' EXIT

for _ in $(seq 1 900); do
  grep -q "Ctrl-C stops everything" "$log" && break
  kill -0 "$pid" 2>/dev/null || fail "make dev exited early"
  sleep 1
done
grep -q "Ctrl-C stops everything" "$log" || fail "make dev did not come up in 15 minutes"
grep -q "PUSHGATE_APP_SECRET=" "$log" || fail "credentials not printed"

example=$(grep -E '^ +source \.pushgate/dev\.env && ' "$log" | sed -e 's/^ *//')
[ -n "$example" ] || fail "no example command printed"
echo "smoke: running the printed example: $example"
out=$(bash -c "$example" 2>&1) || fail "example command failed: $out"
echo "$out" | grep -q '^status: delivered$' || fail "example did not reach delivered: $out"
echo "smoke: example reached delivered"

# Every other channel, through the provider sandbox, as the banner prints them.
channels=0
while IFS= read -r line; do
  cmd=$(echo "$line" | sed -e 's/^ *//')
  out=$(bash -c "source .pushgate/dev.env && $cmd" 2>&1) || fail "channel example failed: $cmd: $out"
  echo "$out" | grep -q '^status: delivered$' || fail "channel example did not reach delivered: $cmd: $out"
  channels=$((channels + 1))
done < <(grep -E '^  cargo run -q -p pushgate -- send --channel ' "$log")
[ "$channels" -ge 6 ] || fail "expected 6 channel examples, ran $channels"
echo "smoke: $channels channel examples reached delivered"

# The batch example, as printed: every recipient of the CSV settles.
batch=$(grep -E "^  printf .* pushgate -- batch " "$log" | sed -e 's/^ *//')
[ -n "$batch" ] || fail "no batch example printed"
out=$(bash -c "source .pushgate/dev.env && $batch" 2>&1) || fail "batch example failed: $out"
echo "smoke: batch example completed"

# The events/ samples through cargo lambda invoke, re-signed as the README says.
tmp=$(mktemp -d)
cp events/*.json "$tmp/"
(source .pushgate/dev.env && cargo run -q -p pushgate -- events resign --dir "$tmp" >/dev/null)
invoked=$(cargo lambda invoke ingest -A 127.0.0.1 --invoke-port "$PUSHGATE_API_PORT" --data-file "$tmp/ingest-send.json" 2>&1) || fail "cargo lambda invoke: $invoked"
echo "$invoked" | grep -q '"statusCode": *202' || fail "ingest sample not accepted: $invoked"
invoked=$(cargo lambda invoke dispatcher -A 127.0.0.1 --invoke-port "$PUSHGATE_API_PORT" --data-file "$tmp/dispatcher-sqs.json" 2>&1) || fail "cargo lambda invoke dispatcher: $invoked"
echo "$invoked" | grep -q 'batchItemFailures' || fail "dispatcher sample: $invoked"
echo "smoke: events/ samples invoked"

# The operator commands against the local AWS, as the README gives them.
pg() { bash -c "source .pushgate/dev.env && cargo run -q -p pushgate -- $*" 2>&1; }
out=$(pg quota set --app dev-app 5) || fail "quota set: $out"
out=$(pg quota add --app dev-app -2) || fail "quota add: $out"
[ "$out" = "dev-app: 3 messages available" ] || fail "quota add: $out"
out=$(pg routes seed) || fail "routes seed: $out"
echo "$out" | grep -q '^seeded 2 routes into ' || fail "routes seed: $out"
out=$(pg dlq list) || fail "dlq list: $out"
echo "$out" | grep -q '^0 dead-lettered$' || fail "dlq list: $out"
echo "smoke: operator commands (quota, routes, dlq) work"

kill -INT -- -"$pid"
for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
kill -0 "$pid" 2>/dev/null && fail "make dev still running 30 s after Ctrl-C"
trap - EXIT
for port in "$PUSHGATE_MOTO_PORT" "$PUSHGATE_API_PORT" "$PUSHGATE_RECEIVER_PORT" "$PUSHGATE_FAKES_PORT" "$PUSHGATE_SMTP_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then fail "port $port still served after Ctrl-C"; fi
done
echo "smoke: Ctrl-C stopped everything"
echo "smoke: 5 passed, 0 failed"
