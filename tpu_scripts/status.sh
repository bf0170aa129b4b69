#!/usr/bin/env bash
# The queued resource's state, the TPU node's state and health, and (with --run) each worker's job.
USAGE="usage: tpu_scripts/status.sh [--config FILE] [--dry-run] [--run NAME]

Shows the queued resource (WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE, FAILED, ...) and the node.
--run NAME also asks every worker whether that run's process is alive and prints its last log line."
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
parse_common "$@"

RUN=""
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  case "$1" in
    --run) (($# > 1)) || die "--run needs a name"; RUN="$2"; shift ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done

run gcloud compute tpus queued-resources describe "$QUEUED_RESOURCE" "${WHERE[@]}" \
  --format='table(name.basename(), state.state, tpu.nodeSpec[0].node.acceleratorType)' ||
  echo "(no queued resource $QUEUED_RESOURCE)"
run gcloud compute tpus tpu-vm describe "$NAME" "${WHERE[@]}" \
  --format='table(name.basename(), state, health, acceleratorType, networkEndpoints.len():label=WORKERS)' ||
  echo "(no TPU node $NAME yet)"
if [[ -n "$RUN" ]]; then
  pidfile="$REMOTE_LOGS/$RUN.worker*.pid"
  tpu_ssh all "for f in $pidfile; do
  [ -e \"\$f\" ] || { echo \"\$(hostname): no run $RUN\"; continue; }
  if kill -0 \"\$(cat \"\$f\")\" 2>/dev/null; then state=running; else state=stopped; fi
  echo \"\$(hostname) \$(basename \"\$f\" .pid): \$state; \$(tail -n 1 \"\${f%.pid}.log\")\"
done"
fi
