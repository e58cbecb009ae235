"""Binary runtime (issue 14): W1A1 models on the popcount kernels give the simulated model's results, site by site
exactly (integer dot products) and block by block within float32 rounding, on all five encoders with padded
batches; packed exports and checkpoints load into it; without the kernels it says so once and runs simulated."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import Tensor, nn

import hubert_lit
from hubert_lit.checkpoint import packed_payload, save_model, save_packed
from hubert_lit.export.pipeline import rounded_copy
from hubert_lit.models import build_hubert
from hubert_lit.models.attention import MultiHeadAttention
from hubert_lit.profile.paper_tables import ENCODERS
from hubert_lit.quant import (
    ActivationQuantizer,
    BinaryConv1d,
    BinaryLinear,
    QuantSpec,
    activation_quantizers,
    binarize,
    quantized_layers,
)
from hubert_lit.quant import binary_kernels as bk
from hubert_lit.quant.binarizers import MIN_ALPHA
from hubert_lit.quant.binary_kernels import extension
from hubert_lit.quant.runtime import (
    PackedAttention,
    PackedLinear,
    PackedPointwiseConv1d,
    convert,
    is_binary_runtime,
    to_binary_runtime,
)

TINY = [f"{name}_tiny" for name in ENCODERS]
SAMPLES = (16000, 11200)  # a padded batch: 49 and 34 frames
FP32_UNIT = 2.0**-24
# Block outputs may differ by float32 rounding only: summation order inside the GEMMs, the epilogue's two roundings,
# norms. 2^-16 of the block's largest output is ~250 float32 units; one flipped binary activation moves an output by
# about 1e-2 of it.
BLOCK_TOLERANCE = 2.0**-16
MAX_FLIP_FRACTION = 1e-4


def _batch() -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(len(SAMPLES), max(SAMPLES), generator=gen), torch.tensor(SAMPLES)


def _trained_like(name: str, spec: QuantSpec | None = None) -> nn.Module:
    """A binarized tiny model with what training gives a real one: non-zero biases and shifts (with zeros, an exact
    tie ``x + shift == 0`` is common, and the float32 simulation breaks it by rounding noise where the kernels
    compute an exact 0), data-initialised scales, and probability scales at which about half of the probabilities
    pass (untrained attention is near uniform, and its initial threshold, twice the mean, lets almost none through).
    The threshold ``a / 2`` is put 1 % above the median, not on it: a probability exactly at the threshold is a
    tie that float32 rounding of the scores decides either way."""
    torch.manual_seed(0)
    model = binarize(build_hubert(name, num_classes=0, **{"encoder.layerdrop": 0.0}), spec)
    with torch.no_grad():
        for _, layer in quantized_layers(model):
            if layer.bias is not None:
                layer.bias.normal_(0.0, 0.05)
        for _, quant in activation_quantizers(model):
            if quant.shift is not None:
                quant.shift.normal_(0.0, 0.05)
    waves, lengths = _batch()
    model.train()
    with torch.no_grad():
        model.extract_features(waves, lengths)
    model.eval()
    probs: dict[str, Tensor] = {}
    hooks = {n: m.prob_hook for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)}
    handles = [
        hook.register_forward_pre_hook(lambda _m, args, n=n: probs.__setitem__(n, args[0]))
        for n, hook in hooks.items()
    ]
    with torch.no_grad():
        model.extract_features(waves, lengths)
        for n, hook in hooks.items():
            hook.alpha.fill_(2.02 * probs[n][probs[n] > 0].median())
    for handle in handles:
        handle.remove()
    return model


@pytest.fixture(scope="module")
def models(binary_kernels) -> dict[str, tuple[nn.Module, nn.Module]]:
    """(simulated, binary runtime) of every tiny encoder, built once for the module."""
    if not binary_kernels.available:
        pytest.skip(
            f"binary kernels unavailable here ({binary_kernels.reason}); the fallback test covers this"
        )
    pairs = {}
    for name in TINY:
        simulated = _trained_like(name)
        pairs[name] = (simulated, to_binary_runtime(copy.deepcopy(simulated)))
    return pairs


def _record(module: nn.Module, targets: dict[str, nn.Module], run) -> list[tuple[str, tuple, dict, object]]:
    """(name, args, kwargs, output) of every call of the ``targets`` modules during ``run()``, in call order."""
    calls = []
    handles = [
        m.register_forward_hook(
            lambda _m, args, kwargs, out, n=n: calls.append((n, args, kwargs, out)), with_kwargs=True
        )
        for n, m in targets.items()
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _features(model: nn.Module) -> list[Tensor]:
    waves, lengths = _batch()
    with torch.no_grad():
        return model.extract_features(waves, lengths)[0]


# --- per site: the popcount GEMMs equal the simulated GEMM in float64 ------------------------------------------


def _levels(quant: ActivationQuantizer, x: Tensor) -> Tensor:
    """The quantizer's output in units of its scale (+-1, or 0/1), in float64: exact integers."""
    with torch.no_grad():
        return (quant(x) / quant.alpha.detach().clamp_min(MIN_ALPHA)).double()


def _check_layer_site(site: str, layer: nn.Module, packed: nn.Module, x: Tensor) -> None:
    """Integer dots of a packed Linear / pointwise conv equal the float64 product of the simulated layer's input
    levels and weight signs; its scaled output is within float32 rounding of the float64 result."""
    codes, step = layer.weight_codes()
    signs = 2 * codes.reshape(codes.shape[0], -1).double() - 1
    levels = _levels(layer.input_quant, x)
    conv = isinstance(layer, BinaryConv1d)  # (B, C, T): the dot products run over channels
    truth = (levels.transpose(1, 2) @ signs.T).transpose(1, 2) if conv else levels @ signs.T
    dots = packed.integer_dots(x)
    assert dots.dtype == torch.int32 and torch.equal(dots.double(), truth), site
    # scaled: two float32 roundings of an exact integer times the rounded scale, plus the bias
    scale = (layer.input_quant.alpha.detach().clamp_min(MIN_ALPHA) * step.reshape(-1) / 2).double()
    bias = layer.bias.double()
    if conv:
        scale, bias = scale[:, None], bias[:, None]
    with torch.no_grad():
        got = packed(x).double()
    exact = truth * scale + bias
    assert ((got - exact).abs() <= 4 * FP32_UNIT * (truth.abs() * scale + bias.abs())).all(), site


def _check_attention_site(site: str, layer: nn.Module, packed: nn.Module, args: tuple, probs: Tensor) -> None:
    """q k^T (XNOR) and P V (AND) of the packed attention, on the simulated module's own projections and
    probabilities, equal the float64 products of the simulated hooks' levels; the fused softmax-binarizer decides
    as the simulated probability hook does, up to ties within float32 rounding."""
    x, mask = args[0], args[1]
    batch, length, _ = x.shape

    def per_head(t: Tensor) -> Tensor:
        return t.view(batch, length, layer.num_heads, layer.head_dim).transpose(1, 2)

    with torch.no_grad():
        q, k, v = layer.q_proj(x), layer.k_proj(x), layer.v_proj(x)
    scores = per_head(_levels(layer.q_hook, q)) @ per_head(_levels(layer.k_hook, k)).transpose(-1, -2)
    dots = bk.xnor_bmm(*packed.pack_scores(per_head(q), per_head(k)), None)
    assert torch.equal(dots.double(), scores), f"{site} q k^T"
    on = _levels(layer.prob_hook, probs)
    assert 0.05 < float(on.mean()) < 0.95, f"{site}: probability bits are nearly constant"
    on_bits = bk.pack_unsigned(
        probs, packed.prob_alpha
    )  # the hook's decisions on the simulated probabilities
    assert torch.equal(bk.unpack(on_bits), on > 0), site
    context = on @ per_head(_levels(layer.v_hook, v))
    dots = bk.and_bmm(on_bits, packed.pack_values(per_head(v)), None)
    assert torch.equal(dots.double(), context), f"{site} P V"
    # the runtime's probability bits come from the scores; log p has the same softmax (padded keys: the mask)
    fused = bk.unpack(packed.pack_probabilities(probs.log(), mask))
    assert int((fused != (on > 0)).sum()) <= MAX_FLIP_FRACTION * on.numel(), f"{site} softmax bits"


@pytest.mark.parametrize("name", TINY)
def test_every_binary_gemm_equals_the_simulated_gemm_in_float64(models, name):
    simulated, runtime = models[name]
    modules, packed = dict(simulated.named_modules()), dict(runtime.named_modules())
    layers = {
        n: modules[n] for n, m in packed.items() if isinstance(m, (PackedLinear, PackedPointwiseConv1d))
    }
    attentions = {n: modules[n] for n, m in packed.items() if isinstance(m, PackedAttention)}
    assert layers and len(attentions) == simulated.num_layers
    probs: dict[str, list[Tensor]] = {}  # the probabilities each simulated attention call binarized
    handles = [
        a.prob_hook.register_forward_pre_hook(lambda _m, args, n=n: probs.setdefault(n, []).append(args[0]))
        for n, a in attentions.items()
    ]
    try:
        calls = _record(simulated, {**layers, **attentions}, lambda: _features(simulated))
    finally:
        for handle in handles:
            handle.remove()
    seen = set()
    for site, args, _, _ in calls:
        seen.add(site)
        if site in layers:
            _check_layer_site(site, modules[site], packed[site], args[0])
        else:
            _check_attention_site(site, modules[site], packed[site], args, probs[site].pop(0))
    assert seen == set(layers) | set(attentions)


# --- block by block: within float32 rounding, and (almost) no flipped signs at the next binarizer ----------------


def _encoder_steps(model: nn.Module) -> dict[str, nn.Module]:
    """The modules the encoder calls one after the other: its blocks, and Squeezeformer's time reduction/recovery."""
    steps = {f"encoder.layers.{i}": layer for i, layer in enumerate(model.encoder.layers)}
    for extra in ("time_reduction", "time_recovery"):
        if hasattr(model.encoder, extra):
            steps[f"encoder.{extra}"] = getattr(model.encoder, extra)
    return steps


def _first_binarizer_output(step: nn.Module, args: tuple, kwargs: dict) -> Tensor:
    """What the first activation quantizer ``step`` calls outputs when ``step`` runs on ``args``."""
    outputs: list[Tensor] = []
    quants = [m for m in step.modules() if isinstance(m, ActivationQuantizer)]
    handles = [q.register_forward_hook(lambda _m, _a, out: outputs.append(out)) for q in quants]
    try:
        with torch.no_grad():
            step(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return outputs[0]


@pytest.mark.parametrize("name", TINY)
def test_each_block_matches_the_simulated_block(models, name):
    simulated, runtime = models[name]
    calls = _record(simulated, _encoder_steps(simulated), lambda: _features(simulated))
    runtime_steps = _encoder_steps(runtime)
    flipped = compared = 0
    for i, (step, args, kwargs, expected) in enumerate(calls):
        with torch.no_grad():
            got = runtime_steps[step](*args, **kwargs)
        error = (got - expected).abs().max()
        assert error <= BLOCK_TOLERANCE * expected.abs().max(), f"{step}: max error {float(error):.3g}"
        if i + 1 < len(calls):
            following, next_args, next_kwargs, _ = calls[i + 1]
            assert next_args[0] is expected  # the next step reads this output
            module = dict(simulated.named_modules())[following]
            want = _first_binarizer_output(module, (expected, *next_args[1:]), next_kwargs)
            have = _first_binarizer_output(module, (got, *next_args[1:]), next_kwargs)
            flipped += int((want != have).sum())
            compared += want.numel()
    assert compared > 0 and flipped <= MAX_FLIP_FRACTION * compared, f"{flipped} of {compared} flipped"


def test_runtime_features_match_the_simulated_features(models):
    for name, (simulated, runtime) in models.items():
        for want, got in zip(_features(simulated), _features(runtime), strict=True):
            assert (got - want).abs().max() <= BLOCK_TOLERANCE * want.abs().max(), name


def test_a_spec_of_version_010_runs_too(binary_kernels):
    """0.1.0's switches: per-channel pointwise scales, binarized relative positions (a packed linear_pos, the
    position term through the simulated pos_hook), dropout after the probability binarizer."""
    if not binary_kernels.available:
        pytest.skip(binary_kernels.reason)
    simulated = _trained_like("conformer_s_tiny", QuantSpec.from_dict({}))
    assert simulated.quant_spec.binarize_relative_positions
    runtime = to_binary_runtime(copy.deepcopy(simulated))
    assert isinstance(runtime.encoder.layers[0].attention.linear_pos, PackedLinear)
    assert isinstance(runtime.encoder.layers[0].conv.pointwise_conv1, PackedPointwiseConv1d)
    for want, got in zip(_features(simulated), _features(runtime), strict=True):
        assert (got - want).abs().max() <= BLOCK_TOLERANCE * want.abs().max()


# --- what the conversion builds --------------------------------------------------------------------------------


def test_weights_stay_bit_packed(models):
    simulated, runtime = models["conformer_s_tiny"]
    assert is_binary_runtime(runtime) and not is_binary_runtime(simulated)
    remaining = {n for n, m in runtime.named_modules() if isinstance(m, (BinaryLinear, BinaryConv1d))}
    assert remaining == {
        n for n, m in simulated.named_modules() if isinstance(m, BinaryConv1d) and m.is_depthwise
    }
    for name, module in runtime.named_modules():
        if isinstance(module, (PackedLinear, PackedPointwiseConv1d)):
            weight = dict(simulated.named_modules())[name].weight
            n, k = module.out_features, module.in_features
            assert module.weight_words.dtype == torch.uint32
            assert module.weight_words.numel() == -(-n // 16) * 16 * -(-k // 32)  # 1 bit per weight, padded
            floats = [t for t in module.buffers() if t.is_floating_point()]
            assert max(t.numel() for t in floats) < weight.numel()  # no float copy of the weight
    assert not any(isinstance(m, MultiHeadAttention) for m in runtime.modules())


def test_runtime_is_inference_only(models):
    runtime = copy.deepcopy(models["vanilla_tiny"][1])
    with pytest.raises(RuntimeError, match="inference only"):
        runtime.train()
    layer = next(m for m in runtime.modules() if isinstance(m, PackedLinear))
    layer.training = True  # set behind train()'s back
    with pytest.raises(RuntimeError, match="inference only"):
        _features(runtime)
    with pytest.raises(ValueError, match="binary runtime"):
        save_model(runtime, "unused.pt")


def test_conversion_errors_name_the_problem():
    fp = build_hubert("vanilla_tiny", num_classes=0)
    with pytest.raises(ValueError, match="full precision"):
        to_binary_runtime(fp)
    with pytest.raises(ValueError, match="W1A2"):
        to_binary_runtime(binarize(copy.deepcopy(fp), QuantSpec(activation_bits=2)))
    with pytest.raises(ValueError, match=r"layers\.0\.attention\.k_proj\.input_quant: the activation scale"):
        to_binary_runtime(binarize(copy.deepcopy(fp)))


# --- files -----------------------------------------------------------------------------------------------------


def _assert_close(got: list[Tensor], want: list[Tensor], what: str) -> None:
    for g, w in zip(got, want, strict=True):
        assert (g - w).abs().max() <= BLOCK_TOLERANCE * w.abs().max(), what


def test_files_load_into_the_binary_runtime(models, tmp_path):
    simulated = models["conformer_s_tiny"][0]  # relative positions, pointwise and depthwise convolutions
    save_model(simulated, tmp_path / "model.pt")
    save_packed(simulated, tmp_path / "packed.pt")
    save_packed(simulated, tmp_path / "packed16.pt", full_precision_bits=16, drop_head=True)
    want = _features(simulated)
    for file in ("model.pt", "packed.pt"):
        runtime = hubert_lit.load_model(tmp_path / file, runtime="binary")
        assert is_binary_runtime(runtime), file
        _assert_close(_features(runtime), want, file)
    runtime = hubert_lit.load_model(tmp_path / "packed16.pt", runtime="binary")
    assert is_binary_runtime(runtime) and runtime.config.num_classes == 0
    _assert_close(_features(runtime), _features(rounded_copy(simulated, 16)), "packed16.pt")
    assert not is_binary_runtime(hubert_lit.load_model(tmp_path / "packed.pt"))  # the default stays simulated


def test_load_model_runtime_errors(tmp_path):
    save_model(build_hubert("vanilla_tiny", num_classes=0), tmp_path / "fp.pt")
    with pytest.raises(ValueError, match=r"fp\.pt holds a full-precision model"):
        hubert_lit.load_model(tmp_path / "fp.pt", runtime="binary")
    with pytest.raises(ValueError, match="runtime must be one of"):
        hubert_lit.load_model(tmp_path / "fp.pt", runtime="popcount")


def test_packed_payload_with_16_bit_full_precision_parts(models):
    payload = packed_payload(models["vanilla_tiny"][0], full_precision_bits=16, drop_head=True)
    floats = [t for t in payload["state_dict"].values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float16 for t in floats)
    assert payload["full_precision_bits"] == 16 and payload["config"]["num_classes"] == 0
    assert all(e["step"].dtype == torch.float32 for e in payload["packed"].values())  # weight scales exact


# --- without the kernels ---------------------------------------------------------------------------------------


def test_without_kernels_the_runtime_warns_once_and_runs_simulated(monkeypatch, binary_kernels):
    simulated = _trained_like("sparseformer_dn_s_tiny")
    want = _features(simulated)
    monkeypatch.setattr(convert, "_fallback_warned", False)
    monkeypatch.setattr(
        extension, "_state", extension.LoadResult(False, False, None, "RuntimeError: no C++ compiler found")
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = to_binary_runtime(copy.deepcopy(simulated))
        second = to_binary_runtime(copy.deepcopy(simulated))
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "no C++ compiler" in messages[0] and "simulated" in messages[0]
    for model in (first, second):
        assert not is_binary_runtime(model)
        assert all(torch.equal(a, b) for a, b in zip(_features(model), want, strict=True))


@pytest.mark.skipif("not extension.load().available")
def test_a_forced_fallback_keeps_the_model_simulated(monkeypatch):
    simulated = _trained_like("vanilla_tiny")
    monkeypatch.setattr(convert, "_fallback_warned", False)
    with pytest.warns(RuntimeWarning, match="use_fallback"), bk.use_fallback():
        model = to_binary_runtime(copy.deepcopy(simulated))
    assert not is_binary_runtime(model)
    assert to_binary_runtime(model) is model and is_binary_runtime(model)  # kernels back: converts now
    assert isinstance(model.encoder.layers[0].attention, PackedAttention)
