"""HuBERT models: conv front ends, swappable encoders, masked-prediction head and presets.

Files (model files, checkpoints, packed exports) are :mod:`hubert_lit.checkpoint`'s business.
"""

from hubert_lit.models.config import PRESETS, HubertConfig
from hubert_lit.models.encoders import EncoderConfig, build_encoder
from hubert_lit.models.hubert import HubertModel, HubertOutput, build_hubert

__all__ = [
    "PRESETS",
    "EncoderConfig",
    "HubertConfig",
    "HubertModel",
    "HubertOutput",
    "build_encoder",
    "build_hubert",
]
