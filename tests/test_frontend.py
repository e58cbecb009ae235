"""Front end: conv feature extractors, frame counts, padding invariance, positional embedding, GradMultiply."""

import pytest
import torch
from torchaudio.models.wav2vec2 import components as ta

from hubert_lit.models.frontend import (
    ConvFeatureExtractor,
    ConvPositionalEmbedding,
    GradMultiply,
    conv_layers_for,
    fastconv_conv_layers,
    lengths_to_padding_mask,
)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def expected_frames(n: int) -> int:
    return 0 if n < 400 else (n - 400) // 320 + 1


@pytest.mark.parametrize("frontend", ["wav2vec2", "fastconv"])
def test_frame_count_formula(frontend):
    extractor = ConvFeatureExtractor(conv_layers_for(frontend, 16))
    sizes = [0, 399, 400, 719, 720, 1039, 16000, 32000, 160000]
    lengths = extractor.output_lengths(torch.tensor(sizes))
    assert lengths.tolist() == [expected_frames(n) for n in sizes]
    for n in (400, 720, 5000):
        feats, out_len = extractor(torch.randn(1, n), torch.tensor([n]))
        assert feats.shape[1] == expected_frames(n) == out_len.item()


def test_fastconv_is_sew_wfe_c():
    layers = fastconv_conv_layers(512, 1)
    assert len(layers) == 13
    assert [c for c, _, _ in layers] == [64, 128, 128, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512]
    assert [k for _, k, _ in layers] == [10, 3, 1, 3, 1, 3, 1, 3, 1, 2, 1, 2, 1]
    assert [s for _, _, s in layers] == [5, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1]
    # reference counts (torchaudio group_norm mode): SEW WFE-C 1,843,968, wav2vec2 4,200,448
    assert n_params(ConvFeatureExtractor(layers)) == 1_843_968
    assert n_params(ConvFeatureExtractor(conv_layers_for("wav2vec2"))) == 4_200_448


@pytest.mark.parametrize("mode", ["group_norm", "layer_norm"])
def test_wav2vec2_extractor_matches_torchaudio_unpadded(mode):
    ours = ConvFeatureExtractor(conv_layers_for("wav2vec2"), mode=mode).eval()
    ref = ta._get_feature_extractor(
        mode, [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2, False
    ).eval()
    with torch.no_grad():
        for block_ours, block_ref in zip(ours.conv_layers, ref.conv_layers):
            block_ref.conv.weight.copy_(block_ours.conv.weight)
            if block_ours.norm is not None:
                block_ours.norm.weight.normal_()
                block_ours.norm.bias.normal_()
                block_ref.layer_norm.weight.copy_(block_ours.norm.weight)
                block_ref.layer_norm.bias.copy_(block_ours.norm.bias)
        wav = torch.randn(2, 8000)
        feats, lengths = ours(wav, torch.tensor([8000, 8000]))
        ref_feats, _ = ref(wav, None)
    assert feats.shape == ref_feats.shape
    torch.testing.assert_close(feats, ref_feats, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("frontend", ["wav2vec2", "fastconv"])
@pytest.mark.parametrize("mode", ["group_norm", "layer_norm"])
def test_extractor_padding_invariant(frontend, mode):
    extractor = ConvFeatureExtractor(conv_layers_for(frontend, 32), mode=mode).eval()
    short, long = torch.randn(3000), torch.randn(6000)
    batch = torch.zeros(2, 6000)
    batch[0, :3000], batch[1] = short, long
    with torch.no_grad():
        alone, alone_len = extractor(short[None], torch.tensor([3000]))
        padded, lengths = extractor(batch, torch.tensor([3000, 6000]))
    n = alone_len.item()
    assert lengths.tolist() == [n, expected_frames(6000)]
    torch.testing.assert_close(padded[0, :n], alone[0], atol=1e-5, rtol=0)
    assert torch.all(padded[0, n:] == 0), "padded frames must be zero"


def test_group_norm_ignores_padding_contents():
    """Garbage in the padded samples changes neither valid frames nor GroupNorm statistics."""
    extractor = ConvFeatureExtractor(conv_layers_for("wav2vec2", 16)).eval()
    wav = torch.randn(1, 6000)
    noisy = wav.clone()
    noisy[0, 3000:] = 100 * torch.randn(3000)
    clean = wav.clone()
    clean[0, 3000:] = 0
    with torch.no_grad():
        a, _ = extractor(noisy, torch.tensor([3000]))
        b, _ = extractor(clean, torch.tensor([3000]))
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_pos_conv_matches_torchaudio_and_is_padding_invariant():
    dim, kernel, groups = 32, 16, 4
    ours = ConvPositionalEmbedding(dim, kernel, groups)
    ref = ta.ConvolutionalPositionalEmbedding(dim, kernel, groups)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 40, dim)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-6)
        pad = lengths_to_padding_mask(torch.tensor([25, 40]), 40)
        x_garbage = x.clone()
        x_garbage[0, 25:] = 7.0
        padded = ours(x_garbage, pad)
        alone = ours(x[:1, :25])
    torch.testing.assert_close(padded[0, :25], alone[0], atol=1e-6, rtol=1e-6)
    assert ours.conv.parametrizations.weight.original0.shape == (1, 1, kernel)  # weight norm over dim=2


def test_grad_multiply_scales_gradient_only():
    x = torch.randn(5, requires_grad=True)
    y = GradMultiply.apply(x, 0.1)
    assert torch.equal(y, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full((5,), 0.1))
