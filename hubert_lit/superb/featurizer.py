"""The frozen upstream side of SUPERB: hidden states of every layer, cached once, and their learnable weighted sum.

* :func:`extract_hidden_states` runs a frozen HuBERT model (eval mode, no autograd) over a list of waveforms in
  length-sorted batches and returns, per utterance, all ``num_layers + 1`` hidden states trimmed to the
  utterance's frame length, stacked as one ``(num_layers + 1, T, D)`` tensor. The evaluation tool calls it once per
  (checkpoint, task, split), so a learning-rate grid reuses the same features.
* :class:`WeightedLayerSum` is s3prl's ``Featurizer``: one learnable weight per hidden state, initialised to zero
  so the softmax starts uniform, optionally a parameter-free layer norm on each state before the sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from hubert_lit.constants import SAMPLE_RATE


def load_audio(path: str | Path) -> Tensor:
    """A 16 kHz mono audio file as a 1-D float32 tensor (clear error on another rate or channel count)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    if rate != SAMPLE_RATE:
        raise ValueError(f"{path}: sample rate {rate} Hz, expected {SAMPLE_RATE}")
    if audio.shape[1] != 1:
        raise ValueError(f"{path}: {audio.shape[1]} channels, expected mono")
    return torch.from_numpy(np.ascontiguousarray(audio[:, 0]))


def pad_waveforms(waveforms: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Zero-pad 1-D waveforms into ``(B, L)`` with their ``(B,)`` lengths."""
    lengths = torch.tensor([int(w.shape[0]) for w in waveforms], dtype=torch.long)
    batch = torch.zeros(len(waveforms), int(lengths.max()), dtype=torch.float32)
    for i, w in enumerate(waveforms):
        batch[i, : w.shape[0]] = w
    return batch, lengths


def _batches_by_length(lengths: Sequence[int], max_batch_samples: int) -> list[list[int]]:
    """Indices grouped into batches of similar length whose padded size stays within ``max_batch_samples``."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_batch_samples:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@torch.inference_mode()
def extract_hidden_states(
    model: nn.Module,
    waveforms: Sequence[Tensor],
    max_batch_seconds: float = 60.0,
    device: str | torch.device = "cpu",
    progress: str | None = None,
) -> list[Tensor]:
    """All hidden states of the frozen ``model`` for each waveform: a list of ``(num_layers + 1, T_i, D)`` float32
    CPU tensors, ``T_i`` = the utterance's valid frames.

    ``model`` must offer ``extract_features(waveforms, lengths) -> (states, frame_lengths)`` (any suite model,
    binarized ones included); it is put in eval mode. ``progress`` names a tqdm bar (``None``: no bar).
    """
    if not waveforms:
        return []
    model.eval()
    lengths = [int(w.shape[0]) for w in waveforms]
    too_short = [i for i, n in enumerate(lengths) if n < 400]
    if too_short:
        raise ValueError(
            f"{len(too_short)} waveforms are shorter than 400 samples (one frame), e.g. index {too_short[0]}"
        )
    out: list[Tensor | None] = [None] * len(waveforms)
    batches = _batches_by_length(lengths, int(max_batch_seconds * SAMPLE_RATE))
    bar = tqdm(total=len(waveforms), desc=progress, disable=progress is None, leave=False)
    for batch in batches:
        wav, lens = pad_waveforms([waveforms[i] for i in batch])
        states, frame_lengths = model.extract_features(wav.to(device), lens.to(device))
        stacked = torch.stack(states, dim=1).float().cpu()  # (B, L+1, T, D)
        for row, i in enumerate(batch):
            out[i] = stacked[row, :, : int(frame_lengths[row])].clone()
        bar.update(len(batch))
    bar.close()
    return out  # type: ignore[return-value]


class WeightedLayerSum(nn.Module):
    """Softmax-weighted sum of ``num_states`` hidden states (s3prl ``Featurizer``).

    Input ``(B, num_states, T, D)``; output ``(B, T, D)``. With ``normalize`` each state is layer-normalised
    (no affine parameters) before the sum.
    """

    def __init__(self, num_states: int, normalize: bool = False):
        super().__init__()
        if num_states < 1:
            raise ValueError(f"num_states must be >= 1, got {num_states}")
        self.weights = nn.Parameter(torch.zeros(num_states))
        self.normalize = normalize

    def forward(self, states: Tensor) -> Tensor:
        if states.ndim != 4 or states.shape[1] != self.weights.numel():
            raise ValueError(
                f"expected (batch, {self.weights.numel()}, frames, dim) hidden states, "
                f"got {tuple(states.shape)}"
            )
        if self.normalize:
            states = F.layer_norm(states, states.shape[-1:])
        weights = F.softmax(self.weights, dim=0)
        return torch.einsum("bltd,l->btd", states, weights)

    def layer_weights(self) -> list[float]:
        """The current softmax weights (for the report)."""
        return F.softmax(self.weights.detach(), dim=0).tolist()
