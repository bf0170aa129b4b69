#!/usr/bin/env bash
# Requests a TPU slice as a queued resource and (with --wait) waits until it is ACTIVE.
USAGE="usage: tpu_scripts/create.sh [--config FILE] [--dry-run] [--wait] [--valid-until DURATION]

Queues a request for ACCELERATOR_TYPE in ZONE (spot when SPOT=1). --wait polls until the queued
resource is ACTIVE (spot capacity may take minutes to hours). --valid-until 6h drops the request if
it is not served in time."
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
parse_common "$@"

WAIT=0
VALID_UNTIL=""
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  case "$1" in
    --wait) WAIT=1 ;;
    --valid-until) (($# > 1)) || die "--valid-until needs a duration, e.g. 6h"; VALID_UNTIL="$2"; shift ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done

cmd=(gcloud compute tpus queued-resources create "$QUEUED_RESOURCE" "${WHERE[@]}"
  --node-id="$NAME" --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION")
if [[ "$SPOT" == 1 ]]; then cmd+=(--spot); fi
if [[ -n "$VALID_UNTIL" ]]; then cmd+=(--valid-until-duration="$VALID_UNTIL"); fi
run "${cmd[@]}"

state_cmd=(gcloud compute tpus queued-resources describe "$QUEUED_RESOURCE" "${WHERE[@]}" --format='value(state.state)')
if ((WAIT)); then
  if ((DRY_RUN)); then
    run "${state_cmd[@]}"  # polled every 30 s until ACTIVE
    exit 0
  fi
  while true; do
    state="$("${state_cmd[@]}")"
    echo "$(date -u +%H:%M:%S) $QUEUED_RESOURCE: $state"
    case "$state" in
      ACTIVE) break ;;
      FAILED | SUSPENDED) die "queued resource $QUEUED_RESOURCE is $state; see tpu_scripts/status.sh" ;;
    esac
    sleep 30
  done
fi
