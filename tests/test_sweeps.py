"""W&B sweep files: valid structure, and every grid point / a seeded sample of each random or Bayesian sweep
expands (as ``wandb agent`` would expand ``command``) into a command line our CLI accepts with the values in place.

The expansion re-implements wandb's agent macros (``wandb/sdk/launch/sweeps/utils.py``): ``${env}`` ->
``/usr/bin/env``, ``${interpreter}`` -> ``python``, ``${program}`` -> ``program``, ``${args}`` -> ``--key=value``
with Python's ``str`` of the value. Sampling the parameter spec here stands in for the server.
"""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
METHODS = ("grid", "random", "bayes")
SAMPLES = 3  # per random/Bayesian sweep


def expand_command(sweep: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The argv ``wandb agent`` runs for one parameter assignment."""
    args = [f"--{key}={value}" for key, value in params.items()]
    macros = {
        "${env}": ["/usr/bin/env"],
        "${interpreter}": ["python"],
        "${program}": [sweep["program"]],
        "${args}": args,
    }
    out: list[str] = []
    for chunk in sweep["command"]:
        if chunk in macros:
            out += macros[chunk]
        elif "${" in str(chunk):
            raise AssertionError(f"macro not handled by this test: {chunk}")
        else:
            out.append(str(chunk))
    return out


def sample_value(spec: dict[str, Any], rng: random.Random) -> Any:
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(spec["values"])
    dist = spec.get("distribution", "uniform")
    lo, hi = spec["min"], spec["max"]
    if dist == "uniform":
        return rng.uniform(lo, hi)
    if dist == "int_uniform":
        return rng.randint(lo, hi)
    if dist == "log_uniform_values":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    raise AssertionError(f"distribution {dist!r} not handled by this test")


def assignments(sweep: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    params = sweep["parameters"]
    if sweep["method"] == "grid":
        keys = sorted(params)
        choices = [params[k]["values"] if "values" in params[k] else [params[k]["value"]] for k in keys]
        return [dict(zip(keys, combo)) for combo in itertools.product(*choices)]
    rng = random.Random(seed)
    points = [{k: sample_value(params[k], rng) for k in sorted(params)} for _ in range(SAMPLES)]
    # the range ends too: they format differently (e.g. 1e-05 without a dot)
    points.append({k: (p["min"] if "min" in p else sample_value(p, rng)) for k, p in sorted(params.items())})
    return points


def lookup(config: dict[str, Any], dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def test_sweep_files_exist_with_every_method():
    methods = {yaml.safe_load(p.read_text())["method"] for p in SWEEPS}
    assert {"grid", "bayes"} <= methods


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_points_expand_to_accepted_commands(path, capsys, monkeypatch):
    from hubert_lit.cli import lightning_main

    sweep = yaml.safe_load(path.read_text())
    assert sweep["method"] in METHODS and sweep["program"]
    assert sweep["metric"] == {"name": "val/loss", "goal": "minimize"}
    assert "${args}" in sweep["command"]
    monkeypatch.chdir(ROOT)  # the agent runs from the repository root; configs are relative paths
    points = assignments(sweep, seed=sum(map(ord, path.stem)))
    if sweep["method"] == "grid":
        assert len(points) == math.prod(len(s.get("values", [0])) for s in sweep["parameters"].values())
    for params in points:
        argv = expand_command(sweep, params)
        assert argv[:4] == ["/usr/bin/env", "python", "-m", "hubert_lit"], argv
        capsys.readouterr()
        rc = lightning_main([*argv[4:], "--print_config"])
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


def test_expansion_matches_wandb_format():
    sweep = {"program": "hubert_lit", "command": ["${env}", "${interpreter}", "-m", "${program}", "${args}"]}
    argv = expand_command(sweep, {"model.lr": 1e-05, "model.overrides.mask_prob": 0.65})
    assert argv == [
        "/usr/bin/env",
        "python",
        "-m",
        "hubert_lit",
        "--model.lr=1e-05",
        "--model.overrides.mask_prob=0.65",
    ]
