"""MFCC features of HuBERT's first iteration (fairseq ``dump_mfcc_feature.py``).

13 Kaldi MFCCs (``torchaudio.compliance.kaldi.mfcc`` with ``use_energy=False`` and every other option at its
Kaldi default: 25 ms Povey window, 10 ms shift, 23 mel bins, lifter 22, pre-emphasis 0.97, no dither,
``snip_edges=True``) plus deltas and delta-deltas (``torchaudio.functional.compute_deltas``, window 5): 39 values
per frame at 100 Hz, ``floor((n - 400) / 160) + 1`` frames for ``n`` samples. No CMVN. The waveform is float in
[-1, 1], as fairseq reads it with soundfile.
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio

from hubert_lit.constants import SAMPLE_RATE

MFCC_FRAME_RATE = 100
NUM_CEPS = 13
MFCC_DIM = 3 * NUM_CEPS
MIN_SAMPLES = 400  # one 25 ms window

# Recorded in the labels' meta.json so a reader knows exactly what was computed.
MFCC_DESCRIPTION = {
    "type": "mfcc",
    "dim": MFCC_DIM,
    "frame_rate": MFCC_FRAME_RATE,
    "recipe": "torchaudio.compliance.kaldi.mfcc(sample_frequency=16000, use_energy=False) + deltas + delta-deltas",
}


def mfcc_features(waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
    """39-dim MFCC + delta + delta-delta features, shape ``(frames, 39)`` float32, of a mono 16 kHz waveform.

    ``waveform`` is 1-D with values in [-1, 1]. Fewer than 400 samples give ``(0, 39)``.
    """
    x = torch.as_tensor(waveform, dtype=torch.float32)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D mono waveform, got shape {tuple(x.shape)}")
    if x.numel() < MIN_SAMPLES:
        return torch.zeros(0, MFCC_DIM)
    with torch.no_grad():
        mfcc = torchaudio.compliance.kaldi.mfcc(
            x.unsqueeze(0), sample_frequency=SAMPLE_RATE, use_energy=False
        )
        ceps = mfcc.transpose(0, 1)  # compute_deltas works along the last axis: (ceps, time)
        deltas = torchaudio.functional.compute_deltas(ceps)
        ddeltas = torchaudio.functional.compute_deltas(deltas)
        return torch.cat([ceps, deltas, ddeltas], dim=0).transpose(0, 1).contiguous()
