#!/usr/bin/env bash
# The tail of a run's log on one worker or on all of them.
USAGE="usage: tpu_scripts/logs.sh [--config FILE] [--dry-run] [--run NAME] [--worker all|N] [--lines N] [--follow]

Prints the last --lines (default 40) of ~/jaxrl-logs/RUN.workerI.log from --worker (default 0,
the process that writes metrics and checkpoints; 'all' for every worker). --follow keeps streaming."
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
parse_common "$@"

RUN=jaxrl
WORKER=0
LINES=40
FOLLOW=""
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  case "$1" in
    --run) (($# > 1)) || die "--run needs a name"; RUN="$2"; shift ;;
    --worker) (($# > 1)) || die "--worker needs all or a number"; WORKER="$2"; shift ;;
    --lines) (($# > 1)) || die "--lines needs a number"; LINES="$2"; shift ;;
    --follow) FOLLOW=" -F" ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
[[ "$WORKER" =~ ^(all|[0-9]+)$ ]] || die "--worker $WORKER: 'all' or a worker number"
[[ "$LINES" =~ ^[0-9]+$ ]] || die "--lines $LINES: a number"
[[ "$RUN" =~ ^[A-Za-z0-9_.-]+$ ]] || die "--run $RUN: letters, digits, '.', '_' and '-' only"

tpu_ssh "$WORKER" "tail -n $LINES$FOLLOW $REMOTE_LOGS/$RUN.worker*.log"
