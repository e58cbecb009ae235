"""The s3prl upstream adapter, driven through the calls s3prl makes (s3prl itself is not installed).

s3prl's hub resolves ``-u hubert_lit_custom -k CKPT`` to ``hubert_lit_custom(CKPT)``; the runner moves the expert
to a device, puts it in eval mode when the upstream is frozen, and its ``Featurizer`` asks
``get_downsample_rates(key)``, probes with a one-second dummy waveform and then calls the expert on lists of
unpadded waveforms, taking ``round(len / rate)`` as each utterance's feature length (a mismatch of more than 5
frames against the returned length is an error there) and a softmax-weighted sum over ``hidden_states``.
"""

from __future__ import annotations

import pytest
import torch

from hubert_lit.checkpoint import save_model
from hubert_lit.models import build_hubert
from hubert_lit.superb import hubconf
from hubert_lit.superb.s3prl_upstream import UpstreamExpert

TOLERABLE_SEQLEN_DIFF = 5  # s3prl's Featurizer tolerance


def drive_like_s3prl(upstream: UpstreamExpert, wavs: list[torch.Tensor]) -> dict:
    upstream.eval()
    assert upstream.get_downsample_rates("hidden_states") == 320
    with torch.no_grad():
        probe = upstream([torch.randn(16000)])  # the Featurizer's dummy forward
        out = upstream(wavs)
    assert len(probe["hidden_states"]) == len(out["hidden_states"])
    return out


def check_outputs(out: dict, wavs: list[torch.Tensor], num_states: int, dim: int) -> None:
    states = out["hidden_states"]
    assert len(states) == num_states
    shapes = {tuple(s.shape) for s in states}
    assert len(shapes) == 1, f"hidden states differ in shape: {shapes}"
    batch, frames, width = shapes.pop()
    assert (batch, width) == (len(wavs), dim)
    torch.testing.assert_close(out["last_hidden_state"], states[-1])
    # s3prl checks the padded length against round(longest / rate), then trims each utterance to
    # round(len / rate) frames, which is within one frame of the model's own count
    assert abs(frames - round(max(map(len, wavs)) / 320)) <= TOLERABLE_SEQLEN_DIFF
    for wav in wavs:
        assert abs(round(len(wav) / 320) - ((len(wav) - 400) // 320 + 1)) <= 1
    weights = torch.softmax(torch.zeros(num_states), 0)  # s3prl's weighted sum at initialisation
    summed = (torch.stack(states) * weights[:, None, None, None]).sum(0)
    assert summed.shape == (batch, frames, width) and torch.isfinite(summed).all()


def check_padding_is_internal(upstream: UpstreamExpert, out: dict, wavs: list[torch.Tensor]) -> None:
    """Each utterance alone gives the same states on its frames as inside the padded batch; frames past its
    length are zero."""
    with torch.no_grad():
        for i, wav in enumerate(wavs):
            alone = upstream([wav])["hidden_states"]
            n = alone[0].shape[1]
            for layer, state in enumerate(alone):
                torch.testing.assert_close(out["hidden_states"][layer][i, :n], state[0], atol=1e-4, rtol=1e-4)
                assert not out["hidden_states"][layer][i, n:].any()


@pytest.mark.parametrize("preset", ["vanilla_tiny", "conformer_s_tiny"])
def test_hubconf_entry_behaves_like_an_s3prl_upstream(tmp_path, preset):
    model = build_hubert(preset, num_classes=10)
    path = tmp_path / f"{preset}.pt"
    save_model(model, path)
    # s3prl's runner: Upstream(ckpt=..., model_config=..., refresh=...).to(device)
    upstream = hubconf.hubert_lit_custom(ckpt=str(path), model_config=None, refresh=False).to("cpu")
    assert isinstance(upstream, torch.nn.Module)
    assert set(hubconf.__all__) == {"hubert_lit_custom", "hubert_lit_local"}  # what `import *` registers
    wavs = [torch.randn(16000), torch.randn(12345), torch.randn(4000)]
    out = drive_like_s3prl(upstream, wavs)
    check_outputs(out, wavs, model.num_layers + 1, model.config.encoder.dim)
    check_padding_is_internal(upstream, out, wavs)


def test_fine_tuning_mode_passes_gradients_and_keeps_the_state_count(tmp_path):
    model = build_hubert("vanilla_tiny", num_classes=10, **{"encoder.layerdrop": 0.5})
    save_model(model, tmp_path / "m.pt")
    upstream = UpstreamExpert(str(tmp_path / "m.pt"))
    upstream.train()  # s3prl -f: the upstream trains with the downstream
    for _ in range(3):  # LayerDrop must not change the number of hidden states (s3prl issue #139)
        out = upstream([torch.randn(8000), torch.randn(6000)])
        assert len(out["hidden_states"]) == model.num_layers + 1
    out["last_hidden_state"].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in upstream.parameters())


def test_binarized_checkpoint_through_the_upstream(tmp_path):
    from hubert_lit.quant.binarize import binarize

    model = binarize(build_hubert("vanilla_tiny", num_classes=10))
    model.train()
    with torch.no_grad():  # the first training-mode batch sets the activation scales
        model.extract_features(torch.randn(2, 8000), torch.tensor([8000, 6000]))
    model.eval()
    save_model(model, tmp_path / "bin.pt")
    upstream = hubconf.hubert_lit_custom(str(tmp_path / "bin.pt"))
    wavs = [torch.randn(9000), torch.randn(7000)]
    out = drive_like_s3prl(upstream, wavs)
    check_outputs(out, wavs, model.num_layers + 1, model.config.encoder.dim)
    with torch.no_grad():
        padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
        expected, _ = model.extract_features(padded, torch.tensor([9000, 7000]))
    for got, want in zip(out["hidden_states"], expected):
        torch.testing.assert_close(got, want)


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="checkpoint path"):
        UpstreamExpert("")
    save_model(build_hubert("vanilla_tiny", num_classes=10), tmp_path / "m.pt")
    upstream = UpstreamExpert(str(tmp_path / "m.pt"))
    with pytest.raises(ValueError, match="at least 400 samples"):
        upstream([torch.randn(300)])
    with pytest.raises(ValueError, match="empty list"):
        upstream([])
