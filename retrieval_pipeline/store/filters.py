"""Payload filters as users write them, checked and turned into one :class:`Clause` tree each backend translates.

* ``{"modality": "image", "metadata.lang": ["en", "de"]}``: every key must match (a list: any of its values).
* A value may be a comparison: ``{"metadata.year": {"gte": 2020, "lt": 2025}}`` (``gt`` / ``gte`` / ``lt`` /
  ``lte``: a numeric range), ``{"metadata.team": {"ne": "ops"}}``, ``{"metadata.lang": {"in": [...]}}``,
  ``{"metadata.lang": {"nin": [...]}}``, ``{"metadata.tag": {"eq": "x"}}``.
* ``"$and"``, ``"$or"`` (lists of filters) and ``"$not"`` (a filter) combine them, nested at will:
  ``{"$or": [{"modality": "image"}, {"metadata.year": {"gte": 2020}}]}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

RANGE_OPS = ("gt", "gte", "lt", "lte")
MATCH_OPS = ("eq", "ne", "in", "nin")
MAX_DEPTH = 8  # nesting of $and / $or / $not
MAX_CONDITIONS = 256  # conditions in one filter, all levels together


@dataclass(frozen=True)
class Condition:
    """One payload field's test: ``match`` (a value, or a list meaning any of them) or ``range`` (bounds)."""

    key: str
    match: Any = None
    range: Mapping[str, float] | None = None


@dataclass
class Clause:
    """All of ``must``, at least one of ``should`` (when any), none of ``must_not``; each a condition or a clause."""

    must: list[Condition | Clause] = field(default_factory=list)
    should: list[Condition | Clause] = field(default_factory=list)
    must_not: list[Condition | Clause] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.must or self.should or self.must_not)


class NativeFilters(Protocol):
    """How a backend spells a condition and a filter."""

    def condition(self, key: str, match: Any, bounds: Mapping[str, float] | None) -> Any: ...

    def filter(self, must: list[Any], should: list[Any], must_not: list[Any]) -> Any: ...


def native(clause: Clause, spell: NativeFilters) -> Any:
    """``clause`` in a backend's terms (None when it tests nothing)."""
    if not clause:
        return None

    def one(part: Condition | Clause) -> Any:
        if isinstance(part, Condition):
            return spell.condition(part.key, part.match, part.range)
        return spell.filter(*(list(map(one, parts)) for parts in (part.must, part.should, part.must_not)))

    return one(clause)


def _conditions(filters: Mapping[str, Any] | None) -> Clause:
    """A user's filter mapping as a :class:`Clause` (a ValueError naming the key for anything malformed)."""
    budget = [MAX_CONDITIONS]
    return _clause(filters or {}, 0, budget)


def _clause(filters: Any, depth: int, budget: list[int]) -> Clause:
    if not isinstance(filters, Mapping):
        raise ValueError(f"a filter is a mapping of payload fields to values, got {type(filters).__name__}")
    if depth > MAX_DEPTH:
        raise ValueError(f"filters nest at most {MAX_DEPTH} levels of $and / $or / $not")
    out = Clause()
    for key, value in filters.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"filter keys are payload field names, got {key!r}")
        budget[0] -= 1
        if budget[0] < 0:
            raise ValueError(f"a filter holds at most {MAX_CONDITIONS} conditions")
        if key in ("$and", "$or"):
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"filter {key!r}: expected a non-empty list of filters")
            parts = [_clause(part, depth + 1, budget) for part in value]
            if key == "$and":
                out.must.extend(parts)
            else:
                out.must.append(Clause(should=list(parts)))
        elif key == "$not":
            out.must_not.append(_clause(value, depth + 1, budget))
        elif key.startswith("$"):
            raise ValueError(f"unknown filter operator {key!r}: use $and, $or or $not")
        elif isinstance(value, Mapping):
            _comparison(key, value, out)
        elif isinstance(value, float):
            out.must.append(_equals(key, value))
        else:
            out.must.append(Condition(key, match=_match_value(key, value)))
    return out


def _finite(value: Any) -> bool:
    """A number a float holds (an integer past float's range, inf and NaN are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _equals(key: str, value: Any) -> Condition:
    """``key`` equals one value; a float as the range [value, value] (Qdrant matches str, int and bool only)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"filter {key!r}: needs a finite number, got {value!r}")
        return Condition(key, range={"gte": value, "lte": value})
    return Condition(key, match=_match_value(key, value, lists=False))


def _comparison(key: str, ops: Mapping[str, Any], out: Clause) -> None:
    unknown = set(ops) - set(RANGE_OPS) - set(MATCH_OPS)
    if unknown or not ops:
        raise ValueError(
            f"filter {key!r}: a comparison takes {', '.join(MATCH_OPS + RANGE_OPS)}; got {sorted(map(str, ops))}"
        )
    bounds: dict[str, float] = {}
    for op in RANGE_OPS:
        if op in ops:
            bound = ops[op]
            if not _finite(bound):
                raise ValueError(f"filter {key!r}: {op} needs a finite number, got {str(bound)[:40]}")
            bounds[op] = float(bound)
    if bounds:
        out.must.append(Condition(key, range=bounds))
    if "eq" in ops:
        out.must.append(_equals(key, ops["eq"]))
    if "in" in ops:
        out.must.append(Condition(key, match=_match_value(key, _as_list(key, "in", ops["in"]))))
    if "ne" in ops:
        out.must_not.append(_equals(key, ops["ne"]))
    if "nin" in ops:
        out.must_not.append(Condition(key, match=_match_value(key, _as_list(key, "nin", ops["nin"]))))


def _as_list(key: str, op: str, value: Any) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"filter {key!r}: {op} needs a list of values, got {value!r}")
    return list(value)


def _match_value(key: str, value: Any, *, lists: bool = True) -> Any:
    if lists and isinstance(value, (list, tuple, set)):
        values = list(value)
        kinds = {type(v) for v in values}
        if not values:
            raise ValueError(f"filter {key!r}: the list of values is empty (choose at least one)")
        if not (kinds == {str} or kinds == {int}):
            raise ValueError(f"filter {key!r}: a list filter needs values of one type, str or int; got {value!r}")
        for v in values:
            _check_int(key, v)
        return values
    if isinstance(value, (str, int, bool)):
        _check_int(key, value)
        return value
    raise ValueError(f"filter {key!r}: expected a str, int, bool or a list of them, got {value!r}")


def _check_int(key: str, value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise ValueError(f"filter {key!r}: integer {value} is outside the 64-bit range Qdrant stores")
