"""Parameter counts per part of the five paper presets, with each front end, beside reference counts.

Parts: conv front end, feature projection (LayerNorm + Linear conv_dim -> d), conv positional embedding, encoder
(blocks and the encoder's own norms / time reduction), head (final_proj + label embeddings + mask embedding).
Cells read ``ours`` when it equals the reference and ``ours (ref N)`` otherwise. The references were measured
on torchaudio 2.11 modules or computed analytically from the official configs; they are copied here so the
script needs nothing else.

    python experiments/param_table.py                # prints and writes experiments/results/params.md
    python experiments/param_table.py --num-classes 500
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch import nn

PRESETS = ["vanilla", "conformer_s", "squeezeformer_xs", "sparseformer_dn_s", "sparseformer_sw_s"]
FRONTENDS = ["wav2vec2", "fastconv"]
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "params.md"

# Reference counts. Front ends: torchaudio FeatureExtractor in group_norm mode (wav2vec2 = HuBERT Base's CNN;
# fastconv = SEW WFE-C c=64 l=1 built with torchaudio's extractor). Vanilla: torchaudio hubert_base() parts.
# Sparseformers: torchaudio wav2vec2_model with 16/256/4 and 8/512/4, FFN 4d (layers + encoder LayerNorm).
# Conformer-S: torchaudio Conformer(144, 4 heads, FFN 576, 16 layers, k=31) + rel-pos MHSA extras.
# Squeezeformer-XS: analytic count of the official XS config without its subsampling and CTC head.
REF_FRONTEND = {"wav2vec2": 4_200_448, "fastconv": 1_843_968}
REF_PARTS: dict[str, dict[str, int | None]] = {
    "vanilla": {"projection": 395_008, "pos_conv": 4_719_488, "encoder": 85_054_464 + 1_536},
    "conformer_s": {"projection": None, "pos_conv": 0, "encoder": 8_107_776},
    "squeezeformer_xs": {"projection": None, "pos_conv": 0, "encoder": 8_574_624},
    "sparseformer_dn_s": {"projection": 132_352, "pos_conv": 524_672, "encoder": 12_636_160 + 512},
    "sparseformer_sw_s": {"projection": 263_680, "pos_conv": 2_097_792, "encoder": 25_219_072 + 1_024},
}
# torchaudio hubert_pretrain_base(num_classes=100): mask embedding 768 + final_proj 196,864 + 100 x 256 labels
REF_HEAD_K100 = {"vanilla": 223_232}
REF_TOTAL = {("vanilla", "wav2vec2", 100): 94_594_176, ("vanilla", "wav2vec2", 500): 94_696_576}
NOTES = {
    "vanilla": "torchaudio hubert_base() = 94,370,944 without the head; paper storage 184.42 MB fits only fp16",
    "conformer_s": "rel-pos MHSA (linear_pos + u/v biases), no pos conv; the paper's 10.3M (Gulati) adds conv2d "
    "subsampling and an LSTM decoder",
    "squeezeformer_xs": "blocks + time reduction/recovery + input LayerNorm; the paper's 9.0M adds its own conv "
    "subsampling (438,624) and CTC head (18,560), which HuBERT replaces by the front end and head",
    "sparseformer_dn_s": "HuBERT layers 16/256/4, FFN 4d (the paper gives no FFN size); sparsity adds no parameters",
    "sparseformer_sw_s": "HuBERT layers 8/512/4, FFN 4d; pos conv grows as 8d^2 (the paper's storage remark)",
}


def count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def parts(model) -> dict[str, int]:
    """Parameters per part of a HubertModel."""
    head = count(model.final_proj)
    head += sum(p.numel() for p in (model.label_embeddings, model.mask_embedding) if p is not None)
    out = {
        "frontend": count(model.feature_extractor),
        "projection": count(model.feature_projection),
        "pos_conv": count(model.pos_conv),
        "encoder": count(model.encoder),
        "head": head,
    }
    out["total"] = count(model)
    assert out["total"] == sum(v for k, v in out.items() if k != "total"), (
        "a parameter outside the known parts"
    )
    return out


def cell(ours: int, ref: int | None) -> str:
    if ref is None or ref == ours:
        return f"{ours:,}" + ("" if ref is None else " ✓")
    return f"{ours:,} (ref {ref:,})"


def build_table(num_classes: int) -> str:
    from hubert_lit.models import build_hubert

    lines = [
        f"Parameters per part (k = {num_classes} label embeddings). ✓ = equals the reference count; "
        "(ref N) = reference differs; no mark = no published reference.",
        "",
        "| model | front end | conv front end | feature proj. | pos. conv | encoder | head | total | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in PRESETS:
        for frontend in FRONTENDS:
            p = parts(build_hubert(name, num_classes=num_classes, frontend=frontend))
            ref = REF_PARTS[name]
            head_ref = REF_HEAD_K100.get(name) if num_classes == 100 else None
            row = [
                name,
                frontend + (" (default)" if frontend == "fastconv" else ""),
                cell(p["frontend"], REF_FRONTEND[frontend]),
                cell(p["projection"], ref["projection"]),
                cell(p["pos_conv"], ref["pos_conv"]),
                cell(p["encoder"], ref["encoder"]),
                cell(p["head"], head_ref),
                cell(p["total"], REF_TOTAL.get((name, frontend, num_classes))),
                NOTES[name] if frontend == "wav2vec2" else "",
            ]
            lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "fastconv is our reading of the paper's \"+FastConv\": SEW's compact extractor WFE-C (c=64, l=1).",
    ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-classes", type=int, default=100, help="label embeddings k (default 100)")
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"markdown file to write (default {DEFAULT_OUTPUT})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    table = build_table(args.num_classes)
    print(table, end="")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
