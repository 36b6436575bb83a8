"""Payload filters as users write them (``{"modality": "image", "metadata.lang": ["en", "de"]}``), checked and
turned into (key, value) conditions each backend translates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _conditions(filters: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    """``{"modality": "image", "metadata.lang": ["en", "de"]}`` -> [(key, value or list of values)]."""
    if not filters:
        return []
    out: list[tuple[str, Any]] = []
    for key, value in filters.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"filter keys are payload field names, got {key!r}")
        if isinstance(value, (list, tuple, set)):
            values = list(value)
            kinds = {type(v) for v in values}
            if not values:
                raise ValueError(f"filter {key!r}: the list of values is empty (choose at least one)")
            if not (kinds == {str} or kinds == {int}):
                raise ValueError(f"filter {key!r}: a list filter needs values of one type, str or int; got {value!r}")
            for v in values:
                _check_int(key, v)
            out.append((key, values))
        elif isinstance(value, (str, int, bool)):
            _check_int(key, value)
            out.append((key, value))
        else:
            raise ValueError(f"filter {key!r}: expected a str, int, bool or a list of them, got {value!r}")
    return out


def _check_int(key: str, value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise ValueError(f"filter {key!r}: integer {value} is outside the 64-bit range Qdrant stores")
