"""The paper's Table 1 (profiling) and Table 2 (SUPERB), transcribed as printed.

Source: Jeon et al., "Attention or Convolution: Transformer Encoders in Audio Language Models for Inference
Efficiency". Table 1 columns: storage in MB, FLOP in G, BOP of the non-binarized (``bop_nonq_g``) and binarized
(``bop_bq_g``) parts in G, estimated A100 time in units of 1e-4 s, and the ASR WER / SD DER it repeats from
Table 2. The paper prints "12 / 786 / 12" for the vanilla encoder; HuBERT Base is 12 / 768 / 12 (a typo).
Table 1 prints 20.52 for BQ-Conformer-S ASR where Table 2 prints 20.53; both are kept as printed.
Table 2 rows named ``*_reported`` are Yeh et al.'s numbers (FP16), the others the paper's own runs.
The input length behind FLOP/BOP is not stated in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperProfileRow:
    """One row of the paper's Table 1 (``bop_bq_g`` is None for full-precision rows)."""

    model: str
    layers: int
    dim: int
    heads: int
    precision: str
    storage_mb: float
    flop_g: float
    bop_nonq_g: float
    bop_bq_g: float | None
    est_time_a100_1e4s: float
    asr_wer: float
    sd_der: float


# fmt: off
TABLE1: tuple[PaperProfileRow, ...] = (
    PaperProfileRow("vanilla", 12, 768, 12, "FP32", 184.42, 110.54, 1228.64, None, 38.46, 7.06, 6.32),
    PaperProfileRow("conformer_s", 16, 144, 4, "FP32", 131.87, 22.10, 329.39, None, 10.31, 8.56, 6.81),
    PaperProfileRow("squeezeformer_xs", 16, 144, 4, "FP32", 132.04, 18.31, 272.88, None, 8.54, 8.96, 9.18),
    PaperProfileRow("sparseformer_dn_s", 16, 256, 4, "FP32", 60.81, 26.05, 388.18, None, 12.15, 8.44, 7.66),
    PaperProfileRow("sparseformer_sw_s", 8, 512, 4, "FP32", 117.18, 40.09, 597.43, None, 18.70, 7.88, 6.56),
    PaperProfileRow("bq_vanilla", 12, 768, 12, "FP32-W1A1", 25.23, 11.82, 172.83, 63.62, 5.53, 16.83, 7.62),
    PaperProfileRow("bq_conformer_s", 16, 144, 4, "FP32-W1A1", 12.88, 7.23, 103.44, 15.94, 3.27, 20.52, 11.11),
    PaperProfileRow("bq_squeezeformer_xs", 16, 144, 4, "FP32-W1A1", 13.05, 7.20, 104.05, 11.86, 3.28, 24.10, 13.42),
    PaperProfileRow("bq_sparseformer_dn_s", 16, 256, 4, "FP32-W1A1", 12.10, 7.35, 107.91, 10.70, 3.40, 19.33, 9.64),
    PaperProfileRow("bq_sparseformer_sw_s", 8, 512, 4, "FP32-W1A1", 19.71, 8.85, 130.38, 19.49, 4.12, 18.15, 8.39),
)

TABLE2_COLUMNS = (
    "asr_wer", "ks_acc", "sf_f1", "sid_acc", "pr_per", "qbe_mtwv", "ic_acc", "asv_eer", "sd_der", "er_acc"
)

# model -> (precision, ASR WER %, KS acc %, SF F1, SID acc %, PR PER %, QbE MTWV x100, IC acc %, ASV EER %,
#           SD DER %, ER acc %)
TABLE2: dict[str, tuple[str, tuple[float, ...]]] = {
    "vanilla_reported": ("FP16", (7.06, 96.62, 0.89, 53.67, 6.05, 6.91, 97.28, 5.30, 6.32, 65.00)),
    "vanilla": ("FP32", (6.89, 96.56, 0.89, 53.52, 5.82, 6.70, 97.86, 5.96, 6.63, 63.83)),
    "conformer_s": ("FP32", (8.56, 95.94, 0.87, 52.11, 9.42, 6.20, 92.88, 5.80, 6.81, 62.12)),
    "squeezeformer_xs": ("FP32", (8.96, 96.13, 0.80, 35.35, 10.73, 6.14, 83.31, 7.86, 9.18, 58.75)),
    "sparseformer_dn_s": ("FP32", (8.44, 95.89, 0.88, 60.57, 7.99, 6.27, 96.02, 6.24, 7.66, 62.26)),
    "sparseformer_sw_s": ("FP32", (7.88, 93.25, 0.88, 61.86, 9.72, 4.92, 93.15, 6.98, 6.56, 65.90)),
    "bq_vanilla_reported": ("FP16-W1A1", (15.96, 93.83, 0.78, 49.62, 22.96, 5.63, 93.01, 6.83, 7.62, 61.68)),
    "bq_vanilla": ("FP32-W1A1", (16.83, 94.77, 0.79, 40.15, 20.63, 5.57, 89.77, 9.13, 7.80, 60.74)),
    "bq_conformer_s": ("FP32-W1A1", (20.53, 92.44, 0.76, 24.98, 37.13, 5.18, 69.73, 9.86, 11.11, 56.41)),
    "bq_squeezeformer_xs": ("FP32-W1A1", (24.10, 92.79, 0.69, 18.56, 28.82, 5.08, 62.01, 11.97, 13.42, 57.57)),
    "bq_sparseformer_dn_s": ("FP32-W1A1", (19.33, 92.24, 0.79, 29.21, 33.17, 4.66, 71.34, 10.70, 9.64, 58.97)),
    "bq_sparseformer_sw_s": ("FP32-W1A1", (18.15, 94.03, 0.79, 38.92, 24.37, 6.09, 84.37, 9.19, 8.39, 61.39)),
}

# fmt: on

ENCODERS = ("vanilla", "conformer_s", "squeezeformer_xs", "sparseformer_dn_s", "sparseformer_sw_s")


def table1_row(model: str) -> PaperProfileRow:
    """The paper's Table 1 row for ``model`` (e.g. ``"conformer_s"`` or ``"bq_conformer_s"``)."""
    for row in TABLE1:
        if row.model == model:
            return row
    raise KeyError(f"no Table 1 row {model!r}; rows: {[r.model for r in TABLE1]}")


def table2_value(model: str, column: str) -> float:
    """One Table 2 value, e.g. ``table2_value("bq_vanilla", "asr_wer")`` (the paper's own run)."""
    if column not in TABLE2_COLUMNS:
        raise KeyError(f"no Table 2 column {column!r}; columns: {list(TABLE2_COLUMNS)}")
    if model not in TABLE2:
        raise KeyError(f"no Table 2 row {model!r}; rows: {sorted(TABLE2)}")
    return TABLE2[model][1][TABLE2_COLUMNS.index(column)]
