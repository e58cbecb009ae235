"""Efficiency profiling (the paper's Table 1): parameters by part, storage, FLOP, BOP, estimated A100 time and
CPU latency of any model, with the paper's Table 1 and 2 values beside ours."""

from hubert_lit.profile.counters import (
    ModelProfile,
    bop_bits,
    bop_paper,
    count_macs,
    est_time_a100,
    parameter_counts,
    profile_model,
    storage,
)
from hubert_lit.profile.paper_tables import TABLE1, TABLE2

__all__ = [
    "TABLE1",
    "TABLE2",
    "ModelProfile",
    "bop_bits",
    "bop_paper",
    "count_macs",
    "est_time_a100",
    "parameter_counts",
    "profile_model",
    "storage",
]
