#!/usr/bin/env bash
# A live IOC behind a backfill, at a tenant quota of 50 requests/s: a simulator enforcing 50/s,
# a worker at --graph-rate 50, a 2,000-IOC backfill published in messages of 100, and three
# seconds later one live IOC. Prints how long the live IOC took from publish to commit.
#
#   scripts/lanes-scenario.sh [live|bulk] [path to mdti-worker]
#
# `bulk` publishes the live IOC to the bulk lane: one FIFO queue, as before lanes.
# Needs PostgreSQL and RabbitMQ as scripts/services.sh starts them, and psql.
set -euo pipefail
LANE=${1:-live}
BIN=${2:-target/release/mdti-worker}
ID=$(date +%s%N | tail -c 9)
DB=mdti_lanes_$ID
PREFIX=lanes-$ID
PORT=$((18000 + RANDOM % 1000))
DBURL=postgres://postgres@127.0.0.1:5432/$DB
WORK=$(mktemp -d)
PSQL=(psql -qtA -U postgres -h 127.0.0.1)
GRAPH=(--graph-url "http://127.0.0.1:$PORT/v1.0" --login-url "http://127.0.0.1:$PORT"
       --tenant-id sim-tenant --client-id sim-client --client-secret sim-secret)

# shellcheck source=scripts/cleanup.sh
source "$(dirname "$0")/cleanup.sh"

python3 -c "
for i in range(2000): print(f'host{i}.backfill-$ID.com')" > "$WORK/iocs.txt"
"$BIN" sim --listen "127.0.0.1:$PORT" --rate-limit 50 > "$WORK/sim.log" 2>&1 &
SIM=$!
sleep 1
"$BIN" migrate --database-url "$DBURL" > /dev/null 2>&1
"$BIN" sync-profiles "${GRAPH[@]}" --database-url "$DBURL" > /dev/null 2>&1
"$BIN" worker "${GRAPH[@]}" --database-url "$DBURL" --queue-prefix "$PREFIX" --graph-rate 50 \
  --metrics-listen 127.0.0.1:0 --profile-sync-interval 0 > "$WORK/worker.log" 2>&1 &
WORKER=$!
sleep 2
"$BIN" publish --database-url "$DBURL" --queue-prefix "$PREFIX" --source backfill \
  --batch-size 100 --no-progress "$WORK/iocs.txt"
sleep 3
T0=$("${PSQL[@]}" "$DB" -c "SELECT extract(epoch FROM clock_timestamp())")
echo "alert-$ID.contoso-live.com" | "$BIN" publish --database-url "$DBURL" \
  --queue-prefix "$PREFIX" --source live-feed --lane "$LANE" --no-progress
T1=""
while [ -z "$T1" ]; do
  sleep 0.2
  T1=$("${PSQL[@]}" "$DB" -c "SELECT extract(epoch FROM max(created_at)) FROM enrichment_runs WHERE source = 'live-feed'")
done
DONE=$("${PSQL[@]}" "$DB" -c "SELECT count(*) FROM enrichment_runs WHERE source = 'backfill'")
python3 -c "print(f'the live IOC, published to the $LANE lane: {$T1 - $T0:.2f} s from publish to commit; {$DONE} of 2000 backfill IOCs committed by then')"
