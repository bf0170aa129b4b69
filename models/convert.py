"""`jaxrl convert`: HF directory <-> Orbax model checkpoint; the direction follows from SRC."""

from __future__ import annotations

from pathlib import Path

from jaxrl.models.checkpoint import load_model, save_model
from jaxrl.models.hf_io import export_hf

from jaxrl.destinations import check_destination
from jaxrl.errors import JaxrlError
from jaxrl.model_files import find_tokenizer_dir, is_hf_model, is_orbax_model
from jaxrl.sharding import LogicalMesh, make_mesh


def convert(src: str | Path, dst: str | Path, mesh: str = "", dtype: str | None = None) -> str:
    """Converts SRC to the other format at DST; returns "orbax" or "hf" (what was written)."""
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise JaxrlError(f"source {src} does not exist")
    check_destination(dst, "directory", "destination")
    if dst.exists() and any(dst.iterdir()):
        raise JaxrlError(f"destination {dst} exists and is not empty; choose a new path")
    if not (is_hf_model(src) or is_orbax_model(src)):
        raise JaxrlError(f"{src} is neither a HF model directory nor an Orbax model checkpoint")
    lm = LogicalMesh(make_mesh(mesh))
    model = load_model(src, lm, param_dtype=dtype)
    if is_orbax_model(src):
        try:
            tokenizer_dir = find_tokenizer_dir(src)
        except JaxrlError:
            tokenizer_dir = None  # a model without a tokenizer still converts
        export_hf(model, dst, tokenizer_from=tokenizer_dir)
        return "hf"
    save_model(model, dst)
    export_tokenizer_files(src, dst)
    return "orbax"


def export_tokenizer_files(src: Path, dst: Path) -> None:
    """Copies the tokenizer beside an Orbax checkpoint so it stays usable on its own."""
    import shutil

    from jaxrl.models.hf_io import TOKENIZER_FILES

    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
