"""W&B sweep files: valid structure, and every grid point / a seeded sample of each random or Bayesian sweep
expands (as ``wandb agent`` would expand ``command``) into a command line our CLI accepts with the values in place
(``hubert_lit.sweeps`` and ``python -m hubert_lit sweep``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from hubert_lit.sweeps import SweepError, expand_command, load_sweep, suite_arguments, sweep_points

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
SLURM_ENV = {"SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": "8"}


def lookup(config: dict[str, Any], dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def test_sweep_files_exist_with_every_method_and_a_project():
    sweeps = [load_sweep(p) for p in SWEEPS]
    assert {"grid", "bayes", "random"} <= {s["method"] for s in sweeps}
    assert all(s["project"] for s in sweeps)


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_points_expand_to_accepted_commands(path, capsys, monkeypatch):
    from hubert_lit.cli import lightning_main

    sweep = load_sweep(path)
    assert sweep["metric"] == {"name": "val/loss", "goal": "minimize"}
    monkeypatch.chdir(ROOT)  # the agent runs from the repository root; configs are relative paths
    points = sweep_points(sweep, samples=3, seed=sum(map(ord, path.stem)))
    if sweep["method"] == "grid":
        assert len(points) == math.prod(len(s.get("values", [0])) for s in sweep["parameters"].values())
    else:  # the range ends too: they format differently (e.g. 1e-05 without a dot)
        points.append(
            {
                k: p.get("min", p.get("value", (p.get("values") or [None])[0]))
                for k, p in sweep["parameters"].items()
            }
        )
    for params in points:
        argv = expand_command(sweep, params, environ=SLURM_ENV)
        suite = suite_arguments(argv)
        capsys.readouterr()
        rc = lightning_main([*suite, "--print_config"])
        out = capsys.readouterr().out
        assert rc == 0, f"{path.name}: {' '.join(argv)} exited {rc}"
        config = yaml.safe_load(out)
        for key, value in params.items():
            got = lookup(config, key)
            assert got == pytest.approx(value) if isinstance(value, float) else got == value, (
                key,
                got,
                value,
            )
        if argv[0] == "srun":  # SLURM variant: the trial spans what the allocation holds
            assert (config["trainer"]["num_nodes"], int(config["trainer"]["devices"])) == (2, 8)


def test_expansion_matches_wandb_own_helper():
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    params = {"model.lr": 1e-05, "model.overrides.mask_prob": 0.65, "trainer.max_steps": 100}
    theirs = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    for macro in ("args", "args_no_equals", "args_no_hyphens"):
        sweep = {
            "program": "hubert_lit",
            "command": ["${env}", "${interpreter}", "-m", "${program}", f"${{{macro}}}"],
        }
        assert expand_command(sweep, params) == ["/usr/bin/env", "python", "-m", "hubert_lit", *theirs[macro]]
    sweep = {"program": "hubert_lit", "command": ["--nodes=${envvar:SLURM_JOB_NUM_NODES}", "${args}"]}
    assert expand_command(sweep, {}, environ=SLURM_ENV)[0] == "--nodes=2"
    import os

    os.environ.update(SLURM_ENV)
    try:
        assert create_sweep_command(["--nodes=${envvar:SLURM_JOB_NUM_NODES}"]) == ["--nodes=2"]
    finally:
        for key in SLURM_ENV:
            os.environ.pop(key)


def test_sweep_tool_prints_and_validates(tmp_path, capsys, monkeypatch):
    from hubert_lit.__main__ import main

    monkeypatch.chdir(ROOT)
    assert main(["sweep", "configs/sweeps/encoders_grid.yaml"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and all(
        line.startswith("ok   /usr/bin/env python -m hubert_lit fit ") for line in lines
    )
    # a value the CLI rejects, and a file W&B would misroute (no project)
    bad = load_sweep(ROOT / "configs/sweeps/encoders_grid.yaml")
    bad["parameters"]["trainer.max_steps"] = {"value": "many"}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert main(["sweep", str(tmp_path / "bad.yaml")]) == 2
    assert "commands rejected" in capsys.readouterr().err
    del bad["project"]
    (tmp_path / "noproject.yaml").write_text(yaml.safe_dump(bad))
    assert main(["sweep", str(tmp_path / "noproject.yaml")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "noproject.yaml") in err and "project" in err
    with pytest.raises(SweepError, match="a grid needs value or values"):
        bad["project"] = "p"
        bad["parameters"]["model.lr"] = {"min": 1e-4, "max": 1e-3}
        (tmp_path / "grid.yaml").write_text(yaml.safe_dump(bad))
        load_sweep(tmp_path / "grid.yaml")
