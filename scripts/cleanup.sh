# Sourced by the measurement scripts: on exit, stop the worker and simulator they started, drop
# their database and delete their queues. Reads WORKER, SIM, PSQL, DB, PREFIX and WORK as the
# script set them.
cleanup() {
  kill "${WORKER:-}" "${SIM:-}" 2>/dev/null || true
  wait 2>/dev/null || true
  "${PSQL[@]}" -c "DROP DATABASE IF EXISTS $DB" postgres >/dev/null 2>&1 || true
  for q in $(rabbitmqctl list_queues name 2>/dev/null | grep "^$PREFIX\." || true); do
    rabbitmqctl delete_queue "$q" >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
