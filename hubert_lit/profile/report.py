"""Tables (markdown, CSV, JSON) and the cost-vs-WER plot of profiles from :mod:`hubert_lit.profile.counters`."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from hubert_lit.profile.counters import ModelProfile
from hubert_lit.profile.paper_tables import TABLE1, TABLE2, table2_value

# CSV column -> ModelProfile field (the first eleven are the suite's contract; the rest are extras).
COLUMNS: dict[str, str] = {
    "model": "model",
    "precision": "precision",
    "params": "params",
    "storage_mb": "storage_mb",
    "storage_mb_paper_convention": "storage_mb_paper_convention",
    "flop_g": "flop_g",
    "bop_nonq_g": "bop_nonq_g",
    "bop_bq_g": "bop_bq_g",
    "est_time_a100_1e-4s": "est_time_a100_1e4s",
    "cpu_latency_ms": "cpu_latency_ms",
    "seconds": "seconds",
    "frames": "frames",
    "params_frontend": "params_frontend",
    "params_positional": "params_positional",
    "params_encoder": "params_encoder",
    "params_head": "params_head",
    "params_other": "params_other",
    "quantized_layers": "quantized_layers",
    "quantized_weights": "quantized_weights",
    "flop_counter_g": "flop_counter_g",
    "flop_frontend_g": "flop_frontend_g",
    "flop_positional_g": "flop_positional_g",
    "flop_encoder_g": "flop_encoder_g",
    "attn_flop_g": "attn_flop_g",
    "attn_flop_sparse_g": "attn_flop_sparse_g",
    "attn_allowed_fraction": "attn_allowed_fraction",
    "flop_sparse_g": "flop_sparse_g",
    "macs_fp_g": "macs_fp_g",
    "macs_q_g": "macs_q_g",
    "bop_bits_g": "bop_bits_g",
    "cpu_time_ms": "cpu_time_ms",
    "cpu_threads": "cpu_threads",
    "runtime": "runtime",
    "runtime_latency_ms_1t": "runtime_latency_ms_1t",
    "runtime_latency_ms_2t": "runtime_latency_ms_2t",
}
PAPER_COLUMNS = (
    "paper_storage_mb",
    "paper_flop_g",
    "paper_bop_nonq_g",
    "paper_bop_bq_g",
    "paper_est_time_a100_1e-4s",
    "paper_asr_wer",
)

FOOTNOTES: dict[str, str] = {
    "input": "One utterance of random audio at 16 kHz, batch 1, eval mode; frames = floor((n - 400) / 320) + 1.",
    "params": "params = front end + positional + encoder (+ other), without the pretraining head (params_head). "
    "Front end = conv feature extractor + feature projection; positional = conv positional embedding, or the "
    "rel-pos projection and biases of Conformer/Squeezeformer attention. Quantized rows include the activation "
    "quantizers' scales and shifts.",
    "storage_mb": "storage_mb: the inference model at its real precision: quantized weights at their bit width "
    "plus one FP32 scale per tensor (Linear) or per output channel (Conv1d), every other parameter and float "
    "buffer (BatchNorm statistics) at its dtype (FP32). MB = 1e6 bytes. The pretraining head is not counted.",
    "storage_mb_paper_convention": "storage_mb_paper_convention: Yeh et al.'s rule: quantized weights at their bit "
    "width, every other parameter (and the weight scales) at 16 bits; MB = 1e6 bytes.",
    "flop_g": "flop_g: torch.utils.flop_counter.FlopCounterMode (2 FLOP per MAC of matmuls and convolutions; "
    "elementwise ops, norms and softmax are not counted), attention on its explicit matmul path so QK^T and PV "
    "are counted. In quantized rows a quantized MAC counts b_w*b_a/64 of a full-precision one (1/64 for W1A1, "
    "the binary-network convention); flop_counter_g is the counter's raw total. G = 1e9. "
    "The paper's FLOP column equals MACs (1 per MAC) for four of its five FP rows, so compare it with "
    "flop_g / 2 (macs_fp_g + macs_q_g).",
    "attention": "attn_flop_g: FLOP of the attention matmuls (QK^T, PV and, with relative positions, (q+v)P^T), "
    "dense, as counted; attn_flop_sparse_g = attn_flop_g x the fraction of (query, key) pairs the Sparseformer "
    "layout allows for this utterance length (attn_allowed_fraction); flop_sparse_g = flop_g with that "
    "substitution. Table rows and BOP use the dense count.",
    "bop": "bop_nonq_g / bop_bq_g (paper-compatible, G = 2^30): BOP_NonQ = 16 x MACs_fp, BOP_BQ = sum(MACs_q x "
    "b_w x b_a) = MACs_bin for W1A1. Checked on the paper's vanilla rows: their BOP columns give 82.45 G FP "
    "MACs for vanilla and 11.60 + 68.31 = 79.91 G for BQ-vanilla under this reading. bop_bits_g: Bayesian-Bits "
    "BOPs = sum(MACs x b_w x b_a) with FP32 = 32 x 32, G = 1e9. A MAC is quantized when both operands have "
    "fewer than 16 bits; the attention scores of quantized rows are binary x binary (the per-head position "
    "biases u, v add a negligible FP vector product).",
    "est_time": "est_time_a100_1e-4s = (BOP_NonQ / 312 + BOP_BQ / 4992) / 1024 s, in units of 1e-4 s (A100: "
    "312 TFLOPS FP16, 4992 TOPS binary); the formula reproduces every row of the paper's Table 1 from its own "
    "BOP columns.",
    "cpu_latency_ms": "cpu_latency_ms: median wall time of feature extraction (batch 1) on this machine's CPU with "
    "cpu_threads threads; cpu_time_ms: median process CPU time of the same passes (all threads; steadier "
    "than wall time on a shared machine). Binarization is simulated in FP32 (quantize, then an FP32 matmul), "
    "so quantized rows are not faster; they are slower.",
    "runtime_latency": "runtime_latency_ms_1t / _2t: median wall time of the same feature extraction with 1 and 2 "
    "threads of the deployed model (runtime): the FP32 model for FP rows, the binary runtime for W1A1 rows "
    "(weights bit-packed, XNOR/AND-popcount GEMMs, hubert_lit.quant.runtime; front end, norms, softmax, "
    "depthwise convolutions and the relative-position term in FP32). Empty for other quantizations or "
    "without the binary kernels. Measured on this machine, not comparable with the A100 estimate; the speed-up "
    "columns divide the FP row's measured time by the BQ row's, at the same thread count.",
    "paper": "paper_*: the paper's Table 1 as printed (its input length is not stated); paper_asr_wer: ASR WER "
    "of the paper's own runs in its Table 2.",
}


def _paper_values(model: str) -> dict[str, float | None]:
    for row in TABLE1:
        if row.model == model:
            return {
                "paper_storage_mb": row.storage_mb,
                "paper_flop_g": row.flop_g,
                "paper_bop_nonq_g": row.bop_nonq_g,
                "paper_bop_bq_g": row.bop_bq_g,
                "paper_est_time_a100_1e-4s": row.est_time_a100_1e4s,
                "paper_asr_wer": table2_value(model, "asr_wer") if model in TABLE2 else None,
            }
    return {}


def profile_rows(profiles: Sequence[ModelProfile], with_paper: bool = False) -> list[dict]:
    """One dict per profile with the CSV columns (and the paper's values beside ours when ``with_paper``)."""
    rows = []
    for p in profiles:
        values = p.as_dict()
        row = {column: values[name] for column, name in COLUMNS.items()}
        if with_paper:
            paper = _paper_values(p.model)
            row.update({c: paper.get(c) for c in PAPER_COLUMNS})
        rows.append(row)
    return rows


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def to_csv(rows: Sequence[dict]) -> str:
    """CSV text with a header; floats at full precision, missing values empty."""
    if not rows:
        raise ValueError("no rows to write")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return out.getvalue()


def to_json(rows: Sequence[dict]) -> str:
    """JSON text: ``{"rows": [...], "conventions": {...}}``."""
    return json.dumps({"rows": list(rows), "conventions": FOOTNOTES}, indent=2) + "\n"


def _footnotes() -> list[str]:
    return ["", "Conventions:", ""] + [f"- {text}" for text in FOOTNOTES.values()]


def single_markdown(profile: ModelProfile) -> str:
    """A quantity/value table for one profile, with the conventions under it."""
    lines = [
        f"### {profile.model} ({profile.precision}), {profile.seconds:g} s of audio",
        "",
        "| quantity | value |",
        "|---|---|",
    ]
    for column, value in profile_rows([profile])[0].items():
        if column in ("model", "precision"):
            continue
        lines.append(f"| {column} | {_fmt(value, 4)} |")
    return "\n".join(lines + _footnotes()) + "\n"


def _pair(ours, paper, digits: int = 2) -> str:
    return f"{_fmt(ours, digits)} ({_fmt(paper, digits)})" if paper is not None else _fmt(ours, digits)


def _runtime_cells(profile: ModelProfile, fp: ModelProfile | None) -> tuple[str, str]:
    """(measured ms at 1 / 2 threads, speed-up against the FP row: estimated and measured at 1 / 2 threads)."""
    if profile.runtime_latency_ms_1t is None:
        return "", ""
    measured = f"{_fmt(profile.runtime_latency_ms_1t, 0)} / {_fmt(profile.runtime_latency_ms_2t, 0)}"
    if fp is None or fp is profile or fp.runtime_latency_ms_1t is None:
        return measured, ""
    estimated = fp.est_time_a100_1e4s / profile.est_time_a100_1e4s
    ratios = [
        _fmt(a / b, 1) + "x" if a and b else ""
        for a, b in (
            (fp.runtime_latency_ms_1t, profile.runtime_latency_ms_1t),
            (fp.runtime_latency_ms_2t, profile.runtime_latency_ms_2t),
        )
    ]
    return measured, f"{estimated:.1f}x / {ratios[0]} / {ratios[1]}"


def table1_markdown(profiles: Sequence[ModelProfile]) -> str:
    """Our Table 1 with the paper's values in parentheses, a breakdown table, and the conventions."""
    rows = profile_rows(profiles, with_paper=True)
    by_name = {p.model: p for p in profiles}
    seconds = ", ".join(sorted({f"{p.seconds:g}" for p in profiles}))
    lines = [
        f"### Table 1, ours at {seconds} s of audio (the paper's value in parentheses)",
        "",
        "| model | precision | params (M) | storage MB, FP32 + 1-bit | storage MB, 16-bit + 1-bit | paper storage MB "
        "| FLOP G | MAC-equiv. G | BOP_NonQ G | BOP_BQ G | est. A100 time 1e-4 s | CPU wall / CPU time ms (BQ: simulated) "
        "| ASR WER (paper) | measured ms, 1 / 2 threads (FP32; BQ: binary runtime) "
        "| speed-up vs FP32: est. A100 / 1 / 2 threads |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p, r in zip(profiles, rows):
        latency = f"{_fmt(p.cpu_latency_ms, 0)} / {_fmt(p.cpu_time_ms, 0)}" if p.cpu_latency_ms else ""
        fp = by_name.get(p.model.removeprefix("bq_")) if p.model.startswith("bq_") else None
        measured, speedup = _runtime_cells(p, fp)
        lines.append(
            f"| {p.model} | {p.precision} | {p.params / 1e6:.2f} | {_fmt(p.storage_mb)} | "
            f"{_fmt(p.storage_mb_paper_convention)} | {_fmt(r['paper_storage_mb'])} | {_fmt(p.flop_g)} | "
            f"{_pair(p.flop_g / 2, r['paper_flop_g'])} | {_pair(p.bop_nonq_g, r['paper_bop_nonq_g'])} | "
            f"{_pair(p.bop_bq_g if p.bop_bq_g else None, r['paper_bop_bq_g'])} | "
            f"{_pair(p.est_time_a100_1e4s, r['paper_est_time_a100_1e-4s'])} | {latency} | "
            f"{_fmt(r['paper_asr_wer'])} | {measured} | {speedup} |"
        )
    lines += [
        "",
        "MAC-equiv. G = FLOP / 2: multiply-accumulates with quantized ones at b_w x b_a / 64, the unit of the "
        "paper's FLOP column (for four of its five FP rows FLOP = BOP_NonQ x 2^30 / 16 / 1e9, i.e. MACs, "
        "exactly; vanilla's 110.54 does not follow its own BOP).",
        "",
        "| model | front end (M) | positional (M) | encoder (M) | quantized layers | FLOP front end G | "
        "FLOP encoder G | attention FLOP G | sparse attention FLOP G | allowed fraction | BOP bits G |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in profiles:
        lines.append(
            f"| {p.model} | {p.params_frontend / 1e6:.3f} | {p.params_positional / 1e6:.3f} | "
            f"{p.params_encoder / 1e6:.3f} | {p.quantized_layers} | {_fmt(p.flop_frontend_g)} | "
            f"{_fmt(p.flop_encoder_g + p.flop_positional_g)} | {_fmt(p.attn_flop_g)} | "
            f"{_fmt(p.attn_flop_sparse_g)} | {_fmt(p.attn_allowed_fraction, 3)} | {_fmt(p.bop_bits_g, 0)} |"
        )
    return "\n".join(lines + _footnotes()) + "\n"


def plot_table1(profiles: Sequence[ModelProfile], path: str | Path) -> Path:
    """Cost (estimated A100 time, 16-bit/1-bit storage) against the paper's ASR WER: our rows (filled) beside
    the paper's (hollow), joined per model; one colour per encoder, circles FP32, squares quantized. Rows the
    paper has no WER for are left out (named on the figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    rows = profile_rows(profiles, with_paper=True)
    panels = (
        ("est_time_a100_1e4s", "paper_est_time_a100_1e-4s", "estimated A100 time (1e-4 s)"),
        (
            "storage_mb_paper_convention",
            "paper_storage_mb",
            "storage (MB; FP at 16 bits, binary weights at 1 bit)",
        ),
    )
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    encoders: list[str] = []
    skipped = [p.model for p, r in zip(profiles, rows) if r["paper_asr_wer"] is None]
    for ax, (ours_key, paper_key, label) in zip(axes, panels):
        for p, r in zip(profiles, rows):
            wer = r["paper_asr_wer"]
            if wer is None:
                continue
            quantized = p.model.startswith("bq_")
            encoder = p.model.removeprefix("bq_")
            if encoder not in encoders:
                encoders.append(encoder)
            color = palette[encoders.index(encoder) % len(palette)]
            marker = "s" if quantized else "o"
            ours = getattr(p, ours_key)
            legend = encoder if (ax is axes[1] and not quantized) else None
            ax.scatter([ours], [wer], color=color, marker=marker, label=legend, zorder=3)
            if r[paper_key] is not None:
                ax.scatter(
                    [r[paper_key]], [wer], facecolors="none", edgecolors=color, marker=marker, zorder=3
                )
                ax.plot([ours, r[paper_key]], [wer, wer], color=color, linestyle=":", linewidth=1)
        ax.set_xscale("log")
        low, high = ax.get_xlim()
        ticks = [m * 10.0**k for k in range(-4, 7) for m in (1, 2, 5) if low <= m * 10.0**k <= high]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("ASR WER % (the paper's own runs, Table 2)")
        ax.grid(True, which="both", alpha=0.3)
    seconds = ", ".join(sorted({f"{p.seconds:g}" for p in profiles}))
    title = (
        f"Filled: ours at {seconds} s of audio; hollow: the paper's Table 1 (dotted line joins a model). "
        "Circles FP32, squares BiT W1A1."
    )
    if skipped:
        title += f"\nnot plotted (no paper WER): {', '.join(skipped)}"
    fig.suptitle(title, fontsize=9)
    axes[1].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_table1_files(profiles: Sequence[ModelProfile], out_dir: str | Path) -> list[Path]:
    """Write ``table1.md``, ``table1.csv`` (with the paper's values) and ``table1.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, csv_path = out_dir / "table1.md", out_dir / "table1.csv"
    md.write_text(table1_markdown(profiles))
    csv_path.write_text(to_csv(profile_rows(profiles, with_paper=True)))
    return [md, csv_path, plot_table1(profiles, out_dir / "table1.png")]
