"""HubertPretrainModule: the LightningModule that pretrains a HuBERT model on k-means pseudo-labels.

Optimisation follows fairseq's HuBERT Base recipe: AdamW (betas 0.9/0.98, eps 1e-6, weight decay 0.01 on every
parameter), lr 5e-4 with linear warm-up and linear decay to 0 at ``max_steps``; gradient clipping and precision
are Trainer settings (``gradient_clip_val: 10``, ``precision: 32 | bf16-mixed | 16-mixed``).

Loss normalisation: each rank's masked cross-entropy *sum* is divided by the masked-frame count summed over all
ranks (one all-reduce of the counts per step) and multiplied by the world size, so DDP's gradient mean yields
exactly ``sum over ranks of CE / global masked frames`` -- fairseq's normalisation -- however unevenly the
masked frames fall on the ranks. The feature penalty is a per-rank mean and is averaged by DDP.

Non-finite steps: when the gradient norm (after DDP's all-reduce, so every rank sees the same value) is NaN or
infinite, the gradients are dropped, so the optimizer leaves every parameter and its moments untouched; a warning
is logged and ``train/skipped_steps`` counts them. ``max_nonfinite_steps`` in a row abort the run. The LR schedule
follows the optimizer step counter (``global_step``), skipped steps included.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from hubert_lit.lit.schedule import warmup_linear_decay
from hubert_lit.models import HubertConfig, HubertModel, build_hubert

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CONFIG_KEY = "hubert_config"


def build_model_config(
    preset: str, num_classes: int, overrides: dict[str, Any] | None, model_config: dict[str, Any] | None
) -> HubertConfig:
    """The HubertConfig a module builds: ``model_config`` when given (a full ``HubertConfig.to_dict()``), else
    the preset with ``overrides``; ``num_classes`` always wins."""
    if model_config is not None:
        config = HubertConfig.from_dict(model_config)
        return config.replace(**{**(overrides or {}), "num_classes": num_classes})
    return build_hubert(preset, num_classes=num_classes, **(overrides or {})).config


class HubertPretrainModule(pl.LightningModule):
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

    ``predict_layer`` (attribute, not a constructor argument, so a checkpoint's saved hyperparameters never pin it):
    encoder layer whose output ``predict`` returns (0 = encoder input; ``None`` = last).
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
    ) -> None:
        super().__init__()
        if num_classes is None or num_classes < 1:
            raise ValueError(
                f"model.num_classes must be a positive integer (the labels' k-means clusters), got {num_classes!r}"
            )
        if lr <= 0:
            raise ValueError(f"model.lr must be > 0, got {lr}")
        if max_nonfinite_steps < 1:
            raise ValueError(f"model.max_nonfinite_steps must be >= 1, got {max_nonfinite_steps}")
        self.save_hyperparameters()
        self.config = build_model_config(preset, num_classes, overrides, model_config)
        self.model = HubertModel(self.config)
        self.predict_layer: int | None = None
        self._consecutive_nonfinite = 0
        self._skipped_steps = 0
        self._step_audio_seconds = 0.0
        self._last_batch_end: float | None = None
        self._val_sums: Tensor | None = None

    # ------------------------------------------------------------------------------------------ training
    def _global_counts(self, *values: Tensor) -> Tensor:
        """Sum the given scalars over all ranks (one all-reduce)."""
        local = torch.stack([v.detach().to(torch.float64) for v in values])
        if self.trainer.world_size > 1:
            local = self.trainer.strategy.reduce(local, reduce_op="sum")
        return local

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self.model(batch["waveforms"], batch["lengths"], labels=batch["labels"])
        c = self.config
        totals = self._global_counts(out.masked_count, out.unmasked_count, batch["lengths"].sum())
        world = self.trainer.world_size
        # CE means * local counts = CE sums; * world / global count so that DDP's mean gives sum / global count.
        loss = c.feature_pen_weight * out.feature_penalty
        loss = loss + c.pred_masked_weight * out.masked_ce * out.masked_count * (
            world / totals[0].clamp(min=1)
        )
        if c.pred_nomask_weight > 0:
            loss = loss + c.pred_nomask_weight * out.unmasked_ce * out.unmasked_count * (
                world / totals[1].clamp(min=1)
            )
        self._step_audio_seconds = float(totals[2]) / SAMPLE_RATE
        batch_size = batch["waveforms"].shape[0]
        self.log_dict(
            {
                "train/loss": out.loss.detach(),
                "train/masked_ce": out.masked_ce.detach(),
                "train/unmasked_ce": out.unmasked_ce.detach(),
                "train/feature_pen": out.feature_penalty.detach(),
                "train/masked_acc": out.masked_accuracy,
                "train/unmasked_acc": out.unmasked_accuracy,
                "train/lr": self.optimizers().param_groups[0]["lr"],
            },
            on_step=True,
            on_epoch=False,
            prog_bar=False,
            batch_size=batch_size,
        )
        self.log(
            "train/masked_frames", totals[0].float(), on_step=True, on_epoch=False, batch_size=batch_size
        )
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        norm = (
            torch.nn.utils.get_total_norm(grads, norm_type=2.0)
            if grads
            else torch.zeros((), device=self.device)
        )
        if bool(torch.isfinite(norm)):
            self._consecutive_nonfinite = 0
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        else:
            for p in self.parameters():
                p.grad = (
                    None  # the optimizer skips parameters without gradients: no update, moments untouched
                )
            self._consecutive_nonfinite += 1
            self._skipped_steps += 1
            limit = self.hparams.max_nonfinite_steps
            log.warning(
                "non-finite gradient norm at step %d: step skipped (%d in a row, %d in total; limit %d in a row)",
                self.global_step,
                self._consecutive_nonfinite,
                self._skipped_steps,
                limit,
            )
            if self._consecutive_nonfinite >= limit:
                raise RuntimeError(
                    f"{self._consecutive_nonfinite} consecutive steps with a non-finite loss/gradient (last at step "
                    f"{self.global_step}); aborting. Lower model.lr, use bf16-mixed instead of 16-mixed, or check the "
                    "input audio. Raise model.max_nonfinite_steps to tolerate more."
                )
        self.log("train/skipped_steps", float(self._skipped_steps), on_step=True, on_epoch=False)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Throughput: audio of the step (all ranks) over wall time since the previous step ended (data loading
        # included); the first step after (re)start has no reference point and is not logged.
        now = time.perf_counter()
        if self._last_batch_end is not None:
            elapsed = max(now - self._last_batch_end, 1e-9)
            self.log(
                "train/audio_sec_per_sec", self._step_audio_seconds / elapsed, on_step=True, on_epoch=False
            )
        self._last_batch_end = now

    def on_train_epoch_start(self) -> None:
        self._last_batch_end = None

    def on_validation_start(self) -> None:
        self._last_batch_end = None

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
        """Add a batch's CE sums, frame counts, correct counts and feature penalty to the running totals."""
        out = self.model(batch["waveforms"], batch["lengths"], labels=batch["labels"])
        sums = torch.stack(
            [
                out.masked_ce.detach().double() * out.masked_count,
                out.masked_count.double(),
                out.masked_correct.double(),
                out.unmasked_ce.detach().double() * out.unmasked_count,
                out.unmasked_count.double(),
                out.unmasked_correct.double(),
                out.feature_penalty.detach().double(),
                torch.ones((), dtype=torch.float64, device=self.device),
            ]
        )
        self._val_sums = sums if self._val_sums is None else self._val_sums + sums

    def _log_eval(self, prefix: str) -> None:
        """Log ``<prefix>/loss``, masked/unmasked CE and accuracy over every rank's batches."""
        sums = self._val_sums
        self._val_sums = None
        if sums is None:  # this rank saw no validation batch
            sums = torch.zeros(8, dtype=torch.float64, device=self.device)
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        ce_m = sums[0] / sums[1].clamp(min=1)
        ce_u = sums[3] / sums[4].clamp(min=1)
        pen = sums[6] / sums[7].clamp(min=1)
        c = self.config
        loss = c.pred_masked_weight * ce_m + c.pred_nomask_weight * ce_u + c.feature_pen_weight * pen
        metrics = {
            f"{prefix}/loss": loss,
            f"{prefix}/masked_ce": ce_m,
            f"{prefix}/unmasked_ce": ce_u,
            f"{prefix}/masked_acc": sums[2] / sums[1].clamp(min=1),
            f"{prefix}/unmasked_acc": sums[5] / sums[4].clamp(min=1),
        }
        # already reduced over ranks: identical on every rank, no sync needed
        self.log_dict({k: v.float() for k, v in metrics.items()}, prog_bar=False, sync_dist=False)

    # ------------------------------------------------------------------------------------------ predict
    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Features of ``predict_layer`` for a batch: ``{"ids", "shards", "features": [(frames, dim) arrays]}``."""
        layer = self.predict_layer
        if layer is not None and not 0 <= layer <= self.model.num_layers:
            raise ValueError(f"predict_layer must be in [0, {self.model.num_layers}], got {layer}")
        states, frame_lengths = self.model.extract_features(batch["waveforms"], batch["lengths"], layer=layer)
        feats = states[-1].detach().float().cpu()
        frames = frame_lengths.cpu().tolist()
        return {
            "ids": list(batch["ids"]),
            "shards": list(batch.get("shards", [None] * len(frames))),
            "features": [feats[i, :n].numpy() for i, n in enumerate(frames)],
        }

    # ------------------------------------------------------------------------------------------ optimisation
    def total_steps(self) -> int:
        """Steps of the LR schedule: ``max_steps`` if set, else ``trainer.max_steps``."""
        steps = self.hparams.max_steps
        if steps is None:
            steps = self.trainer.max_steps if self._trainer is not None else -1
        if steps is None or steps <= 0:
            raise ValueError(
                "the LR schedule needs a step budget: set model.max_steps or trainer.max_steps (got neither)"
            )
        return int(steps)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps, weight_decay=hp.weight_decay
        )
        scheduler = warmup_linear_decay(optimizer, hp.warmup_steps, self.total_steps())
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # ------------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The resolved model config makes the checkpoint self-describing (hubert_lit.load_model needs no preset).
        checkpoint[CONFIG_KEY] = self.config.to_dict()
        checkpoint["hubert_lit_counters"] = {"skipped_steps": self._skipped_steps}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._skipped_steps = int(checkpoint.get("hubert_lit_counters", {}).get("skipped_steps", 0))
