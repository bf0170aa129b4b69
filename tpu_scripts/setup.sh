#!/usr/bin/env bash
# Installs this checkout of jaxrl and its `tpu` extra on every worker of the slice.
USAGE="usage: tpu_scripts/setup.sh [--config FILE] [--dry-run] [--ref REF]

Packs the checkout (git archive of REF, default HEAD: committed files only), copies it to every
worker, and there installs uv, Python PYTHON_VERSION and 'jaxrl[tpu]' into ~/jaxrl-venv. Safe to
run again after new commits: the source is replaced and the install refreshed."
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
parse_common "$@"

REF=HEAD
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  case "$1" in
    --ref) (($# > 1)) || die "--ref needs a git revision"; REF="$2"; shift ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done

TARBALL="${TMPDIR:-/tmp}/jaxrl-src.tar.gz"
run git -C "$REPO_DIR" archive --format=tar.gz --output="$TARBALL" "$REF"
run gcloud compute tpus tpu-vm scp "$TARBALL" "$NAME:jaxrl-src.tar.gz" "${WHERE[@]}" --worker=all

# Runs on each worker. uv brings its own Python (the TPU images ship 3.10; jaxrl needs >= 3.11).
remote="set -e
rm -rf $REMOTE_SRC && mkdir -p $REMOTE_SRC $REMOTE_LOGS && tar -xzf ~/jaxrl-src.tar.gz -C $REMOTE_SRC
command -v ~/.local/bin/uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
~/.local/bin/uv venv --allow-existing --python $PYTHON_VERSION $REMOTE_VENV
VIRTUAL_ENV=$REMOTE_VENV ~/.local/bin/uv pip install -e \"${REMOTE_SRC}[tpu]\"
$REMOTE_VENV/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.devices()[0].device_kind)'"
tpu_ssh all "$remote"
