"""Fault injection: hostile files and operator mistakes.

No code from files, ever: every entry of the suite that opens a model or checkpoint file is given files whose
unpickling would run a command through a different gadget, and must refuse them without running anything.
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.utils.collect_env

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from _fixtures import cpu_fit_args, make_tone_dataset  # noqa: E402
from test_labels import (  # noqa: E402
    MFCC_ARGS,
    _file_contents,
    held_back_shards,
    single_process_env,
    write_tiny_shards,
)

from hubert_lit.labels import cli as label_cli  # noqa: E402


# ----------------------------------------------------------------------------------------------- gadgets
class _Gadget:
    """Pickles as ``func(*args)``: unpickling it calls ``func`` (what a malicious checkpoint does)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _gadgets(marker: Path) -> dict[str, _Gadget]:
    """Each gadget creates ``marker`` when it runs."""
    return {
        # a torch.* function that runs a shell command: passes a "module is torch" allow-list
        "torch.utils.collect_env.run": _Gadget(torch.utils.collect_env.run, f"touch {marker}"),
        "os.system": _Gadget(os.system, f"touch {marker}"),
        "builtins.exec": _Gadget(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.Popen": _Gadget(subprocess.Popen, ["touch", str(marker)]),
    }


def _hostile_file(path: Path, gadget: _Gadget) -> Path:
    """A file that looks like every format the suite reads (model file, Lightning and fairseq checkpoint), with
    the gadget inside."""
    payload = {
        "format": "hubert-lit-model/1",
        "config": gadget,
        "state_dict": {"weight": torch.zeros(2)},
        "hubert_config": gadget,
        "pytorch-lightning_version": "2.6.0",
        "model": {"encoder.layer_norm.weight": gadget},
        "cfg": {"model": gadget},
    }
    torch.save(payload, path)
    return path


def _entries(tmp_path: Path) -> dict[str, object]:
    """Every entry that opens a model or checkpoint file: name -> callable(path) (raises or returns an exit code)."""
    import hubert_lit
    from hubert_lit.models.convert import from_fairseq

    def cli(command: str, *args: str):
        """``python -m hubert_lit <command> <args>``, in process."""
        from hubert_lit.__main__ import main

        def run(path: Path) -> int:
            argv = [a.replace("{path}", str(path)).replace("{tmp}", str(tmp_path)) for a in args]
            return main([command, *argv])

        return run

    def distill_teacher(path: Path):
        from hubert_lit.lit.distill import BiTDistillModule

        return BiTDistillModule(teacher=str(path))

    def s3prl_upstream(path: Path):
        from hubert_lit.superb.s3prl_upstream import UpstreamExpert

        return UpstreamExpert(str(path))

    return {
        "hubert_lit.load_model": hubert_lit.load_model,
        "from_fairseq": from_fairseq,
        "distillation teacher": distill_teacher,
        "s3prl upstream": s3prl_upstream,
        "export": cli("export", "--checkpoint", "{path}", "--out", "{tmp}/out.pt"),
        "profile": cli("profile", "--checkpoint", "{path}", "--runs", "0"),
        "evaluate": cli("evaluate", "--checkpoint", "{path}", "--data", "{tmp}/superb", "--tasks", "ks"),
        "label --checkpoint": cli(
            "label",
            "--shards",
            "{tmp}/data/shards",
            "--out",
            "{tmp}/labels",
            "--features",
            "hubert",
            "--checkpoint",
            "{path}",
            "--clusters",
            "2",
            "--no-progress",
        ),
    }


@pytest.fixture(scope="module")
def tone_shards(tmp_path_factory) -> tuple[Path, Path]:
    return make_tone_dataset(tmp_path_factory.mktemp("tones"), speakers=1, utterances=4, shard_size=4)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tone_shards) -> Path:
    """What the tools need besides the model file (shards, a tiny KS task set), so each reaches its loader."""
    from hubert_lit.superb.data import build

    root = tmp_path_factory.mktemp("inputs")
    (root / "data").mkdir()
    (root / "data" / "shards").symlink_to(tone_shards[0])
    rc = build.main(["--out", str(root / "superb"), "--tasks", "ks", "--scale", "tiny", "--workers", "1"])
    assert rc == 0
    return root


@pytest.mark.parametrize("gadget_name", list(_gadgets(Path("x"))))
def test_no_entry_runs_code_from_a_file(tmp_path, inputs, capsys, gadget_name):
    marker = tmp_path / "pwned"
    hostile = _hostile_file(tmp_path / "hostile.ckpt", _gadgets(marker)[gadget_name])
    for name, entry in _entries(inputs).items():
        try:
            result = entry(hostile)
        except Exception as err:  # refusing with an error is the expected outcome
            message = str(err)
        else:
            assert isinstance(result, int) and result != 0, f"{name} accepted a hostile file: {result!r}"
            message = capsys.readouterr().err
        assert not marker.exists(), f"{name} ran the {gadget_name} gadget from {hostile}"
        # the refusal comes from reading the file, not from some earlier check
        assert str(hostile) in message, f"{name} did not report the file: {message[-300:]}"


@pytest.fixture
def http_folder(tmp_path):
    """A folder served over HTTP on 127.0.0.1; yields (folder, base URL)."""
    import functools
    import http.server
    import threading

    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("remote", [False, True], ids=["local", "http"])
def test_fit_ckpt_path_runs_no_code(tmp_path, tone_shards, http_folder, monkeypatch, capsys, remote):
    """``--ckpt_path`` local or ``http://`` (for which Lightning itself would unpickle with weights_only=False)."""
    from hubert_lit.cli import lightning_main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # where torch.hub caches downloads
    marker = tmp_path / "pwned"
    shards, labels = tone_shards
    served, url = http_folder
    for gadget_name, gadget in _gadgets(marker).items():
        hostile = _hostile_file(served / f"{gadget_name}.ckpt", gadget)
        ckpt_path = f"{url}/{hostile.name}" if remote else str(hostile)
        args = cpu_fit_args(shards, labels, tmp_path / "runs", "hostile", 2, "--model.preset=vanilla_tiny")
        rc = lightning_main([*args, "--model.warmup_steps=1", f"--ckpt_path={ckpt_path}"])
        assert rc != 0, f"fit resumed from a hostile checkpoint ({gadget_name})"
        assert not marker.exists(), f"fit --ckpt_path ran the {gadget_name} gadget"
        assert "Weights only load failed" in capsys.readouterr().err  # refused while reading the file


def test_fairseq_allow_list_is_exact():
    """The fairseq unpickler resolves tensors and containers, not whole modules."""
    from hubert_lit.models.convert import _allowed

    assert _allowed("torch._utils", "_rebuild_tensor_v2")
    assert _allowed("collections", "OrderedDict")
    assert _allowed("torch", "float32")
    for module, name in [
        ("torch.utils.collect_env", "run"),
        ("torch", "load"),
        ("torch.storage", "_load_from_bytes"),
        ("torch.hub", "load"),
        ("os", "system"),
        ("builtins", "exec"),
        ("builtins", "eval"),
        ("builtins", "getattr"),
        ("subprocess", "Popen"),
        ("torch._utils", "_rebuild_tensor_v2.__globals__"),
    ]:
        assert not _allowed(module, name), f"{module}.{name} is allowed"


# ================================================================================ operator mistakes (cases 2-14)
# Case numbers are those of the fault-injection report (issue 17). Every fit-based case resumes a copy of one
# tiny run trained once for the module.


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Shards of phone-like audio, enough for k-means labels (three shards)."""
    return write_tiny_shards(tmp_path_factory.mktemp("labels") / "shards")


@pytest.fixture(scope="module")
def mfcc_run(corpus) -> Path:
    out = corpus.parent / "mfcc-labels"
    assert label_cli.main(["--shards", str(corpus), "--out", str(out), *MFCC_ARGS]) == 0
    return out


def test_case02_label_overwrite_replaces_by_swap(corpus, mfcc_run, tmp_path, capsys):
    """--overwrite builds beside the old labels and swaps them in when complete: a bad argument, a kill or a
    foreign folder leave everything as it was (issue 17)."""
    import signal
    import time

    out = tmp_path / "labels"
    shutil.copytree(mfcc_run, out)
    before = _file_contents(out)
    args = ["--shards", str(corpus), "--out", str(out), *MFCC_ARGS]
    bad = [*args[:-1], "--clusters", "0", "--no-progress", "--overwrite"]
    assert label_cli.main(bad) == 2
    assert _file_contents(out) == before

    # killed in pass 2 of the overwrite: the old labels are untouched
    partial, block = tmp_path / ".labels.overwrite", tmp_path / "BLOCK"
    shards, env = held_back_shards(corpus, block, partial), single_process_env()
    block.touch()
    cmd = [sys.executable, "-m", "hubert_lit.labels.cli", "--shards", shards, "--out", str(out), *MFCC_ARGS]
    proc = subprocess.Popen(
        [*cmd, "--seed", "4", "--overwrite"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not (partial / ".progress" / "shard-000001.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the overwrite never reached shard 2"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    block.unlink()
    assert _file_contents(out) == before

    # completed: replaced, nothing left beside it
    assert label_cli.main([*args, "--seed", "4", "--overwrite"]) == 0
    after = _file_contents(out)
    assert after != before and json.loads(after["meta.json"])["kmeans"]["seed"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels"]

    # a swap killed after the old folder moved aside is undone at the next start
    out.rename(tmp_path / "labels.bak")
    assert label_cli.main(args) == 2  # restored, then refused: it holds labels
    assert "restored" in capsys.readouterr().err and _file_contents(out) == after

    # never a folder of other files
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.txt").write_text("precious")
    assert label_cli.main(["--shards", str(corpus), "--out", str(thesis), *MFCC_ARGS, "--overwrite"]) == 2
    assert "is not a labels folder" in capsys.readouterr().err
    assert (thesis / "thesis.txt").read_text() == "precious" and len(list(thesis.iterdir())) == 1


def test_case03_shard_overwrite_replaces_only_its_own_output_by_swap(
    tone_shards, tmp_path, capsys, monkeypatch
):
    from hubert_lit.data import shard

    audio = tone_shards[0].parent / "audio"
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.txt").write_text("precious")
    assert shard.main(["--root", str(audio), "--out", str(thesis), "--workers", "1", "--overwrite"]) == 2
    assert "is not a shard folder (no index.json)" in capsys.readouterr().err
    assert [p.name for p in thesis.iterdir()] == ["thesis.txt"]
    assert (thesis / "thesis.txt").read_text() == "precious"

    # its own output: the new one is built beside it, so a failure on the way leaves the old one whole
    out = tmp_path / "shards"
    assert shard.main(["--root", str(audio), "--out", str(out), "--workers", "1"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def failing_write(job):
        raise OSError("disk full")

    monkeypatch.setattr(shard, "_write_job", failing_write)
    with pytest.raises(OSError, match="disk full"):
        shard.main(["--root", str(audio), "--out", str(out), "--workers", "1", "--overwrite", "--seed", "5"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards", "thesis"]  # nothing left beside it


STEPS = 6  # batch size 1 over 4 utterances: 4 batches an epoch, so step 6 is in the middle of epoch 1


def _fit(data: tuple[Path, Path], run_root: Path, name: str, steps: int, *extra: str) -> int:
    from hubert_lit.cli import lightning_main

    shards, labels = data
    args = cpu_fit_args(
        shards,
        labels,
        run_root,
        name,
        steps,
        "--model.preset=vanilla_tiny",
        "--model.warmup_steps=1",
        "--checkpoint.every_n_train_steps=2",
        *extra,
        batch_size=1,
    )
    return lightning_main(args)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tone_shards) -> Path:
    """The folder of a finished run: periodic checkpoints at steps 2, 4, 6 and last.ckpt (step 6)."""
    root = tmp_path_factory.mktemp("trained")
    assert _fit(tone_shards, root, "run", STEPS) == 0
    return root / "run"


@pytest.fixture
def run_copy(tmp_path, trained_run) -> Path:
    """A copy of the trained run in ``tmp_path/runs/run``, to resume or damage."""
    import shutil

    copy = tmp_path / "runs" / "run"
    shutil.copytree(trained_run, copy)
    return copy


def _step(path: Path) -> int:
    from hubert_lit.checkpoint import checkpoint_step

    return checkpoint_step(path)[0]


def _relabelled(labels: Path, out: Path) -> Path:
    """Another labelling of the same shards (what a second k-means run gives): other cluster ids, other meta."""
    from hubert_lit.data.label_files import (
        load_label_meta,
        load_shard_labels,
        save_label_meta,
        save_shard_labels,
    )

    meta = load_label_meta(labels)
    for npz in sorted(labels.glob("*.labels.npz")):
        shard = npz.name.removesuffix(".labels.npz")
        relabelled = {k: (v + 1) % meta["num_classes"] for k, v in load_shard_labels(labels, shard).items()}
        save_shard_labels(out, shard, relabelled)
    save_label_meta(out, {**meta, "kmeans": {"seed": 1}})
    return out


def test_case04_resume_with_other_labels_names_them(tmp_path, tone_shards, run_copy, capsys, caplog):
    shards, labels = tone_shards
    other = _relabelled(labels, tmp_path / "other_labels")
    last = run_copy / "checkpoints" / "last.ckpt"
    assert _fit((shards, other), run_copy.parent, "run", STEPS + 2) == 2
    err = capsys.readouterr().err
    assert f"{last} was trained on other data: the training labels" in err
    assert "--run.allow_data_change" in err and _step(last) == STEPS  # nothing trained

    # on purpose: logged, and the run goes on (the loader position still fits: only the labels changed)
    with caplog.at_level("WARNING"):
        assert _fit((shards, other), run_copy.parent, "run", STEPS + 2, "--run.allow_data_change=true") == 0
    assert "on changed training data (--run.allow_data_change): the training labels" in caplog.text
    assert _step(last) == STEPS + 2
    # the checkpoint now records the labels it was trained on last: resuming on them needs no switch
    assert _fit((shards, other), run_copy.parent, "run", STEPS + 3) == 0


def test_case05_resume_with_other_shards_or_plan_names_them(tmp_path, tone_shards, run_copy, capsys, caplog):
    other = make_tone_dataset(tmp_path / "other", speakers=1, utterances=4, shard_size=4, seed=1)
    last = run_copy / "checkpoints" / "last.ckpt"
    assert _fit(other, run_copy.parent, "run", STEPS + 2) == 2
    assert (
        "was trained on other data: the training shards (index of 4 utterances -> 4"
        in capsys.readouterr().err
    )
    # an input of the epoch plan is data too
    assert _fit(tone_shards, run_copy.parent, "run", STEPS + 2, "--data.seed=3") == 2
    assert "data.seed (0 -> 3)" in capsys.readouterr().err
    assert _step(last) == STEPS

    # on purpose: the saved position (mid-epoch) means other batches now, so that epoch starts over
    with caplog.at_level("WARNING"):
        assert _fit(other, run_copy.parent, "run", STEPS + 2, "--run.allow_data_change=true") == 0
    assert "epoch 1 starts over on the current data" in caplog.text
    assert _step(last) == STEPS + 2


def test_case05_a_moved_shard_folder_is_the_same_data(tmp_path, tone_shards, run_copy):
    """The fingerprint is of what the index lists, not of where the folder is."""
    import shutil

    shards, labels = tone_shards
    moved = tmp_path / "elsewhere"
    shutil.copytree(shards, moved / "shards")
    shutil.copytree(labels, moved / "labels")
    assert _fit((moved / "shards", moved / "labels"), run_copy.parent, "run", STEPS + 1) == 0


def test_case06_resume_with_another_architecture_of_the_same_shapes(run_copy, tone_shards, capsys):
    """4 heads of 8 dimensions hold the same weights as 2 of 16: shapes cannot tell."""
    assert _fit(tone_shards, run_copy.parent, "run", STEPS + 2, "--model.overrides.encoder.num_heads=4") == 2
    err = capsys.readouterr().err
    assert "was trained with another architecture (encoder.num_heads: 2 -> 4)" in err
    assert _step(run_copy / "checkpoints" / "last.ckpt") == STEPS


def test_case07_a_moved_run_folder_keeps_last_ckpt_the_newest(tmp_path, run_copy, tone_shards):
    import hubert_lit

    moved = tmp_path / "archive" / "moved"
    moved.parent.mkdir()
    run_copy.rename(moved)
    assert _fit(tone_shards, moved.parent, "moved", STEPS + 2) == 0
    names = sorted(p.name for p in (moved / "checkpoints").iterdir())
    assert names == ["last.ckpt", *(f"step{s:08d}.ckpt" for s in (2, 4, 6, 8))]
    assert _step(moved / "checkpoints" / "last.ckpt") == STEPS + 2
    # what load_model gives is the newest state
    newest = torch.load(moved / "checkpoints" / "step00000008.ckpt", weights_only=True)["state_dict"]
    loaded = hubert_lit.load_model(moved / "checkpoints" / "last.ckpt").state_dict()
    assert all(torch.equal(loaded[k], newest[f"model.{k}"]) for k in loaded)


def test_case08_disk_full_names_the_file_and_keeps_the_previous(tmp_path, run_copy, tone_shards, capsys):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    import shutil

    last = run_copy / "checkpoints" / "last.ckpt"
    small = tmp_path / "small"
    small.mkdir()
    # room for one checkpoint and a half: the next save's temporary file runs out of space
    size_k = last.stat().st_size * 3 // 2 // 1024
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_k}k", "tmpfs", str(small)])
    if mounted.returncode != 0:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        shutil.copy(last, small / "last.ckpt")
        rc = _fit(tone_shards, run_copy.parent, "run", STEPS + 2, f"--checkpoint.dirpath={small}")
        assert rc == 1
        last_line = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"no space left on device writing {small}/" in last_line
        assert f"(previous checkpoint {small}/last.ckpt kept)" in last_line
        assert _step(small / "last.ckpt") == STEPS  # the previous checkpoint is intact
        assert not list(small.glob(".*.tmp"))  # and nothing half-written is left
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_case09_an_empty_last_ckpt_falls_back_to_the_newest_intact_one(run_copy, tone_shards, capsys, caplog):
    last = run_copy / "checkpoints" / "last.ckpt"
    last.write_bytes(b"")
    with caplog.at_level("INFO"):
        assert _fit(tone_shards, run_copy.parent, "run", STEPS + 2) == 0
    assert f"skipping {last} as a resume point: {last} is empty (0 bytes)" in caplog.text
    assert f"resuming from {run_copy / 'checkpoints' / 'step00000006.ckpt'} at step 6" in caplog.text
    assert _step(last) == STEPS + 2

    # named explicitly, an empty file is an error naming it
    empty = run_copy / "empty.ckpt"
    empty.write_bytes(b"")
    assert _fit(tone_shards, run_copy.parent, "other", 2, f"--ckpt_path={empty}") == 2
    assert f"{empty} is empty (0 bytes)" in capsys.readouterr().err


def test_case09_an_empty_labels_file_is_named(tmp_path, tone_shards, capsys):
    import shutil

    from hubert_lit.data.label_files import load_shard_labels

    shards, labels = tone_shards
    broken = tmp_path / "labels"
    shutil.copytree(labels, broken)
    npz = next(broken.glob("*.labels.npz"))
    npz.write_bytes(b"")
    with pytest.raises(ValueError, match=f"{npz} is empty"):
        load_shard_labels(broken, npz.name.removesuffix(".labels.npz"))
    assert _fit((shards, broken), tmp_path / "runs", "run", 2) == 1
    assert f"{npz} is empty (0 bytes)" in capsys.readouterr().err.strip().splitlines()[-1]


def test_case10_a_checkpoint_of_another_project_is_named(tmp_path, tone_shards, capsys):
    import hubert_lit

    foreign = tmp_path / "foreign.ckpt"
    torch.save(
        {
            "state_dict": {"net.weight": torch.zeros(2)},
            "global_step": 3,
            "epoch": 0,
            "pytorch-lightning_version": "2.6",
        },
        foreign,
    )
    not_lightning = tmp_path / "weights.pt"
    torch.save({"net.weight": torch.zeros(2)}, not_lightning)
    for path, message in (
        (foreign, "is not a hubert-lit checkpoint"),
        (not_lightning, "is not a Lightning checkpoint"),
    ):
        assert _fit(tone_shards, tmp_path / "runs", "run", 2, f"--ckpt_path={path}") == 2
        assert f"{path} {message}" in capsys.readouterr().err
        with pytest.raises(ValueError, match=str(path)):
            hubert_lit.load_model(path)
    assert not (tmp_path / "runs" / "run" / "checkpoints").exists()


def test_case11_nested_overrides_from_the_command_line(tmp_path, tone_shards, capsys):
    from hubert_lit.checkpoint import read_model_config

    # the syntax the docs give: a space between key and value
    assert _fit(tone_shards, tmp_path / "runs", "run", 2, "--model.overrides.encoder.num_layers", "3") == 0
    config, _ = read_model_config(tmp_path / "runs" / "run" / "checkpoints" / "last.ckpt")
    assert config.encoder.num_layers == 3
    assert (
        _fit(tone_shards, tmp_path / "runs", "bad", 2, "--model.overrides.encoder.num_layers", "three") == 2
    )
    err = capsys.readouterr().err
    assert (
        "num_layers: expected int, got 'three'" in err
        and "model.overrides={'encoder.num_layers': 'three'}" in err
    )


def test_case12_an_unknown_preset_exits_2(tmp_path, tone_shards, capsys):
    assert _fit(tone_shards, tmp_path / "runs", "run", 2, "--model.preset=transformer_xxl") == 2
    assert "unknown model preset 'transformer_xxl'" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "run" / "checkpoints").exists()


def test_case13_temporary_files_of_interrupted_saves_are_removed(run_copy, tone_shards):
    from hubert_lit.atomic import TEMP_SUFFIX

    stale = run_copy / "checkpoints" / f".last.ckpt.k1ll3d{TEMP_SUFFIX}"
    stale.write_bytes(b"half a checkpoint")
    foreign = run_copy / "checkpoints" / "notes.tmp"  # not ours: kept
    foreign.write_text("mine")
    assert _fit(tone_shards, run_copy.parent, "run", STEPS + 1) == 0
    assert not stale.exists() and foreign.read_text() == "mine"


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_case14_written_files_follow_the_umask(tmp_path, umask):
    import numpy as np

    from hubert_lit.atomic import atomic_torch_save, atomic_write
    from hubert_lit.data.label_files import save_shard_labels

    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.json", lambda f: f.write(b"{}"))
        atomic_torch_save({"x": torch.zeros(1)}, tmp_path / "b.ckpt")
        save_shard_labels(tmp_path, "shard-000000", {"u": np.zeros(3, dtype=np.int16)})
    finally:
        os.umask(old)
    for name in ("a.json", "b.ckpt", "shard-000000.labels.npz"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def _damage_member(shards: Path, out: Path, which: int = 1) -> str:
    """A copy of the shard folder whose ``which``-th FLAC member has its audio bytes zeroed (undecodable); returns
    that utterance's id."""
    import tarfile

    shutil.copytree(shards, out)
    tar_path = next(out.glob("*.tar"))
    with tarfile.open(tar_path) as tar:
        member = [m for m in tar.getmembers() if m.name.endswith(".flac")][which]
    with open(tar_path, "r+b") as f:
        f.seek(member.offset_data)
        f.write(b"\0" * member.size)
    return member.name.removesuffix(".flac")


def test_case14_unreadable_training_utterances_are_counted_and_summarised(tmp_path, tone_shards, caplog):
    """A batch whose only utterance cannot be read still takes its step (B = 0: nothing trained), and the count
    reaches the metrics and the epoch's summary."""
    import csv

    shards, labels = tone_shards
    damaged = tmp_path / "shards"
    utt = _damage_member(shards, damaged)
    from hubert_lit.data.dataset import ShardDecodeWarning

    # reported with its file and reason when it happens
    with caplog.at_level("WARNING"), pytest.warns(ShardDecodeWarning, match=f"utterance '{utt}' .* left out"):
        assert _fit((damaged, labels), tmp_path / "runs", "run", 4, "--trainer.log_every_n_steps=1") == 0
    assert (
        "epoch 0: 1 training utterance(s) could not be read and were left out (1 in this run" in caplog.text
    )
    rows = list(csv.DictReader(open(next((tmp_path / "runs" / "run" / "csv").rglob("metrics.csv")))))
    counts = [float(r["data/skipped_utterances"]) for r in rows if r.get("data/skipped_utterances")]
    assert len(counts) == 4 and counts[-1] == 1.0 and counts[0] <= counts[-1]
    assert _step(tmp_path / "runs" / "run" / "checkpoints" / "last.ckpt") == 4  # every step taken
