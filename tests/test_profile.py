"""Efficiency profiler (the paper's Table 1): conventions against the paper, counts against hand computation and
torchaudio, storage against an independent byte count, and the CLI."""

from __future__ import annotations

import csv
import dataclasses
import io
import json

import pytest
import torch
from torch import nn

from hubert_lit.checkpoint import packed_payload, save_model
from hubert_lit.models import build_hubert
from hubert_lit.models.attention import AttentionMask, MultiHeadAttention
from hubert_lit.models.sparsity import SparsityConfig
from hubert_lit.profile import cli
from hubert_lit.profile.counters import (
    PAPER_NONQ_BITS,
    bop_bits,
    bop_paper,
    count_macs,
    est_time_a100,
    flop_weight,
    profile_model,
    storage,
)
from hubert_lit.profile.paper_tables import ENCODERS, TABLE1, table1_row
from hubert_lit.profile.report import (
    COLUMNS,
    PAPER_COLUMNS,
    profile_rows,
    table1_markdown,
    write_table1_files,
)
from hubert_lit.quant import QuantSpec, activation_quantizers, binarize
from hubert_lit.quant.binarize import quantization_plan
from hubert_lit.quant.runtime import is_binary_runtime

TINY = [f"{name}_tiny" for name in ENCODERS]
GIB = 2**30


# ------------------------------------------------------------------------------------------- paper conventions
def test_time_formula_reproduces_every_paper_row():
    for row in TABLE1:
        estimated = est_time_a100(row.bop_nonq_g, row.bop_bq_g or 0.0) * 1e4
        assert abs(estimated - row.est_time_a100_1e4s) < 0.01, row.model


def test_bop_convention_is_consistent_on_the_paper_vanilla_rows():
    # BOP_NonQ = 16 MACs_fp / 2^30 and BOP_BQ = MACs_bin / 2^30 give the FP and BQ vanilla rows (same network)
    # nearly the same number of MACs; the FP rows' FLOP column is exactly MACs in G under this reading.
    fp, bq = table1_row("vanilla"), table1_row("bq_vanilla")
    fp_macs = fp.bop_nonq_g * GIB / PAPER_NONQ_BITS
    bq_macs = bq.bop_nonq_g * GIB / PAPER_NONQ_BITS + bq.bop_bq_g * GIB
    assert abs(bq_macs / fp_macs - 1) < 0.05
    for name in ENCODERS[1:]:
        row = table1_row(name)
        assert row.bop_nonq_g * GIB / PAPER_NONQ_BITS / 1e9 == pytest.approx(row.flop_g, abs=0.01)


# ------------------------------------------------------------------------------------ single modules by hand
def _count(module: nn.Module, *inputs):
    return count_macs(module, lambda: module(*inputs))


def test_linear_flop_and_bop_by_hand():
    layer = nn.Linear(8, 16)
    x = torch.randn(1, 5, 8)
    count = _count(layer, x)
    macs = 5 * 8 * 16
    assert count.counter_flops == 2 * macs
    assert [(r.kind, r.macs, r.bits) for r in count.records] == [("linear", macs, (32, 32))]
    assert bop_paper(count) == (16 * macs / GIB, 0.0)
    assert bop_bits(count) == macs * 32 * 32 / 1e9

    model = binarize(nn.Sequential(nn.Linear(8, 16)), QuantSpec())
    count = _count(model, x)
    assert [(r.module, r.macs, r.bits) for r in count.records] == [("0", macs, (1, 1))]
    assert bop_paper(count) == (0.0, macs / GIB)
    assert sum(r.macs * flop_weight(r.bits) for r in count.records) == 2 * macs / 64


def test_grouped_strided_conv1d_flop_by_hand():
    conv = nn.Conv1d(4, 6, kernel_size=3, stride=2, groups=2)
    x = torch.randn(1, 4, 11)
    t_out = (11 - 3) // 2 + 1
    macs = 6 * (4 // 2) * 3 * t_out
    count = _count(conv, x)
    assert count.counter_flops == 2 * macs
    assert [(r.kind, r.macs) for r in count.records] == [("conv", macs)]


class _Holder(nn.Module):
    """A parent for one attention module (binarize leaves the root module itself alone)."""

    def __init__(self, attention: MultiHeadAttention):
        super().__init__()
        self.attention = attention

    def forward(self, *args):
        return self.attention(*args)


@pytest.mark.parametrize("relative", [False, True])
def test_attention_flop_by_hand(relative):
    dim, heads, length = 8, 2, 6
    attention = _Holder(MultiHeadAttention(dim, heads, relative_positions=relative)).eval()
    x = torch.randn(1, length, dim)
    mask = AttentionMask(torch.tensor([length]), length, heads)
    inputs = (x, mask, torch.randn(1, 2 * length - 1, dim)) if relative else (x, mask)
    count = _count(attention, *inputs)
    projections = 4 * length * dim * dim + (relative * (2 * length - 1) * dim * dim)
    matmuls = 2 * length * length * dim + relative * length * (2 * length - 1) * dim
    assert count.total_macs(kind="linear") == projections
    assert count.total_macs(kind="attention") == matmuls
    assert count.counter_flops == 2 * (projections + matmuls)

    binarize(attention, QuantSpec(binarize_relative_positions=True))  # 0.1.0's rule: everything binary
    count = _count(attention, *inputs)
    assert all(r.bits == (1, 1) for r in count.records)
    assert count.total_macs(quantized=True) == projections + matmuls

    # default: the relative-position projection and its score matmul stay full precision
    attention = _Holder(MultiHeadAttention(dim, heads, relative_positions=relative)).eval()
    binarize(attention, QuantSpec())
    count = _count(attention, *inputs)
    positional = relative * ((2 * length - 1) * dim * dim + length * (2 * length - 1) * dim)
    assert count.total_macs(quantized=True) == projections + matmuls - positional
    assert count.total_macs(quantized=False) == positional


def test_sparse_attention_allowed_fraction_by_hand():
    # local pattern, 2-frame blocks, window 1 block each side: 3 blocks -> 7 of 9 block pairs allowed
    dim, heads, length = 8, 2, 6
    sparsity = SparsityConfig(pattern="local", block=2, num_local_blocks=2)
    attention = MultiHeadAttention(dim, heads).eval()
    mask = AttentionMask(torch.tensor([length]), length, heads, sparsity)
    count = _count(attention, torch.randn(1, length, dim), mask)
    fractions = [r.density for r in count.records if r.kind == "attention"]
    assert fractions == [pytest.approx(7 / 9)] * 2  # QK^T and PV


# ------------------------------------------------------------------------------------------------ whole models
def test_flop_and_params_match_torchaudio_hubert_base():
    torchaudio = pytest.importorskip("torchaudio")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    reference = torchaudio.models.hubert_base().eval()
    x = torch.randn(1, 8000)
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        reference(x)
    ours = build_hubert("vanilla", num_classes=0, frontend="wav2vec2")
    profile = profile_model(ours, seconds=0.5, latency_runs=0)
    assert profile.flop_g * 1e9 == counter.get_total_flops()
    assert profile.params == sum(p.numel() for p in reference.parameters()) == 94_370_944
    del reference, ours


@pytest.fixture(scope="module")
def tiny_profiles():
    """(FP profile, BQ profile, FP model, BQ model) per tiny preset, 0.5 s of audio."""
    out = {}
    for name in TINY:
        torch.manual_seed(0)
        fp = build_hubert(name, num_classes=0).eval()  # eval: no LayerDrop when the tests count MACs again
        bq = binarize(build_hubert(name, num_classes=0), QuantSpec()).eval()
        out[name] = (profile_model(fp, 0.5, latency_runs=0), profile_model(bq, 0.5, latency_runs=1), fp, bq)
    return out


@pytest.mark.parametrize("name", TINY)
def test_every_mac_is_attributed_to_a_known_layer(tiny_profiles, name):
    _, _, fp, bq = tiny_profiles[name]
    w, n = torch.randn(1, 8000), torch.tensor([8000])
    for model in (fp, bq):
        count = count_macs(model, lambda m=model: m.extract_features(w, n))
        assert [r.module for r in count.records if r.kind == "other"] == []
        assert 2 * count.total_macs() == count.counter_flops


@pytest.mark.parametrize("name", TINY)
def test_bq_row_is_cheaper_than_fp_row(tiny_profiles, name):
    fp, bq, _, _ = tiny_profiles[name]
    assert bq.storage_mb < fp.storage_mb
    assert bq.storage_mb_paper_convention < fp.storage_mb_paper_convention
    assert bq.flop_g < fp.flop_g
    assert bq.bop_nonq_g + bq.bop_bq_g < fp.bop_nonq_g
    assert bq.est_time_a100_1e4s < fp.est_time_a100_1e4s
    assert fp.bop_bq_g == 0.0 < bq.bop_bq_g
    assert bq.flop_counter_g == pytest.approx(fp.flop_counter_g)  # same network, same raw MACs
    assert bq.cpu_latency_ms > 0 and bq.cpu_time_ms > 0 and fp.cpu_latency_ms is None


@pytest.mark.parametrize("name", TINY)
def test_bq_rows_measure_the_binary_runtime_without_changing_the_model(tiny_profiles, binary_kernels, name):
    fp, bq, _, bq_model = tiny_profiles[name]
    assert fp.runtime is None and fp.runtime_latency_ms_1t is None  # latency_runs=0: nothing timed
    if not binary_kernels.available:
        assert bq.runtime is None and bq.runtime_latency_ms_1t is None
        return
    assert bq.runtime == "binary" and bq.runtime_latency_ms_1t > 0 and bq.runtime_latency_ms_2t > 0
    # the runtime ran on a calibrated copy: the profiled model is still simulated, its scales untouched
    assert not is_binary_runtime(bq_model)
    assert not any(q.is_initialized() for _, q in activation_quantizers(bq_model))


def test_fp_rows_measure_the_fp32_model_at_one_and_two_threads():
    profile = profile_model(build_hubert("vanilla_tiny", num_classes=0), 0.5, latency_runs=1)
    assert (
        profile.runtime == "fp32" and profile.runtime_latency_ms_1t > 0 and profile.runtime_latency_ms_2t > 0
    )
    assert profile.cpu_threads == torch.get_num_threads()  # restored after the measurement


@pytest.mark.parametrize("name", TINY)
def test_quantized_layers_match_the_binarize_spec(tiny_profiles, name):
    _, bq_profile, fp, bq = tiny_profiles[name]
    spec = QuantSpec()
    plan = quantization_plan(build_hubert(name, num_classes=0), spec)
    layers = {s.name for s in plan if s.kind in ("linear", "conv", "depthwise")}
    hooks = {s.name.rsplit(".", 1)[0] for s in plan if s.kind == "hook"}
    assert bq_profile.quantized_layers == len(layers)
    w = torch.randn(1, 8000)
    count = count_macs(bq, lambda: bq.extract_features(w, torch.tensor([8000])))
    quantized = {r.module for r in count.records if r.quantized and r.kind != "attention"}
    assert quantized == layers
    assert {r.module for r in count.records if r.kind == "attention" and r.quantized} == hooks


def test_storage_equals_an_independent_byte_count():
    fp = build_hubert("conformer_s_tiny", num_classes=20)  # with a head, which storage leaves out
    head = ("mask_embedding", "final_proj.", "label_embeddings")
    expected = sum(
        t.numel() * t.element_size()
        for k, t in fp.state_dict().items()
        if t.is_floating_point() and not k.startswith(head)
    )
    assert storage(fp).real_bytes == expected
    assert storage(fp).paper_bytes == expected / 2

    bq = binarize(fp, QuantSpec())
    payload = packed_payload(bq)  # the export's packed codes and FP32 steps: bytes a deployment stores
    packed = sum(e["codes"].numel() + e["step"].numel() * 4 for e in payload["packed"].values())
    rest = sum(
        t.numel() * t.element_size()
        for k, t in payload["state_dict"].items()
        if t.is_floating_point() and not k.startswith(head)
    )
    assert storage(bq).real_bytes == packed + rest
    assert storage(bq).quantized_layers == len(payload["packed"])


# ------------------------------------------------------------------------------------------------ reports, CLI
def test_table1_files(tiny_profiles, tmp_path):
    # tiny profiles stand in for the real presets (named as the paper's rows) to keep the test fast
    profiles = [dataclasses.replace(tiny_profiles[f"{n}_tiny"][0], model=n) for n in ENCODERS]
    profiles += [dataclasses.replace(tiny_profiles[f"{n}_tiny"][1], model=f"bq_{n}") for n in ENCODERS]
    paths = write_table1_files(profiles, tmp_path)
    rows = list(csv.DictReader((tmp_path / "table1.csv").open()))
    assert [r["model"] for r in rows] == [r.model for r in TABLE1]
    assert set(COLUMNS) | set(PAPER_COLUMNS) == set(rows[0])
    assert float(rows[5]["paper_bop_bq_g"]) == table1_row("bq_vanilla").bop_bq_g
    assert float(rows[0]["paper_asr_wer"]) == 6.89  # Table 2's own run, not Table 1's reported 7.06
    markdown = (tmp_path / "table1.md").read_text()
    assert "| 184.42 |" in markdown and "(1228.64)" in markdown and "Conventions:" in markdown
    assert (tmp_path / "table1.png").stat().st_size > 10_000
    assert len(paths) == 3


def test_table1_markdown_puts_measured_speed_ups_beside_the_estimate(tiny_profiles):
    fp, bq, _, _ = tiny_profiles["vanilla_tiny"]
    fp = dataclasses.replace(
        fp, model="vanilla", runtime="fp32", runtime_latency_ms_1t=100.0, runtime_latency_ms_2t=60.0
    )
    bq = dataclasses.replace(
        bq, model="bq_vanilla", runtime="binary", runtime_latency_ms_1t=20.0, runtime_latency_ms_2t=15.0
    )
    estimated = fp.est_time_a100_1e4s / bq.est_time_a100_1e4s
    markdown = table1_markdown([fp, bq])
    assert "| 100 / 60 |  |" in markdown  # the FP row: its measured times, no speed-up
    assert f"| 20 / 15 | {estimated:.1f}x / 5.0x / 4.0x |" in markdown
    unmeasured = table1_markdown([dataclasses.replace(bq, runtime=None, runtime_latency_ms_1t=None)])
    assert "| 20 / 15 |" not in unmeasured and unmeasured.count("|  |  |") >= 1


def test_cli_preset_csv_and_json(capsys):
    assert (
        cli.main(
            [
                "--model",
                "vanilla_tiny",
                "--quant",
                "w1a1",
                "--seconds",
                "0.5",
                "--runs",
                "0",
                "--format",
                "csv",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 1 and rows[0]["model"] == "bq_vanilla_tiny" and rows[0]["precision"] == "FP32-W1A1"
    assert rows[0]["cpu_latency_ms"] == rows[0]["cpu_time_ms"] == ""
    assert cli.main(["--model", "vanilla_tiny", "--seconds", "0.5", "--runs", "0", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rows"][0]["model"] == "vanilla_tiny" and "bop" in data["conventions"]


def test_cli_checkpoint_matches_the_model(tmp_path, capsys):
    model = build_hubert("sparseformer_dn_s_tiny", num_classes=10)
    save_model(model, tmp_path / "m.pt")
    assert (
        cli.main(
            ["--checkpoint", str(tmp_path / "m.pt"), "--seconds", "0.5", "--runs", "0", "--format", "csv"]
        )
        == 0
    )
    row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    expected = profile_rows([profile_model(model, 0.5, latency_runs=0)])[0]
    assert int(row["params"]) == expected["params"] and int(row["params_head"]) == expected["params_head"] > 0
    assert float(row["flop_g"]) == pytest.approx(expected["flop_g"])
    assert float(row["attn_allowed_fraction"]) < 1.0


def test_cli_config_files(tmp_path, capsys):
    model_cfg = build_hubert("squeezeformer_xs_tiny", num_classes=0).config
    model_cfg.to_yaml(tmp_path / "model.yaml")
    (tmp_path / "base.yaml").write_text("model:\n  num_classes: 50\n  preset: vanilla\n")
    (tmp_path / "run.yaml").write_text("base: base.yaml\nmodel:\n  preset: conformer_s_tiny\n")
    assert (
        cli.main(
            ["--config", str(tmp_path / "model.yaml"), "--runs", "0", "--seconds", "0.5", "--format", "csv"]
        )
        == 0
    )
    assert next(csv.DictReader(io.StringIO(capsys.readouterr().out)))["model"] == "squeezeformer_xs_tiny"
    assert (
        cli.main(
            ["--config", str(tmp_path / "run.yaml"), "--runs", "0", "--seconds", "0.5", "--format", "csv"]
        )
        == 0
    )
    row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert row["model"] == "conformer_s_tiny" and int(row["params_head"]) == 32 + 256 * 32 + 256 + 50 * 256


def test_cli_errors(tmp_path, capsys):
    assert cli.main(["--model", "vanilla_tiny", "--quant", "binary"]) == 2
    assert "--quant" in capsys.readouterr().err
    assert cli.main(["--model", "no_such_model"]) == 2
    assert "no_such_model" in capsys.readouterr().err
    assert cli.main(["--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    save_model(build_hubert("vanilla_tiny", num_classes=10), tmp_path / "m.pt")
    build_hubert("conformer_s_tiny").config.to_yaml(tmp_path / "other.yaml")
    assert cli.main(["--config", str(tmp_path / "other.yaml"), "--checkpoint", str(tmp_path / "m.pt")]) == 2
    assert "different models" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--seconds", "1"])  # no model given
