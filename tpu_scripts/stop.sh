#!/usr/bin/env bash
# Stops a run on every worker; the TPU stays up (and billed) until delete.sh.
USAGE="usage: tpu_scripts/stop.sh [--config FILE] [--dry-run] [--run NAME] [--kill]

Sends SIGTERM to the run's process on every worker: the training loop writes a checkpoint and exits,
and a later launch with the same output directory resumes from it. --kill sends SIGKILL instead
(no checkpoint). To give the TPU back, use tpu_scripts/delete.sh."
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
parse_common "$@"

RUN=jaxrl
SIGNAL=TERM
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  case "$1" in
    --run) (($# > 1)) || die "--run needs a name"; RUN="$2"; shift ;;
    --kill) SIGNAL=KILL ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
[[ "$RUN" =~ ^[A-Za-z0-9_.-]+$ ]] || die "--run $RUN: letters, digits, '.', '_' and '-' only"

tpu_ssh all "for f in $REMOTE_LOGS/$RUN.worker*.pid; do
  [ -e \"\$f\" ] || continue
  kill -$SIGNAL \"\$(cat \"\$f\")\" 2>/dev/null && echo \"\$(hostname): sent SIG$SIGNAL to \$(cat \"\$f\")\" || true
done"
