"""The recipe loader: defaults, YAML that names only differences, dotted overrides, one-line errors."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest
import yaml

from jaxrl.errors import JaxrlError
from jaxrl.recipes import dump_recipe, load_recipe, recipe_from_dict, recipe_to_dict


@dataclasses.dataclass(frozen=True)
class Optim:
    lr: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.1
    schedule: Literal["constant", "linear", "cosine"] = "constant"


@dataclasses.dataclass(frozen=True)
class Freeze:
    patterns: tuple[str, ...] = ()
    layers: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Recipe:
    model: str = "allenai/OLMo-2-1124-7B-Instruct"
    seed: int = 42
    bf16: bool = True
    max_steps: int | None = None
    optim: Optim = Optim()
    freeze: Freeze = dataclasses.field(default_factory=lambda: Freeze(patterns=("mlp.up",)))
    weights: dict[str, float] = dataclasses.field(default_factory=lambda: {"accuracy": 1.0})
    tags: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if self.seed < 0:
            raise ValueError("seed must be >= 0")


@dataclasses.dataclass(frozen=True)
class Needs:
    data: str
    steps: int = 1


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_without_a_file():
    assert load_recipe(Recipe, None, []) == Recipe()


def test_yaml_names_only_differences(tmp_path):
    path = write(tmp_path, "seed: 7\noptim:\n  lr: 5e-5\n  schedule: cosine\n")
    r = load_recipe(Recipe, path)
    assert r.seed == 7 and r.optim.lr == 5e-5 and r.optim.schedule == "cosine"
    assert r.optim.betas == (0.9, 0.999) and r.bf16 is True  # untouched defaults
    assert r.freeze == Freeze(patterns=("mlp.up",))  # a default_factory section is kept


def test_overrides_parse_by_field_type(tmp_path):
    path = write(tmp_path, "seed: 7\n")
    r = load_recipe(Recipe, path, [
        "seed=3", "bf16=false", "optim.lr=2e-5", "optim.betas=0.8,0.95", "max_steps=571",
        "freeze.layers=[19, 20, 21]", "freeze.patterns=mlp.gate,mlp.down", "model=123",
        "weights={accuracy: 1, format: 0.2}", "tags=a,b", "--optim.schedule=linear",
    ])  # fmt: skip
    assert r.seed == 3 and r.bf16 is False and r.optim.lr == 2e-5
    assert r.optim.betas == (0.8, 0.95) and r.max_steps == 571 and r.optim.schedule == "linear"
    assert r.freeze.layers == (19, 20, 21) and r.freeze.patterns == ("mlp.gate", "mlp.down")
    assert r.model == "123"  # a string field keeps the text as typed
    assert r.weights == {"accuracy": 1.0, "format": 0.2} and r.tags == ["a", "b"]


def test_list_overrides_keep_braces_and_quotes_whole():
    r = load_recipe(Recipe, None, ["freeze.patterns=mlp.{gate,up,down}@19-25,attn.q"])
    assert r.freeze.patterns == ("mlp.{gate,up,down}@19-25", "attn.q")
    r = load_recipe(Recipe, None, ["freeze.patterns=[mlp.{gate,up,down}@19-25]"])
    assert r.freeze.patterns == ("mlp.{gate,up,down}@19-25",)
    r = load_recipe(Recipe, None, ["freeze.patterns=['a,b', \"c\"]", "tags='x,y',z"])
    assert r.freeze.patterns == ("a,b", "c") and r.tags == ["x,y", "z"]
    assert load_recipe(Recipe, None, ["freeze.patterns="]).freeze.patterns == ()


def test_override_sets_a_section_key_on_the_default_factory_value():
    r = load_recipe(Recipe, None, ["freeze.layers=1,2"])
    assert r.freeze == Freeze(patterns=("mlp.up",), layers=(1, 2))


def test_optional_none_from_text_and_yaml(tmp_path):
    assert load_recipe(Recipe, None, ["max_steps=10", "max_steps=null"]).max_steps is None
    assert load_recipe(Recipe, write(tmp_path, "max_steps: ~\n")).max_steps is None


def test_dump_round_trips(tmp_path):
    r = load_recipe(Recipe, None, ["optim.lr=3e-7", "freeze.layers=19,25", "tags=x", "max_steps=5"])
    text = dump_recipe(r)
    assert yaml.safe_load(text)["optim"]["lr"] == 3e-7
    assert load_recipe(Recipe, write(tmp_path, text)) == r
    assert recipe_from_dict(Recipe, recipe_to_dict(r)) == r


def test_multiline_strings_dump_as_blocks_and_round_trip(tmp_path):
    r = dataclasses.replace(Recipe(), model="line one\nline two\n  indented: <think>\n...\n</think>")
    text = dump_recipe(r)
    assert "model: |-\n  line one\n  line two\n" in text
    assert load_recipe(Recipe, write(tmp_path, text)) == r
    trailing = dataclasses.replace(r, model="ends with spaces  \nand a tab\t\n")  # YAML picks a safe style
    assert load_recipe(Recipe, write(tmp_path, dump_recipe(trailing), "t.yaml")) == trailing


def test_required_field_and_post_init_checks():
    assert load_recipe(Needs, None, ["data=x.jsonl"]) == Needs("x.jsonl")
    with pytest.raises(JaxrlError, match="required key data"):
        load_recipe(Needs, None, [])
    with pytest.raises(JaxrlError, match="seed must be >= 0"):
        load_recipe(Recipe, None, ["seed=-1"])


BAD = [
    ("file", None, ["optim.lrr=1"], "unknown key 'optim.lrr'; did you mean 'optim.lr'?"),
    ("file", "sede: 1\n", [], "unknown key 'sede'; did you mean 'seed'?"),
    ("file", None, ["seed=abc"], "seed must be an integer, got 'abc'"),
    ("file", "seed: 1.5\n", [], "seed must be an integer, got 1.5"),
    ("file", None, ["optim.lr=fast"], "optim.lr must be a number"),
    ("file", None, ["bf16=maybe"], "bf16 must be true or false"),
    (
        "file",
        None,
        ["optim.schedule=cosin"],
        "must be one of 'constant', 'linear', 'cosine'; got 'cosin' (did you mean 'cosine'?)",
    ),
    ("file", None, ["seed"], "malformed override 'seed'"),
    ("file", None, ["optim..lr=1"], "malformed override"),
    ("file", None, ["=3"], "malformed override"),
    ("file", None, ["optim=1"], "optim is a section"),
    ("file", None, ["seed.x=1"], "seed has no sub-keys"),
    ("file", None, ["optim.betas=1,2,3"], "optim.betas must have 2 items, got 3"),
    ("file", "optim: 3\n", [], "optim must be a mapping"),
    ("file", "model: 5\n", [], "model must be a string, got 5"),
    ("file", "seed: [1\n", [], "is not valid YAML at line"),
    ("file", "- 1\n- 2\n", [], "must be a mapping of keys to values, not list"),
    ("missing", None, [], "does not exist"),
    ("binary", None, [], "is not UTF-8"),
]


@pytest.mark.parametrize("kind,text,overrides,message", BAD, ids=[b[3][:30] for b in BAD])
def test_bad_input_is_a_one_line_error(tmp_path, kind, text, overrides, message):
    path = None
    if kind == "missing":
        path = tmp_path / "nope.yaml"
    elif kind == "binary":
        path = tmp_path / "bin.yaml"
        path.write_bytes(b"seed: \xff\xfe\n")
    elif text is not None:
        path = write(tmp_path, text)
    with pytest.raises(JaxrlError) as err:
        load_recipe(Recipe, path, overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
