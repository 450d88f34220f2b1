"""Gates: one-line rules over measured metrics, shared by evaluation suites and the registry.

A gate is ``<metric> <op> <number>`` (absolute), ``<metric> <op> <factor> x <ref>`` or
``<metric> <op> <ref> +/- <number>`` (relative to a reference's value of the same metric), with
``op`` one of ``<=``, ``>=``, ``==``, ``<``, ``>``. The reference names are the caller's: a
subclass sets ``references`` (``slimline.eval.Gate``: ``reference``; ``slimline.registry.Gate``:
``parent``, ``current``, ``baseline``), so neither area imports the other.
"""

from __future__ import annotations

import functools
import math
import operator
import re
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from slimline.errors import ConfigError

OPS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq, "<": operator.lt, ">": operator.gt}
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_G = TypeVar("_G", bound="Gate")


@functools.cache
def _pattern(references: tuple[str, ...]) -> re.Pattern[str]:
    refs = "|".join(map(re.escape, references)) or "(?!)"  # no names: absolute gates only
    return re.compile(
        rf"^\s*(?P<metric>[^\s<>=]+)\s*(?P<op><=|>=|==|<|>)\s*(?:"
        rf"(?P<factor>{_NUM})\s*[x*]\s*(?P<ref1>{refs})"
        rf"|(?P<ref2>{refs})\s*(?:(?P<sign>[-+])\s*(?P<offset>{_NUM}))?"
        rf"|(?P<absolute>{_NUM}))\s*$"
    )


@dataclass(frozen=True)
class Gate:
    """``metric op limit``; limit = ``absolute``, or ``factor`` x the ``ref``'s value + ``offset``."""

    metric: str
    op: str
    ref: str | None = None
    factor: float = 1.0
    offset: float = 0.0
    absolute: float | None = None

    references: ClassVar[tuple[str, ...]] = ()  # the names ``ref`` may take; set by a subclass

    @classmethod
    def parse(cls: type[_G], spec: str | dict[str, Any] | Gate) -> _G:
        """A gate from its one-line text, a dict of its fields, or a gate of this kind."""
        if isinstance(spec, cls):
            return spec
        names = "|".join(cls.references)
        if isinstance(spec, dict):
            try:
                g = cls(**spec)
            except TypeError as e:
                raise ConfigError(
                    f"bad gate {spec}: {e}", "fields: metric, op, ref, factor, offset, absolute"
                ) from e
            if (
                g.op not in OPS
                or (g.ref is None) == (g.absolute is None)
                or (g.ref and g.ref not in cls.references)
            ):
                raise ConfigError(
                    f"bad gate {spec}",
                    f"op in {list(OPS)}; either ref in {cls.references} or absolute",
                )
            return g
        m = _pattern(cls.references).match(str(spec))
        if not m:
            raise ConfigError(
                f"cannot read gate {spec!r}",
                f"write `<metric> <op> <number>`, `<metric> <op> <factor> x {names}` or "
                f"`<metric> <op> {names} +/- <number>` (op one of {', '.join(OPS)})",
            )
        d = m.groupdict()
        if d["absolute"] is not None:
            return cls(d["metric"], d["op"], absolute=float(d["absolute"]))
        if d["ref1"]:
            return cls(d["metric"], d["op"], ref=d["ref1"], factor=float(d["factor"]))
        off = float(d["offset"]) * (-1 if d["sign"] == "-" else 1) if d["offset"] else 0.0
        return cls(d["metric"], d["op"], ref=d["ref2"], offset=off)

    @property
    def relative(self) -> bool:
        return self.ref is not None

    def __str__(self) -> str:
        if self.ref is None:
            return f"{self.metric} {self.op} {self.absolute:g}"
        rhs = self.ref if self.factor == 1.0 else f"{self.factor:g} x {self.ref}"
        if self.offset:
            rhs += f" {'+' if self.offset > 0 else '-'} {abs(self.offset):g}"
        return f"{self.metric} {self.op} {rhs}"

    def limit(self, ref_value: float | None) -> float | None:
        """The number ``value`` is compared with; None for a relative gate without ``ref_value``."""
        if self.ref is None:
            return self.absolute
        return None if ref_value is None else self.factor * ref_value + self.offset

    def check(self, value: float, ref_value: float | None, *, finite: bool = True) -> bool:
        """Whether ``value`` passes. A NaN value or limit, or a missing limit, fails; with
        ``finite`` (the suites' rule) an infinite one fails too, without it (the registry's rule)
        infinities compare as numbers."""
        t = self.limit(ref_value)
        if t is None or math.isnan(value) or math.isnan(t):
            return False
        if finite and not (math.isfinite(value) and math.isfinite(t)):
            return False
        return bool(OPS[self.op](value, t))

    def verdict(self, metric: str, value: float, ref_value: float | None) -> dict[str, Any]:
        """``{metric, value, limit, passed, gate}`` for one metric this gate matched."""
        return {
            "metric": metric,
            "value": value,
            "limit": self.limit(ref_value),
            "passed": self.check(value, ref_value),
            "gate": str(self),
        }
