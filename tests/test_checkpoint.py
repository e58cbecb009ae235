"""File formats (hubert_lit.checkpoint): files written by hubert-lit 0.1.0 load and resume; bad files are named.

``tests/assets/v010/`` holds files the 0.1.0 code wrote (recipe: ``tests/assets/make_v010_files.py``): a
pretraining and a distillation Lightning checkpoint (step 4 of 6), a model file, a packed export, and the features
those models computed then.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from _fixtures import cpu_fit_args, make_tone_dataset  # noqa: E402

import hubert_lit  # noqa: E402
from hubert_lit.checkpoint import (  # noqa: E402
    MODEL_FORMAT,
    file_kind,
    model_file_payload,
    read_model_config,
    save_model,
)
from hubert_lit.models import build_hubert  # noqa: E402

V010 = TESTS / "assets" / "v010"
OLD_FILES = (
    "pretrain_vanilla_tiny.ckpt",
    "conformer_s_tiny.pt",
    "distill_conformer_s_tiny_w1a1.ckpt",
    "distill_conformer_s_tiny_w1a1.packed.pt",
)


@pytest.mark.parametrize("name", OLD_FILES)
def test_files_of_version_010_load_and_compute_the_same_features(name):
    reference = torch.load(V010 / "reference_features.pt", weights_only=True)
    model = hubert_lit.load_model(V010 / name)
    with torch.no_grad():
        states, frames = model.extract_features(reference["waveforms"], reference["lengths"])
    want = reference["features"][name]
    assert torch.equal(frames, want["frame_lengths"])
    assert torch.equal(torch.stack(states), want["states"])
    binarized = name.startswith("distill")
    assert (model.quant_spec is not None) == binarized
    config, spec = read_model_config(V010 / name)
    assert config == model.config and (spec is not None) == binarized


@pytest.fixture(scope="module")
def tone_data(tmp_path_factory) -> tuple[Path, Path]:
    # exactly the corpus make_v010_files.py trained on (seeded), so the saved loader state fits it
    return make_tone_dataset(tmp_path_factory.mktemp("tones"), speakers=2, utterances=8, shard_size=8, seed=0)


def _fit(data, run_root: Path, name: str, *extra: str) -> Path:
    from hubert_lit.cli import lightning_main

    # every 2 steps: step 6, the last one, is saved
    args = cpu_fit_args(*data, run_root, name, 6, "--checkpoint.every_n_train_steps=2", *extra)
    assert lightning_main(args) == 0
    return run_root / name / "checkpoints" / "last.ckpt"


def _model_weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("model.")}


def _differences_from_the_old_run(resumed: Path, name: str) -> list[str]:
    """What differs between the resumed run's end and the step-6 weights the 0.1.0 run ended with (empty: the
    same step and bit-identical weights)."""
    want = torch.load(V010 / "reference_features.pt", weights_only=True)["final_weights"][name]
    got = _model_weights(resumed)
    step = torch.load(resumed, weights_only=True)["global_step"]
    differences = [] if step == 6 else [f"global_step {step}, expected 6"]
    if got.keys() != want.keys():
        return [*differences, f"weights {sorted(got.keys() ^ want.keys())} are in only one of the runs"]
    return differences + [key for key in want if not torch.equal(got[key], want[key])]


def test_pretraining_checkpoint_of_version_010_resumes_exactly(tone_data, tmp_path):
    """Resumed at step 4 by today's code, the run ends exactly where the 0.1.0 run ended."""
    args = (
        "--model.preset=vanilla_tiny",
        "--model.num_classes=4",
        "--model.lr=2e-3",
        "--model.warmup_steps=2",
    )
    name = "pretrain_vanilla_tiny.ckpt"
    resumed = _fit(tone_data, tmp_path, "resumed", *args, f"--ckpt_path={V010 / name}")
    assert _differences_from_the_old_run(resumed, name) == []


def test_distillation_checkpoint_of_version_010_resumes_exactly(tone_data, tmp_path):
    teacher = V010 / "conformer_s_tiny.pt"
    args = (
        "--model=hubert_lit.lit.distill.BiTDistillModule",
        f"--model.teacher={teacher}",
        "--model.lr=2e-3",
        "--model.warmup_steps=2",
    )
    name = "distill_conformer_s_tiny_w1a1.ckpt"
    resumed = _fit(tone_data, tmp_path, "resumed", *args, f"--ckpt_path={V010 / name}")
    assert _differences_from_the_old_run(resumed, name) == []
    assert not any(k.startswith("teacher.") for k in torch.load(resumed, weights_only=True)["state_dict"])


def test_unreadable_and_foreign_files_are_named(tmp_path):
    empty = tmp_path / "last.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=f"{empty} is empty"):
        hubert_lit.load_model(empty)
    foreign = tmp_path / "other_project.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "pytorch-lightning_version": "2.6.0"}, foreign)
    with pytest.raises(
        ValueError, match=f"{foreign} is a Lightning checkpoint, but not of a hubert-lit module"
    ):
        hubert_lit.load_model(foreign)
    truncated = tmp_path / "truncated.pt"
    save_model(build_hubert("vanilla_tiny"), truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(ValueError, match=f"{truncated}: not a readable checkpoint or model file"):
        hubert_lit.load_model(truncated)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        hubert_lit.load_model(tmp_path / "missing.pt")


def test_file_is_read_once(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_model(build_hubert("vanilla_tiny"), path)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a) or real_load(*a, **k))
    hubert_lit.load_model(path)
    assert len(calls) == 1


def test_kind_dispatch():
    model = build_hubert("vanilla_tiny")
    payload = model_file_payload(model)
    assert payload["format"] == MODEL_FORMAT and file_kind(payload) == "model"
    with pytest.raises(ValueError, match="not a hubert-lit model file"):
        file_kind({"format": "something/1"}, "x.pt")


def _binarized_tiny() -> torch.nn.Module:
    from hubert_lit.quant import binarize

    torch.manual_seed(0)
    return binarize(build_hubert("conformer_s_tiny", num_classes=8)).eval()


def test_packed_file_of_the_previous_layout_loads_like_the_bundled_one(tmp_path):
    """``hubert-lit-packed/1`` (one pickled entry per tensor, what save_packed wrote before the bundle, also at 16
    bits without head) and today's bundled ``/2`` hold the same model."""
    from hubert_lit.atomic import atomic_torch_save
    from hubert_lit.checkpoint import PACKED_ENTRIES_FORMAT, PACKED_FORMAT, packed_payload, save_packed

    model = _binarized_tiny()
    waves = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([8000, 6000])
    for options in ({}, {"full_precision_bits": 16, "drop_head": True}):
        old, new = tmp_path / "old.pt", tmp_path / "new.pt"
        atomic_torch_save(packed_payload(model, **options), old)  # the previous writer, verbatim
        save_packed(model, new, **options)
        assert torch.load(old, weights_only=True)["format"] == PACKED_ENTRIES_FORMAT
        stored = torch.load(new, weights_only=True)
        assert stored["format"] == PACKED_FORMAT and "state_dict" not in stored
        entries = packed_payload(model, **options)
        dtypes = {t.dtype for t in entries["state_dict"].values()}
        dtypes |= {t.dtype for entry in entries["packed"].values() for t in (entry["codes"], entry["step"])}
        assert len(stored["tensors"]) == len(dtypes)  # one flat tensor per dtype, not one per tensor
        assert new.stat().st_size < old.stat().st_size
        with torch.no_grad():
            want, _ = hubert_lit.load_model(old).extract_features(waves, lengths)
            got, _ = hubert_lit.load_model(new).extract_features(waves, lengths)
        assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True)), options


def test_damaged_bundled_packed_file_is_named(tmp_path):
    import zlib

    from hubert_lit.checkpoint import save_packed

    path = tmp_path / "model.packed.pt"
    save_packed(_binarized_tiny(), path)
    good = torch.load(path, weights_only=True)

    def damaged(**changes) -> Path:
        out = tmp_path / "damaged.pt"
        torch.save({**good, **changes}, out)
        return out

    cut_index = good["index"][: good["index"].numel() // 2].clone()
    with pytest.raises(ValueError, match=r"damaged\.pt: damaged bundle index"):
        hubert_lit.load_model(damaged(index=cut_index))
    with pytest.raises(ValueError, match=r"damaged\.pt: hubert-lit-packed/2 file without \['index'\]"):
        hubert_lit.load_model(_without(good, "index", tmp_path))
    short = {name: flat[:-1].clone() for name, flat in good["tensors"].items()}
    with pytest.raises(ValueError, match=r"damaged\.pt: .* lie outside the bundled"):
        hubert_lit.load_model(damaged(tensors=short))
    other = zlib.compress(b'{"state_dict": {}}')
    with pytest.raises(ValueError, match=r"damaged\.pt: the bundle holds \['state_dict'\]"):
        hubert_lit.load_model(damaged(index=torch.frombuffer(bytearray(other), dtype=torch.uint8)))


def _without(payload: dict, key: str, folder: Path) -> Path:
    out = folder / "damaged.pt"
    torch.save({k: v for k, v in payload.items() if k != key}, out)
    return out
