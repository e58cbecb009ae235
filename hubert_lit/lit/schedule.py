"""Learning-rate schedule of HuBERT pretraining: linear warm-up, then linear decay to zero.

fairseq's ``polynomial_decay`` with ``power=1, end_learning_rate=0`` and torchaudio's ``LinearDecayLRScheduler``
both follow this shape. The total number of steps is passed in explicitly (from the module's own ``max_steps`` or
``trainer.max_steps``) rather than read from ``trainer.estimated_stepping_batches``, which silently stops
stateful data-loader states from being restored on resume (Lightning issue #20550).
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_linear_decay_factor(step: int, warmup_steps: int, max_steps: int) -> float:
    """LR multiplier for optimizer step ``step`` (0-based).

    Rises linearly from ``1 / warmup_steps`` (first step) to 1 at step ``warmup_steps - 1``, then falls linearly
    to 0 at step ``max_steps``; steps past ``max_steps`` stay at 0.
    """
    if max_steps <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    if not 0 <= warmup_steps < max_steps:
        raise ValueError(f"warmup_steps must be in [0, max_steps={max_steps}), got {warmup_steps}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (max_steps - step) / (max_steps - warmup_steps))


def warmup_linear_decay(optimizer: Optimizer, warmup_steps: int, max_steps: int) -> LambdaLR:
    """A ``LambdaLR`` applying :func:`warmup_linear_decay_factor`; step it once per optimizer step."""
    warmup_linear_decay_factor(
        0, warmup_steps, max_steps
    )  # validate the arguments now, not at the first step
    return LambdaLR(optimizer, lambda step: warmup_linear_decay_factor(step, warmup_steps, max_steps))
