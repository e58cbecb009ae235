"""Fault injection: hostile files and operator mistakes.

No code from files, ever: every entry of the suite that opens a model or checkpoint file is given files whose
unpickling would run a command through a different gadget, and must refuse them without running anything.
"""

from __future__ import annotations

import builtins
import os
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
