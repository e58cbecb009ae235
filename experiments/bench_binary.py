"""Real 1-bit kernels (hubert_lit.quant.binary_kernels) against torch fp32 on the BQ models' workloads.

Mode ``gemm`` (issue 14, benchmark a): every distinct binary GEMM of the five BQ models at ``--seconds`` of audio,
batch 1, timed as ``torch.matmul`` in fp32 and as the popcount GEMM with its fused scale/bias epilogue, at each
``--threads`` count. The shapes are found by running each full-precision preset once with hooks on the sites
``quantization_plan`` lists (so they follow the quantization spec): binarized Linears and pointwise convolutions
(M = frames; 250 in Squeezeformer's half-rate blocks, 2T - 1 for the relative-position projection) and the
attention products per head (q k^T: XNOR, P V: AND, q p^T of relative positions: XNOR), dense even where a
Sparseformer layout masks blocks. Packing the activations (once per layer input; for the attention products both
operands) is timed separately; weights are packed once at load and not timed. Depthwise convolutions are not
GEMMs and are left out. Times are the best of ``--samples`` interleaved samples, each long enough to time.

Mode ``model`` (benchmark b): each BQ model on the binary runtime (``hubert_lit.quant.runtime``) against its FP32
self (the same preset, not binarized), batch 1, ``--seconds`` of audio: the encoder alone (everything after the
front end, on the front end's output) and the whole model (``extract_features``), best of ``--samples``
interleaved samples at each ``--threads``. The BQ models have random weights and activation scales calibrated on
the benchmark utterance (``calibrating_scales``); timing does not depend on the values. Breakdown of the runtime
encoder: the time inside the binary GEMMs and the packing calls (the ``binary_kernels`` entry points wrapped with
timers in one extra pass), the rest being full-precision ops and Python; one ``torch.profiler`` pass at 1 thread
names the largest full-precision ops.

    python experiments/bench_binary.py                                  # writes results/bench_binary_gemm.md
    python experiments/bench_binary.py --mode model                     # writes results/bench_binary_models.md
    python experiments/bench_binary.py --models conformer_s --threads 1 --output /tmp/x.md
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import torch

MODELS = ["vanilla", "conformer_s", "squeezeformer_xs", "sparseformer_dn_s", "sparseformer_sw_s"]
SAMPLE_RATE = 16000
RESULTS = Path(__file__).resolve().parent / "results"


# --- shared by every mode ---------------------------------------------------------------------------------------


def best_time(
    fns: dict[str, Callable[[], object]], samples: int, min_sample_s: float = 2e-4
) -> dict[str, float]:
    """Seconds per call of each function: the fastest of ``samples`` samples, taken in turn (so that load from
    other processes hits all of them alike); each sample repeats the call until it lasts ``min_sample_s``. Many
    short samples: on a shared machine a multi-threaded call that loses a core for a time slice comes several
    milliseconds late, and the best sample is one that was not interrupted."""
    calls = {}
    for name, fn in fns.items():
        fn()
        n = 1
        while True:
            start = time.perf_counter()
            for _ in range(n):
                fn()
            elapsed = time.perf_counter() - start
            if elapsed >= min_sample_s or n >= 1 << 16:
                break
            n = min(1 << 16, max(2 * n, int(n * min_sample_s / max(elapsed, 1e-9)) + 1))
        calls[name] = n
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(samples):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / calls[name])
    return best


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (/proc/stat; None where it does not exist)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@contextmanager
def other_load() -> Iterator[dict[str, float | None]]:
    """Cores used on average by other processes while the block runs (all CPUs' busy time minus this process's
    CPU time, over the wall time): ``{"cores": ...}`` after the block, None where /proc/stat is missing."""
    result: dict[str, float | None] = {"cores": None}
    busy, own, start = _busy_seconds(), time.process_time(), time.perf_counter()
    try:
        yield result
    finally:
        end_busy = _busy_seconds()
        if busy is not None and end_busy is not None:
            wall = time.perf_counter() - start
            others = (end_busy - busy) - (time.process_time() - own)
            result["cores"] = max(0.0, others / wall)


def machine_line() -> str:
    from hubert_lit.quant import binary_kernels as bk

    load = ""
    if load_average() is not None:
        load = f", load average {load_average():.1f} on {os.cpu_count()} cores"
    return (
        f"{cpu_name()}{load}, binary kernels: {bk.active_isa()}; torch {torch.__version__}; "
        f"{date.today().isoformat()}"
    )


# --- mode gemm --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gemm:
    """One binary GEMM: ``batch`` independent (m x k) . (k x n) products (batch = heads for attention)."""

    op: str  # "xnor" (signed x signed) or "and" (unsigned {0, a} x signed)
    batch: int
    m: int
    k: int
    n: int
    attention: str = ""  # "" for layers; "qk", "pv" or "qp" for attention products

    @property
    def macs(self) -> int:
        return self.batch * self.m * self.k * self.n


def _site_label(name: str) -> str:
    """Module name without the encoder and layer prefixes: ``encoder.layers.3.ffn1.output_dense`` -> ``ffn1.output_dense``."""
    return re.sub(r"^encoder\.(layers\.\d+\.)?", "", name)


def model_gemms(preset: str, seconds: float) -> list[tuple[Gemm, str]]:
    """(GEMM, site label) for every binary GEMM one forward pass of the BQ version of ``preset`` runs."""
    from hubert_lit.models import build_hubert
    from hubert_lit.models.attention import MultiHeadAttention
    from hubert_lit.quant import quantization_plan

    model = build_hubert(preset, num_classes=500).eval()
    found: list[tuple[Gemm, str]] = []
    handles = []
    hooks_of: dict[str, set[str]] = defaultdict(set)
    for site in quantization_plan(model):
        if site.kind == "hook":
            parent, _, hook = site.name.rpartition(".")
            hooks_of[parent].add(hook)
            continue
        if site.kind not in ("linear", "conv"):
            continue  # depthwise convolutions and activation swaps are not GEMMs
        module = model.get_submodule(site.name)
        if site.kind == "conv" and (module.kernel_size[0] != 1 or module.groups != 1):
            continue
        op = "xnor" if site.signed else "and"

        def record(mod, args, op=op, name=site.name):
            x = args[0]
            if isinstance(mod, torch.nn.Linear):
                gemm = Gemm(op, 1, x.numel() // x.shape[-1], mod.in_features, mod.out_features)
            else:  # pointwise Conv1d on (B, C, T)
                gemm = Gemm(op, 1, x.shape[0] * x.shape[-1], mod.in_channels, mod.out_channels)
            found.append((gemm, _site_label(name)))

        handles.append(module.register_forward_pre_hook(record))
    for name, hooks in hooks_of.items():
        attention = model.get_submodule(name)
        assert isinstance(attention, MultiHeadAttention)

        def record_attention(mod, args, hooks=hooks, name=name):
            batch, length, _ = args[0].shape
            heads, d = mod.num_heads, mod.head_dim
            label = _site_label(name)
            if {"q_hook", "k_hook"} <= hooks:
                found.append((Gemm("xnor", batch * heads, length, d, length, "qk"), f"{label} q.k^T"))
            if {"prob_hook", "v_hook"} <= hooks:
                found.append((Gemm("and", batch * heads, length, length, d, "pv"), f"{label} P.V"))
            if {"q_hook", "pos_hook"} <= hooks and mod.relative_positions:
                found.append((Gemm("xnor", batch * heads, length, d, 2 * length - 1, "qp"), f"{label} q.p^T"))

        handles.append(attention.register_forward_pre_hook(record_attention))
    samples = int(seconds * SAMPLE_RATE)
    with torch.no_grad():
        model.extract_features(torch.randn(1, samples), torch.tensor([samples]))
    for handle in handles:
        handle.remove()
    return found


def _operands(gemm: Gemm, gen: torch.Generator):
    """(fp32 matmul, binary GEMM, activation packing) closures for one shape, on random data."""
    from hubert_lit.quant import binary_kernels as bk

    h, m, k, n = gemm.batch, gemm.m, gemm.k, gemm.n
    if not gemm.attention:
        x = torch.randn(m, k, generator=gen)
        if gemm.op == "and":
            x = x.relu()
        shift, alpha = 0.1 * torch.randn(k, generator=gen), 0.5
        weight_t = torch.randn(k, n, generator=gen)
        w = bk.pack_weight((torch.rand(n, k, generator=gen) > 0.5).to(torch.uint8))
        scale, bias = torch.rand(n, generator=gen), torch.randn(n, generator=gen)
        if gemm.op == "and":
            bits = bk.pack_unsigned(x, alpha, shift)
            return (
                lambda: torch.matmul(x, weight_t),
                lambda: bk.and_gemm(bits, w, scale, bias),
                lambda: bk.pack_unsigned(x, alpha, shift),
            )
        bits = bk.pack_signed(x, shift)
        return (
            lambda: torch.matmul(x, weight_t),
            lambda: bk.xnor_gemm(bits, w, scale, bias),
            lambda: bk.pack_signed(x, shift),
        )
    if gemm.attention in ("qk", "qp"):  # (h, m, k) . (h, n, k)^T, e.g. queries x keys
        q, keys = torch.randn(h, m, k, generator=gen), torch.randn(h, n, k, generator=gen)
        keys_t = keys.transpose(-1, -2).contiguous()
        q_bits, k_bits = bk.pack_signed(q), bk.pack_signed_panels(keys)
        return (
            lambda: torch.matmul(q, keys_t),
            lambda: bk.xnor_bmm(q_bits, k_bits, 0.125),
            lambda: (bk.pack_signed(q), bk.pack_signed_panels(keys)),
        )
    probs = torch.randn(h, m, k, generator=gen).softmax(-1)  # P V: (h, m, k) . (h, k, n)
    values = torch.randn(h, k, n, generator=gen)
    alpha = 2.0 / k
    p_bits, v_bits = bk.pack_unsigned(probs, alpha), bk.pack_signed_columns(values)
    return (
        lambda: torch.matmul(probs, values),
        lambda: bk.and_bmm(p_bits, v_bits, 0.125),
        lambda: (bk.pack_unsigned(probs, alpha), bk.pack_signed_columns(values)),
    )


def _shape_text(gemm: Gemm) -> str:
    return f"{gemm.batch} x " if gemm.batch > 1 else ""


def _time_gemms(args: argparse.Namespace, shapes: list[Gemm], operands: dict, times: dict) -> None:
    """Best fp32, binary and packing times of every shape at every thread count into ``times``."""
    for _ in range(args.rounds):  # rounds spread the samples of each shape over a longer time
        for threads in args.threads:
            torch.set_num_threads(threads)
            for gemm in shapes:
                fp32, binary, pack = operands[gemm]
                new = best_time({"fp32": fp32, "binary": binary, "pack": pack}, args.samples)
                old = times.get((gemm, threads), new)
                t = times[gemm, threads] = {key: min(old[key], new[key]) for key in new}
                print(
                    f"{threads} thread(s) {gemm.op} {_shape_text(gemm)}{gemm.m}x{gemm.k}x{gemm.n}: "
                    f"fp32 {t['fp32'] * 1e3:.3f} ms, binary {t['binary'] * 1e3:.3f} ms, "
                    f"x{t['fp32'] / t['binary']:.1f}",
                    file=sys.stderr,
                )


def machine_status(other_cores: float | None) -> str:
    """Whether the measurement is final or preliminary, with the machine it ran on and how loaded it was."""
    if other_cores is None or other_cores > 0.2:
        lead = "**Preliminary**: other processes used the machine while it ran"
    else:
        lead = "Measured on an otherwise idle machine"
    other = "unknown" if other_cores is None else f"{other_cores:.2f} cores on average"
    return f"{lead} ({machine_line()}, the run's own threads included; other processes: {other})"


def gemm_report(args: argparse.Namespace) -> str:
    """Benchmark (a): the markdown report of the per-GEMM mode."""
    uses: dict[Gemm, Counter] = defaultdict(Counter)  # shape -> model -> calls per forward
    sites: dict[Gemm, set[str]] = defaultdict(set)
    for preset in args.models:
        for gemm, label in model_gemms(preset, args.seconds):
            uses[gemm][preset] += 1
            sites[gemm].add(re.sub(r"^(ffn\d|feed_forward)\.", "ffn.", label))
        print(f"{preset}: {sum(c[preset] for c in uses.values())} binary GEMMs per forward", file=sys.stderr)
    shapes = sorted(uses, key=lambda g: (bool(g.attention), g.k * g.n, g.m, g.op))
    gen = torch.Generator().manual_seed(0)
    operands = {gemm: _operands(gemm, gen) for gemm in shapes}
    default_threads = torch.get_num_threads()
    times: dict[tuple[Gemm, int], dict[str, float]] = {}
    with other_load() as others:
        _time_gemms(args, shapes, operands, times)
    torch.set_num_threads(default_threads)
    status = machine_status(others["cores"])

    lines = [
        "# Binary GEMMs against torch fp32 matmul (issue 14, benchmark a)",
        "",
        f"Every distinct binary GEMM of the BQ models at {args.seconds:g} s of audio (batch 1): M x K x N, with "
        "H x for the per-head attention products. fp32 = `torch.matmul` (float32, the same thread count); binary "
        "= the popcount GEMM with its fused scale/bias epilogue on packed operands (weights packed at load); "
        "pack = packing the activations of one call (for attention both operands). Best of "
        f"{args.samples} interleaved samples in each of {args.rounds} round(s). {status}.",
        "",
    ]
    for threads in args.threads:
        lines += [
            f"## {threads} thread{'s' if threads > 1 else ''}",
            "",
            "| op | H x M x K x N | sites | models (calls per forward) | fp32 ms | binary ms | speed-up | pack ms "
            "| speed-up incl. pack |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for gemm in shapes:
            t = times[gemm, threads]
            where = ", ".join(f"{model} x{count}" for model, count in uses[gemm].items())
            lines.append(
                f"| {gemm.op.upper()} | {_shape_text(gemm)}{gemm.m} x {gemm.k} x {gemm.n} | "
                f"{', '.join(sorted(sites[gemm]))} | {where} | {t['fp32'] * 1e3:.3f} | {t['binary'] * 1e3:.3f} | "
                f"{t['fp32'] / t['binary']:.1f}x | {t['pack'] * 1e3:.3f} | "
                f"{t['fp32'] / (t['binary'] + t['pack']):.1f}x |"
            )
        lines.append("")
    lines += [
        "## All binary GEMMs of one forward pass",
        "",
        "Sum over the shapes above, times the calls per forward: the part of each BQ model that runs on binary "
        "kernels (front end, norms, softmax, depthwise convolutions and the rest are not included).",
        "",
        "| model | threads | binary GEMMs | fp32 ms | binary ms | pack ms | speed-up | speed-up incl. pack |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in args.models:
        mine = [(g, c[model]) for g, c in uses.items() if c[model]]
        for threads in args.threads:
            total = {
                key: sum(times[g, threads][key] * count for g, count in mine)
                for key in ("fp32", "binary", "pack")
            }
            lines.append(
                f"| {model} | {threads} | {sum(c for _, c in mine)} | {total['fp32'] * 1e3:.2f} | "
                f"{total['binary'] * 1e3:.2f} | {total['pack'] * 1e3:.2f} | {total['fp32'] / total['binary']:.1f}x | "
                f"{total['fp32'] / (total['binary'] + total['pack']):.1f}x |"
            )
    return "\n".join(lines) + "\n"


# --- mode model -------------------------------------------------------------------------------------------------

KERNEL_CALLS = {  # binary_kernels entry point -> breakdown part
    **dict.fromkeys(("xnor_gemm", "and_gemm", "xnor_bmm", "and_bmm"), "gemm"),
    **dict.fromkeys(("pack_signed", "pack_unsigned", "pack_signed_panels", "pack_signed_columns"), "pack"),
    "pack_softmax": "softmax",
}


@contextmanager
def kernel_timers() -> Iterator[dict[str, float]]:
    """Seconds spent inside the binary GEMMs (``"gemm"``), the packing calls (``"pack"``) and the fused softmax and
    probability binarizer (``"softmax"``) while the block runs, by wrapping the ``binary_kernels`` entry points the
    runtime calls (``bk.<name>``, looked up per call)."""
    from hubert_lit.quant import binary_kernels as bk

    spent = dict.fromkeys(set(KERNEL_CALLS.values()), 0.0)
    originals = {name: getattr(bk, name) for name in KERNEL_CALLS}

    def timed(fn, kind):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[kind] += time.perf_counter() - start

        return wrapper

    for name, fn in originals.items():
        setattr(bk, name, timed(fn, KERNEL_CALLS[name]))
    try:
        yield spent
    finally:
        for name, fn in originals.items():
            setattr(bk, name, fn)


@dataclass
class ModelTimes:
    """Best seconds per call of one BQ model and its FP32 self, per thread count, and the runtime's breakdown."""

    preset: str
    times: dict[int, dict[str, float]] = field(default_factory=dict)  # threads -> fp32/binary x encoder/whole
    breakdown: dict[int, dict[str, float]] = field(
        default_factory=dict
    )  # threads -> total/gemm/pack/softmax s
    top_ops: list[tuple[str, float]] = field(default_factory=list)  # largest FP ops of the encoder, 1 thread


def _model_pair(preset: str, waveforms: torch.Tensor, lengths: torch.Tensor):
    """(FP32 model, the same model binarized on the binary runtime), both in eval mode."""
    from hubert_lit.models import build_hubert
    from hubert_lit.quant import binarize, calibrating_scales
    from hubert_lit.quant.runtime import is_binary_runtime, to_binary_runtime

    torch.manual_seed(0)
    fp32 = build_hubert(preset, num_classes=0).eval()
    binary = binarize(copy.deepcopy(fp32)).eval()
    with calibrating_scales(binary), torch.no_grad():
        binary.extract_features(waveforms, lengths)
    binary = to_binary_runtime(binary)
    if not is_binary_runtime(binary):
        raise RuntimeError("the binary kernels are unavailable: nothing to benchmark")
    return fp32, binary


def _encoder_call(model, waveforms: torch.Tensor, lengths: torch.Tensor) -> Callable[[], object]:
    """A call of ``model.encoder`` on the front end's output for ``waveforms`` (recorded from one forward)."""
    recorded = {}

    def record(module, args, kwargs):
        recorded.update(args=args, kwargs=kwargs)

    handle = model.encoder.register_forward_pre_hook(record, with_kwargs=True)
    with torch.inference_mode():
        model.extract_features(waveforms, lengths)
    handle.remove()
    return lambda: model.encoder(*recorded["args"], **recorded["kwargs"])


BINARY_OPS = ("hubert_lit_bits::gemm", "hubert_lit_bits::pack_rows", "hubert_lit_bits::pack_cols")


def _top_fp_ops(run: Callable[[], object], count: int = 6) -> list[tuple[str, float]]:
    """The ``count`` largest ops by self CPU time (s) in one profiled call, binary GEMMs and packing excluded (the
    fused softmax, a float32 op that also packs, stays in)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    ops = [(e.key, e.self_cpu_time_total / 1e6) for e in prof.key_averages() if e.key not in BINARY_OPS]
    return sorted(ops, key=lambda item: -item[1])[:count]


def time_model(preset: str, args: argparse.Namespace) -> ModelTimes:
    """Benchmark (b) for one preset: every thread count, interleaved FP32 / binary samples."""
    samples = int(args.seconds * SAMPLE_RATE)
    gen = torch.Generator().manual_seed(0)
    waveforms, lengths = torch.randn(1, samples, generator=gen), torch.tensor([samples])
    fp32, binary = _model_pair(preset, waveforms, lengths)
    calls = {
        "fp32 encoder": _encoder_call(fp32, waveforms, lengths),
        "binary encoder": _encoder_call(binary, waveforms, lengths),
        "fp32 whole": lambda: fp32.extract_features(waveforms, lengths),
        "binary whole": lambda: binary.extract_features(waveforms, lengths),
    }
    result = ModelTimes(preset)
    default_threads = torch.get_num_threads()
    try:
        with torch.inference_mode():
            for threads in args.threads:
                torch.set_num_threads(threads)
                result.times[threads] = best_time(calls, args.samples, min_sample_s=0.0)
                encoder = calls["binary encoder"]
                best = {"total": float("inf")}
                for _ in range(3):  # the breakdown of the fastest of three timed passes
                    with kernel_timers() as spent:
                        start = time.perf_counter()
                        encoder()
                        total = time.perf_counter() - start
                    if total < best["total"]:
                        best = {"total": total, **spent}
                result.breakdown[threads] = best
            torch.set_num_threads(1)
            result.top_ops = _top_fp_ops(calls["binary encoder"])
    finally:
        torch.set_num_threads(default_threads)
    return result


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def model_report(args: argparse.Namespace) -> str:
    """Benchmark (b): the markdown report of the whole-model mode."""
    load_before = load_average()
    results = []
    with other_load() as others:
        for preset in args.models:
            results.append(time_model(preset, args))
            t = results[-1].times[args.threads[0]]
            print(
                f"{preset}: encoder fp32 {_ms(t['fp32 encoder'])} ms, binary {_ms(t['binary encoder'])} ms "
                f"({t['fp32 encoder'] / t['binary encoder']:.1f}x) at {args.threads[0]} thread(s)",
                file=sys.stderr,
            )
    loads = [f"{x:.2f}" for x in (load_before, load_average()) if x is not None]
    status = machine_status(others["cores"])
    lines = [
        "# BQ models on the binary runtime against their FP32 selves (issue 14, benchmark b)",
        "",
        f"Batch 1, {args.seconds:g} s of audio. FP32 = the preset in float32 (attention on fused SDPA); binary = "
        "the same preset binarized (BiT W1A1, random weights, scales calibrated on the utterance) and converted with "
        "`to_binary_runtime`: bit-packed weights, XNOR/AND-popcount GEMMs, attention products binary, front end, "
        "norms, softmax, depthwise convolutions and the relative-position term in float32. Encoder = everything "
        "after the front end, called on the front end's output; whole = `extract_features`. Best of "
        f"{args.samples} interleaved samples. {status}; load average at start and end: "
        f"{' and '.join(loads) or 'unknown'}.",
        "",
        "## Latency",
        "",
        "| model | threads | FP32 encoder ms | binary encoder ms | encoder speed-up | FP32 whole ms | binary whole ms "
        "| whole-model speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for threads, t in r.times.items():
            lines.append(
                f"| bq_{r.preset} | {threads} | {_ms(t['fp32 encoder'])} | {_ms(t['binary encoder'])} | "
                f"{t['fp32 encoder'] / t['binary encoder']:.1f}x | {_ms(t['fp32 whole'])} | "
                f"{_ms(t['binary whole'])} | {t['fp32 whole'] / t['binary whole']:.1f}x |"
            )
    lines += [
        "",
        "## Where the binary encoder's time goes",
        "",
        "One more pass of the binary encoder with the kernel entry points timed (the fastest of three): binary GEMMs "
        "(XNOR/AND popcount, epilogue included), packing (layer inputs, attention queries, keys and values), the "
        "attention softmax fused with the probability binarizer (float32 exp, bits out: `pack_softmax`), and the "
        "rest (full-precision ops: norms, residuals, ReLU, attention masks, depthwise convolutions, "
        "relative-position terms, plus Python). Front end = whole model minus encoder (best times above).",
        "",
        "| model | threads | encoder ms | binary GEMMs ms (%) | packing ms (%) | softmax + probability bits ms (%) "
        "| other full precision and Python ms (%) | front end ms (whole, binary) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for threads, b in r.breakdown.items():
            rest = b["total"] - b["gemm"] - b["pack"] - b["softmax"]
            t = r.times[threads]

            def part(seconds: float, total: float = b["total"]) -> str:
                return f"{_ms(seconds)} ({100 * seconds / total:.0f} %)"

            lines.append(
                f"| bq_{r.preset} | {threads} | {_ms(b['total'])} | {part(b['gemm'])} | {part(b['pack'])} | "
                f"{part(b['softmax'])} | {part(rest)} | {_ms(t['binary whole'] - t['binary encoder'])} |"
            )
    lines += [
        "",
        "## Largest other ops of the binary encoder (1 thread, torch.profiler, self CPU time)",
        "",
        "| model | ops (ms) |",
        "|---|---|",
    ]
    for r in results:
        ops = ", ".join(f"{name} {_ms(seconds)}" for name, seconds in r.top_ops)
        lines.append(f"| bq_{r.preset} | {ops} |")
    return "\n".join(lines) + "\n"


# name -> (report builder, default output file)
MODES: dict[str, tuple[Callable[[argparse.Namespace], str], str]] = {
    "gemm": (gemm_report, "bench_binary_gemm.md"),
    "model": (model_report, "bench_binary_models.md"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mode", choices=sorted(MODES), default="gemm", help="what to benchmark (default gemm)"
    )
    parser.add_argument(
        "--models", nargs="+", default=MODELS, choices=MODELS, help="BQ models (default: the five)"
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="audio length (default 10 s = 499 frames)"
    )
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts (default 1 2)"
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=None,
        help="timed samples per measurement; the best is kept (default 25 for gemm, 5 for model)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="passes over all shapes; the best of all is kept (default 1)"
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="markdown file (default results/<mode file>)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.samples is None:
        args.samples = 25 if args.mode == "gemm" else 5
    from hubert_lit.quant import binary_kernels as bk

    if not bk.kernels_available():
        print("binary kernels unavailable: timing the pure-PyTorch fallback", file=sys.stderr)
    report_of, filename = MODES[args.mode]
    report = report_of(args)
    print(report, end="")
    output = args.output or RESULTS / filename
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report)
    print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
