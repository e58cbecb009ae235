"""Quality of k-means units against phone alignments: MFCC-k and HuBERT-layer-k labels side by side.

For every requested configuration this runs ``python -m hubert_lit label`` on the fit shards (skipped when its
labels folder already exists, unless --overwrite), optionally labels --eval-shards with the fitted centroids (the
HuBERT paper measures on dev with clusters fitted on train), and reads phone purity, cluster purity and PNMI from
the labels' meta.json. Existing labels folders can be added with --labels. Writes a markdown table and a bar plot:

    python experiments/label_quality.py --shards data/demo/shards/train --eval-shards data/demo/shards/dev \\
        --mfcc-clusters 50 100 --checkpoint runs/it1/model.pt --layers all --hubert-clusters 100 \\
        --work runs/label_quality --out experiments/results/label_quality
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hubert_lit.data.label_files import load_label_meta  # noqa: E402
from hubert_lit.labels import cli as label_tool  # noqa: E402

METRICS = (("pnmi", "PNMI"), ("phone_purity", "phone purity"), ("cluster_purity", "cluster purity"))


def _shown(path: str) -> str:
    """``path`` relative to the working directory when it lies below it (results name no machine's folders)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def run_label(argv: list[str], out: Path, overwrite: bool) -> Path:
    """Run the label tool into ``out`` unless it already holds labels (and --overwrite is not given)."""
    if (out / "meta.json").is_file() and not overwrite:
        print(f"reusing {out}", flush=True)
        return out
    code = label_tool.main([*argv, "--out", str(out), *(["--overwrite"] if overwrite else [])])
    if code != 0:
        raise SystemExit(f"label failed ({code}): {' '.join(argv)}")
    return out


def describe(meta: dict) -> str:
    f = meta["features"]
    name = "MFCC" if f["type"] == "mfcc" else f"HuBERT L{f['layer']} ({Path(f['checkpoint']).name})"
    return f"{name} k={meta['num_classes']}"


def row_of(label_dir: Path, split: str) -> dict:
    meta = load_label_meta(label_dir)
    quality = meta.get("quality")
    if quality is None:
        raise SystemExit(f"{label_dir}/meta.json has no quality record (the shards have no phone alignments)")
    return {"labels": describe(meta), "split": split, "dir": _shown(str(label_dir)), "shards": _shown(meta["source"]["shards"]),
            "utterances": meta["labelled"]["utterances"], "hours": meta["labelled"]["audio_hours"],
            "label_rate": meta["label_rate"],
            "inertia": meta["kmeans"]["inertia_per_frame"], "frames": quality["aligned_frames"],
            **{key: quality[key] for key, _ in METRICS}}  # fmt: skip


def markdown(rows: list[dict]) -> str:
    lines = [
        "# k-means unit quality against phone alignments",
        "",
        "Frame-level, as in the HuBERT paper: the phone of a label frame is the aligned phone at the frame's "
        "centre. PNMI = I(phone; unit) / H(phone); phone purity = E_unit[max_phone p(phone | unit)]; cluster "
        "purity = E_phone[max_unit p(unit | phone)]. Inertia is per frame on the k-means fit sample.",
        "",
        *sorted(
            {
                f"- {r['split']}: `{r['shards']}` ({r['utterances']} utterances, {r['hours']:.2f} h)"
                for r in rows
            }
        ),
        "",
        "| labels | split | rate (Hz) | frames | PNMI | phone purity | cluster purity | inertia |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['labels']} | {r['split']} | {r['label_rate']} | {r['frames']} | {r['pnmi']:.4f} | "
            f"{r['phone_purity']:.4f} | {r['cluster_purity']:.4f} | {r['inertia']:.4g} |"
        )
    return "\n".join(lines) + "\n"


def bar_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [textwrap.fill(f"{r['labels']} [{r['split']}]", 16) for r in rows]
    x = np.arange(len(rows))
    width = 0.8 / len(METRICS)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(rows)), 4.5))
    for i, (key, title) in enumerate(METRICS):
        ax.bar(x + (i - (len(METRICS) - 1) / 2) * width, [r[key] for r in rows], width, label=title)
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("score")
    ax.set_title("k-means units vs phone alignments")
    ax.legend(fontsize=8, ncol=len(METRICS), loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def layers_of(checkpoint: Path, requested: list[str]) -> list[int]:
    """The layers ``--layers`` names for ``checkpoint`` ('all', 'middle' or numbers)."""
    from hubert_lit.checkpoint import read_model_config
    from hubert_lit.labels.features import default_layer

    depth = read_model_config(checkpoint)[0].encoder.num_layers
    layers: list[int] = []
    for item in requested:
        if item == "all":
            layers += range(depth + 1)
        elif item == "middle":
            layers.append(default_layer(depth))
        else:
            layers.append(int(item))
    return sorted(set(layers))


def best_layers(rows: list[dict], split: str) -> dict[str, tuple[int, float]]:
    """Per checkpoint and k, the layer with the highest PNMI on ``split``."""
    best: dict[str, tuple[int, float]] = {}
    for row in rows:
        name = row["labels"]
        if row["split"] != split or not name.startswith("HuBERT L"):
            continue
        layer_text, rest = name[len("HuBERT L") :].split(" ", 1)
        key = rest
        if key not in best or row["pnmi"] > best[key][1]:
            best[key] = (int(layer_text), row["pnmi"])
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=Path, help="shard folder the k-means is fitted on (e.g. train)")
    p.add_argument("--eval-shards", type=Path, default=None,
                   help="also label this shard folder with the fitted centroids and report it (e.g. dev)")  # fmt: skip
    p.add_argument("--mfcc-clusters", type=int, nargs="*", default=[100], help="k values for MFCC labels")
    p.add_argument("--checkpoint", type=Path, action="append", default=[],
                   help="model file (save_model) for HuBERT-layer labels; repeat for several")  # fmt: skip
    p.add_argument("--layers", nargs="*", default=["middle"],
                   help="layers for HuBERT-layer labels: numbers, 'middle' (half the encoder's depth, the label "
                   "tool's default) or 'all' (0 .. num_layers, to choose the iteration-2 layer by PNMI)")  # fmt: skip
    p.add_argument("--hubert-clusters", type=int, nargs="*", default=[500], help="k values for HuBERT labels")
    p.add_argument(
        "--labels", type=Path, nargs="*", default=[], help="existing labels folders to add to the table"
    )
    p.add_argument("--fit-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--work", type=Path, default=REPO / "runs" / "label_quality", help="where labels are written"
    )
    p.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "label_quality",
                   help="output stem: <out>.md, <out>.png, <out>.json")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="recompute labels folders that already exist")
    args = p.parse_args(argv)

    # (name, feature options, k-means options)
    configs: list[tuple[str, list[str], list[str]]] = []
    if args.shards is not None:
        common = ["--fit-fraction", str(args.fit_fraction), "--seed", str(args.seed)]
        for k in args.mfcc_clusters:
            configs.append((f"mfcc-k{k}", ["--features", "mfcc"], ["--clusters", str(k), *common]))
        for ckpt in args.checkpoint:
            for layer in layers_of(ckpt, args.layers):
                for k in args.hubert_clusters:
                    feats = ["--features", "hubert", "--checkpoint", str(ckpt), "--layer", str(layer)]
                    configs.append((f"{ckpt.stem}-L{layer}-k{k}", feats, ["--clusters", str(k), *common]))
    elif args.checkpoint or args.eval_shards:
        p.error("--checkpoint and --eval-shards need --shards")
    if not configs and not args.labels:
        p.error("nothing to tabulate: give --shards (with --mfcc-clusters / --checkpoint) or --labels")

    rows = []
    for name, feats, kmeans in configs:
        fitted = run_label(["--shards", str(args.shards), *feats, *kmeans], args.work / name, args.overwrite)
        rows.append(row_of(fitted, args.shards.name))
        if args.eval_shards is not None:
            evaluated = run_label(
                ["--shards", str(args.eval_shards), "--centroids", str(fitted), *feats],
                args.work / f"{name}-{args.eval_shards.name}",
                args.overwrite,
            )
            rows.append(row_of(evaluated, args.eval_shards.name))
    for label_dir in args.labels:
        rows.append(row_of(label_dir, Path(load_label_meta(label_dir)["source"]["shards"]).name))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(rows)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    bar_plot(rows, args.out.with_suffix(".png"))
    print(text)
    split = (
        args.eval_shards.name if args.eval_shards is not None else (args.shards.name if args.shards else "")
    )
    for model, (layer, pnmi) in sorted(best_layers(rows, split).items()):
        print(f"highest {split} PNMI for {model}: layer {layer} ({pnmi:.3f})")
    print(f"wrote {args.out.with_suffix('.md')}, .json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
