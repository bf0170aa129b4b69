#!/usr/bin/env bash
# The environment bench/grpo_step.py runs its peers in: .venv-peers, a venv that sees the project's
# own .venv (jax, torch, TRL from its test extra) through a .pth file and adds Tunix (PyPI
# google-tunix) with jax, jaxlib, flax, optax, numpy, torch, transformers and TRL held at .venv's versions,
# so both sides run the same JAX. The suite never imports it.
#
#     bash bench/peers_env.sh            # once, after .venv is installed (`pip install -e .[test]`)
#     .venv-peers/bin/python bench/grpo_step.py
set -euo pipefail
cd "$(dirname "$0")/.."
base=.venv/bin/python
[ -x "$base" ] || { echo "bench/peers_env.sh: no .venv here; install the project first (README)" >&2; exit 2; }
"$base" -m venv .venv-peers
site=$(.venv-peers/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# a site directory of its own, so .venv's .pth files (jaxrl's editable install) are read too
"$base" -c 'import sysconfig; print("import site; site.addsitedir(%r)" % sysconfig.get_paths()["purelib"])' \
    > "$site/_project_venv.pth"
# the packages both sides compute with stay at .venv's versions; the rest resolve for Tunix
# (google-tunix 0.1.7 wants safetensors<0.8, which goes into .venv-peers only)
"$base" -m pip freeze --exclude-editable | grep -iE '^(jax|jaxlib|flax|optax|numpy|ml.dtypes|torch|transformers|trl|accelerate|orbax.checkpoint)==' > .venv-peers/constraints.txt
# google-tunix 0.1.7 pins safetensors<0.8, which transformers 5.x (ours) cannot take; Tunix only reads
# safetensors files, so it goes in without its pins and its other requirements are installed as declared
tunix="${TUNIX:-google-tunix==0.1.7}"
.venv-peers/bin/python -m pip install -q --no-deps "$tunix"
requirements=$(.venv-peers/bin/python - <<'PY'
import importlib.metadata as m, re
print(" ".join(r.split(";")[0].replace(" ", "") for r in m.requires("google-tunix") or []
               if "extra ==" not in r and not re.match(r"safetensors\b", r)))
PY
)
.venv-peers/bin/python -m pip install -q -c .venv-peers/constraints.txt $requirements
.venv-peers/bin/python -c 'import jax, jaxrl, tunix, trl; print("peers:", "jax", jax.__version__, "trl", trl.__version__)'
