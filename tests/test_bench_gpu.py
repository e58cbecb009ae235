"""experiments/bench_gpu.py in its reduced CPU mode: every planned row is measured or listed as not measured, in
the planned order, with numbers in every measured row (the GPU figures themselves come from a GPU run)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_gpu"]


def _table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 9 and cells[0] != "model":
            rows.append(cells)
    return rows


def test_cpu_mode_writes_every_row_in_order_within_the_budget(bench, tmp_path):
    out = tmp_path / "bench.md"
    argv = ["--device", "cpu", "--out", str(out), "--budget-s", "12", "--compile-backend", "eager"]
    argv += ["--steps", "1", "--warmup", "0", "--num-classes", "8"]
    settings, _, _ = bench.parse(argv)
    planned = [e.label for e in bench.plan(settings)]
    assert bench.main(argv) == 0
    text = out.read_text()
    rows = _table_rows(text)
    measured = [f"{name} ({mode})" for name, mode, *_ in rows]
    stages = [f"{bench.STAGES} ({m})" for m in re.findall(r"^\| (eager|compiled) \| [-\d.,]+ \|", text, re.M)]
    skipped = (
        re.findall(r"^- (.+)$", text.split("Not measured within the budget:")[-1], re.M)
        if "Not measured" in text
        else []
    )
    done = [label for label in planned if label in measured + stages]
    assert measured == [label for label in done if not label.startswith(bench.STAGES)]  # in the planned order
    assert sorted(done + skipped) == sorted(planned)  # each planned entry measured or listed
    assert (
        rows[0][:2] == ["torchaudio hubert_pretrain_base (vanilla_tiny shape)", "eager"]
        and rows[0][4] == "1.00x"
    )
    for name, _mode, rate, ms, *_ in rows:
        assert float(rate.replace(",", "")) > 0 and float(ms.replace(",", "")) > 0, name
    assert "hubert-lit vanilla_tiny (compiled)" in measured  # the budget covers the compiled vanilla row
