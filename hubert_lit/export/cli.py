"""``python -m hubert_lit export``: the command line of :func:`hubert_lit.export.export_checkpoint`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hubert_lit.export.pipeline import ExportReport, export_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hubert_lit export",
        description="Pack a quantized (BiT) model's binary weights 8 per byte into a file hubert_lit.load_model "
        "reads; prints its size next to the FP32 checkpoint's. A full-precision checkpoint becomes a plain model "
        "file (config + weights, no optimizer state).",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="a distillation or pretraining checkpoint (.ckpt) or a model file",
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="output file (e.g. model.packed.pt, or model.pt for FP)"
    )
    parser.add_argument(
        "--full-precision-bits",
        type=int,
        choices=(32, 16),
        default=32,
        help="bits of everything not stored as 1-bit codes (front end, norms, biases, activation scales and "
        "shifts): 32 (default) or 16, Table 1's '16-bit + 1-bit' storage; loaded back as float32",
    )
    parser.add_argument(
        "--drop-head",
        action="store_true",
        help="leave out the pretraining head (mask embedding, final projection, label embeddings): a "
        "feature-extraction model with num_classes 0, as Table 1's storage counts it",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip reloading the file and checking its outputs against the checkpoint's "
        "(1 s of random audio, exact equality)",
    )
    return parser


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _options(report: ExportReport) -> str:
    notes = (
        [f"full precision at {report.full_precision_bits} bits"] if report.full_precision_bits != 32 else []
    )
    notes += ["no pretraining head"] if report.head_dropped else []
    return f"  ({', '.join(notes)})" if notes else ""


def print_report(report: ExportReport, checkpoint: Path) -> None:
    if report.packed:
        print(
            f"{report.spec_name}: {report.quantized_layers} quantized layers, "
            f"{report.quantized_weights:,} quantized weights"
        )
    else:
        print(f"full-precision model: {report.parameters:,} parameters")
    print(f"checkpoint file      {_megabytes(report.checkpoint_bytes):>12}  {checkpoint}")
    if report.packed:
        print(f"FP32 model state     {_megabytes(report.fp32_bytes):>12}  (torch.save of the FP32 weights)")
        print(f"packed export        {_megabytes(report.file_bytes):>12}  {report.out}{_options(report)}")
        if report.paper_storage_bytes:
            ratio = report.file_bytes / report.paper_storage_bytes - 1
            print(
                f"Table 1 storage      {_megabytes(int(report.paper_storage_bytes)):>12}  (16-bit + 1-bit, no head; "
                f"the file is {100 * ratio:+.1f} %)"
            )
    else:
        print(f"model file           {_megabytes(report.file_bytes):>12}  {report.out}{_options(report)}")
    if report.verified:
        print(
            f"verified: the reloaded {'export' if report.packed else 'model file'} gives identical features"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.checkpoint.is_file():
        print(f"error: checkpoint {args.checkpoint} does not exist", file=sys.stderr)
        return 2
    try:
        report = export_checkpoint(
            args.checkpoint,
            args.out,
            verify=not args.no_verify,
            full_precision_bits=args.full_precision_bits,
            drop_head=args.drop_head,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_report(report, args.checkpoint)
    if report.verified is False:
        print(f"error: {args.out} does not reproduce the checkpoint's outputs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
