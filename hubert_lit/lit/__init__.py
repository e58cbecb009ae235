"""Lightning side of the suite: the pretraining and distillation modules (siblings on a shared base), their losses,
the LR schedule and the Trainer plug-ins.

Imported lazily: ``from hubert_lit.lit import HubertPretrainModule`` imports Lightning, the package itself does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hubert_lit.lit.base import HubertLightningModule
    from hubert_lit.lit.distill import BiTDistillModule
    from hubert_lit.lit.pretrain import HubertPretrainModule

__all__ = ["BiTDistillModule", "HubertLightningModule", "HubertPretrainModule"]

_MODULES = {
    "HubertLightningModule": "hubert_lit.lit.base",
    "HubertPretrainModule": "hubert_lit.lit.pretrain",
    "BiTDistillModule": "hubert_lit.lit.distill",
}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        import importlib

        return getattr(importlib.import_module(_MODULES[name]), name)
    raise AttributeError(f"module 'hubert_lit.lit' has no attribute {name!r}")
