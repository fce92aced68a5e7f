"""Recipes as frozen dataclasses, read from plain mappings (job configuration, ``--set`` options) and checked by
type and range: a typo must never fall back silently to a default, and ``vae="no"`` must never mean true.

A recipe declares each field with :func:`setting`, which records the field's allowed range or check next to its
default::

    @dataclasses.dataclass(frozen=True)
    class Recipe(Settings):
        lr: float = setting(1e-4, above=0)
        amp: bool = True
        device: str = setting("auto", check=check_device_name)

Every instance, however it is built, is checked in ``__post_init__`` against the field's annotated type (``bool``
accepts only true/false, ``int`` only whole numbers, ``float`` any finite number, ``str`` only text, ``tuple[int,
...]`` a list of whole numbers of that length) and its range; a failure is a :class:`~medcore.errors.SettingError`
naming the setting and what it accepts.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Callable, Mapping, TypeVar

from .errors import SettingError

__all__ = ["MAX_WHOLE", "MAX_PARALLEL", "Settings", "setting", "out_of_range"]

_S = TypeVar("_S", bound="Settings")


def setting(default: Any, *, above: float | None = None, minimum: float | None = None,
            below: float | None = None, maximum: float | None = None,
            check: Callable[[Any], str | None] | None = None, runtime: bool = False) -> Any:
    """A recipe field with its default and what values it accepts.

    Args:
        above, minimum: exclusive / inclusive lower bound (numbers and each element of a tuple).
        below, maximum: exclusive / inclusive upper bound.
        check: a function of the value returning ``None`` when it is fine, else what the setting accepts
            (e.g. ``"auto, cpu, cuda or cuda:N"``).
        runtime: the setting says how or how long a run computes (device, threads, workers, epochs), not what it
            computes; a resumed run may change it (:meth:`Settings.made_with`).
    """
    bounds = {"above": above, "minimum": minimum, "below": below, "maximum": maximum, "check": check}
    meta = {k: v for k, v in bounds.items() if v is not None}
    if runtime:
        meta["runtime"] = True
    return dataclasses.field(default=default, metadata=meta)


#: The largest whole-number setting, unless the setting says otherwise: 2^31 - 1, so that every seed, count and
#: size fits the C integers of numpy, PyTorch and the DataLoader (a seed of 10^20 overflowed there).
MAX_WHOLE = 2 ** 31 - 1


#: The most threads or worker processes a setting may ask for: far above any machine's cores, far below what
#: exhausts memory (OpenMP reserves each thread's stack up front: 2 x 10^9 threads asked for 432 GB and aborted).
MAX_PARALLEL = 1024


def out_of_range(value: float, *, above: float | None = None, minimum: float | None = None,
                 below: float | None = None, maximum: float | None = None) -> str | None:
    """``None`` when ``value`` keeps the bounds, else what they require (``"must be > 0 and <= 1"``)."""
    ok = ((above is None or value > above) and (minimum is None or value >= minimum)
          and (below is None or value < below) and (maximum is None or value <= maximum))
    if ok:
        return None
    def shown(bound: float) -> str:
        return str(bound) if _is_whole(bound) else f"{bound:g}"

    parts = [f"{op} {shown(bound)}" for op, bound in ((">", above), (">=", minimum), ("<", below), ("<=", maximum))
             if bound is not None]
    return "must be " + " and ".join(parts)


def _shown(value: Any) -> str:
    return repr(list(value) if isinstance(value, tuple) else value)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _coerce(name: str, kind: Any, value: Any) -> Any:
    """``value`` as the annotated ``kind``, or a :class:`SettingError` saying what the setting accepts."""
    shown = repr(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise SettingError(f"setting {name}: expected true or false, got {shown}")
    if kind is int:
        if _is_whole(value):
            return value
        raise SettingError(f"setting {name}: expected a whole number, got {shown}")
    if kind is float:
        if (_is_whole(value) or isinstance(value, float)) and math.isfinite(value):
            return float(value)
        raise SettingError(f"setting {name}: expected a number, got {shown}")
    if kind is str:
        if isinstance(value, str):
            return value
        raise SettingError(f"setting {name}: expected text, got {shown}")
    if typing.get_origin(kind) is tuple:
        items = typing.get_args(kind)
        if isinstance(value, (list, tuple)) and len(value) == len(items) and all(_is_whole(v) for v in value):
            return tuple(value)
        raise SettingError(f"setting {name}: expected a list of {len(items)} whole numbers, got {shown}")
    raise TypeError(f"setting {name}: unsupported annotation {kind!r}")  # a recipe bug, not a user error


class Settings:
    """Mixin for ``@dataclasses.dataclass(frozen=True)`` recipes: typed and range-checked fields,
    :meth:`from_dict` and :meth:`to_dict`. Subclasses with their own ``__post_init__`` call this one first."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = _coerce(field.name, hints[field.name], getattr(self, field.name))
            meta = field.metadata
            numbers = value if isinstance(value, tuple) else (value,) if isinstance(value, (int, float)) else ()
            bounds = {k: v for k, v in meta.items() if k not in ("check", "runtime")}
            if any(_is_whole(v) for v in numbers) and bounds.get("maximum") is None and bounds.get("below") is None:
                bounds["maximum"] = MAX_WHOLE  # a whole number must fit every consumer's C integer
            for problem in filter(None, (out_of_range(v, **bounds) for v in numbers)):
                raise SettingError(f"setting {field.name}: {problem}, got {_shown(value)}")
            if "check" in meta and (accepted := meta["check"](value)) is not None:
                raise SettingError(f"setting {field.name}: expected {accepted}, got {_shown(value)}")
            object.__setattr__(self, field.name, value)

    @classmethod
    def from_dict(cls: type[_S], values: Mapping[str, Any] | None) -> _S:
        """Build from a mapping, rejecting unknown keys by name."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingError(f"unknown training setting(s) {unknown}; known settings: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values (tuples become lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    def made_with(self) -> dict[str, Any]:
        """:meth:`to_dict` without the runtime settings: what decides a run's results (:mod:`medcore.provenance`)."""
        runtime = {f.name for f in dataclasses.fields(self) if f.metadata.get("runtime")}  # type: ignore[arg-type]
        return {k: v for k, v in self.to_dict().items() if k not in runtime}
