"""The floors hold by construction: a static check of every import statement in the package,
function-local ones included (an import inside a function never shows in `sys.modules` until
it runs, so only reading the source catches it).

    0  top     jaxrl/cli.py, jaxrl/reproduce/     may import anything
    1  core    the rest of jaxrl/                 only the core
    2  models  models/  (jaxrl.models)            the core and models
    3  train   train/   (jaxrl.train)             the core, models and train
    3  eval    eval/    (jaxrl.eval)              the core, models and eval

Nothing below the top floor imports it, and train and eval never import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "top": {"top", "core", "models", "train", "eval"},
    "core": {"core"},
    "models": {"core", "models"},
    "train": {"core", "models", "train"},
    "eval": {"core", "models", "eval"},
}


def floor_of_file(relative: Path) -> str:
    top, *rest = relative.parts
    if top != "jaxrl":
        return top  # models, train, eval
    return "top" if rest in (["cli.py"],) or rest[:1] == ["reproduce"] else "core"


def floor_of_module(name: str) -> str | None:
    """The floor of an absolute module name, or None when it is not ours."""
    parts = name.split(".")
    if parts[0] != "jaxrl":
        return None
    second = parts[1] if len(parts) > 1 else ""
    if second in ("models", "train", "eval"):
        return second
    return "top" if second in ("cli", "reproduce") else "core"


def imported_modules(node: ast.AST, package: str) -> list[str]:
    """Absolute names an Import / ImportFrom node brings in (relative ones resolved in `package`)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            stem = ".".join(base + ([node.module] if node.module else []))
        else:
            stem = node.module or ""
        # `from jaxrl import train` imports a sub-package: judge each name as a module too
        return [stem] + [f"{stem}.{alias.name}" for alias in node.names]
    return []


def floor_violations(root: Path) -> list[str]:
    """Every import under root/{jaxrl,models,train,eval} that points to a floor it may not use."""
    found = []
    for folder, package in (
        ("jaxrl", "jaxrl"),
        ("models", "jaxrl.models"),
        ("train", "jaxrl.train"),
        ("eval", "jaxrl.eval"),
    ):
        for path in sorted((root / folder).rglob("*.py")):
            relative = path.relative_to(root)
            floor = floor_of_file(relative)
            sub = ".".join(path.relative_to(root / folder).with_suffix("").parts)
            module_package = f"{package}.{sub}".rsplit(".", 1)[0]
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                for name in imported_modules(node, module_package):
                    target = floor_of_module(name)
                    if target is not None and target not in ALLOWED[floor]:
                        found.append(f"{relative}:{node.lineno}: {floor} floor imports {name} ({target} floor)")
    return sorted(set(found))


def test_every_import_keeps_the_floors():
    assert floor_violations(ROOT) == []


def test_a_function_local_upward_import_is_caught(tmp_path):
    """The check reads function bodies: a lazy import of a higher floor fails it."""
    cases = {
        "jaxrl/helper.py": "def load():\n    from jaxrl.models.checkpoint import load_model\n",
        "models/helper.py": "def step():\n    import jaxrl.train.loop\n",
        "train/helper.py": "def score():\n    from jaxrl.eval import forced\n",
        "eval/helper.py": "def run():\n    from jaxrl import cli\n",
        "jaxrl/data/helper.py": "def go():\n    from ..reproduce import pipeline\n",
    }
    for relative, source in cases.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    (tmp_path / "jaxrl" / "reproduce").mkdir()
    (tmp_path / "jaxrl" / "reproduce" / "ok.py").write_text("def f():\n    from jaxrl.train import grpo\n")
    (tmp_path / "jaxrl" / "cli.py").write_text("def g():\n    from jaxrl.eval.runner import eval_cli\n")
    found = floor_violations(tmp_path)
    assert sorted({line.split(":")[0] for line in found}) == sorted(cases), found
