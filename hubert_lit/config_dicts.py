"""Checks shared by the plain config dataclasses (HubertConfig, EncoderConfig, SparsityConfig, QuantSpec)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


def check_known_keys(cls: type, data: Mapping[str, Any], what: str) -> None:
    """Raise ``ValueError`` naming every key of ``data`` that is not a field of the dataclass ``cls``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; expected a subset of {sorted(known)}")
