"""Facts every part of the suite agrees on: audio rate, model frame geometry and the SUPERB task list."""

from __future__ import annotations

SAMPLE_RATE = 16000
"""Audio sample rate (Hz) of every waveform the suite reads or writes."""

# Conv front end of HuBERT / wav2vec 2.0 (and our FastConv reading): receptive field 400 samples (25 ms), stride
# 320 samples (20 ms), so ``floor((n - 400) / 320) + 1`` frames at 50 Hz for ``n`` samples.
FRAME_WINDOW = 400
FRAME_HOP = 320
FRAME_RATE = SAMPLE_RATE // FRAME_HOP

LABEL_PAD = -100
"""Label value of frames without a label (padding); ``ignore_index`` of the cross-entropy."""

SUPERB_TASKS = ("asr", "ks", "sf", "sid", "pr", "qbe", "ic", "asv", "sd", "prosody")
"""The ten Mini-SUPERB tasks in the column order of the paper's Table 2. ``prosody`` fills SUPERB's emotion
recognition (ER) slot: the mini task set classifies synthesizer prosody presets, which is not emotion."""
