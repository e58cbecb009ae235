"""SUPERB-style evaluation: Mini-SUPERB task data (:mod:`hubert_lit.superb.data`), heads and metrics."""
