"""Knob domains: which numbers a config field accepts, declared once in a table beside its dataclass.

    @dataclasses.dataclass(frozen=True)
    class SamplingConfig:
        DOMAINS: ClassVar[dict[str, str]] = {"temperature": ">= 0", "top_p": "(0, 1]", "top_k": ">= 0"}
        temperature: float = 1.0
        ...
        def __post_init__(self):
            check_knobs(self)

A spec is a range, `>= 0`, `> 0`, `<= 1`, `[0, 1)`, `(0, 1]` or `any` (any finite number), and may
end with `or V` for values allowed besides it (`>= 1 or -1`; `or inf` lets infinity in), and with
`; why` for the error to say (`>= 2; group advantages need two`). NaN never
passes, and infinity only where a spec says `or inf`: a range check written `x < 0` is false for
NaN, so every check here is written as what must hold. Integers are the field's type (`int`); the
recipe loader reads the type, this module the range.

`check_value` is the one check: the recipe loader calls it (through `check_field`) with each
field's dotted key before the dataclass is built, `check_knobs` for a dataclass built in code, and
the CLI for its numeric options (`jaxrl.cli.OPTION_DOMAINS`). tests/test_knobs.py walks every
recipe section, config and option, so a numeric one without a domain fails it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import re
import types
import typing
from typing import Any, Union

from jaxrl.errors import JaxrlError

_RANGE = re.compile(
    r"^(?:(?P<op>>=|>|<=|<)\s*(?P<bound>\S+)|(?P<lo>[\[(])\s*(?P<a>\S+)\s*,\s*(?P<b>\S+?)\s*(?P<hi>[\])])|any)$"
)


@dataclasses.dataclass(frozen=True)
class Domain:
    """A closed or open range of finite numbers, plus `extra` values allowed besides it."""

    spec: str
    low: float = -math.inf
    low_open: bool = False
    high: float = math.inf
    high_open: bool = False
    extra: tuple[float, ...] = ()
    why: str = ""

    def allows(self, value: float) -> bool:
        if value in self.extra:
            return True
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self, integer: bool) -> str:
        kind = "an integer" if integer else "a finite number"
        rng, _, extra = self.spec.partition(";")[0].strip().partition(" or ")
        text = kind if rng == "any" else f"{kind} in {rng}" if rng.startswith(("[", "(")) else f"{kind} {rng}"
        notes = "; ".join(note for note in (extra and f"or {extra}", self.why) if note)
        return f"{text} ({notes})" if notes else text


@functools.cache
def domain(spec: str) -> Domain:
    """The Domain a spec string declares (see the module docstring); a TypeError for a bad spec."""
    values, _, why = spec.partition(";")
    rng, *extras = [part.strip() for part in values.split(" or ")]
    m = _RANGE.match(rng)
    if not m:
        raise TypeError(f"bad knob domain {spec!r}")
    extra = tuple(float(e) for e in extras)
    if m["op"]:
        bound = float(m["bound"])
        if m["op"].startswith(">"):
            return Domain(spec, low=bound, low_open=m["op"] == ">", extra=extra, why=why.strip())
        return Domain(spec, high=bound, high_open=m["op"] == "<", extra=extra, why=why.strip())
    if m["lo"]:
        return Domain(spec, float(m["a"]), m["lo"] == "(", float(m["b"]), m["hi"] == ")", extra, why.strip())
    return Domain(spec, extra=extra, why=why.strip())


FINITE = domain("any")


def numeric_type(tp: Any) -> type | None:
    """int or float when a field of type `tp` holds numbers (alone, optional, or in a tuple/list)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        arms = [numeric_type(a) for a in args if a is not type(None)]
        return arms[0] if len(arms) == 1 else None
    if origin in (tuple, list) and args:
        return numeric_type(args[0]) if len(args) == 1 or args[1] is Ellipsis else None
    return tp if tp in (int, float) else None


@functools.cache
def numeric_fields(cls: type) -> dict[str, type]:
    """Field name -> int or float, for the numeric fields of dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: numeric_type(hints[f.name]) for f in dataclasses.fields(cls)}
    return {name: kind for name, kind in fields.items() if kind is not None}


def domain_of(cls: type, name: str) -> Domain | None:
    """The declared domain of field `name` of `cls` (its `DOMAINS` table), or None."""
    spec = getattr(cls, "DOMAINS", {}).get(name)
    return None if spec is None else domain(spec)


def check_value(value: Any, dom: Domain, integer: bool, where: str) -> None:
    """A one-line JaxrlError naming `where` unless `value` (None, a number or a sequence of them) fits."""
    if value is None:
        return
    if isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            check_value(item, dom, integer, f"{where}[{i}]")
        return
    number = isinstance(value, numbers.Integral if integer else numbers.Real) and not isinstance(value, bool)
    if not number or not dom.allows(float(value)):
        raise JaxrlError(f"{where} must be {dom.describe(integer)}, got {value!r}")


def check_field(cls: type, name: str, value: Any, where: str | None = None) -> None:
    """Checks one field's value against its domain (finite numbers only when it declares none)."""
    kind = numeric_fields(cls).get(name)
    if kind is not None:
        check_value(value, domain_of(cls, name) or FINITE, kind is int, where or name)


def check_knobs(obj: Any, prefix: str = "") -> None:
    """Checks every numeric field of dataclass instance `obj` (not its nested sections, which check
    themselves when built)."""
    cls = type(obj)
    for name in numeric_fields(cls):
        check_field(cls, name, getattr(obj, name), f"{prefix}{name}")
