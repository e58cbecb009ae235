"""Efficiency counters of a HuBERT model (the paper's Table 1): parameters by part, storage, FLOP, BOP and time.

Conventions (each one is also printed under every table, see :data:`hubert_lit.profile.report.FOOTNOTES`):

* Parts: ``frontend`` = conv feature extractor + feature projection; ``positional`` = the conv positional
  embedding and the relative-position projection/biases inside rel-pos attention; ``encoder`` = the rest of the
  encoder; ``head`` = the pretraining head (mask embedding, final projection, label embeddings), which feature
  extraction does not use and storage leaves out.
* Storage: every tensor of the inference model at its real precision (quantized weights at their bit width plus
  one FP32 scale per tensor, or per output channel for convolutions; everything else at its dtype), and in the
  paper's convention (quantized weights at their bit width, every other parameter at 16 bits). MB = 1e6 bytes.
  Integer/bool bookkeeping buffers (``num_batches_tracked``, quantizer flags) are not counted.
* FLOP: ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions at 2 FLOP per MAC; elementwise
  ops, norms and softmax are not counted) for one utterance, batch 1, attention run on its explicit
  matmul path so its matmuls are visible to the counter. Quantized MACs (both operands below 16 bits) count
  ``b_w * b_a / 64`` of a full-precision MAC (1/64 for binary, the binary-network convention).
* BOP, paper-compatible: ``BOP_NonQ = 16 * MACs_fp / 2**30`` and ``BOP_BQ = sum(MACs_q * b_w * b_a) / 2**30``
  (``= MACs_bin / 2**30`` for W1A1). Principled (Bayesian Bits): ``sum(MACs * b_w * b_a) / 1e9`` with FP32 =
  32 x 32 bits.
* Estimated A100 time: ``(BOP_NonQ / 312 + BOP_BQ / 4992) / 1024`` seconds (312 TFLOPS FP16, 4992 TOPS binary),
  the formula that reproduces every row of the paper's Table 1.
* Measured latency of the deployed model at 1 and 2 threads: the FP32 model itself, or a W1A1 model on the binary
  runtime (real 1-bit popcount kernels, :mod:`hubert_lit.quant.runtime`).
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from hubert_lit.constants import SAMPLE_RATE
from hubert_lit.models import HubertModel
from hubert_lit.models.attention import MultiHeadAttention
from hubert_lit.quant.binarize import calibrating_scales
from hubert_lit.quant.modules import BinaryConv1d, BinaryLinear
from hubert_lit.quant.runtime import is_binary_runtime, to_binary_runtime

PAPER_STORAGE_BITS = 16  # the paper's storage convention for every non-binarized parameter
LOW_BIT_LIMIT = 16  # a MAC is "quantized" when both operands have fewer bits than this
PAPER_NONQ_BITS = 16  # BOP_NonQ = 16 * MACs_fp / 2**30: a full-precision MAC costs 16 binary MACs
A100_FP16_TFLOPS = 312.0
A100_BINARY_TOPS = 4992.0
GIB = 2**30
MB = 1e6
G = 1e9
PARTS = ("frontend", "positional", "encoder", "head", "other")
RUNTIME_THREADS = (1, 2)  # thread counts of the measured deployed latency

_FRONTEND_MODULES = ("feature_extractor", "feature_projection")
_HEAD_NAMES = ("mask_embedding", "final_proj", "label_embeddings")
_POSITIONAL_TOKENS = ("linear_pos", "pos_bias_u", "pos_bias_v")


def part_of(name: str) -> str:
    """The part (see :data:`PARTS`) a parameter or module called ``name`` belongs to."""
    top = name.split(".", 1)[0]
    if top in _FRONTEND_MODULES:
        return "frontend"
    if top == "pos_conv" or (top == "encoder" and any(t in name.split(".") for t in _POSITIONAL_TOKENS)):
        return "positional"
    if top == "encoder":
        return "encoder"
    if top in _HEAD_NAMES:
        return "head"
    return "other"


# ---------------------------------------------------------------------------------------------------------
# bit widths


def _dtype_bits(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits if dtype.is_floating_point else torch.iinfo(dtype).bits


def _is_quantized_layer(module: nn.Module) -> bool:
    return isinstance(module, (BinaryLinear, BinaryConv1d))


def activation_bits(hook: nn.Module, dtype: torch.dtype = torch.float32) -> int:
    """Bits of the values an activation site produces: the quantizer's bits, or the dtype's for a plain one."""
    bits = getattr(hook, "bits", None)
    return int(bits) if bits is not None else _dtype_bits(dtype)


def layer_bits(module: nn.Module) -> tuple[int, int]:
    """(weight bits, input bits) of the MACs of a Linear/Conv1d layer, quantized or not."""
    weight = getattr(module, "weight", None)
    dtype = weight.dtype if isinstance(weight, Tensor) else torch.float32
    if _is_quantized_layer(module):
        return int(module.weight_bits), activation_bits(module.input_quant, dtype)
    return _dtype_bits(dtype), _dtype_bits(dtype)


def is_quantized_mac(bits: tuple[int, int]) -> bool:
    """A MAC runs on low-bit hardware only when both operands are below 16 bits."""
    return max(bits) < LOW_BIT_LIMIT


def weight_scale_count(module: nn.Module) -> int:
    """Number of scales a quantized layer stores with its weight: one per tensor, or per output channel."""
    if getattr(module, "per_channel", False):
        return int(module.weight.shape[0])
    return 1


# ---------------------------------------------------------------------------------------------------------
# parameters and storage


def inference_state(model: nn.Module) -> Iterator[tuple[str, Tensor, nn.Module]]:
    """``(name, tensor, owner module)`` for every parameter and floating-point buffer a deployed model stores.

    Leaves out the pretraining head and integer/bool bookkeeping buffers; shared tensors appear once.
    """
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        tensors = list(module.named_parameters(recurse=False)) + [
            (n, b) for n, b in module.named_buffers(recurse=False) if b is not None and b.is_floating_point()
        ]
        for local, tensor in tensors:
            name = f"{module_name}.{local}" if module_name else local
            if id(tensor) in seen or part_of(name) == "head":
                continue
            seen.add(id(tensor))
            yield name, tensor, module


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per part (:data:`PARTS`) and in ``total`` (all parts but the head)."""
    counts = dict.fromkeys(PARTS, 0)
    for name, param in model.named_parameters():
        counts[part_of(name)] += param.numel()
    counts["total"] = sum(v for k, v in counts.items() if k != "head")
    return counts


@dataclass
class Storage:
    """Bytes of the inference model in the two conventions, and how many weights are quantized."""

    real_bytes: float
    paper_bytes: float
    quantized_weights: int
    quantized_layers: int

    @property
    def real_mb(self) -> float:
        return self.real_bytes / MB

    @property
    def paper_mb(self) -> float:
        return self.paper_bytes / MB


def storage(model: nn.Module) -> Storage:
    """Storage of the inference model (see the module docstring for both conventions)."""
    real = paper = 0.0
    quantized_weights = quantized_layers = 0
    for name, tensor, owner in inference_state(model):
        if _is_quantized_layer(owner) and name.rsplit(".", 1)[-1] == "weight":
            scales = weight_scale_count(owner)
            bits = int(owner.weight_bits) * tensor.numel()
            real += bits / 8 + scales * 4
            paper += bits / 8 + scales * PAPER_STORAGE_BITS / 8
            quantized_weights += tensor.numel()
            quantized_layers += 1
        else:
            real += tensor.numel() * tensor.element_size()
            paper += tensor.numel() * PAPER_STORAGE_BITS / 8
    return Storage(real, paper, quantized_weights, quantized_layers)


# ---------------------------------------------------------------------------------------------------------
# MACs and FLOPs


@dataclass
class MacRecord:
    """MACs of one kind of work in one module: ``bits`` = (operand A bits, operand B bits)."""

    module: str
    kind: str  # "linear" | "conv" | "attention" | "other"
    part: str
    macs: int
    bits: tuple[int, int]
    density: float = 1.0  # fraction of (query, key) pairs a sparse layout allows (attention only)

    @property
    def quantized(self) -> bool:
        return is_quantized_mac(self.bits)


@dataclass
class MacCount:
    """What :func:`count_macs` measured: the counter's total and the MACs attributed to modules."""

    counter_flops: int
    records: list[MacRecord] = field(default_factory=list)

    def total_macs(self, quantized: bool | None = None, kind: str | None = None) -> int:
        return sum(
            r.macs
            for r in self.records
            if (quantized is None or r.quantized == quantized) and (kind is None or r.kind == kind)
        )


@contextlib.contextmanager
def explicit_attention(model: nn.Module) -> Iterator[None]:
    """Run every attention module on its explicit matmul path (numerically the same), so that
    FlopCounterMode sees its matmuls (it does not count the CPU fused SDPA kernel)."""
    saved = [(m, m.backend) for m in model.modules() if isinstance(m, MultiHeadAttention)]
    try:
        for module, _ in saved:
            module.backend = "math"
        yield
    finally:
        for module, backend in saved:
            module.backend = backend


def _attention_matmuls(module: MultiHeadAttention, args: tuple, kwargs: dict) -> list[tuple[str, int, tuple]]:
    """(name, MACs, operand bits) of the score and value matmuls of one attention call."""
    x = args[0] if args else kwargs["x"]
    batch, length, dim = x.shape
    dtype = x.dtype
    q, k, v = (activation_bits(getattr(module, f"{n}_hook"), dtype) for n in ("q", "k", "v"))
    prob = activation_bits(module.prob_hook, dtype)
    out = [("qk", batch * length * length * dim, (q, k)), ("pv", batch * length * length * dim, (prob, v))]
    if module.relative_positions:
        pos = activation_bits(module.pos_hook, dtype)
        out.append(("rel", batch * length * (2 * length - 1) * dim, (q, pos)))
    return out


def _allowed_fraction(module: MultiHeadAttention, args: tuple, kwargs: dict) -> float:
    """Fraction of the (batch, head, query, key) grid the call's mask allows (1.0 for dense, unpadded)."""
    mask = args[1] if len(args) > 1 else kwargs["mask"]
    if getattr(mask, "sparsity", None) is None:
        lengths = mask.lengths.to(torch.float64)
        return float((lengths.square().sum() / (len(lengths) * mask.length**2)).item())
    allowed = mask.dense()
    batch, length = len(mask.lengths), mask.length
    full = allowed.expand(batch, module.num_heads, length, length)
    return float(full.sum(dtype=torch.float64).item()) / full.numel()


def count_macs(model: nn.Module, run: Callable[[], object]) -> MacCount:
    """Count the MACs of ``run()`` (e.g. ``lambda: model.extract_features(w, n)``) and attribute them to the
    submodules of ``model`` that do them.

    FLOPs come from FlopCounterMode; forward hooks read the counter before and after every module call, so each
    module's own FLOPs (its total minus its children's) are known by name. Linear/Conv1d FLOPs take the layer's
    (weight, input) bits; an attention module's own FLOPs are its QK^T, PV (and rel-pos) matmuls, whose sizes
    are computed from the call's shapes and checked against the counter.
    """
    names = {id(m): n for n, m in model.named_modules()}
    inclusive: dict[str, int] = defaultdict(int)
    child_sum: dict[str, int] = defaultdict(int)
    outermost = [0]  # FLOPs inside module calls that no other hooked call encloses
    attention_calls: dict[str, list[tuple[list, float]]] = defaultdict(list)
    stack: list[tuple[str, int]] = []
    counter = FlopCounterMode(display=False)

    def pre_hook(module, args, kwargs):
        stack.append((names[id(module)], counter.get_total_flops()))

    def post_hook(module, args, kwargs, output):
        name, before = stack.pop()
        spent = counter.get_total_flops() - before
        inclusive[name] += spent
        if stack:
            child_sum[stack[-1][0]] += spent
        else:
            outermost[0] += spent
        if isinstance(module, MultiHeadAttention):
            attention_calls[name].append(
                (_attention_matmuls(module, args, kwargs), _allowed_fraction(module, args, kwargs))
            )

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(module.register_forward_hook(post_hook, with_kwargs=True))
    try:
        with explicit_attention(model), torch.no_grad(), counter:  # not inference_mode: breaks ModuleTracker
            run()
    finally:
        for handle in handles:
            handle.remove()

    result = MacCount(counter_flops=counter.get_total_flops())
    modules = dict(model.named_modules())
    own = {n: inclusive[n] - child_sum[n] for n in inclusive}
    # work outside every module call (e.g. matmuls in a method like extract_features itself): the root's
    own[""] = own.get("", 0) + result.counter_flops - outermost[0]
    for name, flops in own.items():
        if flops == 0:
            continue
        if flops % 2:
            raise RuntimeError(f"module {name!r}: odd FLOP count {flops}; expected 2 FLOP per MAC")
        module = modules[name]
        if isinstance(module, MultiHeadAttention):
            result.records += _attention_records(name, flops, attention_calls[name])
        elif isinstance(module, (nn.Linear, nn.Conv1d)):
            kind = "linear" if isinstance(module, nn.Linear) else "conv"
            result.records.append(MacRecord(name, kind, part_of(name), flops // 2, layer_bits(module)))
        else:
            result.records.append(MacRecord(name, "other", part_of(name), flops // 2, (32, 32)))
    return result


def _attention_records(name: str, flops: int, calls: list[tuple[list, float]]) -> list[MacRecord]:
    expected = 2 * sum(macs for matmuls, _ in calls for _, macs, _ in matmuls)
    if expected != flops:
        raise RuntimeError(
            f"attention module {name!r}: the counter saw {flops} FLOPs but its QK^T/PV/rel-pos matmuls need "
            f"{expected}; the attention code changed and the profiler must be updated"
        )
    part = part_of(name)
    records = []
    for matmuls, density in calls:
        for _, macs, bits in matmuls:
            records.append(MacRecord(name, "attention", part, macs, bits, density))
    return records


# ---------------------------------------------------------------------------------------------------------
# conventions


def flop_weight(bits: tuple[int, int]) -> float:
    """FLOP weight of one MAC: 2 for full precision, ``2 * b_w * b_a / 64`` for quantized MACs."""
    return 2.0 * (bits[0] * bits[1] / 64.0 if is_quantized_mac(bits) else 1.0)


def bop_paper(count: MacCount) -> tuple[float, float]:
    """(BOP_NonQ, BOP_BQ) in G = 2**30: ``16 * MACs_fp`` and ``sum(MACs_q * b_w * b_a)``."""
    nonq = sum(r.macs for r in count.records if not r.quantized) * PAPER_NONQ_BITS / GIB
    bq = sum(r.macs * r.bits[0] * r.bits[1] for r in count.records if r.quantized) / GIB
    return nonq, bq


def bop_bits(count: MacCount) -> float:
    """Bayesian-Bits BOPs in G = 1e9: ``sum(MACs * b_w * b_a)`` (an FP32 MAC is 1024 bit-operations)."""
    return sum(r.macs * r.bits[0] * r.bits[1] for r in count.records) / G


def est_time_a100(bop_nonq_g: float, bop_bq_g: float) -> float:
    """The paper's estimated A100 time in seconds: ``(BOP_NonQ / 312 + BOP_BQ / 4992) / 1024``."""
    return (bop_nonq_g / A100_FP16_TFLOPS + bop_bq_g / A100_BINARY_TOPS) / 1024.0


# ---------------------------------------------------------------------------------------------------------
# latency


def cpu_latency(
    model: nn.Module, waveforms: Tensor, lengths: Tensor, runs: int = 3, warmup: int = 1
) -> tuple[float, float]:
    """Medians over ``runs`` feature-extraction passes (after ``warmup`` untimed ones) of the wall time and of
    the process CPU time (all threads), in ms. On a shared machine the CPU time is the steadier of the two."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    wall, cpu = [], []
    with torch.inference_mode():
        for i in range(warmup + runs):
            start, start_cpu = time.perf_counter(), time.process_time()
            model.extract_features(waveforms, lengths)
            if i >= warmup:
                wall.append((time.perf_counter() - start) * 1e3)
                cpu.append((time.process_time() - start_cpu) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def deployed_model(model: HubertModel, waveforms: Tensor, lengths: Tensor) -> tuple[str, nn.Module] | None:
    """(runtime name, model) of what a deployment runs: ``("fp32", model)`` for a full-precision model, and for a
    W1A1 model ``("binary", a copy on the binary runtime)``; its uninitialised activation scales (an untrained
    model, e.g. a preset binarized for profiling) are set from ``waveforms`` first. None for other
    quantizations, or when the binary kernels are unavailable (the runtime then warns once)."""
    spec = model.quant_spec
    if spec is None:
        return "fp32", model
    if spec.name != "W1A1" or waveforms.device.type != "cpu":
        return None
    deployed = copy.deepcopy(model).eval()
    with calibrating_scales(deployed) as pending, torch.no_grad():
        if pending:
            deployed.extract_features(waveforms, lengths)
    deployed = to_binary_runtime(deployed)
    return ("binary", deployed) if is_binary_runtime(deployed) else None


def latency_at(
    model: nn.Module, waveforms: Tensor, lengths: Tensor, threads: int, runs: int = 3
) -> tuple[float, float]:
    """:func:`cpu_latency` with ``threads`` torch intra-op threads (restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return cpu_latency(model, waveforms, lengths, runs=runs)
    finally:
        torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------------------
# one row of Table 1


@dataclass
class ModelProfile:
    """One row of our Table 1. Field meanings and conventions: module docstring and ``report.FOOTNOTES``."""

    model: str
    precision: str
    seconds: float
    frames: int
    params: int
    params_frontend: int
    params_positional: int
    params_encoder: int
    params_head: int
    params_other: int
    quantized_layers: int
    quantized_weights: int
    storage_mb: float
    storage_mb_paper_convention: float
    flop_g: float
    flop_counter_g: float
    flop_frontend_g: float
    flop_positional_g: float
    flop_encoder_g: float
    attn_flop_g: float
    attn_flop_sparse_g: float
    attn_allowed_fraction: float
    flop_sparse_g: float
    macs_fp_g: float
    macs_q_g: float
    bop_nonq_g: float
    bop_bq_g: float
    bop_bits_g: float
    est_time_a100_1e4s: float
    cpu_latency_ms: float | None = None
    cpu_time_ms: float | None = None
    cpu_threads: int = 0
    runtime: str | None = None  # what the measured latency ran: "fp32" or "binary" (1-bit kernels)
    runtime_latency_ms_1t: float | None = None
    runtime_latency_ms_2t: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def model_precision(model: HubertModel) -> tuple[str, str]:
    """(row-name prefix, precision label): ``("", "FP32")`` or ``("bq_", "FP32-W1A1")`` and the like."""
    dtype = next(model.parameters()).dtype
    base = f"FP{_dtype_bits(dtype)}" if dtype.is_floating_point else str(dtype)
    spec = model.quant_spec
    if spec is None:
        return "", base
    prefix = "bq_" if spec.name == "W1A1" else f"{spec.name.lower()}_"
    return prefix, f"{base}-{spec.name}"


def profile_model(
    model: HubertModel,
    seconds: float = 10.0,
    name: str | None = None,
    latency_runs: int = 3,
    seed: int = 0,
) -> ModelProfile:
    """Profile ``model`` (a :class:`hubert_lit.models.HubertModel`, binarized or not) on one utterance of
    ``seconds`` of random audio at 16 kHz, batch 1, in eval mode. ``latency_runs = 0`` skips the timing: the model
    as given at the current thread count, and the deployed model (:func:`deployed_model`) at 1 and 2 threads."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    num_samples = round(seconds * SAMPLE_RATE)
    if num_samples < 400:
        raise ValueError(
            f"seconds={seconds} gives {num_samples} samples; one frame needs at least 400 (25 ms)"
        )
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    waveforms = torch.randn(1, num_samples, generator=generator).to(device)
    lengths = torch.tensor([num_samples], device=device)
    try:
        count = count_macs(model, lambda: model.extract_features(waveforms, lengths))
        latency = (
            cpu_latency(model, waveforms, lengths, runs=latency_runs) if latency_runs > 0 else (None, None)
        )
        deployed = deployed_model(model, waveforms, lengths) if latency_runs > 0 else None
        runtime_latency = {
            threads: latency_at(deployed[1], waveforms, lengths, threads, latency_runs)[0]
            for threads in (RUNTIME_THREADS if deployed is not None else ())
        }
    finally:
        model.train(was_training)

    params = parameter_counts(model)
    store = storage(model)
    flop = sum(r.macs * flop_weight(r.bits) for r in count.records)
    attention = [r for r in count.records if r.kind == "attention"]
    attn = sum(r.macs * flop_weight(r.bits) for r in attention)
    attn_sparse = sum(r.macs * flop_weight(r.bits) * r.density for r in attention)
    attn_macs = sum(r.macs for r in attention)
    nonq, bq = bop_paper(count)
    prefix, precision = model_precision(model)
    base_name = name or model.config.name

    def part_flop(part: str) -> float:
        return sum(r.macs * flop_weight(r.bits) for r in count.records if r.part == part) / G

    return ModelProfile(
        model=f"{prefix}{base_name}",
        precision=precision,
        seconds=seconds,
        frames=model.num_frames(num_samples),
        params=params["total"],
        params_frontend=params["frontend"],
        params_positional=params["positional"],
        params_encoder=params["encoder"],
        params_head=params["head"],
        params_other=params["other"],
        quantized_layers=store.quantized_layers,
        quantized_weights=store.quantized_weights,
        storage_mb=store.real_mb,
        storage_mb_paper_convention=store.paper_mb,
        flop_g=flop / G,
        flop_counter_g=count.counter_flops / G,
        flop_frontend_g=part_flop("frontend"),
        flop_positional_g=part_flop("positional"),
        flop_encoder_g=part_flop("encoder"),
        attn_flop_g=attn / G,
        attn_flop_sparse_g=attn_sparse / G,
        attn_allowed_fraction=(sum(r.macs * r.density for r in attention) / attn_macs) if attn_macs else 1.0,
        flop_sparse_g=(flop - attn + attn_sparse) / G,
        macs_fp_g=count.total_macs(quantized=False) / G,
        macs_q_g=count.total_macs(quantized=True) / G,
        bop_nonq_g=nonq,
        bop_bq_g=bq,
        bop_bits_g=bop_bits(count),
        est_time_a100_1e4s=est_time_a100(nonq, bq) * 1e4,
        cpu_latency_ms=latency[0],
        cpu_time_ms=latency[1],
        cpu_threads=torch.get_num_threads(),
        runtime=deployed[0] if deployed is not None else None,
        runtime_latency_ms_1t=runtime_latency.get(1),
        runtime_latency_ms_2t=runtime_latency.get(2),
    )
