"""HuBERT model: padding invariance, masking, logits/loss, gradients, config and checkpoint round trips."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchaudio.models.wav2vec2.components import _compute_logits

from hubert_lit.checkpoint import load_model, save_model
from hubert_lit.lit.losses import batch_objective, prediction_terms
from hubert_lit.models import PRESETS, HubertConfig, HubertModel, build_hubert

FULL = ["vanilla", "conformer_s", "squeezeformer_xs", "sparseformer_dn_s", "sparseformer_sw_s"]
TINY = [f"{name}_tiny" for name in FULL]
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "model"


def objective(model, out):
    """HuBERT's loss of a labelled forward pass of ``model`` (hubert_lit.lit.losses)."""
    return batch_objective(model.config, prediction_terms(out))


def frames(n: int) -> int:
    return 0 if n < 400 else (n - 400) // 320 + 1


def padded_pair(short: int, long: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(short, generator=g), torch.randn(long, generator=g)
    batch = torch.zeros(2, long)
    batch[0, :short], batch[1] = a, b
    return a, batch, torch.tensor([short, long])


def assert_padding_invariant(model: HubertModel, short: int, long: int) -> None:
    a, batch, lengths = padded_pair(short, long)
    with torch.no_grad():
        alone, alone_len = model.extract_features(a[None], torch.tensor([short]))
        both, both_len = model.extract_features(batch, lengths)
    n = frames(short)
    assert alone_len.tolist() == [n] and both_len.tolist() == [n, frames(long)]
    assert len(both) == model.num_layers + 1
    for i, (x, y) in enumerate(zip(alone, both)):
        torch.testing.assert_close(y[0, :n], x[0], atol=1e-5, rtol=0, msg=lambda m, i=i: f"state {i}: {m}")
        assert torch.all(y[0, n:] == 0)


@pytest.mark.parametrize("frontend", ["wav2vec2", "fastconv"])
@pytest.mark.parametrize("name", TINY)
def test_tiny_presets_padding_invariant(name, frontend):
    model = build_hubert(name, frontend=frontend).eval()
    assert_padding_invariant(model, 7000, 12000)


@pytest.mark.parametrize("frontend", ["fastconv", "wav2vec2"])
@pytest.mark.parametrize("name", FULL)
def test_full_presets_padding_invariant(name, frontend):
    model = build_hubert(name, frontend=frontend).eval()
    assert_padding_invariant(model, 5000, 9000)


def test_presets_default_to_fastconv_and_yaml_matches():
    for name in FULL:
        assert PRESETS[name].frontend == "fastconv"
    for name, cfg in PRESETS.items():
        path = CONFIG_DIR / f"{name}.yaml"
        assert path.exists(), (
            f"missing {path}; regenerate with hubert_lit.models.config.write_preset_yamls('configs/model')"
        )
        assert HubertConfig.from_yaml(path) == cfg


def test_frame_lengths_formula():
    model = build_hubert("vanilla_tiny")
    sizes = [0, 399, 400, 719, 720, 16000, 32000, 160000, 250000]
    assert model.frame_lengths(torch.tensor(sizes)).tolist() == [frames(n) for n in sizes]
    assert model.num_frames(160000) == 499


def test_extract_features_layer_limit_and_eval_determinism():
    model = build_hubert("vanilla_tiny").eval()
    _, batch, lengths = padded_pair(4000, 6000)
    with torch.no_grad():
        full, _ = model.extract_features(batch, lengths)
        again, _ = model.extract_features(batch, lengths)
        first, _ = model.extract_features(batch, lengths, layer=1)
    assert len(full) == 3 and len(first) == 2
    for x, y in zip(full, again):
        assert torch.equal(x, y)
    for x, y in zip(first, full):
        torch.testing.assert_close(x, y)
    with pytest.raises(ValueError, match="layer"):
        model.extract_features(batch, lengths, layer=3)


def test_extract_features_runs_only_needed_blocks():
    model = build_hubert("vanilla_tiny").eval()
    calls = []
    for i, block in enumerate(model.encoder.layers):
        block.register_forward_hook(lambda *_, i=i: calls.append(i))
    model.extract_features(torch.randn(1, 4000), torch.tensor([4000]), layer=1)
    assert calls == [0]


def test_masking_in_forward_statistics_and_padding():
    model = build_hubert("vanilla_tiny")
    _, batch, lengths = padded_pair(60000, 160000)
    out = model(batch, lengths, generator=torch.Generator().manual_seed(0))
    n = frames(60000)
    assert out.mask.shape == (2, 499)
    assert out.mask.sum(1)[0] == out.mask.sum(1)[1] > 0
    assert not out.mask[0, n:].any()
    assert out.logits_masked.shape == (int(out.mask.sum()), 100)
    assert out.logits_unmasked.shape[0] == n + 499 - int(out.mask.sum())


def test_caller_mask_is_used_as_given():
    model = build_hubert("conformer_s_tiny").eval()
    _, batch, lengths = padded_pair(6000, 9000)
    num_frames = model.num_frames(9000)
    mask = torch.zeros(2, num_frames, dtype=torch.bool)
    mask[0, 3:9] = True
    mask[1, 10:25] = True
    labels = torch.randint(0, 100, (2, num_frames))
    labels[0, frames(6000) :] = -100
    a = model(batch, lengths, labels, mask=mask, generator=torch.Generator().manual_seed(1))
    b = model(batch, lengths, labels, mask=mask, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.mask, mask) and len(a.targets_masked) == 21
    assert torch.equal(objective(model, a), objective(model, b)) and torch.equal(
        a.logits_masked, b.logits_masked
    )
    # masking really replaces the masked frames: the result differs from an unmasked pass
    c = model(batch, lengths, labels, mask=torch.zeros_like(mask))
    assert not torch.allclose(c.hidden_states[-1][0, 3:9], a.hidden_states[-1][0, 3:9])
    bad = mask.clone()
    bad[0, -1] = True  # a padded frame of the short row
    with pytest.raises(ValueError, match="padded"):
        model(batch, lengths, labels, mask=bad)


def test_logits_equal_naive_cosine_and_loss_matches_reference():
    model = build_hubert("vanilla_tiny", num_classes=7).eval()
    wav, lengths = torch.randn(2, 8000), torch.tensor([8000, 8000])
    labels = torch.randint(0, 7, (2, frames(8000)))
    out = model(wav, lengths, labels, generator=torch.Generator().manual_seed(0))
    last = out.hidden_states[-1][out.mask]
    proj = model.final_proj(last)
    naive = torch.stack(
        [torch.stack([F.cosine_similarity(p, e, dim=0) / 0.1 for e in model.label_embeddings]) for p in proj]
    )
    torch.testing.assert_close(out.logits_masked, naive, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.targets_masked, labels[out.mask])
    # torchaudio's formulation: positive first, all k negatives (the positive's duplicate at -inf), target 0
    ref_logits = _compute_logits(proj, labels[out.mask], model.label_embeddings)
    ref_ce = F.cross_entropy(ref_logits, torch.zeros(len(proj), dtype=torch.long))
    terms = prediction_terms(out)
    masked_ce = terms.masked_ce / terms.masked_frames
    torch.testing.assert_close(masked_ce, ref_ce, atol=1e-5, rtol=1e-5)
    assert torch.allclose(objective(model, out), masked_ce + 10 * out.feature_penalty)
    acc = (naive.argmax(-1) == labels[out.mask]).float().mean()
    torch.testing.assert_close(terms.masked_accuracy, acc)


def test_unmasked_weight_and_ignored_labels():
    model = build_hubert("vanilla_tiny", pred_nomask_weight=0.5, feature_pen_weight=0.0).eval()
    wav, lengths = torch.randn(1, 8000), torch.tensor([8000])
    labels = torch.randint(0, 100, (1, frames(8000)))
    labels[0, :5] = -100
    out = model(wav, lengths, labels, generator=torch.Generator().manual_seed(0))
    terms = prediction_terms(out)
    assert int(terms.masked_frames + terms.unmasked_frames) == frames(8000) - 5
    masked_ce, unmasked_ce = terms.masked_ce / terms.masked_frames, terms.unmasked_ce / terms.unmasked_frames
    torch.testing.assert_close(objective(model, out), masked_ce + 0.5 * unmasked_ce)
    assert out.logits_unmasked.requires_grad
    with pytest.raises(ValueError, match="labels must be in"):
        model(wav, lengths, torch.full_like(labels, 100))
    with pytest.raises(ValueError, match="frames"):
        model(wav, lengths, labels[:, :-1])


def test_feature_penalty_is_mean_square_over_valid_frames():
    model = build_hubert("vanilla_tiny").eval()
    a, batch, lengths = padded_pair(5000, 9000)
    labels = torch.zeros(2, frames(9000), dtype=torch.long)
    out = model(batch, lengths, labels)
    with torch.no_grad():
        fa, _ = model.feature_extractor(a[None], torch.tensor([5000]))
        fb, _ = model.feature_extractor(batch[1:], torch.tensor([9000]))
    expected = torch.cat([fa[0], fb[0]]).square().mean()
    torch.testing.assert_close(out.feature_penalty, expected)


@pytest.mark.parametrize("name", TINY)
def test_every_parameter_gets_a_gradient(name):
    model = build_hubert(name, encoder={"layerdrop": 0.0}).train()
    _, batch, lengths = padded_pair(6000, 9000)
    labels = torch.randint(0, 100, (2, model.num_frames(9000)))
    out = model(batch, lengths, labels, generator=torch.Generator().manual_seed(0))
    objective(model, out).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert not zero, zero


def test_front_end_gradient_scaled_by_feature_grad_mult():
    torch.manual_seed(0)
    a = build_hubert("vanilla_tiny", feature_grad_mult=1.0, dropout_input=0.0).eval()
    b = build_hubert("vanilla_tiny", feature_grad_mult=0.1, dropout_input=0.0).eval()
    b.load_state_dict(a.state_dict())
    wav, lengths = torch.randn(1, 6000), torch.tensor([6000])
    labels = torch.randint(0, 100, (1, frames(6000)))
    mask = torch.zeros(1, frames(6000), dtype=torch.bool)
    mask[0, 2:12] = True
    for model in (a, b):
        objective(model, model(wav, lengths, labels, mask=mask)).backward()
    w_a = a.feature_extractor.conv_layers[0].conv.weight.grad
    w_b = b.feature_extractor.conv_layers[0].conv.weight.grad
    torch.testing.assert_close(w_b, 0.1 * w_a, atol=1e-7, rtol=1e-4)
    torch.testing.assert_close(b.final_proj.weight.grad, a.final_proj.weight.grad)


def test_config_dict_round_trip_and_overrides():
    for name, cfg in PRESETS.items():
        data = cfg.to_dict()
        json.dumps(data)  # plain values only
        assert HubertConfig.from_dict(data) == cfg, name
    model = build_hubert(
        "vanilla",
        500,
        encoder={"num_layers": 2},
        **{"encoder.dim": 64, "encoder.ffn_dim": 128, "encoder.num_heads": 4},
    )
    c = model.config
    assert (c.num_classes, c.encoder.num_layers, c.encoder.dim, c.frontend) == (500, 2, 64, "fastconv")
    assert model.label_embeddings.shape == (500, 256)
    with pytest.raises(ValueError, match="unknown HubertConfig keys"):
        build_hubert("vanilla_tiny", not_a_field=1)
    with pytest.raises(ValueError, match="unknown encoder config keys"):
        build_hubert("vanilla_tiny", encoder={"depth": 3})
    with pytest.raises(ValueError, match="unknown model preset"):
        build_hubert("vanila")
    with pytest.raises(ValueError, match="frontend"):
        build_hubert("vanilla_tiny", frontend="mel")


def test_save_load_round_trip(tmp_path):
    model = build_hubert("squeezeformer_xs_tiny", num_classes=11).eval()
    with torch.no_grad():  # make norm/affine parameters non-trivial so a wrong load would show
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "sub" / "model.pt"
    save_model(model, path)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary file left behind
    loaded = load_model(path)
    assert not loaded.training and loaded.config == model.config
    _, batch, lengths = padded_pair(5000, 8000)
    labels = torch.randint(0, 11, (2, frames(8000)))
    mask = model.compute_mask(model.frame_lengths(lengths), frames(8000), torch.Generator().manual_seed(0))
    with torch.no_grad():
        x, _ = model.extract_features(batch, lengths)
        y, _ = loaded.extract_features(batch, lengths)
        out_a, out_b = model(batch, lengths, labels, mask=mask), loaded(batch, lengths, labels, mask=mask)
    for u, v in zip(x, y):
        assert torch.equal(u, v)
    assert torch.equal(objective(model, out_a), objective(loaded, out_b))
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a hubert-lit model file"):
        load_model(tmp_path / "other.pt")


def test_inference_only_model_has_no_head():
    model = build_hubert("vanilla_tiny", num_classes=0)
    assert model.final_proj is None and model.label_embeddings is None and model.mask_embedding is None
    with pytest.raises(RuntimeError, match="no pretraining head"):
        model(torch.randn(1, 4000), torch.tensor([4000]))
    states, _ = model.eval().extract_features(torch.randn(1, 4000), torch.tensor([4000]))
    assert len(states) == 3 and not any(math.isnan(s.sum().item()) for s in states)


def test_batch_shorter_than_one_frame_is_a_clear_error():
    model = build_hubert("vanilla_tiny", num_classes=10).eval()
    with pytest.raises(ValueError, match="399 samples, fewer than one frame"):
        model.extract_features(torch.randn(2, 399), torch.tensor([399, 200]))
    with pytest.raises(ValueError, match="fewer than one frame"):
        model(torch.randn(1, 300), torch.tensor([300]))
    states, lengths = model.extract_features(torch.randn(2, 400), torch.tensor([400, 0]))
    assert lengths.tolist() == [1, 0] and states[-1].shape[1] == 1


def test_lengths_none_means_no_padding_and_check_inputs_reports_padding():
    model = build_hubert("conformer_s_tiny").eval()
    wav = torch.randn(2, 9000)
    labels = torch.randint(0, 100, (2, frames(9000)))
    mask = model.compute_mask(
        model.frame_lengths(torch.tensor([9000, 9000])), frames(9000), torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        full = model(wav, torch.tensor([9000, 9000]), labels, mask=mask)
        none = model(wav, None, labels, mask=mask, validate=False)
    assert torch.equal(full.logits, none.logits) and torch.equal(full.frame_lengths, none.frame_lengths)
    assert not model.check_inputs(wav, torch.tensor([9000, 9000]), labels)
    assert not model.check_inputs(wav, torch.tensor([9000, 8999]), labels)  # same frames: nothing to mask
    assert model.check_inputs(wav, torch.tensor([9000, 5000]), labels)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 9000\]"):
        model.check_inputs(wav, torch.tensor([9000, 9001]))
    with pytest.raises(ValueError, match="labels must be in"):
        model.check_inputs(wav, None, torch.full_like(labels, 100))


def test_output_rows_and_frame_logits_agree():
    model = build_hubert("vanilla_tiny", num_classes=7).eval()
    _, batch, lengths = padded_pair(5000, 9000)
    labels = torch.randint(0, 7, (2, frames(9000)))
    labels[0, frames(5000) :] = -100
    labels[1, :3] = -100  # unlabelled frames count in neither part
    out = model(batch, lengths, labels, generator=torch.Generator().manual_seed(0))
    assert out.logits.shape == (2, frames(9000), 7)
    rows = out.valid & (labels != -100)
    assert torch.equal(out.labelled, rows)
    assert torch.equal(out.logits_masked, out.logits[rows & out.mask])
    assert torch.equal(out.targets_unmasked, labels[rows & ~out.mask])
    terms = prediction_terms(out)
    assert int(terms.masked_frames) == int((rows & out.mask).sum())
    assert int(terms.unmasked_frames) == int((rows & ~out.mask).sum())
