# shellcheck shell=bash disable=SC2034  # the variables set here are used by the scripts that source it
# Shared by every tpu_scripts/*.sh (sourced, not run): flags, the config file, and `run`, which
# prints a gcloud command under --dry-run and runs it otherwise.

set -euo pipefail

SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$SCRIPTS_DIR")"
CONFIG="${JAXRL_TPU_CONFIG:-$SCRIPTS_DIR/config.env}"
DRY_RUN=0
ARGS=()  # what is left after the common flags, for the script's own parser

# Remote layout on every worker ($HOME expands there, inside the remote command).
# shellcheck disable=SC2016
REMOTE_SRC='$HOME/jaxrl' REMOTE_VENV='$HOME/jaxrl-venv' REMOTE_LOGS='$HOME/jaxrl-logs'

die() {
  echo "$(basename "$0"): error: $*" >&2
  exit 2
}

# Parses --config FILE, --dry-run and --help ($USAGE); the rest goes to ARGS. Then loads the config.
parse_common() {
  while (($#)); do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      --config) (($# > 1)) || die "--config needs a file"; CONFIG="$2"; shift ;;
      --config=*) CONFIG="${1#--config=}" ;;
      -h | --help) echo "$USAGE"; exit 0 ;;
      *) ARGS+=("$1") ;;
    esac
    shift
  done
  load_config
}

load_config() {
  [[ -f "$CONFIG" ]] || die "no config file $CONFIG; copy $SCRIPTS_DIR/config.env.example there and edit it"
  # shellcheck source=config.env.example
  source "$CONFIG"
  : "${NAME:=jaxrl}" "${SPOT:=0}" "${BUCKET:=}" "${RUNTIME_VERSION:=}" "${PYTHON_VERSION:=3.12}" "${PASS_ENV:=}"
  [[ -n "${PROJECT:-}" ]] || die "PROJECT is not set in $CONFIG"
  [[ -n "${ZONE:-}" ]] || die "ZONE is not set in $CONFIG"
  [[ -n "${ACCELERATOR_TYPE:-}" ]] || die "ACCELERATOR_TYPE is not set in $CONFIG"
  [[ "$NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "NAME=$NAME: lower-case letters, digits and '-', starting with a letter"
  [[ -n "$RUNTIME_VERSION" ]] || RUNTIME_VERSION="$(default_runtime "$ACCELERATOR_TYPE")"
  QUEUED_RESOURCE="$NAME-qr"
  # Every gcloud call names its project and zone explicitly; nothing depends on `gcloud config`.
  WHERE=(--project="$PROJECT" --zone="$ZONE")
}

# The usual TPU VM image for a slice type; unknown types are an error.
default_runtime() {
  case "$1" in
    v4-[0-9]*) echo tpu-ubuntu2204-base ;;
    v5litepod-[0-9]*) echo v2-alpha-tpuv5-lite ;;
    v5p-[0-9]*) echo v2-alpha-tpuv5 ;;
    v6e-[0-9]*) echo v2-alpha-tpuv6e ;;
    *) die "ACCELERATOR_TYPE=$1: expected v4-N, v5litepod-N, v5p-N or v6e-N" ;;
  esac
}

# One argument as the shell would need it typed: bare when safe, else in single quotes.
quote() {
  if [[ "$1" =~ ^[-A-Za-z0-9_./:=,@%+]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Prints the command (one line, copy-pasteable) under --dry-run; runs it otherwise.
run() {
  if ((DRY_RUN)); then
    local out="" arg
    for arg in "$@"; do out+="$(quote "$arg") "; done
    echo "${out% }"
  else
    "$@"
  fi
}

# The ssh command on the TPU VM workers; $1 is the worker ("all" or a number), the rest the command.
tpu_ssh() {
  local worker="$1"
  shift
  run gcloud compute tpus tpu-vm ssh "$NAME" "${WHERE[@]}" --worker="$worker" --command="$*"
}
