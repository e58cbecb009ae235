"""Data: LibriSpeech-style corpora, tar shards, label files and the Lightning DataModule.

``ShardDataModule`` is imported lazily so that tools which only read or write shards do not import Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hubert_lit.data.datamodule import ShardDataModule

__all__ = ["ShardDataModule"]


def __getattr__(name: str) -> Any:
    if name == "ShardDataModule":
        from hubert_lit.data.datamodule import ShardDataModule

        return ShardDataModule
    raise AttributeError(f"module 'hubert_lit.data' has no attribute {name!r}")
