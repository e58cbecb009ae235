"""Interop: torchaudio HuBERT -> ours (parity of every hidden state) and fairseq checkpoint files -> ours."""

import argparse
import os
import sys
import types

import pytest
import torch
import torch.nn.functional as F
import torchaudio
from torchaudio.models.wav2vec2.utils.import_fairseq import _convert_state_dict, _map_key

from hubert_lit.lit.losses import prediction_terms
from hubert_lit.models.convert import _parse_conv_layers, from_fairseq, from_torchaudio


def frames(n: int) -> int:
    return (n - 400) // 320 + 1


def torchaudio_states(model, wav: torch.Tensor) -> list[torch.Tensor]:
    """Encoder input + every layer output of a torchaudio Wav2Vec2Model on one unpadded utterance."""
    feats, _ = model.feature_extractor(wav[None], None)
    x, _ = model.encoder._preprocess(feats, None)
    first = model.encoder.transformer._preprocess(x)
    return [first, *model.extract_features(wav[None])[0]]


def assert_matches_torchaudio(ours, ref, lengths: list[int], atol: float) -> float:
    """Our model on a padded batch vs torchaudio on each utterance alone; returns the max abs difference."""
    g = torch.Generator().manual_seed(0)
    waves = [torch.randn(n, generator=g) for n in lengths]
    batch = torch.zeros(len(waves), max(lengths))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    worst = 0.0
    with torch.no_grad():
        states, frame_lengths = ours.extract_features(batch, torch.tensor(lengths))
        assert frame_lengths.tolist() == [frames(n) for n in lengths]
        for i, w in enumerate(waves):
            expected = torchaudio_states(ref, w)
            assert len(states) == len(expected)
            n = frames(len(w))
            for ours_state, ref_state in zip(states, expected):
                diff = (ours_state[i, :n] - ref_state[0]).abs().max().item()
                worst = max(worst, diff)
    assert worst < atol, worst
    return worst


@pytest.fixture(scope="module")
def pretrain_base():
    torch.manual_seed(0)
    model = torchaudio.models.hubert_pretrain_base(num_classes=100).eval()
    with torch.no_grad():  # random, non-trivial norms so a mismapped LayerNorm would show
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def test_hubert_base_parity_and_parameter_count(pretrain_base):
    base = pretrain_base.wav2vec2  # exactly torchaudio.models.hubert_base()'s architecture
    ours = from_torchaudio(base)
    assert sum(p.numel() for p in ours.parameters()) == 94_370_944
    assert not ours.training and ours.config.frontend == "wav2vec2" and ours.config.num_classes == 0
    print("max abs diff", assert_matches_torchaudio(ours, base, [48000, 32000], atol=1e-4))


def test_hubert_pretrain_base_head(pretrain_base):
    ours = from_torchaudio(pretrain_base)
    assert sum(p.numel() for p in ours.parameters()) == 94_594_176
    torch.testing.assert_close(
        ours.mask_embedding, pretrain_base.mask_generator.mask_embedding, rtol=0, atol=0
    )
    torch.testing.assert_close(
        ours.label_embeddings, pretrain_base.logit_generator.label_embeddings, rtol=0, atol=0
    )
    cfg = ours.config
    assert (cfg.mask_prob, cfg.mask_length, cfg.feature_grad_mult, cfg.final_dim) == (0.8, 10, 0.1, 256)
    # same masked-prediction loss as torchaudio's LogitGenerator on our hidden states
    wav, lengths = torch.randn(1, 16000), torch.tensor([16000])
    labels = torch.randint(0, 100, (1, frames(16000)))
    mask = torch.zeros(1, frames(16000), dtype=torch.bool)
    mask[0, 5:25] = True
    with torch.no_grad():
        out = ours(wav, lengths, labels, mask=mask)
        logit_m, _ = pretrain_base.logit_generator(out.hidden_states[-1][0], labels[0], mask[0], ~mask[0])
    positive_first = torch.zeros(len(logit_m), dtype=torch.long)  # torchaudio puts the target at index 0
    ref = F.cross_entropy(logit_m, positive_first)
    terms = prediction_terms(out)
    torch.testing.assert_close(terms.masked_ce / terms.masked_frames, ref, atol=1e-5, rtol=1e-5)


def test_rejects_other_models():
    with pytest.raises(ValueError, match="Wav2Vec2Model or HuBERTPretrainModel"):
        from_torchaudio(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------------------------------------------------
# fairseq

CONV = [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2
CONV_TEXT = "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2"


def small_torchaudio(mode: str, layer_norm_first: bool):
    return torchaudio.models.wav2vec2_model(
        extractor_mode=mode,
        extractor_conv_layer_config=CONV,
        extractor_conv_bias=False,
        encoder_embed_dim=64,
        encoder_projection_dropout=0.1,
        encoder_pos_conv_kernel=16,
        encoder_pos_conv_groups=4,
        encoder_num_layers=2,
        encoder_num_heads=4,
        encoder_attention_dropout=0.1,
        encoder_ff_interm_features=128,
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.1,
        encoder_layer_norm_first=layer_norm_first,
        encoder_layer_drop=0.05,
        aux_num_out=None,
    ).eval()


def fairseq_state_dict(model, mode: str) -> dict[str, torch.Tensor]:
    """The state_dict of ``model`` under fairseq HubertModel key names (written by hand)."""
    out = {}
    for key, value in model.state_dict().items():
        k = key
        for old, new in (
            ("encoder.transformer.layers.", "encoder.layers."),
            (".attention.", ".self_attn."),
            (".feed_forward.intermediate_dense.", ".fc1."),
            (".feed_forward.output_dense.", ".fc2."),
            (
                "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original0",
                "encoder.pos_conv.0.weight_g",
            ),
            (
                "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1",
                "encoder.pos_conv.0.weight_v",
            ),
            ("encoder.transformer.pos_conv_embed.conv.bias", "encoder.pos_conv.0.bias"),
            ("encoder.transformer.layer_norm.", "encoder.layer_norm."),
            ("encoder.feature_projection.layer_norm.", "layer_norm."),
            ("encoder.feature_projection.projection.", "post_extract_proj."),
            (".conv.weight", ".0.weight"),
        ):
            k = k.replace(old, new)
        if k.startswith("encoder.layers.") and k.split(".")[3] == "layer_norm":
            k = k.replace(".layer_norm.", ".self_attn_layer_norm.")
        if k.startswith("feature_extractor.") and ".layer_norm." in k:
            k = k.replace(".layer_norm.", ".2." if mode == "group_norm" else ".2.1.")
        out[k] = value.clone()
    # our hand-written names agree with torchaudio's own fairseq importer
    for k in out:
        if "pos_conv" not in k:
            assert _map_key(k) in model.state_dict(), k
    return out


def write_fairseq_checkpoint(path, model, mode, layer_norm_first, num_classes, symbols, use_args):
    state = fairseq_state_dict(model, mode)
    g = torch.Generator().manual_seed(1)
    state["mask_emb"] = torch.rand(64, generator=g)
    state["final_proj.weight"] = torch.randn(16, 64, generator=g)
    state["final_proj.bias"] = torch.randn(16, generator=g)
    state["label_embs_concat"] = torch.rand(num_classes + 4, 16, generator=g)
    model_cfg = dict(
        _name="hubert",
        label_rate=50,
        extractor_mode="default" if mode == "group_norm" else "layer_norm",
        encoder_layers=2,
        encoder_embed_dim=64,
        encoder_ffn_embed_dim=128,
        encoder_attention_heads=4,
        activation_fn="gelu",
        layer_type="transformer",
        dropout=0.1,
        attention_dropout=0.1,
        activation_dropout=0.0,
        encoder_layerdrop=0.05,
        dropout_input=0.1,
        dropout_features=0.1,
        final_dim=16,
        untie_final_proj=True,
        layer_norm_first=layer_norm_first,
        conv_feature_layers=CONV_TEXT,
        conv_bias=False,
        logit_temp=0.1,
        target_glu=False,
        feature_grad_mult=0.1,
        mask_length=10,
        mask_prob=0.8,
        conv_pos=16,
        conv_pos_groups=4,
    )
    checkpoint = {"model": state, "optimizer_history": [], "extra_state": {}}
    if use_args:
        checkpoint.update(args=argparse.Namespace(**model_cfg), cfg=None)
    else:
        checkpoint["cfg"] = {
            "model": model_cfg,
            "task": {"labels": ["km"]},
            "criterion": {"pred_masked_weight": 1.0, "pred_nomask_weight": 0.0, "loss_weights": [10.0]},
        }
    if symbols is None:
        torch.save(checkpoint, path)
        return state
    # a stand-in for fairseq's Dictionary class, importable only while the checkpoint is written
    module = types.ModuleType("fairseq.data.dictionary")

    Dictionary = type("Dictionary", (), {"__module__": "fairseq.data.dictionary"})
    module.Dictionary = Dictionary
    d = Dictionary()
    d.symbols = symbols
    d.count = [1] * len(symbols)
    checkpoint["task_state"] = {"dictionaries": [d]}
    names = ["fairseq", "fairseq.data", "fairseq.data.dictionary"]
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules.update({n: module for n in names})
    try:
        torch.save(checkpoint, path)
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
    return state


@pytest.mark.parametrize(
    "mode,layer_norm_first,use_args", [("group_norm", False, False), ("layer_norm", True, True)]
)
def test_from_fairseq_matches_torchaudio_import(tmp_path, mode, layer_norm_first, use_args):
    torch.manual_seed(0)
    ref = small_torchaudio(mode, layer_norm_first)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    k = 6
    # cluster ids in a shuffled order behind the 4 specials: rows must be re-ordered by id
    symbols = None if use_args else ["<s>", "<pad>", "</s>", "<unk>", "3", "0", "5", "1", "4", "2"]
    state = write_fairseq_checkpoint(tmp_path / "ckpt.pt", ref, mode, layer_norm_first, k, symbols, use_args)
    assert "fairseq" not in sys.modules
    ours = from_fairseq(tmp_path / "ckpt.pt")

    # torchaudio's own fairseq key mapping gives the reference model for the same weights
    imported = small_torchaudio(mode, layer_norm_first)
    imported.load_state_dict(_convert_state_dict(state), strict=False)
    lengths = [9000, 6000]
    if layer_norm_first:
        # torchaudio's intermediate outputs skip the final LayerNorm that its forward applies
        w = torch.randn(9000, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            states, _ = ours.extract_features(w[None], torch.tensor([9000]))
            expected = torchaudio_states(imported, w)
            final, _ = imported(w[None])
        for x, y in zip(states[:-1], expected[:-1]):
            torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(states[-1], final, atol=1e-4, rtol=1e-4)
    else:
        assert_matches_torchaudio(ours, imported, lengths, atol=1e-4)

    c = ours.config
    assert (c.num_classes, c.final_dim, c.extractor_mode, c.encoder.layer_norm_first) == (
        k,
        16,
        mode,
        layer_norm_first,
    )
    assert (c.pos_conv_kernel, c.pos_conv_groups, c.conv_dim, c.frontend) == (16, 4, 32, "wav2vec2")
    torch.testing.assert_close(ours.mask_embedding, state["mask_emb"], rtol=0, atol=0)
    torch.testing.assert_close(ours.final_proj.weight, state["final_proj.weight"], rtol=0, atol=0)
    rows = list(range(4, 4 + k)) if symbols is None else [symbols.index(str(i)) for i in range(k)]
    torch.testing.assert_close(ours.label_embeddings, state["label_embs_concat"][rows], rtol=0, atol=0)


def test_from_fairseq_errors(tmp_path):
    ref = small_torchaudio("group_norm", False)
    state = fairseq_state_dict(ref, "group_norm")
    state["encoder.layers.0.something_new.weight"] = torch.zeros(1)
    cfg = {
        "model": {
            "conv_feature_layers": CONV_TEXT,
            "encoder_layers": 2,
            "encoder_embed_dim": 64,
            "encoder_ffn_embed_dim": 128,
            "encoder_attention_heads": 4,
            "conv_pos": 16,
            "conv_pos_groups": 4,
        }
    }
    torch.save({"model": state, "cfg": cfg}, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match="something_new"):
        from_fairseq(tmp_path / "extra.pt")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"weights": {}, "payload": Evil()}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a fairseq checkpoint"):
        from_fairseq(tmp_path / "bad.pt")
    assert not marker.exists(), "unpickling ran code from a module outside the allow-list"
    cfg["model"]["conv_feature_layers"] = "[(32,10,5)] * 3"
    torch.save({"model": fairseq_state_dict(ref, "group_norm"), "cfg": cfg}, tmp_path / "conv.pt")
    with pytest.raises(ValueError, match="neither the wav2vec2 stack nor SEW"):
        from_fairseq(tmp_path / "conv.pt")


def test_parse_conv_feature_layers():
    assert _parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2") == (
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    )
    with pytest.raises(ValueError):
        _parse_conv_layers("__import__('os').getcwd()")


def test_from_torchaudio_layer_norm_pre_ln_model():
    """hubert_large-style settings (layer_norm extractor, pre-LN) on a small torchaudio model."""
    torch.manual_seed(0)
    ref = small_torchaudio("layer_norm", True)
    ours = from_torchaudio(ref)
    assert ours.config.extractor_mode == "layer_norm" and ours.config.encoder.layer_norm_first
    w = torch.randn(7000)
    with torch.no_grad():
        states, _ = ours.extract_features(w[None], torch.tensor([7000]))
        expected = torchaudio_states(ref, w)
        final, _ = ref(w[None])
    for x, y in zip(states[:-1], expected[:-1]):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(states[-1], final, atol=1e-5, rtol=1e-5)
