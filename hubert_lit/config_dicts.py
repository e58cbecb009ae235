"""Checks shared by the plain config dataclasses (HubertConfig, EncoderConfig, SparsityConfig, QuantSpec)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

_SCALARS = {"int": int, "float": float, "bool": bool}


def check_known_keys(cls: type, data: Mapping[str, Any], what: str) -> None:
    """Raise ``ValueError`` naming every key of ``data`` that is not a field of the dataclass ``cls``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; expected a subset of {sorted(known)}")


def _scalar_types(annotation: str) -> tuple[type, ...] | None:
    """``int``/``float``/``bool`` (with ``| None``) of a field annotation; None for anything else."""
    parts = {p.strip() for p in annotation.split("|")} - {"None"}
    if parts and parts <= set(_SCALARS):
        return tuple(_SCALARS[p] for p in sorted(parts))
    return None


def parse_fields(cls: type, data: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``data`` checked against the fields of the dataclass ``cls``, with numbers and booleans given as text (a
    dict-valued command-line override such as ``--model.overrides.encoder.num_layers 2`` arrives as ``"2"``) turned
    into their values; a text that is not one raises ``ValueError`` naming the key."""
    import yaml

    check_known_keys(cls, data, what)
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    out = dict(data)
    for key, value in data.items():
        expected = _scalar_types(str(types[key]))
        if expected is None or not isinstance(value, str):
            continue
        parsed = yaml.safe_load(value) if value.strip() else value
        if parsed is None and "None" in str(types[key]):
            out[key] = None
        elif isinstance(parsed, expected) and not (isinstance(parsed, bool) and bool not in expected):
            out[key] = parsed
        elif float in expected and isinstance(parsed, int) and not isinstance(parsed, bool):
            out[key] = float(parsed)
        else:
            names = " or ".join(t.__name__ for t in expected)
            raise ValueError(f"{what} {key}: expected {names}, got {value!r}")
    return out
