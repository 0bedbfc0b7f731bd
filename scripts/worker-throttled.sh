#!/usr/bin/env bash
# The worker as users run it (`mdti-worker worker`, its own process), throttled: a simulator
# enforcing 50 requests/s, a worker at --graph-rate 50, and the bench's 700-observable mix
# (`bench --observables 700 --print-mix`) published to the bulk lane beforehand, one observable a
# message (`publish` drops the mix's 140 repeats: 560 messages). The worker exits once the
# queues are idle; prints its CPU seconds per 1,000 observables enriched (start-up and the 3 s
# idle wait included) and how often each of its threads was put on a CPU.
#
#   scripts/worker-throttled.sh [path to mdti-worker]
#
# Needs PostgreSQL and RabbitMQ as scripts/services.sh starts them, psql and GNU time.
set -euo pipefail
BIN=${1:-target/release/mdti-worker}
N=700
ID=$(date +%s%N | tail -c 9)
DB=mdti_throttled_$ID
PREFIX=throttled-$ID
PORT=$((18000 + RANDOM % 1000))
WORK=$(mktemp -d)
PSQL=(psql -qtA -U postgres -h 127.0.0.1)
GRAPH=(--graph-url "http://127.0.0.1:$PORT/v1.0" --login-url "http://127.0.0.1:$PORT"
       --tenant-id sim-tenant --client-id sim-client --client-secret sim-secret)
export MDTI_DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB

# shellcheck source=scripts/cleanup.sh
source "$(dirname "$0")/cleanup.sh"

"$BIN" bench --observables "$N" --print-mix > "$WORK/mix.txt"
"$BIN" sim --listen "127.0.0.1:$PORT" --rate-limit 50 > "$WORK/sim.log" 2>&1 &
SIM=$!
sleep 1
"${PSQL[@]}" -c "CREATE DATABASE $DB" postgres
"$BIN" migrate > /dev/null 2>&1
"$BIN" publish --queue-prefix "$PREFIX" --lane bulk --batch-size 1 --no-progress "$WORK/mix.txt" > /dev/null
/usr/bin/time -f "%U %S" -o "$WORK/time.txt" "$BIN" worker "${GRAPH[@]}" --queue-prefix "$PREFIX" \
  --graph-rate 50 --concurrency 64 --metrics-listen 127.0.0.1:0 --exit-when-idle 3s \
  > "$WORK/worker.log" 2>&1 &
TIMED=$!
sleep 1
WORKER=$(pgrep -P "$TIMED" -f worker)
# Threads' CPU-run counts, read just before the worker exits (every 0.5 s until it does).
RUNS=""
while kill -0 "$WORKER" 2>/dev/null; do
  NOW=$(for t in /proc/"$WORKER"/task/*; do
          printf '%s=%s ' "$(cat "$t/comm" 2>/dev/null)" "$(cut -d' ' -f3 "$t/schedstat" 2>/dev/null)"
        done 2>/dev/null || true)
  [ -n "$NOW" ] && RUNS=$NOW
  sleep 0.5
done
wait "$TIMED"
read -r USER_S SYS_S < "$WORK/time.txt"
DONE=$("${PSQL[@]}" "$DB" -c "SELECT count(*) FROM enrichment_runs")
python3 -c "print(f'{$DONE} observables enriched; the worker {($USER_S + $SYS_S) / $DONE * 1000:.2f} s of CPU per 1,000 (user $USER_S s, system $SYS_S s)')"
echo "runs on a CPU by thread: $RUNS"
