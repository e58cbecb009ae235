"""``python -m hubert_lit export``: a checkpoint -> the file to ship (library: :mod:`.pipeline`, CLI: :mod:`.cli`)."""

from hubert_lit.export.pipeline import ExportReport, export_checkpoint, fp32_state_bytes, verify_export

__all__ = ["ExportReport", "export_checkpoint", "fp32_state_bytes", "verify_export"]
