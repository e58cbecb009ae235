"""File sizes of the five BQ models as stored: FP32 model file, packed export, and the packed export at Table 1's
"16-bit + 1-bit" rule (``--full-precision-bits 16 --drop-head``) against the storage Table 1 counts.

Random weights (sizes do not depend on the values), 500 classes, the presets' default front end:

    python experiments/export_sizes.py --out experiments/results/export_sizes.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from hubert_lit.checkpoint import load_model, save_model, save_packed  # noqa: E402
from hubert_lit.models import build_hubert  # noqa: E402
from hubert_lit.profile.counters import storage  # noqa: E402
from hubert_lit.quant import binarize, quantized_layers  # noqa: E402

PRESETS = ("vanilla", "conformer_s", "squeezeformer_xs", "sparseformer_dn_s", "sparseformer_sw_s")


def measure(preset: str, folder: Path) -> dict[str, float]:
    """Sizes in bytes of one preset's files, each reloaded once to prove it is a complete file."""
    torch.manual_seed(0)
    full_precision = build_hubert(preset, num_classes=500).eval()
    params = sum(p.numel() for p in full_precision.parameters())
    model = binarize(build_hubert(preset, num_classes=500)).eval()
    binary = sum(layer.weight.numel() for _, layer in quantized_layers(model))
    files = {
        "fp32": lambda p: save_model(full_precision, p),
        "packed": lambda p: save_packed(model, p),
        "packed16": lambda p: save_packed(model, p, full_precision_bits=16, drop_head=True),
    }
    sizes: dict[str, float] = {"params": params, "binary": binary}
    for kind, write in files.items():
        path = folder / f"{preset}.{kind}.pt"
        write(path)
        load_model(path)
        sizes[kind] = path.stat().st_size
        path.unlink()
    sizes["table1"] = storage(model).paper_bytes
    return sizes


def table(rows: dict[str, dict[str, float]]) -> str:
    """The markdown table of :func:`measure`'s results."""
    lines = [
        "| model | params (FP) | binarized weights | FP32 `save_model` file | packed export | ratio | "
        "packed, 16-bit FP parts, no head | Table 1, 16-bit + 1-bit | difference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for preset, s in rows.items():
        lines.append(
            f"| bq_{preset} | {s['params'] / 1e6:.2f} M | {s['binary'] / 1e6:.2f} M | {s['fp32'] / 1e6:.2f} MB | "
            f"{s['packed'] / 1e6:.2f} MB | {s['fp32'] / s['packed']:.1f}x | {s['packed16'] / 1e6:.2f} MB | "
            f"{s['table1'] / 1e6:.2f} MB | {s['packed16'] / s['table1'] - 1:+.2%} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--out", type=Path, help="write the table here (markdown) as well as to stdout")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        rows = {preset: measure(preset, Path(folder)) for preset in args.presets}
    text = table(rows)
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"# Export file sizes\n\n`python experiments/export_sizes.py`\n\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
