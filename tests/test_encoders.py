"""Encoder families: parameter counts, shapes, padding invariance, LayerDrop, gradients, torchaudio parity."""

import dataclasses

import pytest
import torch
from torchaudio.models.wav2vec2 import components

from hubert_lit.models.config import preset
from hubert_lit.models.encoders import EncoderConfig, build_encoder
from hubert_lit.models.layers import TimeReduction, reduced_lengths
from hubert_lit.models.sparsity import SparsityConfig

TINY_SPARSE = SparsityConfig(
    pattern="fixed",
    block=8,
    num_local_blocks=2,
    num_global_blocks=1,
    different_layout_per_head=True,
    num_different_global_patterns=2,
)


def _tiny(kind: str, **overrides) -> EncoderConfig:
    base = dict(
        kind=kind,
        num_layers=3,
        dim=16,
        num_heads=2,
        ffn_dim=32,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        layerdrop=0.0,
        conv_kernel_size=5,
        time_reduce_idx=1,
        time_recover_idx=2,
    )
    return EncoderConfig(**{**base, **overrides})


TINY = {
    "transformer": _tiny("transformer"),
    "pre_ln_transformer": _tiny("transformer", layer_norm_first=True),
    "sparseformer": _tiny("transformer", sparsity=TINY_SPARSE),
    "conformer": _tiny("conformer"),
    "squeezeformer": _tiny("squeezeformer"),
    "sparse_squeezeformer": _tiny("squeezeformer", sparsity=TINY_SPARSE),
}


def _num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# Independently derived counts (d = dim, f = ffn_dim, H heads, k = conv kernel):
#   transformer layer = attention 4(d^2 + d) + FFN (2df + f + d) + 2 LayerNorms 4d; + encoder LayerNorm 2d.
#   HuBERT Base: 12 x 7,087,872 + 1,536 (torchaudio hubert_base: 85,054,464 in the layers + 1,536).
#   DN-S (16/256, f 1024): 16 x 789,760 + 512; SW-S (8/512, f 2048): 8 x 3,152,384 + 1,024.
#   Conformer-S: torchaudio Conformer(144, 4, 576, 16, k=31) = 7,771,392 plus, per layer, the rel-pos MHSA
#     extras linear_pos d^2 + pos_bias_u/v 2d = 21,024 -> 7,771,392 + 16 x 21,024.
#   Squeezeformer-XS block = rel-MHA 4(d^2+d) + d^2 + 2d (104,544) + 2 FFNs (333,216) + conv without GLU
#     [pw d->2d 41,760, dw 2d x 31 + 2d 9,216, BN 576, pw 2d->d 41,616] (93,168) + 4 LN + 4 scale/bias
#     (2,304) = 533,232; x 16 + time reduction (dw 5d + d, pw d^2 + d: 21,744) + recovery Linear (20,880)
#     + input LayerNorm 288.
PRESET_PARAMS = {
    "vanilla": 12 * 7_087_872 + 1_536,
    "sparseformer_dn_s": 16 * 789_760 + 512,
    "sparseformer_sw_s": 8 * 3_152_384 + 1_024,
    "conformer_s": 7_771_392 + 16 * 21_024,
    "squeezeformer_xs": 16 * 533_232 + 21_744 + 20_880 + 288,
}


@pytest.mark.parametrize("name", sorted(PRESET_PARAMS))
def test_preset_parameter_counts(name):
    assert _num_params(build_encoder(preset(name).encoder)) == PRESET_PARAMS[name]


def test_preset_hyperparameters():
    base = preset("vanilla").encoder
    assert (base.num_layers, base.dim, base.num_heads, base.ffn_dim) == (12, 768, 12, 3072)
    assert (base.dropout, base.attention_dropout, base.layerdrop, base.layer_norm_first) == (
        0.1,
        0.1,
        0.05,
        False,
    )
    assert base.ffn_activation == "gelu" and base.sparsity is None
    for name, shape in [("sparseformer_dn_s", (16, 256, 4)), ("sparseformer_sw_s", (8, 512, 4))]:
        cfg = preset(name).encoder
        assert (cfg.num_layers, cfg.dim, cfg.num_heads) == shape and cfg.ffn_dim == 4 * cfg.dim
        assert cfg.sparsity.pattern == "fixed" and cfg.sparsity.block <= 64
    for name in ("conformer_s", "squeezeformer_xs"):
        cfg = preset(name).encoder
        assert (cfg.num_layers, cfg.dim, cfg.num_heads, cfg.ffn_dim, cfg.conv_kernel_size) == (
            16,
            144,
            4,
            576,
            31,
        )
        assert cfg.ffn_activation == "swish"
    sq = preset("squeezeformer_xs").encoder
    assert (sq.time_reduce_idx, sq.time_recover_idx) == (7, 15)


def test_full_presets_preserve_shape():
    for name in ("conformer_s", "squeezeformer_xs"):
        cfg = preset(name).encoder
        states = build_encoder(cfg).eval()(torch.randn(1, 51, cfg.dim), torch.tensor([51]))
        assert len(states) == 17 and all(s.shape == (1, 51, 144) for s in states)


@pytest.mark.parametrize("name", sorted(TINY))
def test_time_is_preserved_for_any_length(name):
    cfg = TINY[name]
    encoder = build_encoder(cfg).eval()
    with torch.no_grad():
        for length in range(97, 101):
            states = encoder(torch.randn(2, length, cfg.dim), torch.tensor([length, length - 10]))
            assert len(states) == cfg.num_layers + 1
            assert all(s.shape == (2, length, cfg.dim) for s in states)


def check_padding_invariance(encoder, dim: int) -> None:
    short, long = torch.randn(1, 37, dim), torch.randn(1, 61, dim)
    batch = torch.zeros(2, 61, dim)
    batch[0, :37], batch[1] = short[0], long[0]
    batch[0, 37:] = 100.0 * torch.randn(24, dim)  # garbage in the padding must not matter
    alone = encoder(short, torch.tensor([37]))
    padded = encoder(batch, torch.tensor([37, 61]))
    for a, p in zip(alone, padded):
        torch.testing.assert_close(p[0, :37], a[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(TINY))
def test_valid_frames_do_not_depend_on_padding(name):
    encoder = build_encoder(TINY[name]).eval()
    with torch.no_grad():
        check_padding_invariance(encoder, TINY[name].dim)


@pytest.mark.parametrize("name", ["conformer", "squeezeformer"])
def test_batch_norm_statistics_ignore_padding_in_training(name):
    # Dropout and LayerDrop are 0, so train mode differs from eval only by the batch statistics: the same two
    # utterances padded to different lengths (with garbage) must give the same valid outputs.
    cfg = TINY[name]
    encoder = build_encoder(cfg).train()
    utterances = [torch.randn(37, cfg.dim), torch.randn(61, cfg.dim)]
    lengths = torch.tensor([37, 61])
    outputs = []
    for padded_length in (61, 70):
        batch = 100.0 * torch.randn(2, padded_length, cfg.dim)
        for b, u in enumerate(utterances):
            batch[b, : len(u)] = u
        outputs.append(encoder(batch, lengths))
    valid = torch.arange(61)[None] < lengths[:, None]
    for a, b in zip(*outputs):
        torch.testing.assert_close(b[:, :61][valid], a[valid], atol=1e-5, rtol=1e-5)


def test_squeezeformer_half_rate_states_are_repeated():
    cfg = _tiny("squeezeformer", num_layers=4, time_reduce_idx=1, time_recover_idx=3)
    states = build_encoder(cfg).eval()(torch.randn(1, 9, 16), torch.tensor([9]))
    for i in (2, 3):  # outputs of blocks 2 and 3 (0-based blocks 1, 2) run at half rate
        torch.testing.assert_close(states[i][:, 0:8:2], states[i][:, 1:9:2])
    for i in (1, 4):
        assert not torch.allclose(states[i][:, 0:8:2], states[i][:, 1:9:2])


def test_time_reduction_lengths_and_padding():
    assert reduced_lengths(torch.arange(7)).tolist() == [0, 1, 1, 2, 2, 3, 3]
    reduction = TimeReduction(4)
    x = torch.randn(2, 7, 4)
    valid = torch.arange(7)[None] < torch.tensor([[7], [5]])
    y = reduction(x, valid)
    assert y.shape == (2, 4, 4)
    alone = reduction(x[1:, :5], valid[1:, :5])
    torch.testing.assert_close(y[1, :3], alone[0])


@pytest.mark.parametrize("name", sorted(TINY))
def test_early_exit_returns_a_prefix_of_the_states(name):
    cfg = TINY[name]
    encoder = build_encoder(cfg).eval()
    x, lengths = torch.randn(2, 13, cfg.dim), torch.tensor([13, 8])
    with torch.no_grad():
        full = encoder(x, lengths)
        for n in range(cfg.num_layers + 1):
            part = encoder(x, lengths, num_layers=n)
            assert len(part) == n + 1
            assert all(torch.equal(a, b) for a, b in zip(part, full))
    with pytest.raises(ValueError, match="num_layers must be in"):
        encoder(x, lengths, num_layers=cfg.num_layers + 1)


def test_layerdrop_returns_block_input():
    cfg = _tiny("transformer", layerdrop=0.999999)
    encoder = build_encoder(cfg).train()
    states = encoder(torch.randn(2, 10, 16), torch.tensor([10, 6]))
    assert all(torch.equal(s, states[0]) for s in states[1:])
    encoder.eval()  # no LayerDrop in eval
    states = encoder(torch.randn(2, 10, 16), torch.tensor([10, 6]))
    assert not torch.equal(states[1], states[0])


@pytest.mark.parametrize("kind", ["transformer", "conformer", "squeezeformer"])
def test_layerdrop_gate_drops_the_chosen_blocks_and_still_gives_every_parameter_a_gradient(kind):
    """``layer_keep`` (one step's draw, as compiled and DDP steps pass it): a dropped block returns its input, the
    others run; every parameter gets a gradient (zero for the dropped block), so DDP finds no unused one."""
    cfg = _tiny(kind, layerdrop=0.5, time_reduce_idx=None, time_recover_idx=None)  # every block at full rate
    encoder = build_encoder(cfg).train()
    x, lengths = torch.randn(2, 12, 16), torch.tensor([12, 7])
    keep = torch.tensor([True, False, True])
    states = encoder(x, lengths, layer_keep=keep)
    assert torch.equal(states[2], states[1]) and not torch.equal(states[1], states[0])
    states[-1].square().sum().backward()
    dropped = "layers.1."
    grads = {n: p.grad for n, p in encoder.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert all(not g.any() for n, g in grads.items() if n.startswith(dropped))
    assert all(g.any() for n, g in grads.items() if n.startswith("layers.0."))


def test_layer_keep_draw_has_the_layerdrop_rate():
    from hubert_lit.models.encoders import draw_layer_keep

    torch.manual_seed(0)
    keep = torch.stack([draw_layer_keep(12, 0.25) for _ in range(2000)])
    assert keep.shape == (2000, 12) and keep.dtype == torch.bool
    assert abs(keep.float().mean().item() - 0.75) < 0.01  # 24000 draws: standard error 0.0028


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_parameter_gets_a_gradient(name):
    cfg = TINY[name]
    encoder = build_encoder(cfg).train()
    lengths = torch.tensor([40, 23])
    states = encoder(torch.randn(2, 40, cfg.dim), lengths)
    valid = torch.arange(40)[None] < lengths[:, None]
    (states[-1][valid] * torch.randn_like(states[-1][valid])).sum().backward()
    missing = [n for n, p in encoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_transformer_matches_torchaudio(layer_norm_first):
    reference = components._get_encoder(
        in_features=12,
        embed_dim=16,
        dropout_input=0.0,
        pos_conv_kernel=8,
        pos_conv_groups=2,
        num_layers=2,
        num_heads=2,
        attention_dropout=0.0,
        ff_interm_features=32,
        ff_interm_dropout=0.0,
        dropout=0.0,
        layer_norm_first=layer_norm_first,
        layer_drop=0.0,
    ).eval()
    ours = build_encoder(_tiny("transformer", num_layers=2, layer_norm_first=layer_norm_first)).eval()
    state = {
        k.removeprefix("transformer."): v
        for k, v in reference.state_dict().items()
        if k.startswith("transformer.") and ".pos_conv_embed." not in k
    }
    ours.load_state_dict(state)  # strict: the parameter names are torchaudio's

    features, lengths = torch.randn(2, 11, 12), torch.tensor([11, 7])
    with torch.no_grad():
        want = reference.extract_features(features, lengths)
        final = reference(features, lengths)
        x = reference.feature_projection(features)
        x[torch.arange(11)[None] >= lengths[:, None]] = 0.0
        got = ours(x + reference.transformer.pos_conv_embed(x), lengths)
    valid = torch.arange(11)[None] < lengths[:, None]
    for g, w in zip(got[1:-1], want[:-1]):
        torch.testing.assert_close(g[valid], w[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[-1][valid], final[valid], atol=1e-5, rtol=1e-5)


def test_encoder_config_round_trip_and_validation():
    cfg = dataclasses.replace(preset("sparseformer_dn_s").encoder, dropout=0.2)
    data = cfg.to_dict()
    assert isinstance(data["sparsity"], dict)
    assert EncoderConfig.from_dict(data) == cfg
    with pytest.raises(ValueError, match="unknown encoder config keys"):
        EncoderConfig.from_dict({**data, "heads": 3})
    with pytest.raises(ValueError, match="divisible by num_heads"):
        EncoderConfig(dim=10, num_heads=4)
    with pytest.raises(ValueError, match="odd"):
        EncoderConfig(kind="conformer", dim=16, num_heads=2, conv_kernel_size=32)
    with pytest.raises(ValueError, match="time_reduce_idx"):
        EncoderConfig(
            kind="squeezeformer", num_layers=4, dim=16, num_heads=2, time_reduce_idx=3, time_recover_idx=2
        )
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("conformer_m")
