"""``python -m hubert_lit profile``: storage, FLOP, BOP, estimated A100 time and CPU latency of a model.

One model (a preset, a model/pretraining config or a checkpoint, optionally binarized with ``--quant``), or the
paper's Table 1 (``--table1``: the five encoders in FP32 and BiT W1A1), written to ``--out-dir`` as
``table1.md``, ``table1.csv`` and ``table1.png`` (cost against the paper's ASR WER). Conventions are printed
under every table; see :mod:`hubert_lit.profile.counters`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
from torch import nn

from hubert_lit.profile.counters import ModelProfile, profile_model
from hubert_lit.profile.paper_tables import ENCODERS
from hubert_lit.profile.report import (
    profile_rows,
    single_markdown,
    table1_markdown,
    to_csv,
    to_json,
    write_table1_files,
)

FORMATS = ("markdown", "csv", "json")
FRONTENDS = ("fastconv", "wav2vec2")


class ProfileError(ValueError):
    """Bad command-line input (reported with exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hubert_lit profile",
        description="Parameters by part, storage (real and paper convention), FLOP (FlopCounterMode), BOP "
        "(paper-compatible and MACs x bits), estimated A100 time and CPU latency of a HuBERT model for one "
        "utterance; or the paper's Table 1 with --table1.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model",
        metavar="PRESET",
        help="a model preset name, e.g. conformer_s or vanilla_tiny (built without the pretraining head)",
    )
    source.add_argument(
        "--config",
        type=Path,
        metavar="YAML",
        help="any config under configs/ that describes a model: a model config (configs/model/*.yaml), a "
        "pretraining config (configs/pretrain/*.yaml, configs/demo.yaml) or a distillation config "
        "(configs/distill/*.yaml: the binarized student; its teacher is read from its file, or from the config "
        "that writes it). 'base:' files are included",
    )
    source.add_argument(
        "--table1",
        action="store_true",
        help="profile the five encoders of the paper in FP32 and BiT W1A1 and write "
        "table1.md/.csv/.png to --out-dir",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        metavar="FILE",
        help="a checkpoint or model file (anything hubert_lit.load_model reads); with --config "
        "the two must describe the same architecture",
    )
    parser.add_argument(
        "--quant",
        metavar="SPEC",
        default=None,
        help="binarize before profiling: wXaY (e.g. w1a1, BiT; w1a2; w1a32 = weights only) with "
        "the default QuantSpec sites; 'fp' = no quantization (default: the model as loaded)",
    )
    parser.add_argument(
        "--frontend",
        choices=FRONTENDS,
        default=None,
        help="replace the config's/preset's waveform front end (default: as configured; the "
        "presets use fastconv)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="length of the profiled utterance in seconds of 16 kHz audio (default: 10)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=3,
        help="timed CPU forward passes; the median is reported, after one warm-up pass "
        "(default: 3; 0 skips the latency measurement)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads for the latency measurement (default: torch's choice)",
    )
    parser.add_argument(
        "--format", choices=FORMATS, default="markdown", help="output format on stdout (default: markdown)"
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="also write the output (in --format) to this file"
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path("experiments/results"),
        help="--table1 only: folder for table1.md, table1.csv and table1.png (default: experiments/results)",
    )
    return parser


# ---------------------------------------------------------------------------------------------------------
# building the model


def parse_quant(text: str | None):
    """``"w1a1"`` -> ``QuantSpec(1, 1)``; ``None``/``"fp"`` -> ``None``."""
    if text is None or text.lower() in ("fp", "fp32", "none"):
        return None
    match = re.fullmatch(r"w(\d+)a(\d+)", text.lower())
    if not match:
        raise ProfileError(
            f"--quant must look like w1a1 (weight bits, activation bits) or 'fp', got {text!r}"
        )
    from hubert_lit.quant import QuantSpec

    try:
        return QuantSpec(weight_bits=int(match[1]), activation_bits=int(match[2]))
    except ValueError as err:
        raise ProfileError(f"--quant {text}: {err}") from err


def model_from_config(path: Path):
    """The model a config file describes (model, pretraining or distillation config; see
    :mod:`hubert_lit.run_config`), binarized when it is a distillation student."""
    from hubert_lit.run_config import RunConfigError, model_of_config

    try:
        return model_of_config(path)
    except RunConfigError as err:
        raise ProfileError(str(err)) from err


def _check_same_architecture(config, model: nn.Module, checkpoint: Path, config_path: Path) -> None:
    diff = config.architecture_differences(model.config)
    if diff:
        raise ProfileError(
            f"--config {config_path} and --checkpoint {checkpoint} describe different models "
            f"(they differ in {diff})"
        )


def _check_spec(requested, loaded, what: str, text: str | None) -> None:
    if requested is not None and loaded is not None and requested.to_dict() != loaded.to_dict():
        raise ProfileError(f"--quant {text}: {what} is already quantized ({loaded.name})")


def build_model(args: argparse.Namespace) -> nn.Module:
    """The model to profile, in eval mode, from the parsed arguments."""
    from hubert_lit.models import HubertModel

    spec = parse_quant(args.quant)
    if args.checkpoint is not None:
        import hubert_lit

        try:
            model = hubert_lit.load_model(args.checkpoint)
        except (FileNotFoundError, ValueError) as err:
            raise ProfileError(f"--checkpoint: {err}") from err
        if args.config is not None:
            _check_same_architecture(
                model_from_config(args.config).config, model, args.checkpoint, args.config
            )
        if args.frontend is not None and args.frontend != model.config.frontend:
            raise ProfileError(
                f"--frontend {args.frontend}: the checkpoint's front end is "
                f"{model.config.frontend!r} and its weights cannot be swapped"
            )
        _check_spec(spec, model.quant_spec, "the checkpoint", args.quant)
    else:
        if args.config is not None:
            described = model_from_config(args.config)
            config, loaded = described.config, described.quant_spec
            _check_spec(spec, loaded, f"the student of {args.config}", args.quant)
            spec = spec or loaded
        else:
            from hubert_lit.models.config import preset

            try:
                config = preset(args.model).replace(num_classes=0)  # inference: no pretraining head
            except ValueError as err:
                raise ProfileError(f"--model: {err}") from err
        if args.frontend is not None:
            config = config.replace(frontend=args.frontend)
        model = HubertModel(config)
    if spec is not None and model.quant_spec is None:
        from hubert_lit.quant import binarize

        binarize(model, spec)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------
# Table 1


def table1_profiles(seconds: float, runs: int, frontend: str | None = None) -> list[ModelProfile]:
    """Profiles of the five encoders in FP32, then the same five binarized with BiT W1A1 (the paper's order)."""
    from tqdm import tqdm

    from hubert_lit.models import build_hubert
    from hubert_lit.quant import QuantSpec, binarize

    overrides = {"frontend": frontend} if frontend else {}
    jobs = [(name, False) for name in ENCODERS] + [(name, True) for name in ENCODERS]
    profiles = []
    for name, quantized in tqdm(jobs, desc="profiling Table 1", unit="model"):
        torch.manual_seed(0)
        model = build_hubert(name, num_classes=0, **overrides)
        if quantized:
            binarize(model, QuantSpec())
        profiles.append(profile_model(model, seconds=seconds, latency_runs=runs))
        del model
    return profiles


def _render(profiles: list[ModelProfile], fmt: str, table1: bool) -> str:
    if fmt == "csv":
        return to_csv(profile_rows(profiles, with_paper=table1))
    if fmt == "json":
        return to_json(profile_rows(profiles, with_paper=table1))
    if table1:
        return table1_markdown(profiles)
    return "\n".join(single_markdown(p) for p in profiles)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.table1 or args.model or args.config or args.checkpoint):
        parser.error("give one of --model, --config, --checkpoint or --table1")
    if args.table1 and (args.checkpoint or args.quant):
        parser.error("--table1 profiles the presets; it takes no --checkpoint or --quant")
    if args.seconds <= 0 or args.seconds * 16000 < 400:
        parser.error(f"--seconds must give at least one frame (>= 0.025 s), got {args.seconds}")
    if args.runs < 0:
        parser.error(f"--runs must be >= 0, got {args.runs}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    try:
        if args.table1:
            profiles = table1_profiles(args.seconds, args.runs, args.frontend)
            written = write_table1_files(profiles, args.out_dir)
        else:
            profiles = [profile_model(build_model(args), seconds=args.seconds, latency_runs=args.runs)]
            written = []
    except ProfileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = _render(profiles, args.format, args.table1)
    sys.stdout.write(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        written.append(args.output)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
