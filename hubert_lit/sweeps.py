"""W&B sweep files, offline: check them and expand them into the exact commands ``wandb agent`` would run.

A sweep needs a W&B server to hand out its points, so a mistake in a sweep file usually shows only when the first
agent starts on the cluster. ``python -m hubert_lit sweep configs/sweeps/<file>.yaml`` catches it here: it checks
the file, draws the points an agent would get (a grid: all of them; random/Bayes: ``--samples`` seeded draws from
the parameter distributions, standing in for the server), expands ``command`` with the agent's macros
(``${env}``, ``${interpreter}``, ``${program}``, ``${args}``, ``${args_no_equals}``, ``${args_no_hyphens}``,
``${envvar:NAME}``, as ``wandb/sdk/launch/sweeps/utils.py`` does), prints every command and validates each
in-process, as ``--print_config`` would (every key known, every value of the right type).
"""

from __future__ import annotations

import itertools
import math
import os
import random
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

METHODS = ("grid", "random", "bayes")
REQUIRED = ("program", "method", "metric", "parameters", "command", "project")
_ENVVAR = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")


class SweepError(ValueError):
    """A sweep file that W&B or the suite would reject; the message names the file and the key."""


def load_sweep(path: str | Path) -> dict[str, Any]:
    """Read and check a sweep file."""
    path = Path(path)
    try:
        sweep = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SweepError(f"{path}: cannot read ({err})") from err
    if not isinstance(sweep, Mapping):
        raise SweepError(f"{path}: expected a mapping")
    missing = [key for key in REQUIRED if key not in sweep]
    if missing:
        hint = (
            " (W&B ignores wandb.init(project=...) inside a sweep: name it here)"
            if "project" in missing
            else ""
        )
        raise SweepError(f"{path}: missing {missing}{hint}")
    if sweep["method"] not in METHODS:
        raise SweepError(f"{path}: method must be one of {METHODS}, got {sweep['method']!r}")
    if not isinstance(sweep["command"], list) or not any(c == "${args}" for c in sweep["command"]):
        raise SweepError(f"{path}: command must be a list that contains ${{args}}")
    for name, spec in sweep["parameters"].items():
        if not isinstance(spec, Mapping) or not ({"value", "values", "min", "distribution"} & set(spec)):
            raise SweepError(
                f"{path}: parameters.{name}: needs value, values, or a distribution with min/max"
            )
        if sweep["method"] == "grid" and not ({"value", "values"} & set(spec)):
            raise SweepError(f"{path}: parameters.{name}: a grid needs value or values")
    return dict(sweep)


def sample_value(spec: Mapping[str, Any], rng: random.Random) -> Any:
    """One draw of a parameter spec (W&B's distributions the suite's sweeps use)."""
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
    if dist == "q_uniform":
        q = spec.get("q", 1)
        return round(rng.uniform(lo, hi) / q) * q
    raise SweepError(f"distribution {dist!r} is not supported by the offline expansion")


def sweep_points(sweep: Mapping[str, Any], samples: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    """The parameter assignments an agent would run: every grid point, or ``samples`` seeded draws."""
    params = sweep["parameters"]
    if sweep["method"] == "grid":
        names = list(params)
        choices = [params[n]["values"] if "values" in params[n] else [params[n]["value"]] for n in names]
        return [dict(zip(names, combo)) for combo in itertools.product(*choices)]
    rng = random.Random(seed)
    return [{name: sample_value(spec, rng) for name, spec in params.items()} for _ in range(samples)]


def expand_command(
    sweep: Mapping[str, Any], params: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> list[str]:
    """The argv ``wandb agent`` runs for one assignment (its macros; see the module docstring)."""
    environ = os.environ if environ is None else environ
    macros = {
        "${env}": ["/usr/bin/env"],
        "${interpreter}": ["python"],
        "${program}": [str(sweep["program"])],
        "${args}": [f"--{k}={v}" for k, v in params.items()],
        "${args_no_equals}": [item for k, v in params.items() for item in (f"--{k}", str(v))],
        "${args_no_hyphens}": [f"{k}={v}" for k, v in params.items()],
    }
    argv: list[str] = []
    for chunk in sweep["command"]:
        chunk = str(chunk)
        if chunk in macros:
            argv += macros[chunk]
            continue
        chunk = _ENVVAR.sub(lambda m: environ.get(m.group(1), m.group(1)), chunk)
        if "${" in chunk:
            raise SweepError(f"command macro {chunk!r} is not supported by the offline expansion")
        argv.append(chunk)
    return argv


def suite_arguments(argv: list[str]) -> list[str]:
    """The part of a command after ``-m hubert_lit`` (a launcher such as ``srun ...`` in front is skipped)."""
    for i in range(len(argv) - 1):
        if argv[i] == "-m" and argv[i + 1] == "hubert_lit":
            return argv[i + 2 :]
    raise SweepError(f"command does not run `python -m hubert_lit`: {' '.join(argv)}")


def dry_run(
    path: str | Path,
    samples: int = 3,
    seed: int = 0,
    validate: Callable[[list[str]], int] | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[tuple[list[str], int | None]]:
    """Every command of the sweep with its validation status (``validate(args) -> exit status``; None: not
    validated)."""
    sweep = load_sweep(path)
    out = []
    for params in sweep_points(sweep, samples, seed):
        argv = expand_command(sweep, params, environ)
        status = None if validate is None else validate(suite_arguments(argv))
        out.append((argv, status))
    return out
