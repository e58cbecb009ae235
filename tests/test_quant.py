"""BiT binarization: quantizers, binarize() on every encoder, checkpoint and packed-export round trips."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hubert_lit.checkpoint import load_model, save_model
from hubert_lit.checkpoint import load_model as load_packed
from hubert_lit.checkpoint import save_packed as export_model
from hubert_lit.lit.losses import batch_objective, prediction_terms
from hubert_lit.models import build_hubert
from hubert_lit.models.attention import MultiHeadAttention
from hubert_lit.models.layers import ConvolutionModule, FeedForward
from hubert_lit.quant import (
    ActivationQuantizer,
    BinaryConv1d,
    BinaryLinear,
    QuantSpec,
    activation_quantizers,
    binarize,
    dequantize,
    quantization_plan,
    quantized_layers,
    requantize,
)
from hubert_lit.quant.binarizers import elastic_quantize, quantize_weight
from hubert_lit.quant.packing import pack_codes, unpack_codes

ENCODERS = ["vanilla", "conformer_s", "squeezeformer_xs", "sparseformer_dn_s", "sparseformer_sw_s"]
FP_PREFIXES = ("feature_extractor", "feature_projection", "pos_conv", "final_proj")
NUM_CLASSES = 10


def tiny(name: str) -> nn.Module:
    return build_hubert(f"{name}_tiny", num_classes=NUM_CLASSES, **{"encoder.layerdrop": 0.0})


def batch(model, num_samples: int = 6400, batch_size: int = 2):
    waves = torch.randn(batch_size, num_samples)
    lengths = torch.full((batch_size,), num_samples)
    labels = torch.randint(0, NUM_CLASSES, (batch_size, model.num_frames(num_samples)))
    return waves, lengths, labels


# --- quantizers -----------------------------------------------------------------------------------------------


def test_linear_weights_take_two_values_per_tensor():
    layer = BinaryLinear.from_float(nn.Linear(24, 16), weight_bits=1, input_quant=None)
    w = layer.weight.detach()
    wq = layer.quantized_weight().detach()
    m = w.abs().mean()
    assert torch.equal(torch.unique(wq), torch.stack([-m, m]))
    assert torch.equal(wq > 0, w >= w.mean())  # sign of the mean-centred latent weight


def test_conv_weights_take_two_values_per_output_channel_including_depthwise():
    for conv in (nn.Conv1d(8, 6, 1), nn.Conv1d(8, 8, 5, padding=2, groups=8)):
        layer = BinaryConv1d.from_float(conv, weight_bits=1, input_quant=None)
        w = layer.weight.detach()
        wq = layer.quantized_weight().detach()
        assert layer.groups == conv.groups and layer.padding == conv.padding
        for c in range(w.shape[0]):
            m = w[c].abs().mean()
            assert torch.equal(torch.unique(wq[c]), torch.stack([-m, m]))
            assert torch.equal(wq[c] > 0, w[c] >= w[c].mean())


def test_weight_ste_is_identity_and_multibit_has_four_levels():
    w = torch.randn(32, 16, requires_grad=True)
    g = torch.randn(32, 16)
    quantize_weight(w, bits=1).backward(g)
    assert torch.equal(w.grad, g)
    assert len(torch.unique(quantize_weight(w.detach(), bits=2))) == 4


def test_signed_activation_binarizer_values_and_gradients():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.5, 3.0], requires_grad=True)
    alpha = torch.tensor(1.0, requires_grad=True)
    y = elastic_quantize(x, alpha, bits=1, signed=True)
    assert torch.equal(y, torch.tensor([-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]))  # sign(0) = +1: exactly two values
    g = torch.arange(1.0, 7.0)
    y.backward(g)
    assert torch.equal(x.grad, g * (x.detach().abs() <= 1))  # clipped straight-through window |x| <= alpha
    expected = (torch.sign(y.detach()) * g).sum() / math.sqrt(x.numel() * 1)  # BiT: sign(x), LSQ grad scale
    torch.testing.assert_close(alpha.grad, expected)


def test_unsigned_activation_binarizer_values_and_lsq_alpha_gradient():
    x = torch.tensor([-1.0, 0.2, 0.6, 0.9, 1.7])
    x.requires_grad_(True)
    alpha = torch.tensor(1.0, requires_grad=True)
    y = elastic_quantize(x, alpha, bits=1, signed=False)
    assert torch.equal(y, torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]))
    y.sum().backward()
    q = x.detach()
    d_alpha = torch.where((q >= 0) & (q <= 1), torch.round(q) - q, torch.where(q > 1, 1.0, 0.0))
    torch.testing.assert_close(alpha.grad, d_alpha.sum() / math.sqrt(x.numel()))
    assert torch.equal(x.grad, ((q >= 0) & (q <= 1)).float())


def test_alpha_initialised_only_by_a_training_batch():
    quant = ActivationQuantizer(bits=1, signed=True, channels=4)
    x = torch.randn(3, 5, 4)
    quant.eval()
    y_eval = quant(x)
    assert not quant.is_initialized() and quant.alpha.item() == 1.0
    assert len(torch.unique(y_eval)) == 2  # eval before init still binarizes, with this batch's statistic
    quant.train()
    train_x = 3 * torch.randn(3, 5, 4)
    quant(train_x)
    assert quant.is_initialized()
    torch.testing.assert_close(quant.alpha.detach(), 2 * train_x.abs().mean())
    quant(torch.randn(3, 5, 4))  # later batches do not re-initialise
    torch.testing.assert_close(quant.alpha.detach(), 2 * train_x.abs().mean())
    unsigned = ActivationQuantizer(bits=1, signed=False).train()
    probs = torch.rand(2, 7)
    unsigned(probs)
    torch.testing.assert_close(unsigned.alpha.detach(), 4 * probs.abs().mean())


def test_multibit_activation_levels():
    x = torch.randn(4000)
    for bits, signed in ((2, False), (2, True), (4, False)):
        quant = ActivationQuantizer(bits=bits, signed=signed).train()
        y = quant(x.abs() if not signed else x).detach()
        qn, qp = quant.levels
        allowed = quant.alpha.detach() * torch.arange(qn, qp + 1)
        values = torch.unique(y)
        assert torch.isin(values, allowed).all() and 2 < len(values) <= qp - qn + 1


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_pack_unpack_codes(bits):
    codes = torch.randint(0, 2**bits, (7, 13), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.numel() == math.ceil(codes.numel() * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, (7, 13)), codes)


# --- spec ---------------------------------------------------------------------------------------------------------


def test_spec_round_trip_and_errors():
    spec = QuantSpec(
        weight_bits=1, activation_bits=2, full_precision=("feature_extractor", "encoder.layers.0*")
    )
    assert QuantSpec.from_dict(spec.to_dict()) == spec
    assert spec.keeps_full_precision("encoder.layers.0.attention.q_proj")
    assert not spec.keeps_full_precision("encoder.layers.1.attention.q_proj")
    with pytest.raises(ValueError, match="unknown quant spec keys"):
        QuantSpec.from_dict({"weight_bits": 1, "bogus": 3})
    with pytest.raises(ValueError, match="activation_bits"):
        QuantSpec(activation_bits=5)


# --- binarize() on the encoders -----------------------------------------------------------------------------


def _expected_layers(model: nn.Module) -> set[str]:
    """Every Linear/Conv1d outside the full-precision parts: front end, head and the positional modules."""
    return {
        n
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv1d))
        and not n.startswith(FP_PREFIXES)
        and not n.endswith("linear_pos")
    }


@pytest.mark.parametrize("name", ENCODERS)
def test_binarize_every_encoder_forward_backward(name):
    model = tiny(name)
    expected = _expected_layers(model)
    kept = {n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d))} - expected
    num_attention = sum(isinstance(m, MultiHeadAttention) for m in model.modules())
    relative = sum(isinstance(m, MultiHeadAttention) and m.relative_positions for m in model.modules())
    binarize(model)

    layers = dict(quantized_layers(model))
    assert set(layers) == expected  # every Linear/Conv1d outside the full-precision parts, nothing else
    assert len(
        [s for s in quantization_plan(tiny(name)) if s.kind in ("linear", "conv", "depthwise")]
    ) == len(layers)
    for n in kept:
        assert not isinstance(model.get_submodule(n), (BinaryLinear, BinaryConv1d))
    hooks = [n for n, _ in activation_quantizers(model) if n.endswith("_hook")]
    assert len(hooks) == 4 * num_attention  # q, k, v, probabilities; relative positions stay full precision
    assert relative == 0 or not any(n.endswith("pos_hook") for n in hooks)
    for module in model.modules():
        if isinstance(module, FeedForward):
            assert isinstance(module.activation, nn.ReLU)
            assert not module.output_dense.input_quant.signed
        if isinstance(module, MultiHeadAttention):
            assert not module.prob_hook.signed and module.q_hook.signed and module.hooked()

    model.train()
    waves, lengths, labels = batch(model)
    # A random (untrained) encoder attends almost uniformly, so every probability would fall below the {0, a}
    # threshold 2 * mean(p) and no gradient would reach the values; a smaller scale lets them through.
    for n, quant in activation_quantizers(model):
        if n.endswith("prob_hook"):
            quant.alpha.data.fill_(1.0 / model.num_frames(waves.shape[1]))
            quant.initialized.fill_(True)
    model(waves, lengths, labels=labels)  # initialises every other scale from this training batch
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        q.register_forward_hook(lambda mod, inp, out, n=n: outputs.__setitem__(n, out.detach()))
        for n, q in activation_quantizers(model)
    ]
    out = model(waves, lengths, labels=labels)
    batch_objective(model.config, prediction_terms(out)).backward()
    for h in handles:
        h.remove()

    for n, quant in activation_quantizers(model):
        values = torch.unique(outputs[n])
        alpha = quant.alpha.detach()
        allowed = torch.stack([-alpha, alpha]) if quant.signed else torch.stack([torch.zeros(()), alpha])
        if quant.keep_zeros:  # the time reduction's right padding stays 0, like the conv's own zero padding
            values = values[values != 0]
        assert quant.is_initialized(), n
        assert torch.isin(values, allowed).all(), f"{n}: {values[:5]}"
        if quant.signed:
            assert len(values) == 2, n
        assert quant.alpha.grad is not None and quant.alpha.grad != 0, n
        if quant.shift is not None:
            assert quant.shift.grad is not None and quant.shift.grad.abs().sum() > 0, n
    for n, layer in layers.items():
        assert len(torch.unique(layer.quantized_weight().detach()[0])) == 2, n
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", ["conformer_s", "squeezeformer_xs"])
def test_binarized_conv_encoders_ignore_padding(name):
    model = binarize(tiny(name))
    model.train()
    model(*batch(model)[:2])  # initialise the scales
    model.eval()
    waves = torch.randn(2, 9600)
    lengths = torch.tensor([9600, 6400])
    with torch.no_grad():
        padded, frames = model.extract_features(waves, lengths)
        alone, _ = model.extract_features(waves[1:, :6400], lengths[1:])
    valid = int(frames[1])
    for a, b in zip(padded, alone):
        torch.testing.assert_close(a[1, :valid], b[0, :valid], rtol=1e-5, atol=1e-5)


def test_weight_normed_layers_must_stay_full_precision():
    model = tiny("vanilla")
    with pytest.raises(ValueError, match="pos_conv.conv.*full_precision"):
        binarize(model, QuantSpec(full_precision=("feature_extractor",)))


def test_binarize_puts_every_quantizer_on_the_model_device():
    # a model already moved to its device (the meta device stands in for a GPU) stays on one device
    model = binarize(tiny("conformer_s").to("meta"))
    off_device = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if not t.is_meta]
    assert not off_device, off_device[:5]


def test_binarize_respects_spec_and_refuses_twice():
    model = tiny("conformer_s")
    spec = QuantSpec(
        activation_bits=2,
        binarize_depthwise=False,
        quantize_attention=False,
        full_precision=(*FP_PREFIXES, "encoder.layers.0"),
    )
    binarize(model, spec)
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv1d) and m.groups > 1:
            assert not isinstance(m, BinaryConv1d)
        if n.startswith("encoder.layers.0.") and isinstance(m, nn.Linear):
            assert not isinstance(m, BinaryLinear)
        if isinstance(m, MultiHeadAttention):
            assert not m.hooked()
    assert all(q.bits == 2 for _, q in activation_quantizers(model))
    with pytest.raises(ValueError, match="already quantized"):
        binarize(model)


def test_requantize_keeps_latent_weights_and_resets_scales():
    model = binarize(tiny("vanilla"), QuantSpec(activation_bits=2))
    model.train()
    model(*batch(model)[:2])
    weights = {n: layer.weight.detach().clone() for n, layer in quantized_layers(model)}
    requantize(model, QuantSpec())
    assert model.quant_spec.activation_bits == 1
    assert all(q.bits == 1 and not q.is_initialized() for _, q in activation_quantizers(model))
    assert all(torch.equal(layer.weight, weights[n]) for n, layer in quantized_layers(model))


def test_dequantize_restores_the_plain_module_tree():
    plain = tiny("conformer_s")
    names = {n: type(m) for n, m in plain.named_modules()}
    model = dequantize(binarize(tiny("conformer_s")))
    assert model.quant_spec is None
    # ReLUs from ffn_relu stay (documented); nothing else is left behind, e.g. no stray input_quant
    restored = {n: type(m) for n, m in model.named_modules() if not n.endswith(".activation")}
    assert restored == {n: t for n, t in names.items() if not n.endswith(".activation")}


# --- round trips -------------------------------------------------------------------------------------------------


def _trained_binarized(name: str) -> nn.Module:
    model = binarize(tiny(name))
    model.train()
    waves, lengths, labels = batch(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    batch_objective(model.config, prediction_terms(model(waves, lengths, labels=labels))).backward()
    optimizer.step()
    return model.eval()


def _outputs_equal(a: nn.Module, b: nn.Module) -> bool:
    waves, lengths, _ = batch(a, num_samples=4800)
    mask = a.compute_mask(a.frame_lengths(lengths), a.num_frames(waves.shape[1]))
    with torch.no_grad():
        fa, _ = a.extract_features(waves, lengths)
        fb, _ = b.extract_features(waves, lengths)
        la = a(waves, lengths, mask=mask).logits_masked
        lb = b(waves, lengths, mask=mask).logits_masked
    return torch.equal(la, lb) and all(torch.equal(x, y) for x, y in zip(fa, fb))


def test_checkpoint_round_trip_rebuilds_the_binarized_model(tmp_path):
    model = _trained_binarized("squeezeformer_xs")
    save_model(model, tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt")
    assert loaded.quant_spec == model.quant_spec
    assert all(q.is_initialized() for _, q in activation_quantizers(loaded))
    assert _outputs_equal(model, loaded)


@pytest.mark.parametrize("name", ["vanilla", "conformer_s"])
def test_packed_export_round_trip_is_exact(tmp_path, name):
    import hubert_lit

    model = _trained_binarized(name)
    size = export_model(model, tmp_path / "model.packed.pt")
    save_model(model, tmp_path / "model.pt")
    assert size < (tmp_path / "model.pt").stat().st_size
    assert _outputs_equal(model, load_packed(tmp_path / "model.packed.pt"))
    assert _outputs_equal(model, hubert_lit.load_model(tmp_path / "model.packed.pt"))


def test_export_command(tmp_path, capsys):
    from hubert_lit.export import cli as export

    model = _trained_binarized("vanilla")
    save_model(model, tmp_path / "model.pt")
    assert export.main(["--checkpoint", str(tmp_path / "model.pt"), "--out", str(tmp_path / "m.packed")]) == 0
    text = capsys.readouterr().out
    assert "packed export" in text and "verified" in text
    assert export.main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")]) == 2


def test_export_at_16_bits_without_head_is_verified_and_loads_as_float32(tmp_path, capsys):
    from hubert_lit.checkpoint import packed_entries
    from hubert_lit.export import cli as export
    from hubert_lit.export.pipeline import rounded_copy

    model = _trained_binarized("conformer_s")
    save_model(model, tmp_path / "model.pt")
    out = tmp_path / "m16.packed"
    args = ["--checkpoint", str(tmp_path / "model.pt"), "--out", str(out)]
    assert export.main([*args, "--full-precision-bits", "16", "--drop-head"]) == 0
    text = capsys.readouterr().out
    assert "full precision at 16 bits, no pretraining head" in text and "verified" in text
    assert "Table 1 storage" in text
    payload = packed_entries(torch.load(out, weights_only=True))
    assert payload["full_precision_bits"] == 16
    assert not any(
        k.startswith(("final_proj", "label_embeddings", "mask_embedding")) for k in payload["state_dict"]
    )
    loaded = load_model(out)
    assert loaded.final_proj is None and all(p.dtype == torch.float32 for p in loaded.parameters())
    waves, lengths, _ = batch(model)
    with torch.no_grad():
        want, _ = rounded_copy(model, 16).eval().extract_features(waves, lengths)
        exact, _ = model.eval().extract_features(waves, lengths)
        got, _ = loaded.extract_features(waves, lengths)
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(exact, got, strict=True))  # the 16-bit rounding is real


@pytest.mark.parametrize(
    "preset", ["vanilla", "conformer_s", "squeezeformer_xs", "sparseformer_dn_s", "sparseformer_sw_s"]
)
def test_packed_file_at_16_bits_is_within_2_percent_of_table_1_storage(preset, tmp_path):
    """Table 1's "16-bit + 1-bit" storage (bq_vanilla 25.00 MB, the paper 25.23 MB) is the file's real size, for
    every BQ model: Conformer-S and Squeezeformer-XS hold ~1,400 small tensors, whose one-by-one pickling alone
    added 3 % before the tensors were bundled."""
    from hubert_lit.checkpoint import save_packed
    from hubert_lit.profile.counters import storage

    model = binarize(build_hubert(preset, num_classes=500))
    size = save_packed(model, tmp_path / "packed16.pt", full_precision_bits=16, drop_head=True)
    expected = storage(model).paper_bytes
    if preset == "vanilla":
        assert abs(expected / 1e6 - 25.0) < 0.01
    assert abs(size / expected - 1) <= 0.02, (size, expected)


def test_export_of_a_full_precision_model_writes_a_plain_model_file(tmp_path, capsys):
    from hubert_lit.export import cli as export

    fp = tiny("vanilla").eval()
    save_model(fp, tmp_path / "fp.pt")
    assert (
        export.main(["--checkpoint", str(tmp_path / "fp.pt"), "--out", str(tmp_path / "fp_export.pt")]) == 0
    )
    assert "verified" in capsys.readouterr().out
    reloaded = load_model(tmp_path / "fp_export.pt")
    assert getattr(reloaded, "quant_spec", None) is None
    assert _outputs_equal(fp, reloaded)


def test_packed_bits_match_the_forward_weights():
    model = _trained_binarized("conformer_s")
    name, layer = next(iter(quantized_layers(model)))
    from hubert_lit.checkpoint import packed_payload

    entry = packed_payload(model)["packed"][name]
    bits = unpack_codes(entry["codes"], 1, tuple(entry["shape"]))
    assert torch.equal(bits.bool(), layer.quantized_weight().detach() > 0)
    assert entry["codes"].numel() == math.ceil(layer.weight.numel() / 8)


def test_depthwise_quantizer_keeps_padding_zero():
    conv = ConvolutionModule(8, 5, use_glu=True)
    sites = {s.name: s for s in quantization_plan(nn.ModuleDict({"conv": conv}))}
    assert sites["conv.depthwise_conv"].kind == "depthwise"
    quant = ActivationQuantizer(channels=3, channel_dim=1, keep_zeros=True).train()
    x = torch.randn(1, 3, 6)
    x[..., 4:] = 0.0
    y = quant(x)
    assert torch.equal(y[..., 4:], torch.zeros(1, 3, 2))
    assert len(torch.unique(y[..., :4])) == 2
