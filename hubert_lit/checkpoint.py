"""``hubert_lit.load_model``: rebuild a model, in eval mode, from any file the suite writes, without a config.

Recognised files:

* pretraining checkpoints (``.ckpt``) written by Lightning from :class:`hubert_lit.lit.HubertPretrainModule`:
  they carry the resolved ``HubertConfig`` dict under ``"hubert_config"`` and the weights under
  ``state_dict["model.*"]``;
* model files written by :func:`hubert_lit.models.save_model` (``format: hubert-lit-model/1``).

Everything is read with ``torch.load(weights_only=True)``: no code from the file runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hubert_lit.models import HubertConfig, HubertModel
from hubert_lit.models import load_model as load_model_file

PRETRAIN_CONFIG_KEY = "hubert_config"  # written by HubertPretrainModule.on_save_checkpoint
PRETRAIN_WEIGHTS_PREFIX = "model."


def is_pretrain_checkpoint(payload: Any) -> bool:
    """True for a Lightning checkpoint of :class:`~hubert_lit.lit.HubertPretrainModule`."""
    return isinstance(payload, dict) and PRETRAIN_CONFIG_KEY in payload and "state_dict" in payload


def model_from_pretrain_checkpoint(payload: dict[str, Any], source: str = "checkpoint") -> HubertModel:
    """The HuBERT model (eval mode) stored in a loaded pretraining checkpoint dict."""
    config = HubertConfig.from_dict(payload[PRETRAIN_CONFIG_KEY])
    state = {
        key[len(PRETRAIN_WEIGHTS_PREFIX) :]: value
        for key, value in payload["state_dict"].items()
        if key.startswith(PRETRAIN_WEIGHTS_PREFIX)
    }
    if not state:
        raise ValueError(f"{source}: no '{PRETRAIN_WEIGHTS_PREFIX}*' weights in the checkpoint's state_dict")
    model = HubertModel(config)
    from hubert_lit.quant.binarize import apply_stored_spec  # lazy: quant imports the model modules

    apply_stored_spec(model, payload.get("quant_spec"))  # distillation checkpoints: the quantized student
    model.load_state_dict(state)
    return model.eval()


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model stored in ``path`` (pretraining ``.ckpt`` or ``save_model`` file), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable checkpoint or model file ({err})") from err
    if is_pretrain_checkpoint(payload):
        return model_from_pretrain_checkpoint(payload, source=str(path))
    return load_model_file(path, map_location=map_location)
