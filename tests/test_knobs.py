"""The knob contract, generated from the dataclasses and the parser (no hand list of fields): every
numeric field of every recipe section, of the configs built in code and every numeric CLI option
declares a domain (`jaxrl.knobs`), and each one, fed NaN, infinity, a negative number, zero and a
wrong type, refuses exactly what its domain refuses, in one line naming its dotted key."""

from __future__ import annotations

import dataclasses
import math
import re
import typing

import pytest
from jaxrl.eval.runner import EvalConfig
from jaxrl.models.config import ModelConfig, RopeScaling
from jaxrl.models.sampler import SamplingConfig
from jaxrl.train.grpo import GRPOConfig
from jaxrl.train.grpo_loss import LossSettings
from jaxrl.train.sft import SFTConfig

from jaxrl import cli
from jaxrl.data.report import DataReportConfig
from jaxrl.errors import JaxrlError
from jaxrl.knobs import domain, domain_of, numeric_fields
from jaxrl.recipes import load_recipe

RECIPES = {"train sft": SFTConfig, "train grpo": GRPOConfig, "data": DataReportConfig}
BUILT_IN_CODE = (SamplingConfig, LossSettings, EvalConfig, ModelConfig, RopeScaling)
# name -> (the override's text, the Python value a dataclass built in code is given)
BAD = {"nan": ("nan", math.nan), "inf": ("inf", math.inf), "negative": ("-1", -1), "zero": ("0", 0),
       "wrong-type": ("abc", "abc")}  # fmt: skip


def sections(cls: type, prefix: str = "") -> typing.Iterator[tuple[str, type]]:
    """(dotted prefix, dataclass) for `cls` and every dataclass section below it."""
    yield prefix, cls
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            yield from sections(tp, f"{prefix}{f.name}.")


def recipe_knobs() -> list[tuple[str, type, str, type, str]]:
    """(command, recipe class, dotted key, owning class, field) for every numeric recipe field."""
    return [
        (command, root, prefix + name, cls, name)
        for command, root in RECIPES.items()
        for prefix, cls in sections(root)
        for name in numeric_fields(cls)
    ]


KNOBS = recipe_knobs()
CODE_KNOBS = [(cls, name) for cls in BUILT_IN_CODE for name in numeric_fields(cls)]
OPTIONS = sorted({action.option_strings[-1]: action for action in cli.numeric_options(cli.build_parser())}.items())


def test_every_numeric_field_and_option_declares_a_domain():
    assert len(KNOBS) >= 60 and len(CODE_KNOBS) >= 30 and len(OPTIONS) >= 15  # the walk finds them
    missing = [f"{cls.__name__}.{name}" for _, _, _, cls, name in KNOBS if domain_of(cls, name) is None]
    missing += [f"{cls.__name__}.{name}" for cls, name in CODE_KNOBS if domain_of(cls, name) is None]
    missing += [name for name, _ in OPTIONS if name not in cli.OPTION_DOMAINS]
    assert not missing, f"numeric knobs without a declared domain (add them to the DOMAINS table): {missing}"
    stale = [f"{cls.__name__}.{n}" for cls in {c for _, _, _, c, _ in KNOBS} | set(BUILT_IN_CODE)
             for n in getattr(cls, "DOMAINS", {}) if n not in numeric_fields(cls)]  # fmt: skip
    assert not stale, f"DOMAINS entries that name no numeric field: {stale}"
    for _, root, key, cls, name in KNOBS:  # every default lies in its own domain
        default = load_recipe(root)
        for part in key.split("."):
            default = getattr(default, part)
        values = default if isinstance(default, tuple) else [default]
        assert all(v is None or domain_of(cls, name).allows(v) for v in values), key


def _expected(dom, kind: type, value) -> bool:
    """Whether `value` must be refused: a wrong type, a float where an integer belongs, or outside."""
    if isinstance(value, str) or (kind is int and isinstance(value, float)):
        return True
    return not dom.allows(float(value))


def _one_line_error(error: JaxrlError, key: str) -> None:
    text = str(error)
    assert "\n" not in text and re.search(rf"(^|: |\.){re.escape(key)}(\[0\])? must be ", text), text


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize(("command", "root", "key", "cls", "name"), KNOBS, ids=[f"{k[0]}:{k[2]}" for k in KNOBS])
def test_recipe_knob_refuses_what_its_domain_refuses(command, root, key, cls, name, bad):
    text, value = BAD[bad]
    kind = numeric_fields(cls)[name]
    is_list = typing.get_origin(typing.get_type_hints(cls)[name]) in (tuple, list)
    override = f"{key}=[{text}, {text}]" if is_list else f"{key}={text}"
    refused = _expected(domain_of(cls, name), kind, value) or (kind is int and bad in ("nan", "inf"))
    if refused:
        with pytest.raises(JaxrlError) as caught:
            load_recipe(root, None, [override])
        _one_line_error(caught.value, key)
        assert str(caught.value).startswith("recipe: ")
    else:
        load_recipe(root, None, [override])  # allowed by the domain: the recipe loads


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize(("cls", "name"), CODE_KNOBS, ids=[f"{c.__name__}.{n}" for c, n in CODE_KNOBS])
def test_config_built_in_code_refuses_what_its_domain_refuses(cls, name, bad):
    value = BAD[bad][1]
    kind = numeric_fields(cls)[name]
    if typing.get_origin(typing.get_type_hints(cls)[name]) in (tuple, list):
        value, shown = (value,), f"{name}[0]"
    else:
        shown = name
    base = {"rope_type": "linear"} if cls is RopeScaling else {}  # llama3 also orders its two freq factors
    if _expected(domain_of(cls, name), kind, value if not isinstance(value, tuple) else value[0]):
        with pytest.raises(JaxrlError) as caught:
            cls(**base, **{name: value})
        _one_line_error(caught.value, shown.split("[")[0])
    else:
        cls(**base, **{name: value})


def _argv(command: tuple[str, ...], option: str, text: str) -> list[str]:
    """The command line that gives `option` the value `text` and every required argument a dummy."""
    parser = cli.build_parser()
    for name in command:
        parser = next(a for a in parser._actions if isinstance(a, cli.argparse._SubParsersAction)).choices[name]
    argv = list(command)
    for action in parser._actions:
        if not action.option_strings and action.nargs in (None, "+"):
            argv.append("x")
        elif action.option_strings and action.required and action.option_strings[-1] != option:
            argv += [action.option_strings[-1], "1"]
    return [*argv, f"{option}={text}"]


def _commands_with(option: str) -> list[tuple[str, ...]]:
    found = []
    for path, parser in _parsers(cli.build_parser()):
        if any(option in a.option_strings for a in parser._actions):
            found.append(path)
    return found


def _parsers(parser, path=()):
    for action in parser._actions:
        if isinstance(action, cli.argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, (*path, name))
    if path:
        yield path, parser


@pytest.mark.parametrize("bad", ["nan", "inf", "negative", "zero"])
@pytest.mark.parametrize(("option", "action"), OPTIONS, ids=[o for o, _ in OPTIONS])
def test_cli_option_refuses_what_its_domain_refuses(option, action, bad, capsys):
    text, value = BAD[bad]
    dom = domain(cli.OPTION_DOMAINS[option])
    for command in _commands_with(option):
        argv = _argv(command, option, text)
        if action.type is int and bad in ("nan", "inf"):
            with pytest.raises(SystemExit) as caught:  # argparse's own usage error (two lines, its convention)
                cli.main(argv)
            assert caught.value.code == 2 and option in capsys.readouterr().err
        elif _expected(dom, action.type, value):
            assert cli.main(argv) == 2, argv  # refused before the command runs
            err = capsys.readouterr().err.splitlines()
            assert len(err) == 1 and err[0].startswith(f"jaxrl {command[0]}: error: {option} must be "), err
        else:
            parser = cli.build_parser()
            args, _ = parser.parse_known_args(argv)
            cli.check_options(parser, args)  # allowed: the check passes (the command itself is not run)
