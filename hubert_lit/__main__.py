"""Entry point: ``python -m hubert_lit <command>``.

``fit/validate/test/predict`` go to LightningCLI; the tools are plain argparse programs. Each tool is a
``main(argv)`` function (``module`` or ``module:function`` below) imported only when called, so
``python -m hubert_lit synth`` does not pay for importing Lightning.
"""

from __future__ import annotations

import importlib
import sys

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

# command -> (module, one-line summary)
TOOLS: dict[str, tuple[str, str]] = {
    "synth": ("hubert_lit.data.synth", "synthesize the demo corpus (LibriSpeech layout) with eSpeak NG"),
    "shard": ("hubert_lit.data.shard", "validate a LibriSpeech-layout split and write webdataset tar shards"),
    "label": ("hubert_lit.labels.cli", "k-means pseudo-labels (MFCC or a HuBERT layer) for a shard set"),
    "export": (
        "hubert_lit.export.cli",
        "pack a binarized checkpoint (8 weights per byte) into an inference file",
    ),
    "superb-data": ("hubert_lit.superb.data.build", "build the ten mini-SUPERB task sets with eSpeak NG"),
    "evaluate": (
        "hubert_lit.superb.cli",
        "SUPERB-style evaluation of a checkpoint (the paper's Table 2)",
    ),
    "profile": (
        "hubert_lit.profile.cli",
        "storage, FLOP, BOP and estimated time of a model (the paper's Table 1)",
    ),
    "sweep": (
        "hubert_lit.cli:sweep_main",
        "check a W&B sweep file and print (and validate) the fit commands an agent would run",
    ),
    "info": ("hubert_lit.system", "versions and devices hubert-lit sees (torch, CUDA, GPUs, FAISS build)"),
}


def _usage() -> str:
    lines = [
        "usage: python -m hubert_lit <command> [options]   (python -m hubert_lit --version)",
        "",
        "training (LightningCLI; --help on each):",
    ]
    lines += [f"  {c}" for c in LIGHTNING_COMMANDS]
    lines += ["", "tools (--help on each):"]
    width = max(len(c) for c in TOOLS)
    lines += [f"  {c.ljust(width)}  {summary}" for c, (_, summary) in TOOLS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("--version", "-V", "version"):
        from hubert_lit import __version__

        print(f"hubert-lit {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command in LIGHTNING_COMMANDS:
        from hubert_lit.cli import lightning_main

        return lightning_main([command, *rest])
    if command not in TOOLS:
        print(f"unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, _, function = TOOLS[command][0].partition(":")
    tool = getattr(importlib.import_module(module_name), function or "main")
    return int(tool(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
