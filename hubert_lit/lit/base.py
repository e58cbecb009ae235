"""What the suite's two LightningModules share: the HuBERT model under training, optimisation (AdamW with linear
warm-up and decay), the non-finite-gradient guard, throughput logging, ``predict`` and the checkpoint entries.

:class:`~hubert_lit.lit.pretrain.HubertPretrainModule` and :class:`~hubert_lit.lit.distill.BiTDistillModule` are
siblings below :class:`HubertLightningModule`; each defines only the steps that make sense for it.

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

from hubert_lit.checkpoint import module_counters, module_entries
from hubert_lit.constants import SAMPLE_RATE
from hubert_lit.lit.losses import AllReduce
from hubert_lit.lit.schedule import warmup_linear_decay
from hubert_lit.models import HubertConfig, HubertModel

log = logging.getLogger(__name__)


class HubertLightningModule(pl.LightningModule):
    """Base of the suite's LightningModules; subclasses set ``self.model`` and call ``save_hyperparameters()``.

    The hyperparameters every subclass has: ``lr``, ``betas``, ``eps``, ``weight_decay``, ``warmup_steps``,
    ``max_steps`` (None: ``trainer.max_steps``) and ``max_nonfinite_steps``.

    ``predict_layer`` (attribute, not a constructor argument, so a checkpoint's saved hyperparameters never pin it):
    encoder layer whose output ``predict`` returns (0 = encoder input; ``None`` = last).
    """

    model: HubertModel

    def __init__(self) -> None:
        super().__init__()
        self.predict_layer: int | None = None
        self._consecutive_nonfinite = 0
        self._skipped_steps = 0
        self._step_audio_seconds = 0.0
        self._last_batch_end: float | None = None

    @classmethod
    def requires_labels(cls, init_args: Any) -> bool:
        """Whether training and validation with these constructor arguments (a mapping or the CLI's parsed
        namespace) need the batches' ``labels``."""
        raise NotImplementedError

    @property
    def config(self) -> HubertConfig:
        """The config of the model under training."""
        return self.model.config

    def all_reduce(self) -> AllReduce | None:
        """Sum over ranks (None in a single process), for :func:`hubert_lit.lit.losses.reduce_sums`."""
        if self.trainer.world_size == 1:
            return None
        return lambda t: self.trainer.strategy.reduce(t, reduce_op="sum")

    # ------------------------------------------------------------------------------------------ non-finite steps
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

    # ------------------------------------------------------------------------------------------ throughput
    def record_step_audio(self, samples_all_ranks: Tensor | float) -> None:
        """Audio of the current training step over all ranks, in samples (for ``train/audio_sec_per_sec``)."""
        self._step_audio_seconds = float(samples_all_ranks) / SAMPLE_RATE

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

    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW parameter groups; by default one group with weight decay on every parameter (fairseq)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            self.parameter_groups(), lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps, weight_decay=hp.weight_decay
        )
        scheduler = warmup_linear_decay(optimizer, hp.warmup_steps, self.total_steps())
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # ------------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The resolved model config (and quant spec) make the checkpoint self-describing: hubert_lit.load_model
        # needs no preset. The counters carry the non-finite-step guard across a resume.
        counters = {
            "skipped_steps": self._skipped_steps,
            "consecutive_nonfinite": self._consecutive_nonfinite,
        }
        checkpoint.update(module_entries(self.model, counters))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        counters = module_counters(checkpoint)
        self._skipped_steps = counters.get("skipped_steps", 0)
        self._consecutive_nonfinite = counters.get("consecutive_nonfinite", 0)
