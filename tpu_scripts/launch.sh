#!/usr/bin/env bash
# Runs the same command on every worker of the slice, with jax.distributed wired and a log per worker.
USAGE="usage: tpu_scripts/launch.sh [--config FILE] [--dry-run] [--run NAME] [--env NAME[=VALUE]]...
                              [--foreground] -- jaxrl SUBCOMMAND ARGS...

Starts the command on all workers at once (gcloud ... ssh --worker=all). Each worker gets
JAXRL_COORDINATOR (worker 0's internal address, port 8476), JAXRL_NUM_PROCESSES, its own
JAXRL_PROCESS_ID (from the TPU VM metadata), JAXRL_BUCKET, JAXRL_RUN, and every variable named in
PASS_ENV or by --env that is set here. The command runs detached (it survives the ssh session)
with its output in ~/jaxrl-logs/RUN.workerI.log; --foreground streams it instead.
Under --dry-run, secrets (names with TOKEN, KEY, SECRET or PASSWORD) are printed as ***."
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
parse_common "$@"

RUN=jaxrl
FOREGROUND=0
ENV_NAMES=()
for name in $PASS_ENV; do ENV_NAMES+=("$name"); done
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  case "$1" in
    --run) (($# > 1)) || die "--run needs a name"; RUN="$2"; shift ;;
    --env) (($# > 1)) || die "--env needs NAME or NAME=VALUE"; ENV_NAMES+=("$2"); shift ;;
    --foreground) FOREGROUND=1 ;;
    --) shift; break ;;
    *) die "unknown argument $1; put the command after --, e.g. -- jaxrl train --recipe FILE" ;;
  esac
  shift
done
(($#)) || die "no command given; e.g. tpu_scripts/launch.sh -- jaxrl train --recipe train/recipes/grpo.yaml"
[[ "$RUN" =~ ^[A-Za-z0-9_.-]+$ ]] || die "--run $RUN: letters, digits, '.', '_' and '-' only"

# Worker 0's internal address is the coordinator; the endpoint count is the number of processes.
describe=(gcloud compute tpus tpu-vm describe "$NAME" "${WHERE[@]}" --format='value(networkEndpoints[].ipAddress)')
if ((DRY_RUN)); then
  run "${describe[@]}"
  ips=(WORKER0_IP NUM_WORKERS)
else
  read -r -a ips <<<"$("${describe[@]}" | tr ';,' '  ')"
  ((${#ips[@]})) || die "TPU $NAME has no workers yet; see tpu_scripts/status.sh"
fi

exports=()
add_export() {  # NAME VALUE
  local value="$2"
  if ((DRY_RUN)) && [[ "$1" =~ TOKEN|KEY|SECRET|PASSWORD ]]; then value='***'; fi
  exports+=("$1=$(quote "$value")")
}
if ((DRY_RUN)) || ((${#ips[@]} > 1)); then
  add_export JAXRL_COORDINATOR "${ips[0]}:8476"
  if ((DRY_RUN)); then add_export JAXRL_NUM_PROCESSES NUM_WORKERS; else add_export JAXRL_NUM_PROCESSES "${#ips[@]}"; fi
fi
add_export JAXRL_RUN "$RUN"
if [[ -n "$BUCKET" ]]; then add_export JAXRL_BUCKET "gs://$BUCKET"; fi
for entry in "${ENV_NAMES[@]+"${ENV_NAMES[@]}"}"; do
  name="${entry%%=*}"
  [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "--env $entry: not a variable name"
  if [[ "$entry" == *=* ]]; then
    add_export "$name" "${entry#*=}"
  elif [[ -n "${!name+set}" ]]; then
    add_export "$name" "${!name}"
  fi
done

command_line=""
for arg in "$@"; do command_line+="$(quote "$arg") "; done
log="$REMOTE_LOGS/$RUN.worker\$JAXRL_PROCESS_ID.log"
pidfile="$REMOTE_LOGS/$RUN.worker\$JAXRL_PROCESS_ID.pid"
metadata="http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number"
remote="set -e
mkdir -p $REMOTE_LOGS && cd $REMOTE_SRC
export JAXRL_PROCESS_ID=\${TPU_WORKER_ID:-\$(curl -sf -H 'Metadata-Flavor: Google' $metadata)}
export ${exports[*]}
export PATH=$REMOTE_VENV/bin:\$PATH"
if ((FOREGROUND)); then
  remote+="
${command_line% } 2>&1 | tee $log"
else
  remote+="
nohup setsid ${command_line% } >$log 2>&1 </dev/null &
echo \$! >$pidfile
echo \"worker \$JAXRL_PROCESS_ID: pid \$!, log $log\""
fi
tpu_ssh all "$remote"
