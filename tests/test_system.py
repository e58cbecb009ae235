"""``python -m hubert_lit info``: which FAISS build is active (faiss-cpu and faiss-gpu both install ``faiss``)."""

from __future__ import annotations

import importlib.metadata
import sys
import types

import pytest

from hubert_lit import system


def fake_faiss(monkeypatch, installed: dict[str, str], gpus: int | None) -> None:
    """Pretend ``installed`` distributions are present and ``faiss`` is a GPU build seeing ``gpus`` GPUs (None:
    a CPU build)."""

    def version(name: str) -> str:
        if name in installed:
            return installed[name]
        raise importlib.metadata.PackageNotFoundError(name)

    module = types.ModuleType("faiss")
    module.__version__ = "1.15.1"
    if gpus is not None:
        module.get_num_gpus = lambda: gpus
        module.StandardGpuResources = object
    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setitem(sys.modules, "faiss", module)


@pytest.mark.parametrize(
    ("installed", "gpus", "expected"),
    [
        (
            {"faiss-gpu": "1.15.1"},
            4,
            "faiss        1.15.1 (GPU build, 4 GPU(s) for k-means); installed: faiss-gpu 1.15.1",
        ),
        (
            {"faiss-cpu": "1.15.1"},
            None,
            "faiss        1.15.1 (CPU build, 0 GPU(s) for k-means); installed: faiss-cpu",
        ),
    ],
)
def test_info_says_which_faiss_build_is_active(monkeypatch, capsys, installed, gpus, expected):
    fake_faiss(monkeypatch, installed, gpus)
    assert system.main([]) == 0
    out = capsys.readouterr().out
    assert expected in out
    assert "WARNING" not in out


def test_info_warns_when_both_builds_are_installed(monkeypatch, capsys):
    fake_faiss(monkeypatch, {"faiss-cpu": "1.15.1", "faiss-gpu": "1.15.1"}, 0)
    assert system.main([]) == 0
    out = capsys.readouterr().out
    assert "installed: faiss-cpu 1.15.1, faiss-gpu 1.15.1" in out
    assert "WARNING: several FAISS distributions" in out


def test_info_json_reports_the_build(monkeypatch, capsys):
    import json

    fake_faiss(monkeypatch, {"faiss-gpu": "1.15.1"}, 2)
    assert system.main(["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["faiss"] == {
        "distributions": {"faiss-gpu": "1.15.1"},
        "module": "1.15.1",
        "gpu_build": True,
        "gpus": 2,
    }


def test_info_on_this_machine_names_an_installed_build():
    """The real installation: the module imports and comes from a FAISS distribution."""
    report = system.faiss_report()
    assert report["module"] is not None, report
    assert set(report["distributions"]) & set(system.FAISS_DISTRIBUTIONS)
    assert report["gpus"] >= 0 and (report["gpus"] == 0 or report["gpu_build"])
