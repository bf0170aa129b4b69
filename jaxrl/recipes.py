"""Recipes: frozen dataclasses hold every default; YAML names only what differs; `a.b=value` on top.

    config = load_recipe(SFTConfig, "train/recipes/sft_3ep.yaml", ["optim.lr=1e-6", "seed=1"])
    print(dump_recipe(config))   # YAML of the resolved config; loading it gives `config` back

Works for any frozen dataclass, nested ones included. Values are checked against the field's type
annotation: int, float, bool, str, `X | None`, `Literal[...]`, `tuple[X, ...]`, `tuple[X, Y]`,
`list[X]`, `dict[str, X]` and nested dataclasses; a number is checked against the domain its
dataclass declares (`jaxrl.knobs`: NaN and infinities never pass). Every mistake (unknown key, wrong
type, bad choice, a number out of its domain, malformed override, missing file, bad YAML) is a
one-line `JaxrlError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from jaxrl.errors import JaxrlError
from jaxrl.knobs import check_field

T = TypeVar("T")
_NONE_WORDS = ("null", "none", "~", "")
_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")


def load_recipe(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """`cls` with its defaults, then the YAML file at `path` (if any), then each `a.b=value`."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"load_recipe needs a dataclass type, got {cls!r}")
    data = _read_yaml(Path(path)) if path else {}
    for override in overrides:
        _apply_override(cls, data, override)
    return _build(cls, None, data, "")


def read_recipe_file(path: str | Path) -> dict:
    """A recipe file's raw mapping (before any checking of its keys), or a one-line JaxrlError for a
    missing file, bad YAML or anything but a mapping."""
    return _read_yaml(Path(path))


def dump_recipe(obj: Any) -> str:
    """YAML of every field of a dataclass instance (nested ones as sections), in field order."""
    return yaml.dump(recipe_to_dict(obj), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


def recipe_to_dict(obj: Any) -> Any:
    """Plain YAML/JSON-able data: dataclasses -> dicts, tuples -> lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: recipe_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [recipe_to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): recipe_to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def recipe_from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """`cls` built from nested plain data (what `recipe_to_dict` gives), checked like a recipe."""
    return _build(cls, None, dict(data), "")


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (a system prompt) as `|` blocks, so a resolved recipe reads like the prompt."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _represent_str)


# ---------------------------------------------------------------------------------------------
# Reading


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise JaxrlError(f"recipe file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise JaxrlError(f"recipe file {path} is not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise JaxrlError(f"recipe file {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise JaxrlError(f"recipe file {path} must be a mapping of keys to values, not {type(data).__name__}")
    return data


def _apply_override(cls: type, data: dict, override: str) -> None:
    """Parses `a.b=value` by the type of field `a.b` and stores it into the nested dict `data`."""
    text = override[2:] if override.startswith("--") else override
    key, eq, value = text.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not eq or not key or any(not p for p in parts):
        raise JaxrlError(f"malformed override {override!r}; write key=value, e.g. optim.lr=1e-6")
    tp, node = cls, data
    for depth, name in enumerate(parts):
        where = ".".join(parts[: depth + 1])
        if not _is_dataclass_type(tp):
            raise JaxrlError(f"override {override!r}: {'.'.join(parts[:depth])} has no sub-keys")
        field_type = _field_types(tp).get(name)
        if field_type is None:
            raise _unknown_key(tp, name, where)
        if depth == len(parts) - 1:
            if _is_dataclass_type(_strip_optional(field_type)):
                raise JaxrlError(
                    f"override {override!r}: {where} is a section; set one of its keys, "
                    f"e.g. {where}.{_field_names(_strip_optional(field_type))[0]}=..."
                )
            node[name] = _Text(value.strip())
        else:
            child = node.get(name)
            if not isinstance(child, dict):
                child = node[name] = {}
            tp, node = _strip_optional(field_type), child


class _Text(str):
    """A value typed on the command line: parsed by the field's type, not by YAML's guesses."""


# ---------------------------------------------------------------------------------------------
# Building and checking


def _build(cls: type, base: Any, data: Any, prefix: str) -> Any:
    """An instance of dataclass `cls`: `base` (or the defaults) with the keys of `data` replaced."""
    if not isinstance(data, Mapping):
        raise JaxrlError(f"recipe: {prefix or 'the recipe'} must be a mapping of keys, got {_show(data)}")
    types_ = _field_types(cls)
    for key in data:
        if key not in types_:
            raise _unknown_key(cls, str(key), _join(prefix, str(key)))
    kwargs = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        default = _default_of(field) if base is None else getattr(base, field.name)
        where = _join(prefix, field.name)
        if field.name in data:
            kwargs[field.name] = value = _coerce(data[field.name], types_[field.name], where, default)
            try:  # the field's declared domain (jaxrl.knobs), before the dataclass sees the value
                check_field(cls, field.name, value, where)
            except JaxrlError as e:
                raise JaxrlError(f"recipe: {e}") from None
        elif default is not dataclasses.MISSING:
            kwargs[field.name] = default
        elif _is_dataclass_type(types_[field.name]):
            kwargs[field.name] = _build(types_[field.name], None, {}, where)
        else:
            raise JaxrlError(f"recipe: required key {where} is not set; add it to the recipe or pass {where}=...")
    try:
        return cls(**kwargs)
    except JaxrlError:
        raise
    except (TypeError, ValueError) as e:  # a dataclass's own __post_init__ check
        raise JaxrlError(f"recipe: {prefix or cls.__name__}: {e}") from None


def _coerce(value: Any, tp: Any, where: str, base: Any = dataclasses.MISSING) -> Any:
    """`value` (YAML data, or `_Text` from an override) as type `tp`, or a one-line JaxrlError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if type(None) in args and _is_none(value):
            return None
        arms = [a for a in args if a is not type(None)]
        errors = []
        for arm in arms:
            try:
                arm_base = base if base is not None else dataclasses.MISSING
                return _coerce(value, arm, where, arm_base)
            except JaxrlError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise JaxrlError(f"recipe: {where} must be {_type_name(tp)}, got {_show(value)}")
    if _is_dataclass_type(tp):
        sub_base = base if dataclasses.is_dataclass(base) and not isinstance(base, type) else None
        return _build(tp, sub_base, value, where)
    if origin is Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise JaxrlError(f"recipe: {where} must be one of {', '.join(repr(a) for a in args)}; got {_show(value)}{hint}")
    if origin in (tuple, list, Sequence, typing.Sequence) or tp in (tuple, list):
        items = _as_list(value, where, tp)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise JaxrlError(f"recipe: {where} must have {len(args)} items, got {len(items)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(items, args, strict=True)))
        item_type = args[0] if args else Any
        out = [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(items)]
        return out if origin is list or tp is list else tuple(out)
    if origin in (dict, Mapping, typing.Mapping) or tp is dict:
        if isinstance(value, _Text):
            value = _yaml_value(value, where)
        if not isinstance(value, Mapping):
            raise JaxrlError(f"recipe: {where} must be a mapping, got {_show(value)}")
        key_type, value_type = args if args else (Any, Any)
        return {_coerce(k, key_type, f"{where}.{k}"): _coerce(v, value_type, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS + _FALSE_WORDS:
            return value.strip().lower() in _TRUE_WORDS
        raise JaxrlError(f"recipe: {where} must be true or false, got {_show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                pass
        raise JaxrlError(f"recipe: {where} must be an integer, got {_show(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-6` as a string
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise JaxrlError(f"recipe: {where} must be a number, got {_show(value)}")
    if tp is str:
        if isinstance(value, str):
            return str(value)
        raise JaxrlError(f"recipe: {where} must be a string, got {_show(value)}; quote it in YAML")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise JaxrlError(f"recipe: {where} must be a path, got {_show(value)}")
    raise TypeError(f"recipe field {where} has a type the loader does not know: {tp!r}")


def _as_list(value: Any, where: str, tp: Any) -> list:
    if isinstance(value, _Text):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:  # e.g. [mlp.{gate,up}@19-25]: braces are not plain YAML
                return _split_items(text[1:-1])
        elif not text:
            return []
        else:  # a,b,c
            return _split_items(text)
    if isinstance(value, (list, tuple)):
        return list(value)
    raise JaxrlError(f"recipe: {where} must be a list ({_type_name(tp)}), got {_show(value)}")


def _split_items(text: str) -> list[_Text]:
    """Splits on commas outside brackets and quotes: `mlp.{gate,up}@1-3,attn.q` is two items."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "{[(":
            depth += 1
        elif ch in "}])":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [_Text(_unquote(item.strip())) for item in items if item.strip()]


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _yaml_value(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise JaxrlError(f"recipe: {where}: cannot parse {text!r}") from None


# ---------------------------------------------------------------------------------------------
# Small helpers


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(arms) == 1:
            return arms[0]
    return tp


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _unknown_key(cls: type, name: str, where: str) -> JaxrlError:
    names = _field_names(cls)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    parent = where.rpartition(".")[0]
    hint = f"did you mean {_join(parent, close[0])!r}?" if close else f"known keys: {', '.join(names)}"
    return JaxrlError(f"recipe: unknown key {where!r}; {hint}")


def _is_none(value: Any) -> bool:
    return value is None or (isinstance(value, _Text) and value.strip().lower() in _NONE_WORDS)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _show(value: Any) -> str:
    text = repr(str(value)) if isinstance(value, _Text) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
