"""experiments/demo_threads.py: which thread counts the demo tries, and how it chooses among the measurements."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "demo_threads.py"


@pytest.fixture(scope="module")
def threads():
    spec = importlib.util.spec_from_file_location("demo_threads", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_candidates_double_up_to_the_cores(threads):
    assert threads.candidates(2) == [1, 2]
    assert threads.candidates(6) == [1, 2, 4, 6]
    assert threads.candidates(2, reserved=1) == [1]
    assert threads.candidates(4, reserved=1) == [1, 2, 3]
    assert threads.candidates(8, reserved=1) == [1, 2, 4, 7]
    assert threads.candidates(1, reserved=1) == [1]


def test_more_threads_only_when_clearly_faster(threads):
    assert threads.choose({1: 100.0, 2: 120.0}) == 1  # within the 25 % margin: fewer threads
    assert threads.choose({1: 100.0, 2: 130.0}) == 2
    assert threads.choose({1: 100.0, 2: 130.0, 4: 135.0}) == 2
    assert threads.choose({1: 100.0, 2: 60.0}) == 1  # contention with the loader worker


def test_search_stops_at_the_first_count_that_does_not_pay(threads, monkeypatch):
    measured = []
    rates = {1: 100.0, 2: 95.0, 4: 300.0, 8: 400.0}
    monkeypatch.setattr(threads, "measure", lambda config, n, steps, warmup: measured.append(n) or rates[n])
    config = Path("configs/demo.yaml")
    chosen, seen = threads.choose_threads(config, cpus=8, log=lambda *_: None)
    assert chosen == 1 and measured == [1, 2] and seen == {1: 100.0, 2: 95.0}
    measured.clear()
    rates[2] = 150.0
    chosen, _ = threads.choose_threads(config, cpus=8, log=lambda *_: None)
    assert chosen == 8 and measured == [1, 2, 4, 8]
    measured.clear()
    chosen, seen = threads.choose_threads(config, cpus=1, log=lambda *_: None)  # nothing to choose from
    assert chosen == 1 and measured == [] and seen == {}
