"""Gather ``python -m hubert_lit evaluate`` runs into one Table 2 (markdown) beside the paper's, and plot quality
against storage and BOP.

    python experiments/table2.py [--results experiments/results/superb] [--out experiments/results/superb]

Reads every ``<results>/*.json`` written by the evaluation tool (or the files given with ``--runs``) and writes
``<out>/table2.md``, ``<out>/table2_storage.png`` and ``<out>/table2_bop.png``. Storage (paper convention:
binarized weights at 1 bit, everything else at 16 bits) and BOP (``BOP_NonQ + BOP_BQ``, paper-compatible) come
from :func:`hubert_lit.profile.profile_model`, stored by the evaluation tool for a 10 s utterance; for a run
without a profile the plot falls back to FP32 parameter storage and leaves BOP out, and the table says so.

Our rows are Mini-SUPERB (small synthetic eSpeak NG task sets, prosody presets in the ER slot); the paper's rows
are SUPERB. They are printed side by side for orientation only: the numbers are not comparable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hubert_lit.profile.paper_tables import TABLE1, TABLE2, TABLE2_COLUMNS  # noqa: E402
from hubert_lit.superb.evaluate import COLUMNS  # noqa: E402

HEADERS = {column: header for column, _, _, header in COLUMNS.values()}
HIGHER_IS_BETTER = {
    "asr_wer": False,
    "ks_acc": True,
    "sf_f1": True,
    "sid_acc": True,
    "pr_per": False,
    "qbe_mtwv": True,
    "ic_acc": True,
    "asv_eer": False,
    "sd_der": False,
    "er_acc": True,
}
NOTE = (
    "**The tasks differ.** Paper rows: SUPERB (LibriSpeech, Speech Commands, VoxCeleb1, IEMOCAP, ...; "
    "models pretrained for 850k steps on 960 h). Our rows: Mini-SUPERB, small synthetic eSpeak NG task sets "
    "(`python -m hubert_lit superb-data`), where the ER column holds prosody-preset classification, not "
    "emotion. Read our rows against each other, never against the paper's."
)


def load_runs(paths: list[Path]) -> list[dict]:
    runs = []
    for path in paths:
        try:
            report = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise SystemExit(f"{path}: not valid JSON ({err})") from err
        if not isinstance(report, dict) or "row" not in report or "tasks" not in report:
            print(f"skipped {path}: not an evaluation report (no 'row'/'tasks')", file=sys.stderr)
            continue
        runs.append(report)
    return runs


def efficiency(report: dict) -> tuple[float, float | None, str]:
    """(storage MB, BOP G or None, source) of a run."""
    model = report.get("model", {})
    profile = model.get("profile")
    if profile:
        bop = profile["bop_nonq_g"] + profile["bop_bq_g"]
        return profile["storage_mb_paper_convention"], bop, "profile"
    return model.get("parameters", 0) * 4 / 1e6, None, "parameters (FP32)"


def paper_efficiency() -> dict[str, tuple[float, float]]:
    """Paper model -> (storage MB, BOP_NonQ + BOP_BQ in G) from Table 1 (the ``*_reported`` rows have none)."""
    return {row.model: (row.storage_mb, row.bop_nonq_g + (row.bop_bq_g or 0.0)) for row in TABLE1}


def fmt(value: float | None, column: str) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if column == "sf_f1" else f"{value:.2f}"


def markdown(runs: list[dict]) -> str:
    columns = list(TABLE2_COLUMNS)
    header = ["source", "model", "precision", "storage MB", "BOP G", *[HEADERS[c] for c in columns]]
    lines = [NOTE, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    paper_eff = paper_efficiency()
    for model, (precision, values) in TABLE2.items():
        storage, bop = paper_eff.get(model, (None, None))
        cells = [
            "paper (SUPERB)",
            model,
            precision,
            fmt(storage, ""),
            fmt(bop, ""),
            *[fmt(v, c) for v, c in zip(values, columns)],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    fallbacks = []
    for report in runs:
        storage, bop, source = efficiency(report)
        if source != "profile":
            fallbacks.append(report["run"])
        profile = report.get("model", {}).get("profile") or {}
        precision = profile.get("precision", "binarized" if report.get("model", {}).get("binarized") else "?")
        cells = [
            "ours (Mini-SUPERB)",
            report["run"],
            precision,
            fmt(storage, ""),
            fmt(bop, ""),
            *[fmt(report["row"].get(c), c) for c in columns],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Units: " + "; ".join(f"{HEADERS[c]}" for c in columns) + ". Storage in the paper's convention "
        "(binarized weights at 1 bit, other parameters at 16 bits); BOP = BOP_NonQ + BOP_BQ (paper "
        "convention), ours for a 10 s utterance (the paper does not state its input length).",
    ]
    if fallbacks:
        lines.append(
            f"Runs without a profile (storage from FP32 parameter counts, no BOP): {', '.join(fallbacks)}."
        )
    scales_of_task: dict[str, set[str]] = {}
    for r in runs:
        for task, scale in (r.get("data_scale") or {}).items():
            scales_of_task.setdefault(task, set()).add(str(scale))
    mixed = sorted(task for task, scales in scales_of_task.items() if len(scales) > 1)
    if mixed:
        lines.append(
            f"Warning: the runs used different data scales for {', '.join(mixed)}; compare only runs on the same "
            "scale."
        )
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], x_kind: str, path: Path) -> Path:
    """One panel per task: paper models (grey, left axis) and our runs (colour, right axis) against storage
    or BOP (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(TABLE2_COLUMNS)
    fig, axes = plt.subplots(2, 5, figsize=(20, 7.5))
    paper_eff = paper_efficiency()
    for ax, column in zip(axes.flat, columns):
        index = columns.index(column)
        for model, (_, values) in TABLE2.items():
            if model not in paper_eff:
                continue
            x = paper_eff[model][0 if x_kind == "storage" else 1]
            ax.scatter(x, values[index], color="0.6", marker="s" if model.startswith("bq_") else "o", s=25)
            ax.annotate(model.replace("sparseformer", "sf"), (x, values[index]), fontsize=6, color="0.45")
        ours = ax.twinx()
        for i, report in enumerate(runs):
            storage, bop, _ = efficiency(report)
            x = storage if x_kind == "storage" else bop
            value = report["row"].get(column)
            if x is None or value is None:
                continue
            ours.scatter(x, value, color=f"C{i % 10}", marker="*", s=110, label=report["run"])
        ax.set_xscale("log")
        arrow = "↑" if HIGHER_IS_BETTER[column] else "↓"
        ax.set_title(f"{HEADERS[column]}", fontsize=9)
        ax.set_xlabel(
            "storage MB (paper convention)" if x_kind == "storage" else "BOP G (NonQ + BQ)", fontsize=8
        )
        ax.set_ylabel(f"paper, SUPERB {arrow}", color="0.45", fontsize=8)
        ours.set_ylabel(f"ours, Mini-SUPERB {arrow}", fontsize=8)
    handles, labels = [], []
    for ax in fig.axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8)
    fig.suptitle(
        "Quality vs " + ("storage" if x_kind == "storage" else "BOP") + ": paper (grey, left axes, "
        "SUPERB) and our runs (stars, right axes, Mini-SUPERB); the tasks differ, compare within a colour",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=ROOT / "experiments/results/superb",
        help="folder of evaluation reports <run>.json (default: %(default)s)",
    )
    parser.add_argument(
        "--runs",
        type=Path,
        nargs="+",
        default=None,
        help="report files to use instead of every *.json in --results",
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: --results)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths = args.runs or sorted(args.results.glob("*.json"))
    runs = load_runs(paths)
    if not runs:
        print(
            f"no evaluation reports found ({args.results}/*.json); run `python -m hubert_lit evaluate` first",
            file=sys.stderr,
        )
        return 1
    out = args.out or args.results
    out.mkdir(parents=True, exist_ok=True)
    (out / "table2.md").write_text(markdown(runs))
    written = [
        out / "table2.md",
        plot(runs, "storage", out / "table2_storage.png"),
        plot(runs, "bop", out / "table2_bop.png"),
    ]
    print((out / "table2.md").read_text())
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
