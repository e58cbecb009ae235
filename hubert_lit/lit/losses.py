"""The training objectives, each written once, and the named sums they are reduced with.

* HuBERT masked prediction (:func:`prediction_terms` + :func:`hubert_objective`)::

      L = pred_masked_weight   * CE(masked frames)
        + pred_nomask_weight   * CE(unmasked frames)
        + feature_pen_weight   * mean square of the conv features

  ``CE(...)`` is a cross-entropy *sum* over the frames divided by a normaliser, so one formula serves a batch
  (normaliser: the batch's frame count), DDP training (the frame count over all ranks divided by the world size,
  so that DDP's gradient mean gives fairseq's ``sum / global count``) and validation (sums over every batch and
  rank, divided by the total count).
* BiT distillation (:func:`soft_cross_entropy`, :func:`hidden_state_mse`, :func:`distillation_objective`).

Reductions are named: a ``{name: float64 tensor}`` dict, stacked in sorted key order into one all-reduce
(:func:`reduce_sums`, :class:`RunningSums`), so no metric is read back by position.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hubert_lit.constants import LABEL_PAD
from hubert_lit.models import HubertConfig, HubertOutput

AllReduce = Callable[[Tensor], Tensor]


# ----------------------------------------------------------------------------------------------- reductions
def reduce_sums(sums: Mapping[str, Tensor], all_reduce: AllReduce | None = None) -> dict[str, Tensor]:
    """``sums`` as float64, summed over ranks with one ``all_reduce`` call (None: this process only)."""
    keys = sorted(sums)
    stacked = torch.stack([sums[k].detach().to(torch.float64) for k in keys])
    if all_reduce is not None:
        stacked = all_reduce(stacked)
    return dict(zip(keys, stacked.unbind()))


class RunningSums:
    """Named float64 sums accumulated over batches (validation), reduced over ranks once at the end.

    Every rank reduces the same keys, also a rank that saw no batch (its sums are zero), so the collective
    always matches.
    """

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(sorted(keys))
        self._sums: dict[str, Tensor] | None = None

    def add(self, sums: Mapping[str, Tensor]) -> None:
        if set(sums) != set(self.keys):
            raise KeyError(f"expected the sums {list(self.keys)}, got {sorted(sums)}")
        values = {k: v.detach().to(torch.float64) for k, v in sums.items()}
        self._sums = values if self._sums is None else {k: self._sums[k] + values[k] for k in self.keys}

    def reduce(self, all_reduce: AllReduce | None, device: torch.device) -> dict[str, Tensor]:
        """The sums over every batch (and rank); resets the accumulator."""
        sums = self._sums or {k: torch.zeros((), dtype=torch.float64, device=device) for k in self.keys}
        self._sums = None
        return reduce_sums(sums, all_reduce)


def ratio(numerator: Tensor, count: Tensor) -> Tensor:
    """``numerator / count``, 0 where nothing was counted."""
    return numerator / count.clamp(min=1)


# ----------------------------------------------------------------------------------------------- HuBERT
@dataclass
class PredictionTerms:
    """The sums of one masked-prediction batch; ``*_ce`` are cross-entropy sums, ``*_frames`` their counts."""

    masked_ce: Tensor
    masked_frames: Tensor
    masked_correct: Tensor
    unmasked_ce: Tensor
    unmasked_frames: Tensor
    unmasked_correct: Tensor
    feature_penalty: Tensor  # mean over the batch's valid frames

    @classmethod
    def zeros(cls, device: torch.device | str) -> PredictionTerms:
        """The terms of a batch without rows (every planned utterance was unreadable): all zero."""
        zero = torch.zeros((), device=device)
        return cls(zero, zero.long(), zero.long(), zero, zero.long(), zero.long(), zero)

    def sums(self) -> dict[str, Tensor]:
        """The terms as named sums (``batches`` counts the feature-penalty means)."""
        out = {k: v for k, v in vars(self).items() if k != "feature_penalty"}
        return {
            **out,
            "feature_penalty": self.feature_penalty,
            "batches": torch.ones_like(self.feature_penalty),
        }

    @property
    def masked_accuracy(self) -> Tensor:
        return ratio(self.masked_correct.float(), self.masked_frames)

    @property
    def unmasked_accuracy(self) -> Tensor:
        return ratio(self.unmasked_correct.float(), self.unmasked_frames)


PREDICTION_SUMS = tuple(sorted((*PredictionTerms.__dataclass_fields__, "batches")))


def prediction_terms(out: HubertOutput) -> PredictionTerms:
    """Cross-entropy sums, frame counts and correct predictions of a labelled forward pass.

    Computed over every frame at fixed shapes (one cross-entropy per frame, summed where the frame is masked /
    unmasked and labelled), so nothing here depends on how many frames are masked: no host sync, one graph.
    """
    if out.targets is None:
        raise ValueError("the forward pass had no labels: pass labels to the model to get a loss")
    logits, targets = out.logits.flatten(0, -2), out.targets.flatten()
    ce = F.cross_entropy(logits, targets, ignore_index=LABEL_PAD, reduction="none")
    correct = logits.argmax(-1) == targets
    labelled = targets != LABEL_PAD
    masked = out.mask.flatten() & labelled
    unmasked = ~out.mask.flatten() & labelled

    def part(rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # torch.where, not a product: a non-finite CE on a row of the other part must not leak in
        return torch.where(rows, ce, 0.0).sum(), rows.sum(), (correct & rows).sum()

    ce_m, n_m, correct_m = part(masked)
    ce_u, n_u, correct_u = part(unmasked)
    return PredictionTerms(ce_m, n_m, correct_m, ce_u, n_u, correct_u, out.feature_penalty)


def hubert_objective(
    config: HubertConfig,
    masked_ce: Tensor,
    unmasked_ce: Tensor,
    feature_penalty: Tensor,
    masked_norm: Tensor,
    unmasked_norm: Tensor,
) -> Tensor:
    """HuBERT's loss from cross-entropy sums and their (positive) normalisers; see the module docstring.

    A term whose weight is 0 is left out (its logits may carry no graph, and a non-finite value there must not
    poison the loss).
    """
    loss = config.feature_pen_weight * feature_penalty
    if config.pred_masked_weight:
        loss = loss + config.pred_masked_weight * (masked_ce / masked_norm)
    if config.pred_nomask_weight:
        loss = loss + config.pred_nomask_weight * (unmasked_ce / unmasked_norm)
    return loss


def batch_objective(config: HubertConfig, terms: PredictionTerms) -> Tensor:
    """The loss of one batch on its own (normalised by its own frame counts)."""
    return hubert_objective(
        config,
        terms.masked_ce,
        terms.unmasked_ce,
        terms.feature_penalty,
        terms.masked_frames.clamp(min=1),
        terms.unmasked_frames.clamp(min=1),
    )


def hubert_metrics(config: HubertConfig, sums: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Loss, cross-entropies and accuracies over reduced :meth:`PredictionTerms.sums`."""
    return {
        f"{prefix}/loss": hubert_objective(
            config,
            sums["masked_ce"],
            sums["unmasked_ce"],
            ratio(sums["feature_penalty"], sums["batches"]),
            sums["masked_frames"].clamp(min=1),
            sums["unmasked_frames"].clamp(min=1),
        ),
        f"{prefix}/masked_ce": ratio(sums["masked_ce"], sums["masked_frames"]),
        f"{prefix}/unmasked_ce": ratio(sums["unmasked_ce"], sums["unmasked_frames"]),
        f"{prefix}/masked_acc": ratio(sums["masked_correct"], sums["masked_frames"]),
        f"{prefix}/unmasked_acc": ratio(sums["unmasked_correct"], sums["unmasked_frames"]),
    }


# ----------------------------------------------------------------------------------------------- distillation
def soft_cross_entropy(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, rows: Tensor | None = None
) -> Tensor:
    """Mean over rows of the soft cross-entropy ``-sum_c p_c log q_c`` minus the teacher's entropy
    ``-sum_c p_c log p_c``, i.e. KL(p || q) with ``p = softmax(t / T)``, ``q = softmax(s / T)``.

    The gradient is exactly the soft cross-entropy's (the entropy does not depend on the student); subtracting
    it makes 0 the value of a perfect match, so the logged loss shows how much is left to learn. ``rows`` (bool,
    the logits' leading shape) selects the rows averaged over at fixed shapes (e.g. the masked frames of
    ``(B, T, k)`` logits); all rows when None. 0 for no rows.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ"
        )
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    per_row = (log_p.exp() * (log_p - log_q)).sum(-1)
    if rows is None:
        return per_row.mean() if per_row.numel() else per_row.sum()
    return torch.where(rows, per_row, 0.0).sum() / rows.sum().clamp(min=1)


def hidden_state_mse(student: Sequence[Tensor], teacher: Sequence[Tensor], valid: Tensor) -> Tensor:
    """Sum over layers of the MSE between matching hidden states ``(B, T, D)`` on the ``valid`` (B, T) frames."""
    if len(student) != len(teacher):
        raise ValueError(f"student has {len(student)} hidden states, the teacher {len(teacher)}")
    weight = valid[..., None].to(torch.float32)
    count = (weight.sum() * student[0].shape[-1]).clamp(min=1.0)
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student, teacher):
        if s.shape != t.shape or s.shape[:2] != valid.shape:
            raise ValueError(
                f"hidden state shapes differ: student {tuple(s.shape)}, teacher {tuple(t.shape)}, "
                f"frames {tuple(valid.shape)}"
            )
        total = total + ((s.float() - t.float()).square() * weight).sum() / count
    return total


def distillation_objective(
    hidden: Tensor,
    logit: Tensor,
    hidden_weight: float,
    logit_weight: float,
    hard_label_ce: Tensor | None = None,
    hard_label_weight: float = 0.0,
) -> Tensor:
    """BiT's joint loss: ``hidden_weight * hidden MSE + logit_weight * logit KD (+ hard_label_weight * CE)``."""
    loss = hidden_weight * hidden + logit_weight * logit
    if hard_label_weight > 0:
        if hard_label_ce is None:
            raise ValueError("hard_label_weight > 0 needs labels in the batch (configure data labels)")
        loss = loss + hard_label_weight * hard_label_ce
    return loss
