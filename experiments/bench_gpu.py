"""One-command GPU benchmark of pretraining, distillation and feature extraction, torchaudio in the same run.

    python experiments/bench_gpu.py                  # CUDA: writes experiments/results/bench_gpu.md within 420 s
    python experiments/bench_gpu.py --budget-s 900   # more rows (every compiled row pays its compilation)
    python experiments/bench_gpu.py --device cpu     # reduced mode: tiny presets, seconds (bench_gpu_cpu.md)

Rows, in this order, each written to the results file as soon as it is measured; a row that would not finish
within ``--budget-s`` is listed as not measured:

1. torchaudio ``hubert_pretrain_base`` training step, eager; hubert-lit ``vanilla`` eager (and its per-stage
   breakdown: front end, encoder, loss, optimizer), compiled; torchaudio compiled;
2. hubert-lit ``vanilla`` with the wav2vec 2.0 front end (torchaudio's architecture), compiled, and the other
   four encoders, eager and compiled;
3. the BiT W1A1 distillation step of ``vanilla`` (frozen teacher + binarized student), eager and compiled;
4. feature extraction (``extract_features``, every layer): torchaudio ``hubert_base`` tf32 and bf16, hubert-lit
   ``vanilla`` bf16 eager and compiled;
5. the per-stage breakdown of the compiled vanilla step;
6. (CUDA) one Sparseformer-DN-S attention layer, forward + backward, dense SDPA against FlexAttention at 781, 1563
   and 4096 frames: the measurement behind ``encoder.flex_min_length`` (FlexAttention from 4096 frames on).

A training step is what ``HubertPretrainModule`` runs with ``model.compile: true`` on an unpadded
(crop-to-shortest) batch: forward + masked-prediction loss (compiled when the row says so), backward, gradient
clipping at 10 (whose norm's isfinite is read, as the module's non-finite guard does), fused AdamW. CUDA: bf16
autocast, 6 x 15.6 s crops, k = 100 classes (torchaudio's default), features on 16 x 10 s. CPU: fp32, the ``*_tiny`` presets (torchaudio
built with vanilla_tiny's shape), 2 x 2 s. MFU is the step's FLOPs (counted with ``FlopCounterMode`` on the eager
step: forward and backward) over its time, relative to the dense matmul rate measured at the start (bf16 8192^3 on
CUDA, fp32 1024^3 on CPU), not to a datasheet peak. Needs only torch, torchaudio and this package.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hubert_lit.lit.losses import (  # noqa: E402
    batch_objective,
    distillation_objective,
    hidden_state_mse,
    prediction_terms,
    soft_cross_entropy,
)
from hubert_lit.models import build_hubert  # noqa: E402

SAMPLE_RATE = 16000
RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = ("conformer_s", "squeezeformer_xs", "sparseformer_dn_s", "sparseformer_sw_s")
ATTENTION_LENGTHS = (
    781,
    1563,
    4096,
)  # frames: a 15.6 s crop, twice that, and the length FlexAttention won at
ATTENTION_TOKENS = 37500  # batch x frames of the attention rows (48 x 781, as measured before)
# torchaudio's wav2vec 2.0 front end and Transformer at vanilla_tiny's shape (CPU mode)
TINY_TORCHAUDIO = dict(
    extractor_mode="group_norm",
    extractor_conv_layer_config=[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2,
    extractor_conv_bias=False,
    encoder_embed_dim=32,
    encoder_projection_dropout=0.1,
    encoder_pos_conv_kernel=16,
    encoder_pos_conv_groups=4,
    encoder_num_layers=2,
    encoder_num_heads=2,
    encoder_attention_dropout=0.1,
    encoder_ff_interm_features=64,
    encoder_ff_interm_dropout=0.0,
    encoder_dropout=0.1,
    encoder_layer_norm_first=False,
    encoder_layer_drop=0.05,
    mask_prob=0.8,
    mask_selection="static",
    mask_other=0.0,
    mask_length=10,
    no_mask_overlap=False,
    mask_min_space=1,
    mask_channel_prob=0.0,
    mask_channel_selection="static",
    mask_channel_other=0.0,
    mask_channel_length=10,
    no_mask_channel_overlap=False,
    mask_channel_min_space=1,
    skip_masked=False,
    skip_nomask=False,
    final_dim=256,
    feature_grad_mult=0.1,
)


# ----------------------------------------------------------------------------------------------- settings
@dataclass
class Settings:
    device: torch.device
    batch: int
    seconds: float
    feature_batch: int
    feature_seconds: float
    steps: int
    warmup: int
    num_classes: int
    compile_mode: str
    compile_backend: str
    tiny: bool
    only: str | None = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def preset(self, name: str) -> str:
        return f"{name}_tiny" if self.tiny else name

    def autocast(self):
        if self.cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def compile(self, fn: Callable) -> Callable:
        mode = self.compile_mode if self.compile_backend == "inductor" else None
        return torch.compile(fn, mode=mode, backend=self.compile_backend)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


@dataclass
class Row:
    """One line of the table."""

    name: str
    mode: str
    audio: float  # seconds of audio per step
    ms: float | None = None
    flops: float | None = None
    peak_gib: float | None = None
    compile_s: float | None = None

    def rate(self) -> float | None:
        return None if self.ms is None else self.audio / (self.ms / 1000)


@dataclass
class Report:
    """The results file, rewritten after every row."""

    path: Path
    header: list[str]
    rows: list[Row] = field(default_factory=list)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    matmul_flops: float = 1.0

    def write(self) -> None:
        base = next(
            (r.rate() for r in self.rows if r.name.startswith("torchaudio") and r.mode == "eager"), None
        )
        lines = [*self.header, ""]
        lines += [
            "| model | mode | audio-s/s | ms/step | vs torchaudio eager | vs eager | MFU | peak memory (GiB) "
            "| compile (s) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        eager = {r.name: r.rate() for r in self.rows if r.mode == "eager"}
        for r in self.rows:
            rate = r.rate()
            mfu = None if r.flops is None or r.ms is None else r.flops / (r.ms / 1000) / self.matmul_flops
            same_batch = base is not None and rate is not None and r.audio == self.rows[0].audio
            cells = [
                r.name,
                r.mode,
                _fmt(rate, "{:,.1f}"),
                _fmt(r.ms, "{:,.1f}"),
                f"{rate / base:.2f}x"
                if same_batch and not r.name.startswith(("features", "attention"))
                else "",
                f"{rate / eager[r.name]:.2f}x" if r.mode == "compiled" and eager.get(r.name) else "",
                _fmt(mfu, "{:.1%}"),
                _fmt(r.peak_gib, "{:.2f}"),
                _fmt(r.compile_s, "{:.1f}"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        if self.stages:
            lines += [
                "",
                "Per-stage breakdown of the vanilla training step (ms; each stage's forward and backward, measured as",
                "differences of nested prefixes of the step: front end, + encoder, + loss; the optimizer step alone):",
                "",
                "| mode | front end | encoder | loss | optimizer | sum | measured step |",
                "|---|---|---|---|---|---|---|",
            ]
            for mode, s in self.stages.items():
                parts = [s["front end"], s["encoder"], s["loss"], s["optimizer"]]
                cells = [
                    mode,
                    *(f"{v:,.1f}" for v in parts),
                    f"{sum(parts):,.1f}",
                    _fmt(s.get("step"), "{:,.1f}"),
                ]
                lines.append("| " + " | ".join(cells) + " |")
        if self.skipped:
            lines += ["", "Not measured within the budget:", "", *(f"- {label}" for label in self.skipped)]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(lines) + "\n")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)


# ----------------------------------------------------------------------------------------------- measuring
def matmul_rate(s: Settings) -> float:
    """Dense matmul FLOP/s of this device (bf16 8192^3 on CUDA, fp32 1024^3 on CPU)."""
    n, dtype = (8192, torch.bfloat16) if s.cuda else (1024, torch.float32)
    a = torch.randn(n, n, device=s.device, dtype=dtype)
    b = torch.randn(n, n, device=s.device, dtype=dtype)
    for _ in range(2):
        a @ b
    s.sync()
    reps = 10 if s.cuda else 3
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    s.sync()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def count_flops(step: Callable[[], None]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def timed(s: Settings, step: Callable[[], None], compiled: bool) -> tuple[float, float | None, float | None]:
    """(median ms per step, compile seconds or None, peak GiB or None) of ``step``."""
    if s.cuda:
        torch.cuda.reset_peak_memory_stats(s.device)
    s.sync()
    start = time.perf_counter()
    step()  # the first call compiles
    s.sync()
    first = time.perf_counter() - start
    for _ in range(s.warmup):
        step()
    times = []
    for _ in range(s.steps):
        s.sync()
        start = time.perf_counter()
        step()
        s.sync()
        times.append(time.perf_counter() - start)
    ms = 1000 * sorted(times)[len(times) // 2]
    peak = torch.cuda.max_memory_allocated(s.device) / 2**30 if s.cuda else None
    return ms, (max(first - ms / 1000, 0.0) if compiled else None), peak


# ----------------------------------------------------------------------------------------------- batches
def frames(num_samples: int) -> int:
    return (num_samples - 400) // 320 + 1


def train_batch(s: Settings, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = int(s.seconds * SAMPLE_RATE)
    waves = (0.1 * torch.randn(s.batch, n, generator=g)).to(s.device)
    labels = torch.randint(0, s.num_classes, (s.batch, frames(n)), generator=g).to(s.device)
    return waves, labels


def _optimizer(model: torch.nn.Module, s: Settings) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, fused=s.cuda)


def _update(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    """Clip at 10, the module's one read per step (isfinite of the norm), optimizer step."""
    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 10.0)
    if bool(torch.isfinite(norm)):
        opt.step()
    opt.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------------------------- steps
def ours_train(s: Settings, preset: str, compiled: bool, **overrides) -> Callable[[], None]:
    model = build_hubert(preset, s.num_classes, **overrides).to(s.device).train()
    opt = _optimizer(model, s)
    waves, labels = train_batch(s)

    def loss_fn(w, y, keep):
        with s.autocast():
            return batch_objective(
                model.config, prediction_terms(model(w, None, y, layer_keep=keep, validate=False))
            )

    loss_of = s.compile(loss_fn) if compiled else loss_fn

    def step():
        keep = model.draw_layer_keep()
        keep = None if keep is None else keep.to(s.device, non_blocking=True)
        loss_of(waves, labels, keep).backward()
        _update(model, opt)

    return step


def torchaudio_train(s: Settings, compiled: bool) -> Callable[[], None]:
    import torchaudio

    if s.tiny:
        model = torchaudio.models.hubert_pretrain_model(num_classes=s.num_classes, **TINY_TORCHAUDIO)
    else:
        model = torchaudio.models.hubert_pretrain_base(num_classes=s.num_classes)
    model = model.to(s.device).train()
    opt = _optimizer(model, s)
    waves, labels = train_batch(s)
    lengths = torch.full((s.batch,), waves.shape[1], device=s.device)

    def loss_fn(w, y, n):
        with s.autocast():
            logit_m, _, feature_pen = model(w, y, n)
        target = torch.zeros(len(logit_m), dtype=torch.long, device=w.device)  # the true class comes first
        return F.cross_entropy(logit_m.float(), target) + 10.0 * feature_pen

    loss_of = s.compile(loss_fn) if compiled else loss_fn

    def step():
        loss_of(waves, labels, lengths).backward()
        _update(model, opt)

    return step


def distill_train(s: Settings, compiled: bool) -> Callable[[], None]:
    """BiT W1A1: frozen FP teacher + binarized student on the same batch and mask (BiTDistillModule's step)."""
    from hubert_lit.quant import binarize

    teacher = build_hubert(s.preset("vanilla"), s.num_classes).to(s.device).eval().requires_grad_(False)
    student = build_hubert(s.preset("vanilla"), s.num_classes, encoder={"layerdrop": 0.0}).to(s.device)
    student.load_state_dict(teacher.state_dict())
    binarize(student).train()
    opt = _optimizer(student, s)
    waves, labels = train_batch(s)
    with s.autocast():
        student(waves, None, labels, validate=False)  # the first batch initialises the activation scales

    def loss_fn(w, y):
        num = student.num_frames(w.shape[1])
        full = torch.full((w.shape[0],), num, dtype=torch.long, device=w.device)
        with s.autocast():
            mask = student.compute_mask(full, num)
            with torch.no_grad():
                t_out = teacher(w, None, y, mask=mask, validate=False)
            s_out = student(w, None, y, mask=mask, validate=False)
            hidden = hidden_state_mse(s_out.hidden_states, t_out.hidden_states, s_out.valid)
            logit = soft_cross_entropy(s_out.logits, t_out.logits, rows=s_out.mask & s_out.labelled)
            return distillation_objective(hidden, logit, 1.0, 1.0)

    loss_of = s.compile(loss_fn) if compiled else loss_fn

    def step():
        loss_of(waves, labels).backward()
        _update(student, opt)

    return step


def features_step(s: Settings, which: str, compiled: bool = False) -> Callable[[], None]:
    """extract_features of every layer on an unpadded batch, eval mode, no grad."""
    g = torch.Generator().manual_seed(0)
    n = int(s.feature_seconds * SAMPLE_RATE)
    waves = (0.1 * torch.randn(s.feature_batch, n, generator=g)).to(s.device)
    if which.startswith("torchaudio"):
        import torchaudio

        if s.tiny:
            model = torchaudio.models.wav2vec2_model(
                **{k: v for k, v in TINY_TORCHAUDIO.items() if k.startswith(("extractor", "encoder"))},
                aux_num_out=None,
            )
        else:
            model = torchaudio.models.hubert_base()
        model = model.to(s.device).eval()
        bf16 = which.endswith("bf16")

        def run():
            with torch.no_grad(), torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=bf16):
                model.extract_features(waves)

        return run
    model = build_hubert(s.preset("vanilla"), s.num_classes).to(s.device).eval()

    def forward(w):
        with s.autocast():
            return model.extract_features(w, None, validate=False)[0]

    fn = s.compile(forward) if compiled else forward

    def run():
        with torch.no_grad():
            fn(waves)

    return run


def attention_step(s: Settings, length: int, backend: str) -> Callable[[], None]:
    """Forward + backward of one Sparseformer-DN-S attention layer (4 heads x 64, its fixed block-sparse layout,
    no dropout) on ``length`` frames, with ``backend`` "sdpa" (dense) or "flex" (FlexAttention, skipping tiles)."""
    from hubert_lit.models.attention import AttentionMask, MultiHeadAttention
    from hubert_lit.models.config import preset

    cfg = preset("sparseformer_dn_s").encoder
    attn = MultiHeadAttention(cfg.dim, cfg.num_heads, 0.0, backend=backend).to(s.device).train()
    batch = max(1, ATTENTION_TOKENS // length)
    x = torch.randn(batch, length, cfg.dim, device=s.device, requires_grad=True)
    lengths = torch.full((batch,), length, device=s.device)
    # built once, as an encoder builds it once for all its layers
    mask = AttentionMask(lengths, length, cfg.num_heads, cfg.sparsity, padded=False)
    mask.block_mask() if backend == "flex" else mask.dense()

    def step():
        with s.autocast():
            attn(x, mask).float().square().mean().backward()

    return step


def stage_times(s: Settings, compiled: bool) -> dict[str, float]:
    """Milliseconds of the vanilla step's stages: nested prefixes of the forward (front end; + encoder; + loss),
    each forward + backward, and the optimizer step alone."""
    model = build_hubert(s.preset("vanilla"), s.num_classes).to(s.device).train()
    opt = _optimizer(model, s)
    waves, labels = train_batch(s)
    num = model.num_frames(waves.shape[1])
    full = torch.full((waves.shape[0],), waves.shape[1], dtype=torch.long, device=s.device)

    def front(w, y, keep):
        mask = model.compute_mask(model.frame_lengths(full), num)
        x, frame_lengths, penalty = model._encoder_input(w, full, mask)
        return x, frame_lengths, penalty

    def prefix_front(w, y, keep):
        with s.autocast():
            x, _, penalty = front(w, y, keep)
            return x.float().square().mean() + penalty

    def prefix_encoder(w, y, keep):
        with s.autocast():
            x, frame_lengths, penalty = front(w, y, keep)
            states = model.encoder(x, frame_lengths, padded=False, layer_keep=keep)
            return states[-1].float().square().mean() + penalty

    def prefix_loss(w, y, keep):
        with s.autocast():
            return batch_objective(
                model.config, prediction_terms(model(w, None, y, layer_keep=keep, validate=False))
            )

    out = {}
    for name, fn in (("front end", prefix_front), ("encoder", prefix_encoder), ("loss", prefix_loss)):
        run = s.compile(fn) if compiled else fn

        def step(run=run):
            keep = model.draw_layer_keep()
            keep = None if keep is None else keep.to(s.device, non_blocking=True)
            run(waves, labels, keep).backward()
            opt.zero_grad(set_to_none=True)

        out[name], _, _ = timed(s, step, compiled)
    prefix_loss(waves, labels, model.draw_layer_keep()).backward()

    def optimizer_step():
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        if bool(torch.isfinite(norm)):
            opt.step()  # the gradients stay: every call updates with the same ones

    out["optimizer"], _, _ = timed(s, optimizer_step, False)
    out["loss"] -= out["encoder"]
    out["encoder"] -= out["front end"]
    return out


# ----------------------------------------------------------------------------------------------- the run
@dataclass
class Entry:
    """One planned measurement: a table row (``build(compiled)`` gives its step) or a per-stage breakdown."""

    name: str
    mode: str
    audio: float = 0.0
    build: Callable[[bool], Callable[[], None]] | None = None
    flops_key: str = ""

    @property
    def label(self) -> str:
        return f"{self.name} ({self.mode})"


def plan(s: Settings) -> list[Entry]:
    """Every measurement, in the order they run and are written."""
    audio = s.batch * s.seconds
    feature_audio = s.feature_batch * s.feature_seconds
    vanilla = s.preset("vanilla")
    ta = "torchaudio hubert_pretrain_base" + (" (vanilla_tiny shape)" if s.tiny else "")
    ours = f"hubert-lit {vanilla}"
    w2v = f"{ours}, wav2vec2 front end"
    entries = [
        Entry(ta, "eager", audio, lambda c: torchaudio_train(s, c), "torchaudio"),
        Entry(ours, "eager", audio, lambda c: ours_train(s, vanilla, c), vanilla),
        Entry(STAGES, "eager"),
        Entry(ours, "compiled", audio, lambda c: ours_train(s, vanilla, c), vanilla),
        Entry(ta, "compiled", audio, lambda c: torchaudio_train(s, c), "torchaudio"),
        Entry(w2v, "compiled", audio, lambda c: ours_train(s, vanilla, c, frontend="wav2vec2"), w2v),
    ]
    for name in PRESETS:
        preset = s.preset(name)
        for mode in ("eager", "compiled"):
            build = lambda c, p=preset: ours_train(s, p, c)  # noqa: E731
            entries.append(Entry(f"hubert-lit {preset}", mode, audio, build, preset))
    for mode in ("eager", "compiled"):
        entries.append(
            Entry(
                f"BiT W1A1 distillation of {vanilla}", mode, audio, lambda c: distill_train(s, c), "distill"
            )
        )
    fa = "features: torchaudio hubert_base" + (" (tiny shape)" if s.tiny else "")
    for precision in ("tf32", "bf16") if s.cuda else ("fp32",):
        name = f"{fa}, {precision}"
        entries.append(Entry(name, "eager", feature_audio, lambda c, n=name: features_step(s, n), name))
    for mode in ("eager", "compiled"):
        entries.append(
            Entry(f"features: {ours}", mode, feature_audio, lambda c: features_step(s, "ours", c), "features")
        )
    entries.append(Entry(STAGES, "compiled"))
    if s.cuda:  # FlexAttention has no CPU backward
        for length in ATTENTION_LENGTHS:
            frames_audio = max(1, ATTENTION_TOKENS // length) * length / 50
            for backend, label in (("sdpa", "dense SDPA"), ("flex", "FlexAttention")):
                name = f"attention, sparseformer_dn_s layout, T={length}: {label}"
                build = lambda c, n=length, b=backend: attention_step(s, n, b)  # noqa: E731
                entries.append(Entry(name, "eager", frames_audio, build, name))
    return entries


STAGES = "vanilla per-stage breakdown"


class Bench:
    """Runs the plan within the budget: an entry starts only when the time left covers its estimate (the last
    eager entry's wall time, plus the last compilation's for a compiled one)."""

    def __init__(self, s: Settings, report: Report, budget_s: float):
        self.s, self.report, self.budget = s, report, budget_s
        self.start = time.perf_counter()
        self.flops: dict[str, float] = {}
        self.eager_estimate = 0.0
        self.compile_estimate = 120.0 if s.cuda and s.compile_backend == "inductor" else 5.0
        self.step_ms: dict[str, float] = {}

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)

    def run(self, entry: Entry) -> None:
        compiled = entry.mode == "compiled"
        need = self.eager_estimate + (self.compile_estimate if compiled else 0.0)
        if self.left() < need:
            self.report.skipped.append(entry.label)
            self.report.write()
            print(
                f"not measured: {entry.label} ({self.left():.0f} s left, about {need:.0f} s needed)",
                flush=True,
            )
            return
        began = time.perf_counter()
        torch.manual_seed(0)
        if entry.name == STAGES:
            stages = stage_times(self.s, compiled)
            self.report.stages[entry.mode] = {**stages, "step": self.step_ms.get(entry.mode)}
            print(f"{entry.label}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in stages.items()), flush=True)
        else:
            self.measure(entry, compiled)
        self.report.write()
        spent = time.perf_counter() - began
        if compiled and entry.name != STAGES:
            self.compile_estimate = self.report.rows[-1].compile_s or self.compile_estimate
        else:
            self.eager_estimate = spent

    def measure(self, entry: Entry, compiled: bool) -> None:
        """A table row: ``build(compiled)``'s step; its FLOPs counted once per ``flops_key`` on an eager step."""
        if entry.flops_key not in self.flops:
            self.flops[entry.flops_key] = count_flops(entry.build(False))
            self._release()
        step = entry.build(compiled)
        ms, compile_s, peak = timed(self.s, step, compiled)
        del step
        self._release()
        row = Row(entry.name, entry.mode, entry.audio, ms, self.flops[entry.flops_key], peak, compile_s)
        self.report.rows.append(row)
        if entry.name.startswith("hubert-lit") and entry.flops_key == self.s.preset("vanilla"):
            self.step_ms[entry.mode] = ms
        print(f"{entry.name:50s} {entry.mode:8s} {row.rate():10.1f} audio-s/s {ms:9.1f} ms/step", flush=True)

    def _release(self) -> None:
        if self.s.cuda:
            torch.cuda.empty_cache()


def run(s: Settings, out: Path, budget_s: float) -> Report:
    torch.manual_seed(0)
    if s.cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        where = torch.cuda.get_device_name(s.device)
    else:
        where = f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    import torchaudio

    audio = s.batch * s.seconds
    header = [
        "# Training, distillation and feature-extraction throughput (experiments/bench_gpu.py)",
        "",
        f"Device: {where}; torch {torch.__version__}, torchaudio {torchaudio.__version__}; "
        + ("bf16 autocast, fused AdamW" if s.cuda else "fp32")
        + (", tiny presets (the script's reduced CPU mode)" if s.tiny else "")
        + f"; compile: {s.compile_backend}"
        + (f", mode {s.compile_mode}" if s.compile_backend == "inductor" else "")
        + ".",
        f"Training batch {s.batch} x {s.seconds:g} s = {audio:g} s of audio, k = {s.num_classes}; features "
        f"{s.feature_batch} x {s.feature_seconds:g} s; median of {s.steps} steps after {s.warmup} warm-up "
        f"(plus the first, compiling call; a repeated run may find inductor's compiled code in its on-disk "
        f"cache); budget {budget_s:g} s.",
    ]
    report = Report(out, header)
    report.matmul_flops = matmul_rate(s)
    report.header.append(
        f"MFU relative to the measured dense matmul rate: {report.matmul_flops / 1e12:,.2f} TFLOP/s "
        + ("(bf16 8192^3)." if s.cuda else "(fp32 1024^3).")
    )
    report.write()
    bench = Bench(s, report, budget_s)
    for entry in plan(s):
        if s.only is None or re.search(s.only, entry.label):
            bench.run(entry)
    print(f"wrote {out} ({time.perf_counter() - bench.start:.0f} s)", flush=True)
    return report


def parse(argv: list[str] | None = None) -> tuple[Settings, Path, float]:
    """Command line -> (settings, results file, budget in seconds)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget of all rows (s)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument(
        "--out", type=Path, default=None, help="results file (default results/bench_gpu[_cpu].md)"
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="training utterances per step (CUDA 6, CPU 2)"
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="seconds per utterance (CUDA 15.625, CPU 2)"
    )
    parser.add_argument(
        "--feature-batch", type=int, default=None, help="feature-extraction batch (CUDA 16, CPU 2)"
    )
    parser.add_argument(
        "--feature-seconds", type=float, default=None, help="seconds per utterance (CUDA 10, CPU 2)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per row (CUDA 10, CPU 3); median"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the first call")
    parser.add_argument(
        "--num-classes", type=int, default=100, help="label classes (hubert_pretrain_base: 100)"
    )
    parser.add_argument("--full-presets", action="store_true", help="on CPU: the full presets, not *_tiny")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode of the compiled rows")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (tests: eager)")
    parser.add_argument(
        "--only", default=None, help="run only the rows whose 'name (mode)' matches this regex"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    s = Settings(
        device=device,
        batch=args.batch or (6 if cuda else 2),
        seconds=args.seconds or (15.625 if cuda else 2.0),
        feature_batch=args.feature_batch or (16 if cuda else 2),
        feature_seconds=args.feature_seconds or (10.0 if cuda else 2.0),
        steps=args.steps or (10 if cuda else 3),
        warmup=args.warmup,
        num_classes=args.num_classes,
        compile_mode=args.compile_mode,
        compile_backend=args.compile_backend,
        tiny=not cuda and not args.full_presets,
        only=args.only,
    )
    out = args.out or RESULTS / ("bench_gpu.md" if cuda else "bench_gpu_cpu.md")
    return s, out, args.budget_s


def main(argv: list[str] | None = None) -> int:
    run(*parse(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
