"""How fine-tuning moved the weights: tree diffs on any mesh, streamed checkpoint diffs, reports.

    from jaxrl.analysis import diff_trees
    changes = diff_trees(base_params, tuned_params, modules="default")

The package stands on the core floor: it never imports the model package. Tensor names and
layouts come in as `TensorSpec`s, built from a model's HF key map by `specs_from_key_map`.
"""

from jaxrl.analysis.naming import DEFAULT_MODULES, TensorSpec, parse_modules, specs_from_key_map, specs_from_tree
from jaxrl.analysis.sources import HFSource, OrbaxSource
from jaxrl.analysis.stream import diff_many, diff_sources
from jaxrl.analysis.tree_diff import TensorChange, diff_trees

__all__ = [
    "DEFAULT_MODULES",
    "HFSource",
    "OrbaxSource",
    "TensorChange",
    "TensorSpec",
    "diff_many",
    "diff_sources",
    "diff_trees",
    "parse_modules",
    "specs_from_key_map",
    "specs_from_tree",
]
