"""``python -m hubert_lit fit ...``: config composition and errors that must stop a run before it starts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from _fixtures import make_tone_dataset  # noqa: E402


@pytest.fixture(scope="module")
def tone_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tones")
    shards, labels = make_tone_dataset(root / "train", speakers=1, utterances=4, shard_size=4, seed=0)
    return {"shards": shards, "labels": labels}


def base_args(data: dict[str, Path], run_root: Path) -> list[str]:
    return [
        "fit",
        "--config",
        str(ROOT / "configs/trainer/cpu_demo.yaml"),
        "--model.preset=vanilla_tiny",
        f"--data.train_shards={data['shards']}",
        f"--data.train_labels={data['labels']}",
        "--data.batch_size=2",
        "--data.min_sample_size=8000",
        "--data.num_workers=0",
        "--trainer.max_steps=2",
        "--model.warmup_steps=1",
        f"--run.root={run_root}",
        "--run.name=r",
        "--run.loggers=[csv]",
    ]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    from hubert_lit.cli import lightning_main

    capsys.readouterr()
    rc = lightning_main(argv)
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def test_configs_compose_left_to_right_with_base_files(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    rc, out = run_cli(
        [
            "fit",
            "--config",
            "configs/pretrain/sparseformer_dn_s_it1.yaml",
            "--config",
            "configs/trainer/a100_1x8.yaml",
            "--model.lr=1e-4",
            "--print_config",
        ],
        capsys,
    )
    assert rc == 0, out
    cfg = yaml.safe_load(out)
    assert cfg["model"]["preset"] == "sparseformer_dn_s"  # the encoder file
    assert (
        cfg["model"]["num_classes"] == 100 and cfg["trainer"]["max_steps"] == 250000
    )  # its _iter1.yaml base
    assert cfg["model"]["weight_decay"] == 0.01 and cfg["trainer"]["gradient_clip_val"] == 10.0  # _base.yaml
    assert cfg["data"]["max_batch_seconds"] == 36.5
    assert (
        cfg["trainer"]["accumulate_grad_batches"] == 4 and cfg["trainer"]["devices"] == 8
    )  # second --config
    assert cfg["model"]["lr"] == 1e-4  # the flag wins over every file
    assert cfg["base"] is None  # expanded once; the printed/saved config can be reused as is


@pytest.mark.parametrize(
    "encoder",
    [
        "vanilla",
        "conformer_s",
        "squeezeformer_xs",
        "sparseformer_dn_s",
        "sparseformer_sw_s",
        "vanilla_fairseq",
    ],
)
def test_every_paper_config_resolves(encoder, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    steps = {"it1": 250000, "it2": 400000 if encoder == "vanilla_fairseq" else 600000}
    for it, classes in (("it1", 100), ("it2", 500)):
        rc, out = run_cli(
            ["fit", "--config", f"configs/pretrain/{encoder}_{it}.yaml", "--print_config"], capsys
        )
        assert rc == 0, out
        cfg = yaml.safe_load(out)
        assert cfg["model"]["num_classes"] == classes and cfg["trainer"]["max_steps"] == steps[it]
        assert cfg["run"]["name"] == f"{encoder}_{it}"
        assert cfg["data"]["max_batch_seconds"] == (87.5 if encoder == "vanilla_fairseq" else 36.5)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model.lrr=1"], "lrr"),  # unknown key
        (["--model.lr=fast"], "model.lr"),  # bad value
        (["--trainer.precision=17"], "precision"),
        (
            ["--data.train_shards=/nonexistent/shards"],
            "data.train_shards: folder /nonexistent/shards does not exist",
        ),
        (["--model.num_classes=7"], "model.num_classes=7 but data.train_labels"),
        (["--model.warmup_steps=5"], "model.warmup_steps=5 must be in [0, 2)"),
        (["--run.loggers=[tensorboard]"], "unknown logger 'tensorboard'"),
        (
            ["--data.train_labels=null", "--model.num_classes=4"],
            "data.train_labels is not set: HubertPretrainModule needs the labels folder of data.train_shards",
        ),
    ],
)
def test_config_errors_exit_2_before_training(extra, message, tone_data, tmp_path, capsys):
    rc, out = run_cli([*base_args(tone_data, tmp_path), *extra], capsys)
    assert rc == 2
    assert message in out
    assert not (tmp_path / "r").exists()  # nothing was built or written


def test_num_classes_comes_from_labels_when_unset(tone_data, tmp_path, capsys):
    rc, out = run_cli(base_args(tone_data, tmp_path), capsys)
    assert rc == 0, out
    import torch

    ckpt = torch.load(tmp_path / "r" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hubert_config"]["num_classes"] == 4  # the tone labels' meta.json
    saved = yaml.safe_load(next((tmp_path / "r" / "csv").glob("version_*/config.yaml")).read_text())
    assert saved["model"]["num_classes"] == 4 and saved["base"] is None


def test_predict_writes_layer_features_per_shard(tone_data, tmp_path, capsys):
    """fit -> predict with the run's saved config and checkpoint: one .npz per shard holding every utterance's
    features of the chosen layer, equal to what the loaded model computes on its own."""
    import numpy as np
    import soundfile as sf
    import torch

    import hubert_lit
    from hubert_lit.data.shardio import load_index

    assert run_cli(base_args(tone_data, tmp_path), capsys)[0] == 0
    saved = next((tmp_path / "r" / "csv").glob("version_*/config.yaml"))
    ckpt = tmp_path / "r" / "checkpoints" / "last.ckpt"
    out_dir = tmp_path / "feats"
    rc, out = run_cli(
        [
            "predict",
            "--config",
            str(saved),
            f"--ckpt_path={ckpt}",
            "--predict_layer=1",
            f"--data.predict_shards={tone_data['shards']}",
            f"--predict_out={out_dir}",
        ],
        capsys,
    )
    assert rc == 0, out
    index = load_index(tone_data["shards"])
    model = hubert_lit.load_model(ckpt)
    for shard in index.shards:
        with np.load(out_dir / f"{shard.name}.npz") as npz:
            feats = {k: npz[k] for k in npz.files}
        ids = [u.id for u in index.utterances if u.shard == shard.name]
        assert sorted(feats) == sorted(ids)
        for utt_id in ids:
            spk, chapter, _ = utt_id.split("-")
            wave, _ = sf.read(
                tone_data["shards"].parent / "audio" / spk / chapter / f"{utt_id}.flac", dtype="float32"
            )
            with torch.no_grad():
                states, _ = model.extract_features(
                    torch.from_numpy(wave)[None], torch.tensor([len(wave)]), layer=1
                )
            expected = states[-1][0].numpy()
            assert feats[utt_id].shape == expected.shape == ((len(wave) - 400) // 320 + 1, 32)
            np.testing.assert_allclose(feats[utt_id], expected, rtol=1e-4, atol=1e-5)
