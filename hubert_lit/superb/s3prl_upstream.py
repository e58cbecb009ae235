"""s3prl upstream interface for any hubert-lit checkpoint, so the real SUPERB can be run with s3prl.

s3prl constructs ``UpstreamExpert(ckpt=..., model_config=..., **kwargs)`` and calls it with a list of unpadded
1-D 16 kHz waveforms; it expects ``{"hidden_states": [(B, T, D), ...], "last_hidden_state": (B, T, D)}`` with all
states of one shape (for its weighted sum) and asks ``get_downsample_rates(key)`` for the frame stride in samples.
Frames past an utterance's length are zero; s3prl derives each utterance's feature length as
``round(num_samples / 320)``, which is within one frame of the model's ``floor((n - 400) / 320) + 1``.

The checkpoint is read by :func:`hubert_lit.load_model`: pretraining ``.ckpt`` files, ``save_model`` files and
binarized models alike; no model config file is needed (``model_config`` is accepted and ignored). The module
follows s3prl's train/eval switching: in eval mode (s3prl's frozen upstream) dropout is off. Encoder LayerDrop
never changes the number of hidden states (a dropped block passes its input on), so s3prl's weighted sum works
even when the upstream is fine-tuned (``-f``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from hubert_lit.constants import FRAME_HOP

DOWNSAMPLE_RATE = FRAME_HOP  # s3prl's name: samples per frame at 16 kHz (20 ms)


class UpstreamExpert(nn.Module):
    """A hubert-lit model behind s3prl's ``UpstreamExpert`` interface.

    Args:
        ckpt: path of any model file :func:`hubert_lit.load_model` reads (s3prl's ``-k``).
        model_config: unused (the checkpoint carries its config); accepted because s3prl passes it (``-g``).
        **kwargs: further s3prl options (e.g. ``refresh``), ignored.
    """

    def __init__(self, ckpt: str, model_config: str | None = None, **kwargs: Any):
        super().__init__()
        from hubert_lit import load_model

        if not ckpt:
            raise ValueError("UpstreamExpert needs a checkpoint path (s3prl: -k PATH)")
        self.model = load_model(ckpt)
        if not hasattr(self.model, "extract_features"):
            raise ValueError(f"{ckpt}: the model ({type(self.model).__name__}) has no extract_features")

    def get_downsample_rates(self, key: str) -> int:
        """Samples per output frame for every feature key (50 Hz frames)."""
        return DOWNSAMPLE_RATE

    def forward(self, wavs: list[Tensor]) -> dict[str, Tensor | list[Tensor]]:
        """``wavs``: 1-D float tensors at 16 kHz, any lengths (>= 400 samples), on the module's device."""
        if not wavs:
            raise ValueError("UpstreamExpert got an empty list of waveforms")
        bad = [tuple(w.shape) for w in wavs if w.ndim != 1 or w.shape[0] < 400]
        if bad:
            raise ValueError(
                f"waveforms must be 1-D with at least 400 samples (one frame), got shapes {bad[:3]}"
            )
        lengths = torch.tensor([w.shape[0] for w in wavs], device=wavs[0].device)
        padded = pad_sequence([w.float() for w in wavs], batch_first=True)
        states, _ = self.model.extract_features(padded, lengths)
        return {"hidden_states": states, "last_hidden_state": states[-1]}
