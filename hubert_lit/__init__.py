"""hubert-lit: HuBERT pretraining with swappable encoders, BiT binarization, profiling and SUPERB-style evaluation."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.2.0"

if TYPE_CHECKING:
    from hubert_lit.checkpoint import load_model, save_model

__all__ = ["__version__", "load_model", "save_model"]


def __getattr__(name: str):
    # ``hubert_lit.load_model`` / ``save_model`` (hubert_lit.checkpoint) imported on first use, so that
    # ``python -m hubert_lit synth`` does not pay for importing torch.
    if name in ("load_model", "save_model"):
        from hubert_lit import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'hubert_lit' has no attribute {name!r}")
