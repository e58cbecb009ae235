"""Binary kernels: packing and XNOR/AND-popcount GEMMs are exact, on every ISA path and in the PyTorch fallback;
the extension is cached across processes and falls back (with one warning) when it cannot be built."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hubert_lit.quant import ActivationQuantizer, BinaryConv1d, BinaryLinear
from hubert_lit.quant import binary_kernels as bk
from hubert_lit.quant.binarizers import MIN_ALPHA, dequantize_weight, elastic_quantize, quantize_weight_codes

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import _binary_kernel_probe as probe  # noqa: E402

ISAS = ["avx512", "avx2", "generic", "torch"]  # "torch" = the pure-PyTorch fallback
REPO = TESTS.parent
FP32_UNIT = 2.0**-24

# (m, k, n): k not a multiple of 64 or 32, m = 1, odd n, n not a multiple of the 16-column panel, m beyond one
# 12-row work unit
SHAPES = [
    (1, 1, 1),
    (1, 64, 1),
    (3, 63, 17),
    (5, 65, 31),
    (29, 200, 33),
    (16, 129, 16),
    (2, 1000, 5),
    (13, 576, 144),
]


@pytest.fixture(params=ISAS)
def isa(request, binary_kernels):
    """Run the test on one code path: an extension ISA (skipped where this CPU lacks it) or the fallback."""
    if request.param == "torch":
        with bk.use_fallback():
            yield request.param
        return
    if request.param not in bk.supported_isas():
        pytest.skip(f"ISA {request.param} not available here")
    best = bk.active_isa()
    bk.set_isa(request.param)
    try:
        yield request.param
    finally:
        bk.set_isa(best)


def _compiler_present() -> bool:
    return shutil.which(os.environ.get("CXX", "c++")) is not None


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {
        flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":")[1].split()
    }


# --- the extension --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not _compiler_present(), reason="no C++ compiler: the fallback tests cover this machine")
def test_extension_builds_and_runs_the_best_isa_of_this_cpu(binary_kernels):
    assert binary_kernels.available, binary_kernels.reason
    isas = bk.supported_isas()
    assert isas[-1] == "generic" and bk.active_isa() == isas[0]
    flags = _cpu_flags()
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vpopcntdq"} <= flags:
        assert isas[0] == "avx512"
    if "avx2" in flags and "popcnt" in flags:
        assert "avx2" in isas
    with pytest.raises(RuntimeError, match="not available"):
        bk.set_isa("sse9")


# --- exactness ------------------------------------------------------------------------------------------------


def _operands(m: int, k: int, n: int, unsigned: bool, gen: torch.Generator):
    """Random activations with a shift and scale, weight codes and steps (per tensor and per channel), a bias."""
    x = torch.randn(m, k, generator=gen)
    if unsigned:
        x = x.relu()  # post-ReLU input, many exact zeros
    shift = 0.3 * torch.randn(k, generator=gen)
    alpha = torch.tensor(0.3) + torch.rand((), generator=gen)
    weight = torch.randn(n, k, generator=gen)
    return x, shift, alpha, weight, torch.randn(n, generator=gen)


def _simulated(x, shift, alpha, codes, step, bias, unsigned):
    """The simulated binarized GEMM in float64 (quantized values from the model's own quantizers), and the
    quantized levels' integer dot products."""
    xq = elastic_quantize(x + shift, alpha.clamp_min(MIN_ALPHA), bits=1, signed=not unsigned).double()
    wq = dequantize_weight(codes, step, 1, torch.float64)
    levels = xq / alpha.clamp_min(MIN_ALPHA).double()
    dots = levels @ (2 * codes.double() - 1).T
    return xq @ wq.T + (0 if bias is None else bias.double()), dots


@pytest.mark.parametrize("unsigned", [False, True], ids=["xnor", "and"])
def test_gemm_equals_the_simulated_gemm_in_float64(isa, unsigned):
    gen = torch.Generator().manual_seed(1)
    gemm, pack = (bk.and_gemm, bk.pack_unsigned) if unsigned else (bk.xnor_gemm, bk.pack_signed)
    for m, k, n in SHAPES:
        x, shift, alpha, weight, bias = _operands(m, k, n, unsigned, gen)
        bits = pack(x, alpha, shift) if unsigned else pack(x, shift)
        for per_channel in (False, True):
            codes, step = quantize_weight_codes(weight, 1, per_channel)
            w = bk.pack_weight(codes)
            scale = bk.column_scale(alpha.clamp_min(MIN_ALPHA), step / 2, n)
            for b in (None, bias):
                truth, dots = _simulated(x, shift, alpha, codes, step, b, unsigned)
                context = f"{isa} m={m} k={k} n={n} per_channel={per_channel} bias={b is not None}"
                raw = gemm(bits, w, None)
                assert raw.dtype == torch.int32 and torch.equal(raw.double(), dots), context
                out = gemm(bits, w, scale, b)
                # float32(dot) * scale (+ bias): two roundings of an exact integer times the rounded scale
                magnitude = (dots.abs() * scale.double()) + (0 if b is None else b.double().abs())
                assert ((out.double() - truth).abs() <= 4 * FP32_UNIT * magnitude).all(), context


def test_every_path_gives_bit_identical_results(binary_kernels):
    """Packed words, integer dots and scaled outputs agree bit for bit between every ISA and the fallback."""
    gen = torch.Generator().manual_seed(2)
    results = {}
    paths = [*bk.supported_isas(), "torch"]
    best = bk.active_isa()
    for path in paths:
        gen.manual_seed(2)
        outputs = []
        for m, k, n in SHAPES:
            x, shift, alpha, weight, bias = _operands(m, k, n, True, gen)
            codes, step = quantize_weight_codes(weight, 1, True)
            if path == "torch":
                context = bk.use_fallback()
            else:
                bk.set_isa(path)
                context = torch.no_grad()
            with context:
                w = bk.pack_weight(codes)
                signed, unsigned = bk.pack_signed(x, shift), bk.pack_unsigned(x, alpha, shift)
                scale = bk.column_scale(alpha, step / 2, n)
                outputs += [w.words, signed.words, unsigned.words]
                outputs += [bk.xnor_gemm(signed, w, scale, bias), bk.and_gemm(unsigned, w, scale, bias)]
                scores = x[None, None] * 3  # (1, 1, m, k): rows of k scores
                outputs += [bk.pack_softmax(scores, 1.5 / k, scores.new_ones(scores.shape).bool()).words]
                outputs += [bk.pack_softmax(scores, 1.5 / k, scores > -0.5).words]
        results[path] = outputs
    if best != "torch":
        bk.set_isa(best)
    for path in paths[1:]:
        for got, want in zip(results[path], results[paths[0]]):
            assert got.dtype == want.dtype and torch.equal(got, want), path


def test_results_do_not_depend_on_the_thread_count(binary_kernels):
    gen = torch.Generator().manual_seed(3)
    x, shift, alpha, weight, bias = _operands(200, 512, 256, False, gen)
    probs = torch.rand(2, 3, 70, 70, generator=gen)
    values = torch.randn(2, 3, 70, 32, generator=gen)
    codes, step = quantize_weight_codes(weight, 1, False)
    w = bk.pack_weight(codes)

    def run():
        y = bk.xnor_gemm(bk.pack_signed(x, shift), w, bk.column_scale(alpha, step / 2, 256), bias)
        z = bk.and_bmm(bk.pack_unsigned(probs, 0.02), bk.pack_signed_columns(values), 0.5)
        return y, z, bk.pack_softmax(probs * 50, 0.03).words

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = run()
        torch.set_num_threads(2)
        double = run()
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(single, double))


def test_packing_makes_the_activation_quantizers_decision(isa):
    """Including the edge cases: exact zeros after the shift (sign(0) = +1) and values on both sides of the
    unsigned rounding threshold (round half to even: a/2 -> 0, the next float up -> a)."""
    gen = torch.Generator().manual_seed(4)
    k = 77
    for signed in (True, False):
        quant = ActivationQuantizer(1, signed, channels=k).eval()
        with torch.no_grad():
            quant.shift.normal_(0, 0.3, generator=gen)
            quant.alpha.fill_(0.7)
            quant.initialized.fill_(True)
        a = quant.alpha.detach()
        half = (0.5 * a).reshape(1)
        edges = torch.cat(
            [half, torch.nextafter(half, torch.tensor(1.0)), torch.nextafter(half, torch.tensor(0.0))]
        )
        x = torch.randn(9, k, generator=gen)
        x[0] = -quant.shift.detach()  # shifted value exactly 0
        x[1, :3] = edges - quant.shift.detach()[:3]  # shifted values at and around a / 2
        x[2, :3] = 1.5 * a - quant.shift.detach()[:3]
        expected = quant(x) > 0
        bits = bk.pack_signed(x, quant.shift) if signed else bk.pack_unsigned(x, quant.alpha, quant.shift)
        assert torch.equal(bk.unpack(bits), expected), (isa, signed)


def test_softmax_bits_are_the_quantizers_decisions_on_torch_softmax(isa):
    """pack_softmax on (B, H, T, n) scores with padded keys (a (B, 1, T, n) mask), a per-head sparse mask, a row
    with nothing allowed and a row of -inf, against torch.softmax of the masked scores and the unsigned quantizer:
    the kernels' own exp and summation may decide differently only for a probability within float32 rounding of
    the threshold."""
    gen = torch.Generator().manual_seed(8)
    batch, heads, length = 2, 3, 45
    quant = ActivationQuantizer(1, signed=False).eval()
    with torch.no_grad():
        quant.alpha.fill_(2.4 / length)
        quant.initialized.fill_(True)
    threshold = bk.ops.unsigned_threshold(quant.alpha)
    scores = 2 * torch.randn(batch, heads, length, length + 26, generator=gen)  # n = 71: not a multiple of 16
    scores[1, 2, 4] = float("-inf")
    padded = torch.ones(batch, 1, length, length + 26, dtype=torch.bool)
    padded[1, :, :, 50:] = False
    sparse = torch.rand(batch, heads, length, length + 26, generator=gen) > 0.4
    sparse[0, 1, 7] = False  # nothing allowed in this row
    decided = 0
    for allowed in (None, padded, sparse):
        masked = scores if allowed is None else scores.masked_fill(~allowed, float("-inf"))
        probs = masked.softmax(-1).nan_to_num(0.0)  # a row with nothing allowed: no probability
        with torch.no_grad():
            want = quant(probs) > 0
        got = bk.unpack(bk.pack_softmax(scores, quant.alpha, allowed))
        differ = got != want
        assert not bool(got[~torch.isfinite(masked)].any()), isa  # left-out keys never pass
        assert bool((probs[differ] - threshold).abs().le(8 * FP32_UNIT * threshold).all()), isa
        assert int(differ.sum()) <= 1e-4 * differ.numel()
        decided += int(want.sum())
    assert decided > 0.1 * 3 * scores.numel()  # the test covers both decisions


def test_softmax_argument_errors(binary_kernels):
    scores = torch.randn(2, 3, 5, 7)
    with pytest.raises(ValueError, match="allowed must be"):
        bk.pack_softmax(scores, 0.1, torch.ones(2, 2, 5, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="allowed must be"):
        bk.pack_softmax(scores, 0.1, torch.ones(3, 5, 7, dtype=torch.bool))
    with pytest.raises(TypeError, match="float32"):
        bk.pack_softmax(scores.double(), 0.1)
    with pytest.raises(ValueError, match="1 to 4 dims"):
        bk.pack_softmax(torch.randn(1, 2, 3, 5, 7), 0.1)


def _reference_tolerance(k: int, term: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """How far a float32 GEMM of k terms of magnitude ``term`` (its summation error) may be from ours."""
    bias_part = 0 if bias is None else bias.detach().abs()
    return (k + 4) * FP32_UNIT * (k * term + bias_part)


@pytest.mark.parametrize("unsigned", [False, True], ids=["signed_input", "unsigned_input"])
def test_binary_linear_matches_the_simulated_layer(isa, unsigned):
    torch.manual_seed(5)
    k, n = 300, 70
    layer = BinaryLinear(k, n, input_quant=ActivationQuantizer(1, signed=not unsigned, channels=k)).eval()
    with torch.no_grad():
        layer.input_quant.shift.normal_(0, 0.2)
        layer.input_quant.alpha.fill_(0.9)
        layer.input_quant.initialized.fill_(True)
    x = torch.randn(2, 37, k)
    if unsigned:
        x = x.relu()
    with torch.no_grad():
        simulated = layer(x)
    quant = layer.input_quant
    codes, step = layer.weight_codes()
    a = quant.alpha.detach().clamp_min(MIN_ALPHA)
    w = bk.pack_weight(codes)
    scale = bk.column_scale(a, step / 2, n)
    if unsigned:
        out = bk.and_gemm(bk.pack_unsigned(x, quant.alpha, quant.shift), w, scale, layer.bias)
    else:
        out = bk.xnor_gemm(bk.pack_signed(x, quant.shift), w, scale, layer.bias)
    assert out.shape == simulated.shape
    assert ((out - simulated).abs() <= _reference_tolerance(k, a * step / 2, layer.bias)).all()


def test_pointwise_conv_with_per_channel_scales_matches_the_simulated_layer(isa):
    torch.manual_seed(6)
    cin, cout = 144, 41
    quant = ActivationQuantizer(1, signed=True, channels=cin, channel_dim=1)
    conv = BinaryConv1d(cin, cout, 1, input_quant=quant).eval()
    with torch.no_grad():
        quant.shift.normal_(0, 0.2)
        quant.alpha.fill_(1.1)
        quant.initialized.fill_(True)
    x = torch.randn(3, cin, 25)  # (B, C, T)
    with torch.no_grad():
        simulated = conv(x)
    codes, step = conv.weight_codes()  # step: one per output channel
    w = bk.pack_weight(codes)
    scale = bk.column_scale(quant.alpha.clamp_min(MIN_ALPHA), step.reshape(-1) / 2, cout)
    out = bk.xnor_gemm(bk.pack_signed(x.transpose(1, 2), quant.shift), w, scale, conv.bias).transpose(1, 2)
    term = quant.alpha.detach() * step.reshape(1, -1, 1) / 2
    assert ((out - simulated).abs() <= _reference_tolerance(cin, term, conv.bias.reshape(1, -1, 1))).all()


def test_attention_products_match_the_simulated_attention(isa):
    """Signed q x signed k (XNOR) and unsigned probabilities x signed v (AND), batched over batch x heads, with
    per-head shifts, on the (B, H, T, d) views the attention module makes."""
    torch.manual_seed(7)
    batch, length, heads, head_dim = 2, 45, 3, 36
    dim = heads * head_dim
    hooks = {name: ActivationQuantizer(1, signed=True, channels=dim).eval() for name in "qkv"}
    hooks["p"] = ActivationQuantizer(1, signed=False).eval()
    with torch.no_grad():
        for i, quant in enumerate(hooks.values()):
            if quant.shift is not None:
                quant.shift.normal_(0, 0.2)
            quant.alpha.fill_(0.5 + 0.1 * i if quant.signed else 0.03)
            quant.initialized.fill_(True)
    q, k, v = (torch.randn(batch, length, dim) for _ in range(3))
    probs = torch.randn(batch, heads, length, length).softmax(-1)

    def heads_view(t):  # (B, T, D) -> (B, H, T, d), a strided view
        return t.view(batch, length, heads, head_dim).transpose(1, 2)

    def shift(name):
        return hooks[name].shift.view(heads, head_dim)

    with torch.no_grad():
        sq, sk, sv, sp = (hooks[name](t) for name, t in zip("qkvp", (q, k, v, probs)))
    scores_truth = heads_view(sq).double() @ heads_view(sk).double().transpose(-1, -2)
    context_truth = sp.double() @ heads_view(sv).double()

    alphas = {name: hooks[name].alpha.detach() for name in "qkvp"}
    scores = bk.xnor_bmm(
        bk.pack_signed(heads_view(q), shift("q")), bk.pack_signed_panels(heads_view(k), shift("k")),
        alphas["q"] * alphas["k"],
    )  # fmt: skip
    out = torch.empty(batch, length, heads, head_dim)  # written in place through a strided (B, H, T, d) view
    bk.and_bmm(
        bk.pack_unsigned(probs, alphas["p"]), bk.pack_signed_columns(heads_view(v), shift("v")),
        alphas["p"] * alphas["v"], out=out.transpose(1, 2),
    )  # fmt: skip
    context = out.transpose(1, 2)
    for got, truth in ((scores, scores_truth), (context, context_truth)):
        assert ((got.double() - truth).abs() <= 4 * FP32_UNIT * truth.abs().clamp_min(1e-30)).all()


def test_shape_and_argument_errors(binary_kernels):
    x = bk.pack_signed(torch.randn(4, 10))
    with pytest.raises(ValueError, match="bits per dot product"):
        bk.xnor_gemm(x, bk.pack_weight(torch.ones(3, 11, dtype=torch.uint8)), 1.0)
    with pytest.raises(ValueError, match="1-bit codes"):
        bk.pack_weight(torch.full((3, 10), 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="shift must be"):
        bk.pack_signed(torch.randn(4, 10), torch.zeros(9))
    with pytest.raises(ValueError, match="a bias needs a scale"):
        bk.xnor_gemm(x, bk.pack_weight(torch.ones(3, 10, dtype=torch.uint8)), None, torch.zeros(3))
    with pytest.raises(TypeError, match="float32"):
        bk.pack_signed(torch.randn(4, 10, dtype=torch.float64))


# --- cache and fallback (separate processes) ------------------------------------------------------------------


def _probe(tmp_path: Path, **env: str) -> tuple[dict, dict]:
    """Run tests/_binary_kernel_probe.py in a fresh process with ``env``: (its report, its outputs)."""
    out = tmp_path / "outputs.pt"
    environment = {**os.environ, "PYTHONPATH": str(REPO), **env}
    script = str(TESTS / "_binary_kernel_probe.py")
    run = subprocess.run([sys.executable, script, str(out)], capture_output=True, text=True, env=environment)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1]), torch.load(out, weights_only=True)


def _same(got: dict, want: dict) -> bool:
    return got.keys() == want.keys() and all(torch.equal(got[key], want[key]) for key in want)


@pytest.mark.parametrize(
    "env, reason",
    [({"CXX": "/nonexistent/c++"}, "no C++ compiler"), ({"HUBERT_LIT_BINARY_KERNELS": "0"}, "disabled by")],
    ids=["no_compiler", "disabled"],
)
def test_fallback_warns_once_and_gives_the_same_results(tmp_path, binary_kernels, env, reason):
    # an empty cache (also when this session's cache is named by HUBERT_LIT_EXTENSION_CACHE): without a compiler
    # nothing can be loaded
    report, outputs = _probe(
        tmp_path, XDG_CACHE_HOME=str(tmp_path / "cache"), HUBERT_LIT_EXTENSION_CACHE="", **env
    )
    assert report["isa"] == "torch" and reason in report["reason"]
    assert len(report["warnings"]) == 1 and reason in report["warnings"][0]
    assert _same(outputs, probe.outputs())  # this process runs the extension where it is available


@pytest.mark.skipif(not _compiler_present(), reason="needs the extension built by this session")
def test_a_second_process_loads_the_cached_build_without_compiling(tmp_path, binary_kernels):
    assert binary_kernels.available, binary_kernels.reason
    lower = bk.supported_isas()[-1]  # and starts on the ISA the environment asks for
    report, outputs = _probe(tmp_path, CXX="/nonexistent/c++", HUBERT_LIT_BINARY_ISA=lower)
    assert report == {"isa": lower, "compiled": False, "reason": "", "warnings": []}
    assert _same(outputs, probe.outputs())
