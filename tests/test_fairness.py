"""Same footing for every encoder family: one quantization rule per kind of layer, HuBERT's regularisation, the
iteration-2 layer at the same relative depth, distillation on the unmasked input; each 0.1.0 choice reachable
through a named switch (docs/quantization.md, "Fairness of the comparison")."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from hubert_lit.models import build_hubert
from hubert_lit.models.attention import AttentionMask, MultiHeadAttention
from hubert_lit.models.config import PRESETS, preset
from hubert_lit.profile.paper_tables import ENCODERS
from hubert_lit.quant import QuantSpec, binarize
from hubert_lit.quant.binarize import quantization_plan
from hubert_lit.quant.modules import ActivationQuantizer, BinaryConv1d, BinaryLinear
from hubert_lit.quant.spec import LEGACY_DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
V010_PLANS = Path(__file__).resolve().parent / "assets" / "v010" / "quantization_plans.json"
FAMILIES = ENCODERS
TINY = tuple(f"{name}_tiny" for name in FAMILIES)


def _quantizer(q: nn.Module) -> dict | None:
    if not isinstance(q, ActivationQuantizer):
        return None
    shift = None if q.shift is None else q.shift.numel()
    return {
        "bits": q.bits,
        "signed": q.signed,
        "shift": shift,
        "channel_dim": q.channel_dim,
        "keep_zeros": q.keep_zeros,
    }


def describe(model: nn.Module) -> dict[str, dict]:
    """What binarize() did, per changed module (the record tests/assets/v010/quantization_plans.json holds for the
    0.1.0 code, written with this same function)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (BinaryLinear, BinaryConv1d)):
            out[name] = {
                "type": type(m).__name__,
                "weight_bits": m.weight_bits,
                "per_channel": m.per_channel,
                "input": _quantizer(m.input_quant),
            }
        elif isinstance(m, ActivationQuantizer) and not name.endswith("input_quant"):
            out[name] = {"type": "hook", "input": _quantizer(m)}
        elif isinstance(m, nn.ReLU) and name.endswith("activation"):
            out[name] = {"type": "ReLU"}
    return out


def _binarized(name: str, spec: QuantSpec) -> nn.Module:
    torch.manual_seed(0)
    return binarize(build_hubert(name, num_classes=0), spec)


# ----------------------------------------------------------------------------------------------- one rule per kind
def _role(model: nn.Module, name: str) -> str:
    """The kind of layer a site is, whatever the family: Linear-like (Linear or kernel-1 conv), depthwise conv,
    attention operand or probabilities."""
    module = model.get_submodule(name)
    if isinstance(module, nn.Conv1d):
        return "depthwise" if module.groups > 1 else ("linear-like" if module.kernel_size[0] == 1 else "conv")
    if isinstance(module, nn.Linear):
        return "linear-like"
    return name.rsplit(".", 1)[-1]  # q_hook, k_hook, v_hook, prob_hook, pos_hook, activation


def rules(name: str, spec: QuantSpec) -> dict[str, set[tuple]]:
    """role -> the set of (weight per channel, input signed, shift per channel) rules the plan applies to it."""
    model = build_hubert(name, num_classes=0)
    out: dict[str, set[tuple]] = {}
    for site in quantization_plan(model, spec):
        role = _role(model, site.name)
        if role == "activation":
            continue
        out.setdefault(role, set()).add((site.per_channel, site.signed))
    return out


@pytest.mark.parametrize("conv_family", ["conformer_s", "squeezeformer_xs"])
def test_identical_rules_for_layers_of_identical_kind(conv_family):
    transformer, conv = rules("vanilla", QuantSpec()), rules(conv_family, QuantSpec())
    # Linear-like layers (every Linear, pointwise convs included): one scale per tensor, signed input except after
    # the FFN's ReLU, in both families
    assert transformer["linear-like"] == conv["linear-like"] == {(False, True), (False, False)}
    for hook in ("q_hook", "k_hook", "v_hook", "prob_hook"):
        assert transformer[hook] == conv[hook]
    assert "pos_hook" not in conv  # positional modules full precision in every family
    assert conv["depthwise"] == {(True, True)}  # the one kind with no Transformer counterpart: per channel


def test_positional_modules_stay_full_precision_in_every_family():
    for name in FAMILIES:
        model = build_hubert(name + "_tiny", num_classes=0)
        planned = {s.name for s in quantization_plan(model, QuantSpec())}
        positional = [
            n for n, _ in model.named_modules() if n.endswith(("linear_pos", "pos_hook")) or n == "pos_conv"
        ]
        assert positional and not planned & set(positional), name


def test_switches_restore_the_010_plans_exactly():
    """Every switch at its 0.1.0 value gives the plans the 0.1.0 code made (recorded in tests/assets/v010)."""
    old = json.loads(V010_PLANS.read_text())
    for key, plan in old.items():
        name, bits = key.split("/")
        spec = QuantSpec(activation_bits=int(bits[-1]), **LEGACY_DEFAULTS)
        model = _binarized(name, spec)
        assert describe(model) == plan, key
        attention = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
        assert all(not m.dropout_before_prob_hook for m in attention)
        assert all(not q.min_offset for q in model.modules() if isinstance(q, ActivationQuantizer))


def test_each_switch_changes_only_what_it_names():
    new = describe(_binarized("conformer_s_tiny", QuantSpec(activation_bits=2)))
    # per-channel pointwise convs: exactly the pointwise convs change their weight statistics
    channel = describe(
        _binarized("conformer_s_tiny", QuantSpec(activation_bits=2, pointwise_conv_scale="channel"))
    )
    changed = {n for n in new if new[n] != channel.get(n)}
    assert changed and all(re.search(r"pointwise_conv\d$", n) for n in changed)
    assert all(channel[n]["per_channel"] and not new[n]["per_channel"] for n in changed)
    # binarized relative positions: exactly linear_pos and pos_hook appear
    relative = describe(
        _binarized("conformer_s_tiny", QuantSpec(activation_bits=2, binarize_relative_positions=True))
    )
    assert (
        set(relative) - set(new) == {n for n in relative if n.endswith(("linear_pos", "pos_hook"))} != set()
    )
    assert all(relative[n] == new[n] for n in new)


def test_stored_specs_without_the_switches_keep_their_behaviour():
    old = {k: v for k, v in QuantSpec().to_dict().items() if k not in LEGACY_DEFAULTS}
    assert QuantSpec.from_dict(old) == QuantSpec(**LEGACY_DEFAULTS)
    assert QuantSpec.from_dict(QuantSpec().to_dict()) == QuantSpec()  # new files store every switch


# ----------------------------------------------------------------------------------------------- activations
def test_attention_dropout_before_the_probability_binarizer():
    seen = []

    class Record(nn.Module):
        def forward(self, x):
            seen.append(x.detach())
            return x

    attention = MultiHeadAttention(8, 2, dropout=0.5).train()
    attention.prob_hook = Record()
    x, mask = torch.randn(1, 5, 8), AttentionMask(torch.tensor([5]), 5, 2)
    torch.manual_seed(0)
    attention(x, mask)
    assert (seen[-1] == 0).any() and not torch.allclose(
        seen[-1].sum(-1), torch.ones(1, 2, 5)
    )  # after dropout
    attention.dropout_before_prob_hook = False  # 0.1.0's order: the binarizer sees the softmax itself
    attention(x, mask)
    torch.testing.assert_close(seen[-1].sum(-1), torch.ones(1, 2, 5))


def test_multi_bit_unsigned_sites_subtract_the_minimum():
    x = torch.rand(64, 16) * 3.0
    with_offset = ActivationQuantizer(2, signed=False, min_offset=True).eval()
    without = ActivationQuantizer(2, signed=False).eval()
    for q in (with_offset, without):
        q.alpha.data.fill_(0.7)
        q.initialized.fill_(True)
    # the minimum is taken out before quantizing: a shifted input gives the shifted output
    torch.testing.assert_close(with_offset(x + 5.0), with_offset(x) + 5.0)
    assert not torch.allclose(without(x + 5.0), without(x) + 5.0)
    assert not ActivationQuantizer(1, signed=False, min_offset=True).min_offset  # one bit: no offset (BiT)
    assert not ActivationQuantizer(2, signed=True, min_offset=True).min_offset


# ----------------------------------------------------------------------------------------------- recipe
def test_every_encoder_gets_hubert_regularisation():
    def regularisation(name):
        e = preset(name).encoder
        return e.dropout, e.attention_dropout, e.activation_dropout, e.layerdrop

    assert {regularisation(name) for name in PRESETS} == {(0.1, 0.1, 0.0, 0.05)}


def test_iteration_two_labels_come_from_the_same_relative_depth():
    from hubert_lit.run_config import load_run_config, model_of_config

    for path in sorted((ROOT / "configs" / "pretrain").glob("*_it2.yaml")):
        run = load_run_config(path)
        layer = int(re.search(r"-l(\d+)-k500/", run["data"]["train_labels"]).group(1))
        depth = model_of_config(path).config.encoder.num_layers
        assert layer == depth // 2, path.name
        assert f"--layer {layer} " in path.read_text() or "--layer" not in path.read_text(), path.name
    distill_labels = {
        yaml.safe_load(p.read_text())["data"]["train_labels"]
        for p in (ROOT / "configs" / "distill").glob("bq_*.yaml")
    }
    it2_labels = {
        load_run_config(p)["data"]["train_labels"] for p in (ROOT / "configs" / "pretrain").glob("*_it2.yaml")
    }
    assert distill_labels <= it2_labels  # the students are distilled on their teachers' labels


def test_label_tool_default_layer_is_half_the_depth(tmp_path):
    from hubert_lit.checkpoint import save_model
    from hubert_lit.labels.features import HubertLayerFeatures

    for name, depth in (("sparseformer_dn_s_tiny", 4), ("squeezeformer_xs_tiny", 3)):
        save_model(build_hubert(name, num_classes=0), tmp_path / f"{name}.pt")
        features = HubertLayerFeatures(tmp_path / f"{name}.pt", layer=None)
        assert features.num_layers == depth and features.layer == depth // 2
