"""BiTDistillModule: distil a quantized (BiT) HuBERT student from a frozen teacher (Liu et al. 2022).

The student is a copy of the teacher (loaded with :func:`hubert_lit.load_model` from ``teacher``), quantized with
:func:`hubert_lit.quant.binarize` (or re-quantized when the teacher is itself quantized, e.g. W1A2 -> W1A1 in
BiT's multi-distillation chain FP -> W1A2 -> W1A1). Teacher and student see the same batch and the same span
mask. Loss (BiT's ``kd_learner``, joint, one stage)::

    L = hidden_weight * sum_l MSE(h_s^l, h_t^l)              over every hidden state (encoder input + each block),
                                                                 valid frames only
      + logit_weight  * mean_frames KL(softmax(z_t / T) || softmax(z_s / T))   on the masked frames' logits
      + hard_label_weight * CE(z_s, pseudo-labels)              optional; needs labels in the batch

The KL term is BiT's soft cross-entropy minus the teacher's entropy (same gradient, 0 at a perfect match). BiT
averages it over the classes too (a 1/k factor); here it is summed over the classes (the usual KD form). BiT's
teacher runs with dropout on; ours is in eval mode (deterministic targets).

Optimisation: AdamW with linear warm-up and decay (the pretraining module's schedule); the activation scales and
shifts form their own group (``quant_lr``, no weight decay, BiT's ``clip_lr``), biases and norms get no weight
decay. Non-finite-gradient handling, throughput logging and ``predict`` come from
:class:`~hubert_lit.lit.pretrain.HubertPretrainModule`, of which this is a subclass (so the CLI's
``model.class_path`` selects it). ``quant/pos_frac/<layer>`` logs, per encoder block, the fraction of +a among
the signed quantized activations and ``quant/on_frac/<layer>`` the fraction of a among the unsigned ones
(attention probabilities, post-ReLU inputs); values stuck near 0 or 1 mean a collapsed binarizer.

Checkpoints carry ``hubert_config`` and ``quant_spec`` and the student under ``model.*``, so
``hubert_lit.load_model`` rebuilds the quantized student; the teacher's weights are not stored (they are reloaded
from ``teacher``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hubert_lit.lit.pretrain import SAMPLE_RATE, HubertPretrainModule
from hubert_lit.lit.schedule import warmup_linear_decay
from hubert_lit.models.frontend import lengths_to_padding_mask
from hubert_lit.models.hubert import HubertModel
from hubert_lit.quant.binarize import activation_quantizers, binarize, requantize
from hubert_lit.quant.modules import ActivationQuantizer
from hubert_lit.quant.spec import DEFAULT_FULL_PRECISION, QuantSpec

log = logging.getLogger(__name__)

QUANT_SPEC_KEY = "quant_spec"
TEACHER_PREFIX = "teacher."
_LAYER_RE = re.compile(r"layers\.(\d+)\.")


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Mean over rows of the soft cross-entropy ``-sum_c p_c log q_c`` minus the teacher's entropy
    ``-sum_c p_c log p_c``, i.e. KL(p || q) with ``p = softmax(t / T)``, ``q = softmax(s / T)``.

    The gradient is exactly the soft cross-entropy's (the entropy does not depend on the student); subtracting
    it makes 0 the value of a perfect match, so the logged loss shows how much is left to learn. 0 for no rows.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ"
        )
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


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


def layer_of(name: str) -> str:
    """The encoder block a module belongs to (``layer_3``), or ``other`` (e.g. Squeezeformer's time reduction)."""
    match = _LAYER_RE.search(name)
    return f"layer_{int(match.group(1)):02d}" if match else "other"


class BiTDistillModule(HubertPretrainModule):
    """Distil a BiT-quantized student from a frozen teacher (see the module docstring).

    Args:
        teacher: teacher checkpoint: a pretraining ``.ckpt``, a ``save_model`` file, or an earlier distillation
            checkpoint (a quantized teacher, loaded with its spec).
        weight_bits: student weight bits (1 = BiT).
        activation_bits: student activation bits (1 = W1A1, 2 = W1A2, ...; 32 = full-precision activations).
        full_precision: module-name patterns kept in full precision (default: front end, feature projection,
            positional conv, final projection).
        quantize_attention: quantize queries/keys/values/probabilities (both attention matmuls binary).
        ffn_relu: GELU/Swish -> ReLU in the feed-forward and an unsigned input set for its second Linear (BiT).
        binarize_depthwise: quantize depthwise convolutions too.
        num_classes: label clusters; optional, must match the teacher's (the CLI fills it in from the labels).
        temperature: soft cross-entropy temperature T.
        hidden_weight: weight of the summed hidden-state MSE.
        logit_weight: weight of the soft cross-entropy on the masked frames' logits.
        hard_label_weight: weight of the cross-entropy with the pseudo-labels (0 = BiT: distillation only).
        lr: peak learning rate of the weights.
        quant_lr: peak learning rate of the activation scales and shifts (BiT's ``clip_lr``).
        betas: AdamW betas.
        eps: AdamW epsilon.
        weight_decay: AdamW weight decay of matrices/kernels (biases, norms, scales and shifts get none).
        warmup_steps: linear warm-up steps.
        max_steps: step at which the LR reaches 0; ``None`` takes ``trainer.max_steps``.
        max_nonfinite_steps: abort after this many consecutive steps with non-finite gradients.

    ``predict`` returns the student layer chosen with the CLI's ``--predict_layer`` (as for pretraining).
    """

    def __init__(
        self,
        teacher: str,
        weight_bits: int = 1,
        activation_bits: int = 1,
        full_precision: list[str] | None = None,
        quantize_attention: bool = True,
        ffn_relu: bool = True,
        binarize_depthwise: bool = True,
        num_classes: int | None = None,
        temperature: float = 1.0,
        hidden_weight: float = 1.0,
        logit_weight: float = 1.0,
        hard_label_weight: float = 0.0,
        lr: float = 2e-4,
        quant_lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        warmup_steps: int = 1000,
        max_steps: int | None = None,
        max_nonfinite_steps: int = 20,
    ) -> None:
        from hubert_lit import load_model

        if temperature <= 0:
            raise ValueError(f"model.temperature must be > 0, got {temperature}")
        for name, value in (
            ("hidden_weight", hidden_weight),
            ("logit_weight", logit_weight),
            ("hard_label_weight", hard_label_weight),
            ("quant_lr", quant_lr),
        ):
            if value < 0:
                raise ValueError(f"model.{name} must be >= 0, got {value}")
        spec = QuantSpec(
            weight_bits=weight_bits,
            activation_bits=activation_bits,
            full_precision=tuple(DEFAULT_FULL_PRECISION if full_precision is None else full_precision),
            quantize_attention=quantize_attention,
            ffn_relu=ffn_relu,
            binarize_depthwise=binarize_depthwise,
        )
        teacher_model = load_model(teacher)
        if not isinstance(teacher_model, HubertModel) or teacher_model.final_proj is None:
            raise ValueError(f"model.teacher: {teacher} does not hold a HuBERT model with a prediction head")
        config = teacher_model.config
        if num_classes is not None and num_classes != config.num_classes:
            raise ValueError(
                f"model.num_classes={num_classes} but the teacher {teacher} predicts "
                f"{config.num_classes} classes"
            )
        # The student is the teacher's config without LayerDrop: every block runs, so every hidden-state target is
        # matched, and all ranks reach the same quantizers (their first-batch initialisation all-reduces).
        super().__init__(
            num_classes=config.num_classes,
            model_config=config.to_dict(),
            overrides={"encoder": {"layerdrop": 0.0}},
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            max_steps=max_steps,
            max_nonfinite_steps=max_nonfinite_steps,
        )
        teacher_spec: QuantSpec | None = getattr(teacher_model, "quant_spec", None)
        if teacher_spec is not None:
            binarize(self.model, teacher_spec)
        self.model.load_state_dict(teacher_model.state_dict())
        if teacher_spec is not None:
            requantize(self.model, spec)
        else:
            binarize(self.model, spec)
        self.spec = spec
        self.teacher = teacher_model.eval().requires_grad_(False)
        self._pos_counts: dict[str, list[Tensor]] = {}
        self._val_sums: Tensor | None = None
        for name, quant in activation_quantizers(self.model):
            kind = "pos_frac" if quant.signed else "on_frac"
            quant.register_forward_hook(self._count_upper_level(f"{kind}/{layer_of(name)}"))
        log.info(
            "student %s from teacher %s (%s)",
            spec.name,
            teacher,
            "full precision" if teacher_spec is None else teacher_spec.name,
        )

    # ------------------------------------------------------------------------------------------ helpers
    def train(self, mode: bool = True) -> BiTDistillModule:
        """Switch the student's mode; the teacher always stays in eval mode (deterministic targets)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def _count_upper_level(self, key: str):
        """A forward hook adding (#outputs at the upper level, #outputs) of a quantizer to ``_pos_counts[key]``."""

        def hook(module: ActivationQuantizer, inputs: Any, output: Tensor) -> None:
            if self.training and torch.is_grad_enabled():
                counts = torch.stack(
                    [
                        (output.detach() > 0).sum().float(),
                        torch.tensor(float(output.numel()), device=output.device),
                    ]
                )
                self._pos_counts.setdefault(key, []).append(counts)

        return hook

    def _forward_pair(self, batch: dict[str, Any]):
        waves, lengths = batch["waveforms"], batch["lengths"].to(batch["waveforms"].device)
        labels = batch.get("labels")
        frame_lengths = self.model.frame_lengths(lengths)
        num_frames = self.model.num_frames(waves.shape[1])
        mask = self.model.compute_mask(frame_lengths, num_frames)
        with torch.no_grad():
            t_out = self.teacher(waves, lengths, labels=labels, mask=mask)
        s_out = self.model(waves, lengths, labels=labels, mask=mask)
        valid = ~lengths_to_padding_mask(s_out.frame_lengths, num_frames)
        hidden = hidden_state_mse(s_out.hidden_states, t_out.hidden_states, valid)
        logit = soft_cross_entropy(s_out.logits_masked, t_out.logits_masked, self.hparams.temperature)
        hp = self.hparams
        loss = hp.hidden_weight * hidden + hp.logit_weight * logit
        if hp.hard_label_weight > 0:
            if labels is None:
                raise ValueError(
                    "model.hard_label_weight > 0 needs labels in the batch (configure data labels)"
                )
            loss = loss + hp.hard_label_weight * s_out.masked_ce
        return loss, hidden, logit, s_out, t_out

    # ------------------------------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        self._pos_counts = {}
        loss, hidden, logit, s_out, t_out = self._forward_pair(batch)
        batch_size = batch["waveforms"].shape[0]
        metrics = {
            "train/loss": loss.detach(),
            "train/hidden_mse": hidden.detach(),
            "train/logit_kd": logit.detach(),
            "train/lr": self.optimizers().param_groups[0]["lr"],
        }
        if s_out.masked_accuracy is not None:
            metrics["train/student_masked_acc"] = s_out.masked_accuracy
            metrics["train/teacher_masked_acc"] = t_out.masked_accuracy
            metrics["train/masked_ce"] = s_out.masked_ce.detach()
        for key, counts in sorted(self._pos_counts.items()):
            total = torch.stack(counts).sum(0)
            metrics[f"quant/{key}"] = total[0] / total[1].clamp(min=1.0)
        self._pos_counts = {}
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=batch_size)
        self._step_audio_seconds = float(batch["lengths"].sum()) / SAMPLE_RATE * self.trainer.world_size
        return loss

    # ------------------------------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, hidden, logit, s_out, t_out = self._forward_pair(batch)
        has_labels = s_out.masked_correct is not None
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        sums = torch.stack(
            [
                loss.detach().double(),
                hidden.detach().double(),
                logit.detach().double(),
                torch.ones((), dtype=torch.float64, device=self.device),
                s_out.masked_correct.double() if has_labels else zero,
                t_out.masked_correct.double() if has_labels else zero,
                s_out.masked_count.double() if has_labels else zero,
            ]
        )
        self._val_sums = sums if self._val_sums is None else self._val_sums + sums

    def on_validation_epoch_end(self) -> None:
        sums = self._val_sums
        self._val_sums = None
        if sums is None:
            sums = torch.zeros(7, dtype=torch.float64, device=self.device)
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        batches = sums[3].clamp(min=1)
        metrics = {
            "val/loss": sums[0] / batches,
            "val/hidden_mse": sums[1] / batches,
            "val/logit_kd": sums[2] / batches,
        }
        if sums[6] > 0:
            metrics["val/student_masked_acc"] = sums[4] / sums[6]
            metrics["val/teacher_masked_acc"] = sums[5] / sums[6]
        self.log_dict({k: v.float() for k, v in metrics.items()}, sync_dist=False)

    # ------------------------------------------------------------------------------------------ optimisation
    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: decayed weights, undecayed biases/norms, and the activation scales/shifts (``quant_lr``)."""
        hp = self.hparams
        quant_ids = {id(p) for _, q in activation_quantizers(self.model) for p in q.parameters()}
        decay, no_decay, quant = [], [], []
        for p in self.model.parameters():
            if not p.requires_grad:
                continue
            if id(p) in quant_ids:
                quant.append(p)
            elif p.ndim >= 2:
                decay.append(p)
            else:
                no_decay.append(p)
        groups = [
            {"params": decay, "weight_decay": hp.weight_decay, "lr": hp.lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": hp.lr},
            {"params": quant, "weight_decay": 0.0, "lr": hp.quant_lr},
        ]
        return [g for g in groups if g["params"]]

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameter_groups(), lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)
        scheduler = warmup_linear_decay(optimizer, hp.warmup_steps, self.total_steps())
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # ------------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[QUANT_SPEC_KEY] = self.spec.to_dict()
        # The frozen teacher is reloaded from model.teacher; storing it would double every checkpoint.
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        for key, value in self.teacher.state_dict().items():
            state.setdefault(TEACHER_PREFIX + key, value)
