"""What an output was made with, so that a rerun never mixes settings.

Commands that keep their finished outputs and skip them on a rerun (``tissue`` and ``infer`` per slide,
``make-data`` per case or slide, ``train`` per epoch) record the settings that decide an output's content next to it.
A rerun asking for the same settings reuses the output; one asking for others is refused before anything is
written, naming each difference, instead of silently keeping (or extending) outputs of the old settings::

    check_made_with(npy.with_suffix(".json"), meta.get("made_with"), {"stride": 256, ...},
                    "pass --overwrite to recompute it, or choose another --out")

Settings that only change how fast a result comes (threads, workers, batch and tile sizes) are not recorded. Data
and models are recorded by content (:func:`digest`, :func:`file_digest`), so moving them elsewhere changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

from .errors import UserError
from .files import read_json

__all__ = ["digest", "file_digest", "differences", "check_made_with", "check_described"]


def digest(value: Any) -> str:
    """A short content fingerprint (16 hex digits of SHA-256) of a JSON-ready ``value`` (keys sorted)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def file_digest(path: str | os.PathLike) -> str:
    """The same fingerprint of a file's bytes (a checkpoint, a patch list), read in 1 MiB blocks."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:16]


def _shown(value: Any) -> str:
    if value is None:
        return "(not recorded)"
    return json.dumps(value, default=str) if isinstance(value, (list, tuple, dict)) else str(value)


def differences(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """``"KEY RECORDED -> WANTED"`` for each key of ``wanted`` whose value ``recorded`` does not hold (tuples and
    lists compare alike; a key missing from ``recorded`` shows as "(not recorded)")."""

    def plain(value: Any) -> Any:
        return json.loads(json.dumps(value, default=str))

    return [f"{key} {_shown(recorded.get(key))} -> {_shown(value)}" for key, value in wanted.items()
            if plain(recorded.get(key)) != plain(value)]


def check_made_with(output: str | os.PathLike, recorded: Mapping[str, Any] | None, wanted: Mapping[str, Any],
                    remedy: str) -> None:
    """Refuse to reuse ``output`` when it was made with other settings than ``wanted``.

    Args:
        output: the file or folder that holds the record, named in the message.
        recorded: what the output records (None or not a mapping: an output of an earlier version, which recorded
            nothing; it is refused too, since sameness cannot be shown).
        wanted: the settings this run would make it with.
        remedy: what the user can do, e.g. ``"pass --overwrite to recompute it, or choose another --out"``.

    Raises:
        UserError: ``OUTPUT: made with other settings than this run's (KEY OLD -> NEW; ...); REMEDY``, or
            ``OUTPUT: made by an earlier version, which did not record its settings; REMEDY``.
    """
    if not isinstance(recorded, Mapping):
        raise UserError(f"{output}: made by an earlier version, which did not record its settings; {remedy}")
    found = differences(recorded, wanted)
    if found:
        raise UserError(f"{output}: made with other settings than this run's ({'; '.join(found)}); {remedy}")


def check_described(description: str | os.PathLike, what: str, wanted: Mapping[str, Any], remedy: str) -> None:
    """:func:`check_made_with` on the ``made_with`` record in an output's JSON ``description`` (a map's or a tissue
    mask's), read as a ``what``."""
    meta = read_json(description, what)
    check_made_with(description, meta.get("made_with") if isinstance(meta, dict) else None, wanted, remedy)
