"""SUPERB protocol: heads and task pieces, the learning-rate search, every task end to end through
``python -m hubert_lit evaluate`` on the tiny Mini-SUPERB scale, and that the protocol finds information where
the hidden states hold it (and only there).

On "a trained model beats a random one": a tiny model pretrained for the few hundred CPU steps a test (or the
demo) can afford does not yet beat random initialisation on KS/SID/PR (measured; see the README), so that
comparison is reported by the demo, not asserted. What is asserted instead is the protocol's side of it: with the
same heads and budget, states that carry the labels score far better than states that do not, and the weighted
sum moves its weight onto the informative layer.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from hubert_lit.checkpoint import save_model
from hubert_lit.models import build_hubert
from hubert_lit.superb import cli as evaluate
from hubert_lit.superb import evaluate as evaluate_lib
from hubert_lit.superb.featurizer import WeightedLayerSum, extract_hidden_states
from hubert_lit.superb.heads import UtteranceClassifier, XVector, pit_bce_loss
from hubert_lit.superb.tasks import DEFAULT_CONFIGS, TASK_NAMES, build_task, load_task_config, train_task
from hubert_lit.superb.tasks.config import write_task_yamls
from hubert_lit.superb.tasks.ctc import greedy_ctc, render_tokens, slot_target_tokens
from hubert_lit.superb.tasks.diarization import activity_segments, frame_labels, median_filter

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------ pieces
def test_weighted_layer_sum_starts_uniform_and_learns():
    states = torch.randn(2, 3, 5, 4)
    featurizer = WeightedLayerSum(3)
    torch.testing.assert_close(featurizer(states), states.mean(1))
    featurizer(states).sum().backward()
    assert featurizer.weights.grad is not None and featurizer.weights.grad.abs().sum() > 0
    normalized = WeightedLayerSum(3, normalize=True)(states)
    torch.testing.assert_close(normalized, torch.nn.functional.layer_norm(states, (4,)).mean(1))
    with pytest.raises(ValueError, match=r"\(batch, 3, frames, dim\)"):
        featurizer(torch.randn(2, 4, 5, 4))


def test_heads_ignore_padded_frames():
    torch.manual_seed(0)
    x = torch.randn(1, 6, 8)
    padded = torch.cat([x, 100 * torch.randn(1, 4, 8)], dim=1)
    for head in (UtteranceClassifier(8, 16, [3, 2]), XVector(8, 16, 24, 12).eval()):
        a, b = head(x, torch.tensor([6])), head(padded, torch.tensor([6]))
        for u, v in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
            torch.testing.assert_close(u, v)


def test_pit_loss_does_not_depend_on_speaker_order():
    logits = torch.randn(2, 7, 2)
    labels = (torch.rand(2, 7, 2) > 0.5).float()
    lengths = torch.tensor([7, 5])
    loss, _ = pit_bce_loss(logits, labels, lengths)
    swapped, perms = pit_bce_loss(logits, labels[..., [1, 0]], lengths)
    torch.testing.assert_close(loss, swapped)
    # the loss of the best permutation is never above the loss of the given order
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logits[1, :5], labels[1, :5])
    assert float(pit_bce_loss(logits[1:], labels[1:], lengths[1:])[0]) <= float(plain) + 1e-6


def test_diarization_frames_and_segments():
    # frame t covers samples [320 t, 320 t + 320); active when its centre 320 t + 160 is inside a segment
    labels = frame_labels([[0, 0, 960], [1, 640, 1300]], [0, 1], num_frames=5)
    assert labels[:, 0].tolist() == [1, 1, 1, 0, 0]
    assert labels[:, 1].tolist() == [0, 0, 1, 1, 0]
    active = torch.tensor([[1, 0], [0, 0], [1, 1], [1, 1], [1, 0]], dtype=torch.float)
    # width 3, zero padding (scipy medfilt): the gap at t=1 is filled, the lone frame at t=0 is dropped
    smoothed = median_filter(active, 3)
    assert smoothed[:, 0].tolist() == [0, 1, 1, 1, 1]
    assert smoothed[:, 1].tolist() == [0, 0, 1, 1, 0]
    assert activity_segments(smoothed[:, 1:]) == [("0", 640.0, 1280.0)]


def test_slot_targets_tokenise_and_render_like_s3prl():
    target = "PLAY B-artist JOHN MILLER E-artist NOW"
    tokens = slot_target_tokens(target)
    assert tokens == [*"PLAY", " ", "B-artist", *"JOHN", " ", *"MILLER", "E-artist", " ", *"NOW"]
    assert render_tokens(tokens) == "PLAY B-artist JOHN MILLER E-artist NOW"
    # best path: repeats merge, blanks (0) separate real repeats
    scores = torch.nn.functional.one_hot(torch.tensor([[1, 1, 0, 1, 2, 2, 0]]), 3).float()
    assert greedy_ctc(scores, torch.tensor([7])) == [[1, 1, 2]]
    assert greedy_ctc(scores, torch.tensor([3])) == [[1]]


def test_extract_hidden_states_trims_each_utterance_to_its_frames():
    model = build_hubert("vanilla_tiny", num_classes=5).eval()
    waves = [torch.randn(4000), torch.randn(9000), torch.randn(2000)]
    states = extract_hidden_states(model, waves, max_batch_seconds=1.0)
    for wave, s in zip(waves, states):
        assert s.shape == (model.num_layers + 1, (len(wave) - 400) // 320 + 1, model.config.encoder.dim)
        alone, _ = model.extract_features(wave[None], torch.tensor([len(wave)]))
        torch.testing.assert_close(s, torch.stack(alone, 1)[0], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="shorter than 400 samples"):
        extract_hidden_states(model, [torch.randn(300)])


def test_shipped_yaml_configs_equal_the_defaults(tmp_path):
    for task in TASK_NAMES:
        assert load_task_config(task, REPO / "configs" / "superb") == DEFAULT_CONFIGS[task], task
    write_task_yamls(tmp_path)
    assert load_task_config("ks", tmp_path) == DEFAULT_CONFIGS["ks"]
    (tmp_path / "ks.yaml").write_text(
        "task: ks\nmetric: accuracy\nhigher_is_better: true\nlrs: [0.1]\nbogus: 1\n"
    )
    with pytest.raises(ValueError, match="bogus"):
        load_task_config("ks", tmp_path)


# ------------------------------------------------------------------------------------------------ protocol
def _synthetic_split(prefix: str, n: int, informative: bool, gen: torch.Generator):
    """KS-like items whose layer 1 (of 3) carries the label in its mean when ``informative``."""
    items, states = [], []
    for i in range(n):
        label = i % 4
        s = torch.randn(3, 12 + i % 5, 8, generator=gen)
        if informative:
            s[1, :, label] += 1.5
        items.append({"id": f"{prefix}{i}", "label": f"c{label}", "speaker": "s"})
        states.append(s)
    return items, states


def _synthetic_task(informative: bool, task: str = "ks"):
    gen = torch.Generator().manual_seed(1)
    splits, states = {}, {}
    for split, n in (("train", 64), ("dev", 24), ("test", 24)):
        splits[split], states[split] = _synthetic_split(split, n, informative, gen)
    config = load_task_config(task).replace(max_steps=60, eval_every=20, batch_size=16)
    return build_task(config, splits, {"classes": ["c0", "c1", "c2", "c3"]}), states


def test_learning_rate_search_picks_the_best_dev_run_and_tests_it():
    task, states = _synthetic_task(informative=True)
    result = train_task(task, states, lrs=[1e-7, 1e-2])
    assert [run["lr"] for run in result.search] == [1e-7, 1e-2]
    assert result.lr == 1e-2  # the learning rate that learns wins on dev
    assert result.dev["accuracy"] == max(run["dev"] for run in result.search)
    assert result.test["accuracy"] >= 0.9
    # the weighted sum moved its weight onto the informative layer
    assert max(range(3), key=lambda i: result.layer_weights[i]) == 1


def test_protocol_scores_label_carrying_states_above_uninformative_ones():
    informative, states = _synthetic_task(informative=True)
    noise, noise_states = _synthetic_task(informative=False)
    good = train_task(informative, states, lrs=[1e-2]).test["accuracy"]
    chance = train_task(noise, noise_states, lrs=[1e-2]).test["accuracy"]
    assert good >= 0.9 and chance <= 0.5


def test_phone_recognition_learns_from_states_that_encode_phones():
    """PR's linear CTC head on states where each phone is a fixed direction, against noise states."""
    gen = torch.Generator().manual_seed(2)
    phones = ["a", "b", "c", "d"]
    codes = torch.randn(4, 8, generator=gen) * 3

    def split(prefix: str, n: int, informative: bool):
        items, states = [], []
        for i in range(n):
            seq = [phones[int(j)] for j in torch.randint(0, 4, (5,), generator=gen)]
            frames = torch.cat([codes[phones.index(p)].expand(4, 8) for p in seq])
            s = torch.randn(2, len(frames), 8, generator=gen) * 0.3
            if informative:
                s[1] += frames
            items.append({"id": f"{prefix}{i}", "phones": seq, "speaker": "s"})
            states.append(s)
        return items, states

    results = {}
    for informative in (True, False):
        splits, states = {}, {}
        for name, n in (("train", 48), ("dev", 12), ("test", 12)):
            splits[name], states[name] = split(name, n, informative)
        config = load_task_config("pr").replace(max_steps=150, eval_every=50, batch_size=8)
        task = build_task(config, splits, {"vocab": phones})
        results[informative] = train_task(task, states, lrs=[3e-2]).test["per"]
    assert results[True] < 0.2 < 0.6 < results[False]


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tiny_superb(tmp_path_factory) -> Path:
    from hubert_lit.superb.data import build

    root = tmp_path_factory.mktemp("superb") / "data"
    assert build.main(["--out", str(root), "--scale", "tiny"]) == 0
    return root


@pytest.mark.slow
def test_evaluate_runs_every_task_end_to_end(tiny_superb, tmp_path, capsys):
    ckpt = tmp_path / "random_tiny.pt"
    save_model(build_hubert("vanilla_tiny", num_classes=10), ckpt)
    out = tmp_path / "results"
    rc = evaluate.main(
        [
            "--checkpoint",
            str(ckpt),
            "--data",
            str(tiny_superb),
            "--tasks",
            "all",
            "--max-steps",
            "2",
            "--lrs",
            "1e-3",
            "sid=1e-2",
            "--out",
            str(out),
            "--cache-dtype",
            "float16",  # heads still train in float32
            "--no-progress",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "random_tiny" in printed and "SID Acc%" in printed
    report = json.loads((out / "random_tiny.json").read_text())
    assert set(report["tasks"]) == set(TASK_NAMES)
    for task, result in report["tasks"].items():
        metric = DEFAULT_CONFIGS[task].metric
        value = result["test"][metric]
        assert math.isfinite(value), task
        if metric in ("accuracy", "slot_type_f1", "eer", "map"):
            assert 0.0 <= value <= 1.0, (task, value)
        assert result["seconds"] > 0
        if task != "qbe":
            assert result["lr"] == (1e-2 if task == "sid" else 1e-3)
            assert len(result["layer_weights"]) == 3 and abs(sum(result["layer_weights"]) - 1) < 1e-5
    assert 0 <= report["tasks"]["qbe"]["details"]["layer"] <= 2
    with open(out / "random_tiny.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["run"] == "random_tiny"
    assert set(evaluate_lib.COLUMNS[t][0] for t in TASK_NAMES) <= set(rows[0])
    assert float(rows[0]["sid_acc"]) == pytest.approx(
        report["tasks"]["sid"]["test"]["accuracy"] * 100, abs=1e-3
    )
    assert report["model"]["profile"]["storage_mb_paper_convention"] > 0

    # experiments/table2.py gathers the run beside the paper's rows
    spec = importlib.util.spec_from_file_location("table2", REPO / "experiments" / "table2.py")
    table2 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table2)
    assert table2.main(["--results", str(out)]) == 0
    text = (out / "table2.md").read_text()
    assert "The tasks differ" in text and "| ours (Mini-SUPERB) | random_tiny |" in text
    assert "| paper (SUPERB) | bq_conformer_s | FP32-W1A1 |" in text
    assert (out / "table2_storage.png").stat().st_size > 0 and (out / "table2_bop.png").stat().st_size > 0
    # runs of different task subsets on the same scale are comparable; one task on two scales is flagged
    subset = dict(report, run="ks_only", data_scale={"ks": "tiny"})
    assert "different data scales" not in table2.markdown([report, subset])
    assert "different data scales for ks;" in table2.markdown(
        [report, dict(subset, data_scale={"ks": "small"})]
    )


def test_evaluate_rejects_bad_options(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    save_model(build_hubert("vanilla_tiny", num_classes=10), ckpt)
    for argv, message in (
        (["--tasks", "er"], "'prosody'"),
        (["--tasks", "ks,nope"], "unknown task 'nope'"),
        (["--lrs", "ks=fast"], "not a learning rate"),
        (["--lrs", "qbe=1e-3"], "not a trained task"),
        (["--data", str(tmp_path / "missing")], "folder not found"),
    ):
        with pytest.raises(SystemExit):
            evaluate.main(["--checkpoint", str(ckpt), *argv])
        assert message in capsys.readouterr().err


def test_evaluate_names_the_bad_data_file_before_training(tiny_superb, tmp_path, capsys):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_superb / "ks", root / "ks")
    lines = (root / "ks" / "dev.jsonl").read_text().splitlines()
    (root / "ks" / "dev.jsonl").write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    ckpt = tmp_path / "m.pt"
    save_model(build_hubert("vanilla_tiny", num_classes=10), ckpt)
    rc = evaluate.main(
        [
            "--checkpoint",
            str(ckpt),
            "--data",
            str(root),
            "--tasks",
            "ks",
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ]
    )
    assert rc == 2
    assert "dev.jsonl:2" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_random_init_baseline_keeps_the_architecture_and_drops_the_weights(tiny_superb, tmp_path):
    model = build_hubert("vanilla_tiny", num_classes=10)
    save_model(model, tmp_path / "m.pt")
    fresh = evaluate_lib.randomly_initialised(model, seed=3)
    assert fresh.config == model.config
    assert fresh.state_dict().keys() == model.state_dict().keys()
    changed = [k for k, v in fresh.state_dict().items() if not torch.equal(v, model.state_dict()[k])]
    assert any(k.startswith("encoder.") and k.endswith(".weight") for k in changed)
    argv = [
        "--checkpoint",
        str(tmp_path / "m.pt"),
        "--data",
        str(tiny_superb),
        "--tasks",
        "ks",
        "--max-steps",
        "1",
        "--lrs",
        "1e-3",
        "--out",
        str(tmp_path / "out"),
        "--random-init",
        "--no-progress",
    ]
    assert evaluate.main(argv) == 0
    report = json.loads((tmp_path / "out" / "m_random.json").read_text())
    assert report["random_init"] is True and set(report["tasks"]) == {"ks"}
