"""BiTDistillModule: distil a quantized (BiT) HuBERT student from a frozen teacher (Liu et al. 2022).

The student is a copy of the teacher (loaded with :func:`hubert_lit.load_model` from ``teacher``), quantized with
:func:`hubert_lit.quant.binarize` (or re-quantized when the teacher is itself quantized, e.g. W1A2 -> W1A1 in
BiT's multi-distillation chain FP -> W1A2 -> W1A1). Teacher and student see the same batch. Loss (BiT's
``kd_learner``, joint, one stage)::

    L = hidden_weight * sum_l MSE(h_s^l, h_t^l)              over every hidden state (encoder input + each block),
                                                                 valid frames, of the unmasked input
      + logit_weight  * mean_frames KL(softmax(z_t / T) || softmax(z_s / T))   on the masked frames' logits of a
                                                                 span-masked pass with the same mask for both
      + hard_label_weight * CE(z_s, pseudo-labels)              optional; needs labels in the batch

The hidden states are matched on the unmasked input by default (``hidden_pass="unmasked"``): that is what
downstream feature extraction feeds the model, and the activation scales, set by the first training batch, are
calibrated on it. It costs a second forward pass of both models; ``hidden_pass="masked"`` (0.1.0) matches the
hidden states of the masked pass instead.

The KL term is BiT's soft cross-entropy minus the teacher's entropy (same gradient, 0 at a perfect match). BiT
averages it over the classes too (a 1/k factor); here it is summed over the classes (the usual KD form). BiT's
teacher runs with dropout on; ours is in eval mode (deterministic targets).

Optimisation: AdamW with linear warm-up and decay (the pretraining module's schedule); the activation scales and
shifts form their own group (``quant_lr``, no weight decay, BiT's ``clip_lr``), biases and norms get no weight
decay. Non-finite-gradient handling, throughput logging and ``predict`` come from
:class:`~hubert_lit.lit.base.HubertLightningModule` (the CLI's ``model.class_path`` selects this module); the
losses are :mod:`hubert_lit.lit.losses`'. ``quant/pos_frac/<layer>`` logs, per encoder block, the fraction of +a
among the signed quantized activations and ``quant/on_frac/<layer>`` the fraction of a among the unsigned ones
(attention probabilities, post-ReLU inputs); values stuck near 0 or 1 mean a collapsed binarizer.

Checkpoints carry ``hubert_config`` and ``quant_spec`` and the student under ``model.*``, so
``hubert_lit.load_model`` rebuilds the quantized student; the teacher's weights are not stored (they are reloaded
from ``teacher``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hubert_lit.checkpoint import QUANT_SPEC_KEY, TEACHER_PREFIX, load_model
from hubert_lit.lit.base import CompileMode, HubertLightningModule, host_scalar
from hubert_lit.lit.losses import (
    PredictionTerms,
    RunningSums,
    distillation_objective,
    hidden_state_mse,
    prediction_terms,
    ratio,
    reduce_sums,
    soft_cross_entropy,
)
from hubert_lit.models import HubertModel, HubertOutput
from hubert_lit.models.frontend import lengths_to_padding_mask
from hubert_lit.quant.binarize import activation_quantizers, binarize, requantize
from hubert_lit.quant.modules import ActivationQuantizer
from hubert_lit.quant.spec import DEFAULT_FULL_PRECISION, QuantSpec

log = logging.getLogger(__name__)

_LAYER_RE = re.compile(r"layers\.(\d+)\.")
HIDDEN_PASSES = ("unmasked", "masked")
# What a run whose checkpoint lacks one of these arguments (written by hubert-lit 0.1.0) was trained with.
LEGACY_HPARAMS = {"hidden_pass": "masked"}
_VAL_SUMS = (
    "loss",
    "hidden_mse",
    "logit_kd",
    "batches",
    "student_correct",
    "teacher_correct",
    "masked_frames",
)


@dataclass
class DistillStep:
    """One teacher/student pass: the loss and its terms, both outputs, and (with labels) their prediction terms."""

    loss: Tensor
    hidden_mse: Tensor
    logit_kd: Tensor
    student: HubertOutput
    teacher: HubertOutput
    student_terms: PredictionTerms | None
    teacher_terms: PredictionTerms | None


def layer_of(name: str) -> str:
    """The encoder block a module belongs to (``layer_3``), or ``other`` (e.g. Squeezeformer's time reduction)."""
    match = _LAYER_RE.search(name)
    return f"layer_{int(match.group(1)):02d}" if match else "other"


class BiTDistillModule(HubertLightningModule):
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
        pointwise_conv_scale: ``"tensor"`` (pointwise convs quantized exactly as Linears) or ``"channel"``.
        binarize_relative_positions: quantize Conformer/Squeezeformer's relative-position projection (default:
            positional modules stay full precision in every family).
        dropout_before_prob_binarizer: attention dropout before the probability binarizer (BiT's order).
        unsigned_min_offset: BiT's minimum offset at multi-bit unsigned sites.
        hidden_pass: where the hidden-state loss (and so the first-batch calibration of the activation scales) is
            computed: ``"unmasked"`` (default; the input downstream feature extraction sees, at the cost of a
            second forward pass of teacher and student) or ``"masked"`` (the span-masked pass the logit loss uses;
            hubert-lit 0.1.0).
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
        compile: run the training step's teacher and student passes and losses through ``torch.compile`` once
            every activation scale is initialised (the first training step, which initialises them, runs eagerly).
        compile_mode: ``torch.compile`` mode (see :class:`~hubert_lit.lit.pretrain.HubertPretrainModule`).

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
        pointwise_conv_scale: str = "tensor",
        binarize_relative_positions: bool = False,
        dropout_before_prob_binarizer: bool = True,
        unsigned_min_offset: bool = True,
        hidden_pass: str = "unmasked",
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
        compile: bool = False,
        compile_mode: CompileMode = "default",
    ) -> None:
        super().__init__(compile, compile_mode)
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
        if max_nonfinite_steps < 1:
            raise ValueError(f"model.max_nonfinite_steps must be >= 1, got {max_nonfinite_steps}")
        if hidden_pass not in HIDDEN_PASSES:
            raise ValueError(f"model.hidden_pass must be one of {HIDDEN_PASSES}, got {hidden_pass!r}")
        spec = QuantSpec(
            weight_bits=weight_bits,
            activation_bits=activation_bits,
            full_precision=tuple(DEFAULT_FULL_PRECISION if full_precision is None else full_precision),
            quantize_attention=quantize_attention,
            ffn_relu=ffn_relu,
            binarize_depthwise=binarize_depthwise,
            pointwise_conv_scale=pointwise_conv_scale,
            binarize_relative_positions=binarize_relative_positions,
            dropout_before_prob_binarizer=dropout_before_prob_binarizer,
            unsigned_min_offset=unsigned_min_offset,
        )
        self.save_hyperparameters()
        teacher_model = load_model(teacher)
        if teacher_model.final_proj is None:
            raise ValueError(f"model.teacher: {teacher} does not hold a HuBERT model with a prediction head")
        config = teacher_model.config
        if num_classes is not None and num_classes != config.num_classes:
            raise ValueError(
                f"model.num_classes={num_classes} but the teacher {teacher} predicts "
                f"{config.num_classes} classes"
            )
        # The student is the teacher's config without LayerDrop: every block runs, so every hidden-state target is
        # matched, and all ranks reach the same quantizers (their first-batch initialisation all-reduces).
        self.model = HubertModel(config.replace(encoder={"layerdrop": 0.0}))
        teacher_spec = teacher_model.quant_spec
        if teacher_spec is not None:
            binarize(self.model, teacher_spec)
        self.model.load_state_dict(teacher_model.state_dict())
        if teacher_spec is not None:
            requantize(self.model, spec)
        else:
            binarize(self.model, spec)
        self.teacher = teacher_model.eval().requires_grad_(False)
        self._pos_counts: dict[str, list[Tensor]] = {}
        self._val_sums = RunningSums(_VAL_SUMS)
        self._watch_quantizers()
        log.info(
            "student %s from teacher %s (%s)",
            spec.name,
            teacher,
            "full precision" if teacher_spec is None else teacher_spec.name,
        )

    @classmethod
    def requires_labels(cls, init_args: Any) -> bool:
        return float(init_args.get("hard_label_weight") or 0.0) > 0

    # ------------------------------------------------------------------------------------------ helpers
    def train(self, mode: bool = True) -> BiTDistillModule:
        """Switch the student's mode; the teacher always stays in eval mode (deterministic targets)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def _watch_quantizers(self) -> None:
        """Count, per block, how often each activation quantizer outputs its upper level (``quant/*`` metrics)."""
        for name, quant in activation_quantizers(self.model):
            kind = "pos_frac" if quant.signed else "on_frac"
            quant.register_forward_hook(self._count_upper_level(f"{kind}/{layer_of(name)}"))

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

    def _forward_pair(self, batch: dict[str, Any]) -> DistillStep:
        """Teacher and student on the same batch and span mask (compiled in training with ``model.compile``, once
        the activation scales are initialised: their first-batch initialisation reads values back)."""
        pair = self._pair
        if self.training and all(q.is_initialized() for _, q in activation_quantizers(self.model)):
            pair = self.compiled("train", self._pair)
        return pair(batch["waveforms"], self.model_lengths(batch), batch.get("labels"))

    def _pair(self, waves: Tensor, lengths: Tensor | None, labels: Tensor | None) -> DistillStep:
        """The hidden-state loss on the unmasked (or masked) pass, the logit loss on the masked frames of a
        span-masked pass both models share."""
        hp = self.hparams
        num_frames = self.model.num_frames(waves.shape[1])
        if lengths is None:
            frame_lengths = torch.full((waves.shape[0],), num_frames, dtype=torch.long, device=waves.device)
        else:
            frame_lengths = self.model.frame_lengths(lengths.to(waves.device))
        hidden = None
        if hp.hidden_pass == "unmasked":  # first, so the activation scales calibrate on unmasked input
            valid = ~lengths_to_padding_mask(frame_lengths, num_frames)
            with torch.no_grad():
                t_states, _ = self.teacher.extract_features(waves, lengths, validate=False)
            s_states, _ = self.model.extract_features(waves, lengths, validate=False)
            hidden = hidden_state_mse(s_states, t_states, valid)
        mask = self.model.compute_mask(frame_lengths, num_frames)
        with torch.no_grad():
            t_out = self.teacher(waves, lengths, labels=labels, mask=mask, validate=False)
        s_out = self.model(waves, lengths, labels=labels, mask=mask, validate=False)
        if hidden is None:
            hidden = hidden_state_mse(s_out.hidden_states, t_out.hidden_states, s_out.valid)
        logit = soft_cross_entropy(
            s_out.logits, t_out.logits, hp.temperature, rows=s_out.mask & s_out.labelled
        )
        s_terms = t_terms = None
        if labels is not None:
            s_terms, t_terms = prediction_terms(s_out), prediction_terms(t_out)
        if hp.hard_label_weight > 0 and s_terms is None:
            raise ValueError("model.hard_label_weight > 0 needs labels in the batch (configure data labels)")
        hard_ce = None if s_terms is None else ratio(s_terms.masked_ce, s_terms.masked_frames)
        loss = distillation_objective(
            hidden, logit, hp.hidden_weight, hp.logit_weight, hard_ce, hp.hard_label_weight
        )
        return DistillStep(loss, hidden, logit, s_out, t_out, s_terms, t_terms)

    # ------------------------------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        totals = reduce_sums(
            {"samples": batch["lengths"].sum(), "skipped": self.skipped_in_batch(batch)}, self.all_reduce()
        )
        self.record_step_audio(totals["samples"])
        self.record_skipped(totals["skipped"])
        if self.is_empty(batch):  # every planned utterance was unreadable: nothing to distil this step
            return self.zero_loss()
        self._pos_counts = {}
        step = self._forward_pair(batch)
        s_terms, t_terms = step.student_terms, step.teacher_terms
        batch_size = batch["waveforms"].shape[0]
        metrics = {
            "train/loss": step.loss.detach(),
            "train/hidden_mse": step.hidden_mse.detach(),
            "train/logit_kd": step.logit_kd.detach(),
            "train/lr": host_scalar(self.optimizers().param_groups[0]["lr"]),
        }
        if s_terms is not None:
            metrics["train/student_masked_acc"] = s_terms.masked_accuracy
            metrics["train/teacher_masked_acc"] = t_terms.masked_accuracy
            metrics["train/masked_ce"] = ratio(s_terms.masked_ce, s_terms.masked_frames).detach()
        for key, counts in sorted(self._pos_counts.items()):
            total = torch.stack(counts).sum(0)
            metrics[f"quant/{key}"] = total[0] / total[1].clamp(min=1.0)
        self._pos_counts = {}
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=batch_size)
        return step.loss

    # ------------------------------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.is_empty(batch):
            return
        step = self._forward_pair(batch)
        s_terms, t_terms = step.student_terms, step.teacher_terms
        zero = torch.zeros((), device=self.device)
        self._val_sums.add(
            {
                "loss": step.loss,
                "hidden_mse": step.hidden_mse,
                "logit_kd": step.logit_kd,
                "batches": torch.ones((), device=self.device),
                "student_correct": zero if s_terms is None else s_terms.masked_correct,
                "teacher_correct": zero if t_terms is None else t_terms.masked_correct,
                "masked_frames": zero if s_terms is None else s_terms.masked_frames,
            }
        )

    def on_validation_epoch_end(self) -> None:
        sums = self._val_sums.reduce(self.all_reduce(), self.device)
        metrics = {
            "val/loss": ratio(sums["loss"], sums["batches"]),
            "val/hidden_mse": ratio(sums["hidden_mse"], sums["batches"]),
            "val/logit_kd": ratio(sums["logit_kd"], sums["batches"]),
        }
        if sums["masked_frames"] > 0:
            metrics["val/student_masked_acc"] = sums["student_correct"] / sums["masked_frames"]
            metrics["val/teacher_masked_acc"] = sums["teacher_correct"] / sums["masked_frames"]
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

    # ------------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # The frozen teacher is reloaded from model.teacher; storing it would double every checkpoint.
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning calls this before loading the state dict and before building the optimizer, so a run started
        # under other quantization settings (e.g. 0.1.0's defaults) can be given its own student back.
        super().on_load_checkpoint(checkpoint)
        stored = checkpoint.get(QUANT_SPEC_KEY)
        if stored is not None:
            spec = QuantSpec.from_dict(dict(stored))
            if spec != self.model.quant_spec:
                log.warning(
                    "the checkpoint's student was quantized with %s; resuming with it, not with %s",
                    spec,
                    self.model.quant_spec,
                )
                requantize(self.model, spec)
                self._watch_quantizers()
        saved = checkpoint.get("hyper_parameters", {})
        for key, legacy in LEGACY_HPARAMS.items():
            if key not in saved and self.hparams[key] != legacy:
                log.warning("the checkpoint's run predates model.%s: resuming with %r", key, legacy)
                self.hparams[key] = legacy
        state = checkpoint["state_dict"]
        for key, value in self.teacher.state_dict().items():
            state.setdefault(TEACHER_PREFIX + key, value)
