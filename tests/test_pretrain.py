"""Pretraining: LR schedule, a short fit lowers the loss, exact mid-epoch resume, load_model from a .ckpt,
non-finite step skipping, and missing labels surfacing with the utterance id.

Every fit is tiny (the ``vanilla_tiny`` preset, 4-utterance batches of ~1.3 s tone sequences) and runs in-process
through :func:`hubert_lit.cli.lightning_main`, i.e. the real ``python -m hubert_lit fit`` path.
"""

from __future__ import annotations

import csv
import multiprocessing
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from _fixtures import make_tone_dataset  # noqa: E402

from hubert_lit.lit.schedule import warmup_linear_decay, warmup_linear_decay_factor  # noqa: E402


@pytest.fixture(scope="module")
def tone_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tones")
    train_shards, train_labels = make_tone_dataset(
        root / "train", speakers=2, utterances=8, shard_size=8, seed=0
    )
    dev_shards, dev_labels = make_tone_dataset(root / "dev", speakers=1, utterances=4, shard_size=8, seed=1)
    return {
        "train_shards": train_shards,
        "train_labels": train_labels,
        "val_shards": dev_shards,
        "val_labels": dev_labels,
        "root": root,
    }


def fit_args(
    data: dict[str, Path], run_root: Path, name: str, steps: int, *extra: str, num_workers: int = 0
) -> list[str]:
    """CLI arguments of a tiny CPU fit (16 training utterances = 4 batches per epoch)."""
    return [
        "fit",
        "--config",
        str(TESTS.parent / "configs/trainer/cpu_demo.yaml"),
        "--model.preset=vanilla_tiny",
        "--model.num_classes=4",
        "--model.lr=2e-3",
        "--model.warmup_steps=2",
        f"--data.train_shards={data['train_shards']}",
        f"--data.train_labels={data['train_labels']}",
        f"--data.val_shards={data['val_shards']}",
        f"--data.val_labels={data['val_labels']}",
        "--data.batch_size=4",
        "--data.min_sample_size=8000",
        f"--data.num_workers={num_workers}",
        f"--trainer.max_steps={steps}",
        "--trainer.log_every_n_steps=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.limit_val_batches=0",
        f"--run.root={run_root}",
        f"--run.name={name}",
        "--run.loggers=[csv]",
        *extra,
    ]


def metric_series(run_dir: Path, key: str) -> list[float]:
    values = []
    for path in sorted((run_dir / "csv").glob("version_*/metrics.csv")):
        with open(path) as f:
            values += [float(r[key]) for r in csv.DictReader(f) if r.get(key)]
    return values


def model_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


# ----------------------------------------------------------------------------------------------- schedule
def test_schedule_warmup_then_linear_decay_to_zero():
    w, total = 4, 12
    factors = [warmup_linear_decay_factor(s, w, total) for s in range(total + 2)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]  # linear warm-up, peak at the last warm-up step
    assert factors[4] == 1.0 and factors[8] == pytest.approx(0.5)  # decay starts from the peak
    assert factors[11] == pytest.approx(1 / 8) and factors[12] == 0.0 and factors[13] == 0.0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-4)
    sched = warmup_linear_decay(opt, w, total)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([5e-4 * f for f in factors[:total]])
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_linear_decay_factor(0, 12, 12)


# ----------------------------------------------------------------------------------------------- fit
@pytest.fixture(scope="module")
def fitted_run(tone_data, tmp_path_factory) -> Path:
    from hubert_lit.cli import lightning_main

    root = tmp_path_factory.mktemp("runs")
    rc = lightning_main(fit_args(tone_data, root, "fit20", 20, "--checkpoint.every_n_train_steps=10"))
    assert rc == 0
    return root / "fit20"


def test_fit_lowers_loss_and_logs_metrics(fitted_run):
    loss = metric_series(fitted_run, "train/loss")
    assert len(loss) == 20
    assert sum(loss[-5:]) / 5 < sum(loss[:5]) / 5 - 0.05, loss
    for key in (
        "train/masked_acc",
        "train/unmasked_acc",
        "train/lr",
        "train/grad_norm",
        "train/audio_sec_per_sec",
    ):
        values = metric_series(fitted_run, key)
        assert values and all(v == v for v in values), key  # logged and not NaN
    assert max(metric_series(fitted_run, "train/lr")) == pytest.approx(2e-3)
    assert (fitted_run / "checkpoints" / "last.ckpt").is_file()
    assert (fitted_run / "checkpoints" / "step00000010.ckpt").is_file()
    assert list((fitted_run / "csv").glob("version_*/config.yaml"))  # resolved config saved with the run


def test_load_model_rebuilds_eval_model_from_ckpt(fitted_run, tmp_path):
    import hubert_lit
    from hubert_lit.checkpoint import save_model
    from hubert_lit.models import HubertModel

    ckpt = fitted_run / "checkpoints" / "last.ckpt"
    model = hubert_lit.load_model(ckpt)
    assert isinstance(model, HubertModel) and not model.training
    assert model.config.name == "vanilla_tiny" and model.config.num_classes == 4
    stored = model_weights(ckpt)
    for key, value in model.state_dict().items():
        assert torch.equal(value, stored[f"model.{key}"]), key
    # and the save_model format goes through the same entry point
    save_model(model, tmp_path / "model.pt")
    again = hubert_lit.load_model(tmp_path / "model.pt")
    wave, lengths = torch.randn(2, 16000), torch.tensor([16000, 12000])
    with torch.no_grad():
        a, _ = model.extract_features(wave, lengths)
        b, _ = again.extract_features(wave, lengths)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# ----------------------------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_resume_after_crash_mid_epoch_gives_identical_weights(tone_data, tmp_path):
    """12 steps straight vs. a run killed at step 8 and resumed from its step-6 checkpoint (mid-epoch: 4
    batches per epoch), with 2 loader workers, dropout, LayerDrop and validation on: the final weights and
    optimizer moments must be bit-identical."""
    from hubert_lit.cli import lightning_main

    # validation every 2 steps draws masks too: it must not shift the training random streams
    common = (
        "--checkpoint.every_n_train_steps=3",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1.0",
    )
    before = set(multiprocessing.active_children())
    assert lightning_main(fit_args(tone_data, tmp_path, "straight", 12, *common, num_workers=2)) == 0
    crash = '--trainer.callbacks+={"class_path": "_fixtures.CrashAtStep", "init_args": {"step": 8}}'
    assert lightning_main(fit_args(tone_data, tmp_path, "resumed", 12, *common, crash, num_workers=2)) == 1
    # the loader workers of both runs were stopped when they ended, the crashed one included, not leaked
    assert set(multiprocessing.active_children()) <= before
    ckpt_dir = tmp_path / "resumed" / "checkpoints"
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"] == 6
    assert (
        lightning_main(
            fit_args(tone_data, tmp_path, "resumed", 12, *common, "--ckpt_path=last", num_workers=2)
        )
        == 0
    )
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 12
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def test_resume_from_end_of_epoch_checkpoint_gives_identical_weights(tone_data, tmp_path):
    """8 steps straight vs. a run killed at step 6 and resumed from its step-4 checkpoint, the last batch of
    epoch 0: the resumed run creates its loader iterator before restoring the RNG states, the straight run at
    the start of epoch 1; neither may shift the training random streams."""
    from hubert_lit.cli import lightning_main

    every = "--checkpoint.every_n_train_steps=4"
    assert lightning_main(fit_args(tone_data, tmp_path, "straight", 8, every)) == 0
    crash = '--trainer.callbacks+={"class_path": "_fixtures.CrashAtStep", "init_args": {"step": 6}}'
    assert lightning_main(fit_args(tone_data, tmp_path, "resumed", 8, every, crash)) == 1
    ckpt_dir = tmp_path / "resumed" / "checkpoints"
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"] == 4
    assert lightning_main(fit_args(tone_data, tmp_path, "resumed", 8, every, "--ckpt_path=last")) == 0
    a = model_weights(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    b = model_weights(ckpt_dir / "last.ckpt")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


# ----------------------------------------------------------------------------------------------- robustness
def _module_and_data(tone_data, **module_kwargs):
    from hubert_lit.data.datamodule import ShardDataModule
    from hubert_lit.lit.pretrain import HubertPretrainModule

    module = HubertPretrainModule("vanilla_tiny", num_classes=4, lr=2e-3, warmup_steps=1, **module_kwargs)
    data = ShardDataModule(
        train_shards=str(tone_data["train_shards"]),
        train_labels=str(tone_data["train_labels"]),
        batch_size=4,
        min_sample_size=8000,
        num_workers=0,
    )
    return module, data


def _trainer(tmp_path, steps, callbacks):
    import lightning.pytorch as pl

    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=tmp_path,
        gradient_clip_val=10.0,
    )


def test_nonfinite_step_is_skipped_and_counted(tone_data, tmp_path, caplog):
    from _fixtures import PoisonSteps, SaveWeightsPerStep

    module, data = _module_and_data(tone_data)
    record = SaveWeightsPerStep()
    with caplog.at_level("WARNING", logger="hubert_lit.lit.pretrain"):
        _trainer(tmp_path, 4, [PoisonSteps([2]), record]).fit(module, data)
    assert module._skipped_steps == 1
    assert "non-finite gradient norm at step 2" in caplog.text
    h = record.history  # keyed by global_step after the step
    assert all(torch.equal(h[2][k], h[3][k]) for k in h[2])  # the poisoned step changed nothing
    assert not all(torch.equal(h[3][k], h[4][k]) for k in h[3])  # the next one trains again
    assert all(torch.isfinite(v).all() for v in h[4].values() if v.is_floating_point())


def test_consecutive_nonfinite_steps_abort(tone_data, tmp_path):
    from _fixtures import PoisonSteps

    module, data = _module_and_data(tone_data, max_nonfinite_steps=3)
    with pytest.raises(RuntimeError, match="3 consecutive steps with a non-finite"):
        _trainer(tmp_path, 10, [PoisonSteps(list(range(10)))]).fit(module, data)


def test_missing_labels_stop_the_run_naming_the_utterance(tone_data, tmp_path, capsys):
    import shutil

    import numpy as np

    from hubert_lit.cli import lightning_main
    from hubert_lit.data.label_files import load_shard_labels, save_shard_labels

    labels = tmp_path / "labels"
    shutil.copytree(tone_data["train_labels"], labels)
    shard = sorted(p.name.split(".")[0] for p in labels.glob("*.labels.npz"))[0]
    content = load_shard_labels(labels, shard)
    victim = sorted(content)[0]
    del content[victim]
    save_shard_labels(labels, shard, {k: np.asarray(v) for k, v in content.items()})
    data = {**tone_data, "train_labels": labels}
    assert lightning_main(fit_args(data, tmp_path, "nolabels", 8)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error:") and victim in err


# ----------------------------------------------------------------------------------------------- atomic writes
def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A write that dies midway leaves the previous checkpoint intact and no stray file; the temporary file is
    created next to the target (so the final rename never crosses file systems)."""
    import os

    from hubert_lit.lit.callbacks import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    target = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, target)
    renames = []
    real_replace = os.replace

    def spy_replace(src, dst):
        renames.append((Path(src).parent, Path(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy_replace)
    io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, target)
    assert renames == [(target.parent, target)]
    assert torch.load(target, weights_only=True)["step"] == 2

    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"partial checkpoint bytes")
        raise KeyboardInterrupt("killed during the write")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 3, "w": torch.full((3,), 7.0)}, target)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(target, weights_only=True)["step"] == 2
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


# ----------------------------------------------------------------------------------------------- fast path
def test_batches_are_checked_on_the_host_before_the_transfer():
    from hubert_lit.lit.base import FULL_LENGTH
    from hubert_lit.lit.pretrain import HubertPretrainModule

    module = HubertPretrainModule("vanilla_tiny", num_classes=4)
    frames = (8000 - 400) // 320 + 1
    batch = {
        "waveforms": torch.randn(2, 8000),
        "lengths": torch.tensor([8000, 8000]),
        "labels": torch.zeros(2, frames, dtype=torch.long),
        "ids": ["a", "b"],
    }
    checked = module.on_before_batch_transfer(batch, 0)
    assert checked[FULL_LENGTH] is True and checked["ids"] == ["a", "b"] and FULL_LENGTH not in batch
    assert module.model_lengths(checked) is None  # no padding: the model runs attention without a mask
    padded = module.on_before_batch_transfer({**batch, "lengths": torch.tensor([8000, 6000])}, 0)
    assert padded[FULL_LENGTH] is False and torch.equal(
        module.model_lengths(padded), torch.tensor([8000, 6000])
    )
    with pytest.raises(ValueError, match="labels must be in"):
        module.on_before_batch_transfer({**batch, "labels": torch.full((2, frames), 4)}, 0)
    with pytest.raises(ValueError, match="compile_mode"):
        HubertPretrainModule("vanilla_tiny", num_classes=4, compile=True, compile_mode="fastest")
