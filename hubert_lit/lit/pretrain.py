"""HubertPretrainModule: the LightningModule that pretrains a HuBERT model on k-means pseudo-labels.

Optimisation follows fairseq's HuBERT Base recipe: AdamW (betas 0.9/0.98, eps 1e-6, weight decay 0.01 on every
parameter), lr 5e-4 with linear warm-up and linear decay to 0 at ``max_steps``; gradient clipping and precision
are Trainer settings (``gradient_clip_val: 10``, ``precision: 32 | bf16-mixed | 16-mixed``).

Loss normalisation: each rank's masked cross-entropy *sum* is divided by the masked-frame count summed over all
ranks (one all-reduce of the counts per step) and multiplied by the world size, so DDP's gradient mean yields
exactly ``sum over ranks of CE / global masked frames`` -- fairseq's normalisation -- however unevenly the
masked frames fall on the ranks. The feature penalty is a per-rank mean and is averaged by DDP. The formula is
:func:`hubert_lit.lit.losses.hubert_objective`; non-finite steps, throughput and ``predict`` come from
:class:`~hubert_lit.lit.base.HubertLightningModule`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from hubert_lit.lit.base import CompileMode, HubertLightningModule, host_scalar
from hubert_lit.lit.losses import (
    PREDICTION_SUMS,
    PredictionTerms,
    RunningSums,
    batch_objective,
    hubert_metrics,
    hubert_objective,
    prediction_terms,
    reduce_sums,
)
from hubert_lit.models import HubertModel
from hubert_lit.run_config import pretrain_model_config


class HubertPretrainModule(HubertLightningModule):
    """Masked pseudo-label prediction (HuBERT) around :func:`hubert_lit.models.build_hubert`.

    Args:
        preset: model preset name (``vanilla``, ``conformer_s``, ``squeezeformer_xs``, ``sparseformer_dn_s``,
            ``sparseformer_sw_s``, their ``*_tiny`` variants, ...).
        num_classes: number of k-means clusters of the labels (100 for MFCC labels, 500 for iteration 2).
        overrides: HubertConfig fields to change on the preset, e.g. ``{"mask_prob": 0.65,
            "encoder": {"num_layers": 4}}``.
        model_config: a complete ``HubertConfig`` dict; replaces ``preset`` (``overrides`` still apply).
        lr: peak learning rate.
        betas: AdamW betas.
        eps: AdamW epsilon.
        weight_decay: AdamW (decoupled) weight decay, applied to every parameter as in fairseq.
        warmup_steps: linear warm-up steps.
        max_steps: step at which the LR reaches 0; ``None`` takes ``trainer.max_steps``.
        max_nonfinite_steps: abort after this many consecutive steps with non-finite gradients (each is skipped).
            With ``16-mixed`` the GradScaler's own overflow steps count too, so keep it well above ~10.
        compile: run the training step's forward and loss terms through ``torch.compile`` (the fast path on a
            GPU; the first steps pay the compilation).
        compile_mode: ``torch.compile`` mode: ``default``, ``reduce-overhead`` (CUDA graphs), ``max-autotune``
            or ``max-autotune-no-cudagraphs``.
    """

    def __init__(
        self,
        preset: str = "vanilla",
        num_classes: int | None = None,
        overrides: dict[str, Any] | None = None,
        model_config: dict[str, Any] | None = None,
        lr: float = 5e-4,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        warmup_steps: int = 32000,
        max_steps: int | None = None,
        max_nonfinite_steps: int = 20,
        compile: bool = False,
        compile_mode: CompileMode = "default",
    ) -> None:
        super().__init__(compile, compile_mode)
        if num_classes is None or num_classes < 1:
            raise ValueError(
                f"model.num_classes must be a positive integer (the labels' k-means clusters), got {num_classes!r}"
            )
        if lr <= 0:
            raise ValueError(f"model.lr must be > 0, got {lr}")
        if max_nonfinite_steps < 1:
            raise ValueError(f"model.max_nonfinite_steps must be >= 1, got {max_nonfinite_steps}")
        self.save_hyperparameters()
        self.model = HubertModel(pretrain_model_config(preset, num_classes, overrides, model_config))
        self._eval_sums = RunningSums(PREDICTION_SUMS)

    @classmethod
    def requires_labels(cls, init_args: Any) -> bool:
        return True

    # ------------------------------------------------------------------------------------------ training
    def _terms(
        self, waveforms: Tensor, lengths: Tensor | None, labels: Tensor, layer_keep: Tensor | None
    ) -> PredictionTerms:
        """Forward and the loss terms: what ``model.compile`` compiles (fixed shapes, no host read)."""
        out = self.model(waveforms, lengths, labels, layer_keep=layer_keep, validate=False)
        return prediction_terms(out)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        empty = self.is_empty(batch)
        if empty:  # every planned utterance was unreadable: nothing to train, the collectives still run
            terms = PredictionTerms.zeros(self.device)
        else:
            terms = self.compiled("train", self._terms)(
                batch["waveforms"], self.model_lengths(batch), batch["labels"], self.layer_keep()
            )
        totals = reduce_sums(
            {
                "masked_frames": terms.masked_frames,
                "unmasked_frames": terms.unmasked_frames,
                "samples": batch["lengths"].sum(),
                "skipped": self.skipped_in_batch(batch),
            },
            self.all_reduce(),
        )
        self.record_step_audio(totals["samples"])
        self.record_skipped(totals["skipped"])
        batch_size = batch["waveforms"].shape[0]
        self.log(
            "train/masked_frames",
            totals["masked_frames"].float(),
            on_step=True,
            on_epoch=False,
            batch_size=max(batch_size, 1),
        )
        if empty:
            return self.zero_loss()
        # Normalised by the frame counts of all ranks / world size: DDP's gradient mean then gives sum / count.
        world = self.trainer.world_size
        loss = hubert_objective(
            self.config,
            terms.masked_ce,
            terms.unmasked_ce,
            terms.feature_penalty,
            totals["masked_frames"].clamp(min=1) / world,
            totals["unmasked_frames"].clamp(min=1) / world,
        )
        self.log_dict(
            {
                "train/loss": batch_objective(self.config, terms).detach(),
                "train/masked_ce": (terms.masked_ce / terms.masked_frames.clamp(min=1)).detach(),
                "train/unmasked_ce": (terms.unmasked_ce / terms.unmasked_frames.clamp(min=1)).detach(),
                "train/feature_pen": terms.feature_penalty.detach(),
                "train/masked_acc": terms.masked_accuracy,
                "train/unmasked_acc": terms.unmasked_accuracy,
                "train/lr": host_scalar(self.optimizers().param_groups[0]["lr"]),
            },
            on_step=True,
            on_epoch=False,
            prog_bar=False,
            batch_size=batch_size,
        )
        return loss

    # ------------------------------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._accumulate_eval(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._accumulate_eval(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def _accumulate_eval(self, batch: dict[str, Any]) -> None:
        if self.is_empty(batch):
            return
        self._eval_sums.add(
            self._terms(batch["waveforms"], self.model_lengths(batch), batch["labels"], None).sums()
        )

    def _log_eval(self, prefix: str) -> None:
        """Log ``<prefix>/loss``, masked/unmasked CE and accuracy over every rank's batches."""
        sums = self._eval_sums.reduce(self.all_reduce(), self.device)
        metrics = hubert_metrics(self.config, sums, prefix)
        # already reduced over ranks: identical on every rank, no sync needed
        self.log_dict({k: v.float() for k, v in metrics.items()}, prog_bar=False, sync_dist=False)
