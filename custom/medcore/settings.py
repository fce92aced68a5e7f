"""Recipes as frozen dataclasses, read from plain mappings (job configuration, ``--set`` options) with a clear
error for unknown keys: a typo must never fall back silently to a default."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

__all__ = ["Settings"]

_S = TypeVar("_S", bound="Settings")


class Settings:
    """Mixin for ``@dataclasses.dataclass(frozen=True)`` recipes: :meth:`from_dict` and :meth:`to_dict`."""

    @classmethod
    def from_dict(cls: type[_S], values: Mapping[str, Any] | None) -> _S:
        """Build from a mapping, rejecting unknown keys by name."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}; known settings: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values (tuples become lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}
