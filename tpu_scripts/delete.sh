#!/usr/bin/env bash
# Deletes the queued resource and its TPU node (billing stops); data in the bucket stays.
USAGE="usage: tpu_scripts/delete.sh [--config FILE] [--dry-run] [--yes]

Deletes NAME-qr together with the node NAME (--force). gcloud asks for confirmation unless --yes.
Everything on the workers' disks is lost; checkpoints written to gs://BUCKET stay."
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
parse_common "$@"

QUIET=()
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  case "$1" in
    --yes) QUIET=(--quiet) ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done

run gcloud compute tpus queued-resources delete "$QUEUED_RESOURCE" "${WHERE[@]}" --force "${QUIET[@]+"${QUIET[@]}"}"
