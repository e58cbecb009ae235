"""HuBERT models: conv front ends, swappable encoders, masked-prediction head, presets and checkpoint I/O."""

from hubert_lit.models.config import PRESETS, HubertConfig
from hubert_lit.models.encoders import EncoderConfig, build_encoder
from hubert_lit.models.hubert import HubertModel, HubertOutput, build_hubert, load_model, save_model

__all__ = [
    "PRESETS",
    "EncoderConfig",
    "HubertConfig",
    "HubertModel",
    "HubertOutput",
    "build_encoder",
    "build_hubert",
    "load_model",
    "save_model",
]
