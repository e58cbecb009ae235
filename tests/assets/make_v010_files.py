"""Make the `v010/` test assets: files written by hubert-lit 0.1.0 (commit 63e8a8e), for backward-compatibility
tests (every file the previous version wrote keeps loading and resuming).

Run from the repository root *at that commit* (the point is that the files come from the old code):

    git worktree add /tmp/hubert-lit-0.1.0 63e8a8e && cd /tmp/hubert-lit-0.1.0
    PYTHONPATH=. python tests/assets/make_v010_files.py <repo>/tests/assets/v010

Only the command-line tools are used (`fit`, `export`), on the tone corpus of ``tests/_fixtures.py`` (seeded, so a
test rebuilds exactly the same shards and the saved loader state fits them). Written:

* ``pretrain_vanilla_tiny.ckpt``: Lightning checkpoint of a 6-step vanilla_tiny pretraining run, saved at step 4
  (mid-epoch: 16 utterances, batch 2, so 8 batches per epoch);
* ``conformer_s_tiny.pt``: a conformer_s_tiny pretraining run (6 steps), exported as a plain model file;
* ``distill_conformer_s_tiny_w1a1.ckpt``: Lightning checkpoint of a BiT W1A1 student of it, step 4 of 6;
* ``distill_conformer_s_tiny_w1a1.packed.pt``: its packed export (final step);
* ``reference_features.pt``: ``extract_features`` of every model above (eval mode, ``torch.manual_seed(0)``
  waveforms of 1.0 s and 0.6 s, padded), as computed by the old code, and the model weights both runs ended with
  at step 6 (``final_weights``), which a resume from the step-4 checkpoints must reach.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path.cwd()
sys.path.insert(0, str(ROOT / "tests"))

from _fixtures import make_tone_dataset  # noqa: E402


def fit(run_root: Path, name: str, data: tuple[Path, Path], *extra: str) -> Path:
    from hubert_lit.cli import lightning_main

    shards, labels = data
    rc = lightning_main(
        [
            "fit",
            "--config",
            str(ROOT / "configs/trainer/cpu_demo.yaml"),
            f"--data.train_shards={shards}",
            f"--data.train_labels={labels}",
            "--data.batch_size=2",
            "--data.min_sample_size=8000",
            "--data.num_workers=0",
            "--trainer.max_steps=6",
            "--trainer.num_sanity_val_steps=0",
            "--checkpoint.every_n_train_steps=2",
            f"--run.root={run_root}",
            f"--run.name={name}",
            "--run.loggers=[csv]",
            *extra,
        ]
    )
    assert rc == 0, f"fit {name} failed"
    return run_root / name / "checkpoints"


def main(out: Path) -> None:
    from hubert_lit.quant.export import main as export_main

    import hubert_lit

    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp())
    data = make_tone_dataset(work / "tones", speakers=2, utterances=8, shard_size=8, seed=0)
    pretrain = ["--model.num_classes=4", "--model.lr=2e-3", "--model.warmup_steps=2"]

    vanilla = fit(work / "runs", "vanilla", data, "--model.preset=vanilla_tiny", *pretrain)
    shutil.copy(vanilla / "step00000004.ckpt", out / "pretrain_vanilla_tiny.ckpt")

    conformer = fit(work / "runs", "conformer", data, "--model.preset=conformer_s_tiny", *pretrain)
    assert (
        export_main(["--checkpoint", str(conformer / "last.ckpt"), "--out", str(out / "conformer_s_tiny.pt")])
        == 0
    )

    distill = fit(
        work / "runs",
        "distill",
        data,
        "--model=hubert_lit.lit.distill.BiTDistillModule",
        f"--model.teacher={out / 'conformer_s_tiny.pt'}",
        "--model.lr=2e-3",
        "--model.warmup_steps=2",
    )
    shutil.copy(distill / "step00000004.ckpt", out / "distill_conformer_s_tiny_w1a1.ckpt")
    packed = out / "distill_conformer_s_tiny_w1a1.packed.pt"
    assert export_main(["--checkpoint", str(distill / "last.ckpt"), "--out", str(packed)]) == 0

    torch.manual_seed(0)
    waves = torch.randn(2, 16000) * 0.1
    lengths = torch.tensor([16000, 9600])
    reference = {}
    for name in (
        "pretrain_vanilla_tiny.ckpt",
        "conformer_s_tiny.pt",
        "distill_conformer_s_tiny_w1a1.ckpt",
        "distill_conformer_s_tiny_w1a1.packed.pt",
    ):
        model = hubert_lit.load_model(out / name)
        with torch.no_grad():
            states, frames = model.extract_features(waves, lengths)
        reference[name] = {"states": torch.stack(states), "frame_lengths": frames}
    final = {
        name: {
            k: v
            for k, v in torch.load(ckpt / "last.ckpt", weights_only=True)["state_dict"].items()
            if k.startswith("model.")
        }
        for name, ckpt in (
            ("pretrain_vanilla_tiny.ckpt", vanilla),
            ("distill_conformer_s_tiny_w1a1.ckpt", distill),
        )
    }
    assert all(
        torch.load(ckpt / "last.ckpt", weights_only=True)["global_step"] == 6 for ckpt in (vanilla, distill)
    )
    torch.save(
        {"waveforms": waves, "lengths": lengths, "features": reference, "final_weights": final},
        out / "reference_features.pt",
    )
    shutil.rmtree(work)
    for path in sorted(out.iterdir()):
        print(f"{path.stat().st_size:>9,}  {path}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
