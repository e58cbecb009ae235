"""What the suite's two LightningModules share: the HuBERT model under training, optimisation (AdamW with linear
warm-up and decay), the non-finite-gradient guard, throughput logging, ``predict``, the checkpoint entries and
the fast path (host-side batch checks, ``torch.compile`` of the step, fused AdamW on CUDA).

:class:`~hubert_lit.lit.pretrain.HubertPretrainModule` and :class:`~hubert_lit.lit.distill.BiTDistillModule` are
siblings below :class:`HubertLightningModule`; each defines only the steps that make sense for it.

Non-finite steps: when the gradient norm (after DDP's all-reduce, so every rank sees the same value) is NaN or
infinite, the gradients are dropped, so the optimizer leaves every parameter and its moments untouched; a warning
is logged and ``train/skipped_steps`` counts them. ``max_nonfinite_steps`` in a row abort the run. The LR schedule
follows the optimizer step counter (``global_step``), skipped steps included.

Host reads (each one a host-device sync on a GPU) are kept out of the step: a batch is validated on the host
before it moves to the device (:meth:`HubertLightningModule.on_before_batch_transfer`), which also finds out
whether every row fills the batch (then the model gets ``lengths=None`` and attention runs without a mask);
LayerDrop is drawn once per step on the host when the step is compiled or runs under DDP; counts for logging stay
tensors until Lightning logs them. The one read per step left is the gradient norm's ``isfinite``.
``model.compile: true`` compiles each module's step (forward + loss terms; ``model.compile_mode`` picks the
``torch.compile`` mode).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from typing import Any, Literal, get_args

import lightning.pytorch as pl
import torch
from torch import Tensor

from hubert_lit.checkpoint import module_counters, module_entries
from hubert_lit.constants import SAMPLE_RATE
from hubert_lit.lit.losses import AllReduce
from hubert_lit.lit.schedule import warmup_linear_decay
from hubert_lit.models import HubertConfig, HubertModel

log = logging.getLogger(__name__)

# on_before_batch_transfer is the module's on purpose (host-side batch checks); Lightning warns at every fit that a
# module overrides it beside a DataModule that does not (a DataModule that does gets its own warning, kept).
warnings.filterwarnings(
    "ignore",
    message="You have overridden `on_before_batch_transfer` in `LightningModule` but have passed in a",
)

SKIPPED_COUNT = "skipped_count"
"""Batch key added on the host before the transfer: the batch's ``skipped`` utterances as a tensor (it travels
to the device with the batch, so counting it costs no copy of its own)."""
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
COMPILE_MODES = get_args(CompileMode)
FULL_LENGTH = "full_length"
"""Batch key added on the host before the transfer: True when every row fills the batch (no padding)."""


def host_scalar(value: float) -> Tensor:
    """A Python number as a CPU tensor for ``self.log``: Lightning would copy a number to the device at every
    step (a blocking copy: a sync on a GPU); a CPU tensor is only read when a logger writes it."""
    return torch.tensor(float(value), dtype=torch.float32)


class HubertLightningModule(pl.LightningModule):
    """Base of the suite's LightningModules; subclasses set ``self.model`` and call ``save_hyperparameters()``.

    The hyperparameters every subclass has: ``lr``, ``betas``, ``eps``, ``weight_decay``, ``warmup_steps``,
    ``max_steps`` (None: ``trainer.max_steps``) and ``max_nonfinite_steps``.

    ``predict_layer`` (attribute, not a constructor argument, so a checkpoint's saved hyperparameters never pin it):
    encoder layer whose output ``predict`` returns (0 = encoder input; ``None`` = last).
    """

    model: HubertModel
    compile_backend = "inductor"  # torch.compile backend of ``model.compile`` (tests use "aot_eager")

    def __init__(self, compile: bool = False, compile_mode: CompileMode = "default") -> None:
        super().__init__()
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"model.compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
        self.predict_layer: int | None = None
        self._consecutive_nonfinite = 0
        self._skipped_steps = 0
        self._step_samples: Tensor | float = 0.0
        self._skipped_utterances: Tensor | int = 0  # training utterances left out unread, all ranks, this run
        self._skipped_at_epoch_start = 0
        self._last_batch_end: float | None = None
        self._compile = bool(compile)
        self._compile_mode = compile_mode
        self._compiled: dict[str, Callable] = {}

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

    # ------------------------------------------------------------------------------------------ fast path
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Validate the batch on the host copy (free there; on the device every check is a sync) and note whether
        every row fills it (``FULL_LENGTH``)."""
        if isinstance(batch, dict) and "waveforms" in batch and "lengths" in batch:
            waves, lengths = batch["waveforms"], batch["lengths"]
            if waves.shape[0] > 0:
                self.model.check_inputs(waves, lengths, batch.get("labels"))
            batch = {**batch, FULL_LENGTH: bool((lengths == waves.shape[1]).all())}
            batch[SKIPPED_COUNT] = torch.tensor(float(batch.get("skipped", 0)))
        return batch

    @staticmethod
    def is_empty(batch: dict[str, Any]) -> bool:
        """A batch without rows: every utterance planned for it was unreadable (the loader still delivers it, so
        that every rank takes the same steps). It trains nothing but takes part in the step's collectives."""
        return batch["waveforms"].shape[0] == 0

    def zero_loss(self) -> Tensor:
        """A loss of 0 that reaches every trainable parameter: the step of an empty batch, whose zero gradients
        DDP reduces with the other ranks' as on any step."""
        zero = torch.zeros((), device=self.device)
        return sum((p.sum() * 0.0 for p in self.parameters() if p.requires_grad), zero)

    def skipped_in_batch(self, batch: dict[str, Any]) -> Tensor:
        """The batch's unreadable utterances (a tensor on the batch's device)."""
        count = batch.get(SKIPPED_COUNT)
        if count is None:
            count = torch.tensor(float(batch.get("skipped", 0)), device=self.device)
        return count

    def record_skipped(self, step_total: Tensor) -> None:
        """Add the step's unreadable training utterances (summed over ranks) to ``data/skipped_utterances``, the
        run's running count; each epoch's share is summarised when the epoch ends."""
        self._skipped_utterances = self._skipped_utterances + step_total.detach()
        total = self._skipped_utterances
        self.log("data/skipped_utterances", total.float(), on_step=True, on_epoch=False)

    def model_lengths(self, batch: dict[str, Any]) -> Tensor | None:
        """The ``lengths`` to give the model, which then needs no validation (``validate=False``): None when the
        host found every row full length. A batch that did not pass through :meth:`on_before_batch_transfer` is
        validated here (eager, host reads)."""
        full = batch.get(FULL_LENGTH)
        if full is None:
            self.model.check_inputs(batch["waveforms"], batch["lengths"], batch.get("labels"))
            return batch["lengths"]
        return None if full else batch["lengths"]

    def compiled(self, name: str, fn: Callable) -> Callable:
        """``fn`` through ``torch.compile`` when ``model.compile`` is on (compiled once, then reused), else ``fn``."""
        if not self._compile:
            return fn
        if name not in self._compiled:
            mode = None if self.compile_backend != "inductor" else self._compile_mode  # modes are inductor's
            self._compiled[name] = torch.compile(fn, mode=mode, backend=self.compile_backend)
        return self._compiled[name]

    def layer_keep(self) -> Tensor | None:
        """One step's LayerDrop draw, made on the host, when the step is compiled or runs under DDP: the blocks
        then run as a fixed graph and every parameter gets a gradient (DDP needs no ``find_unused_parameters``).
        None otherwise: the model draws per block and skips the dropped ones (the reference behaviour)."""
        if not (self._compile or self.trainer.world_size > 1):
            return None
        keep = self.model.draw_layer_keep()
        return None if keep is None else keep.to(self.device, non_blocking=True)

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
        self.log("train/skipped_steps", host_scalar(self._skipped_steps), on_step=True, on_epoch=False)

    # ------------------------------------------------------------------------------------------ throughput
    def record_step_audio(self, samples_all_ranks: Tensor | float) -> None:
        """Audio of the current training step over all ranks, in samples (for ``train/audio_sec_per_sec``); a
        tensor stays on its device (read only when Lightning logs it)."""
        self._step_samples = samples_all_ranks

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Throughput: audio of the step (all ranks) over wall time since the previous step ended (data loading
        # included); the first step after (re)start has no reference point and is not logged.
        now = time.perf_counter()
        if self._last_batch_end is not None:
            elapsed = max(now - self._last_batch_end, 1e-9)
            rate = self._step_samples / (SAMPLE_RATE * elapsed)
            rate = rate.float() if isinstance(rate, Tensor) else host_scalar(rate)
            self.log("train/audio_sec_per_sec", rate, on_step=True, on_epoch=False)
        self._last_batch_end = now

    def on_train_epoch_start(self) -> None:
        self._last_batch_end = None
        self._skipped_at_epoch_start = int(self._skipped_utterances)

    def on_train_epoch_end(self) -> None:
        total = int(self._skipped_utterances)  # one read per epoch
        left_out = total - self._skipped_at_epoch_start
        if left_out and self.trainer.is_global_zero:
            log.warning(
                "epoch %d: %d training utterance(s) could not be read and were left out (%d in this run; each "
                "was reported with its file and reason when it happened)",
                self.current_epoch,
                left_out,
                total,
            )

    def on_validation_start(self) -> None:
        self._last_batch_end = None

    # ------------------------------------------------------------------------------------------ predict
    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Features of ``predict_layer`` for a batch: ``{"ids", "shards", "features": [(frames, dim) arrays]}``."""
        layer = self.predict_layer
        if layer is not None and not 0 <= layer <= self.model.num_layers:
            raise ValueError(f"predict_layer must be in [0, {self.model.num_layers}], got {layer}")
        if self.is_empty(batch):
            return {"ids": [], "shards": [], "features": []}
        states, frame_lengths = self.model.extract_features(
            batch["waveforms"], self.model_lengths(batch), layer=layer, validate=False
        )
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
        # fused: one kernel for every parameter on CUDA (CPU keeps the default, reproducing earlier runs exactly)
        optimizer = torch.optim.AdamW(
            self.parameter_groups(),
            lr=hp.lr,
            betas=tuple(hp.betas),
            eps=hp.eps,
            weight_decay=hp.weight_decay,
            fused=True if self.device.type == "cuda" else None,
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
            "skipped_utterances": int(self._skipped_utterances),
        }
        checkpoint.update(module_entries(self.model, counters))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        counters = module_counters(checkpoint)
        self._skipped_steps = counters.get("skipped_steps", 0)
        self._consecutive_nonfinite = counters.get("consecutive_nonfinite", 0)
        self._skipped_utterances = counters.get("skipped_utterances", 0)
