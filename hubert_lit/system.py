"""Facts about the machine a tool runs on."""

from __future__ import annotations

import argparse
import os


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a SLURM or container allotment), at least 1."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


FAISS_DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-cuda")


def faiss_report() -> dict[str, object]:
    """Which FAISS build is installed (``faiss-cpu`` and ``faiss-gpu`` both provide the module ``faiss``: install
    one or the other) and how many GPUs it sees."""
    from importlib import metadata

    installed = {}
    for name in FAISS_DISTRIBUTIONS:
        try:
            installed[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        import faiss
    except ImportError as err:
        return {"distributions": installed, "module": None, "error": str(err)}
    gpus = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    return {
        "distributions": installed,
        "module": getattr(faiss, "__version__", "?"),
        "gpu_build": hasattr(faiss, "StandardGpuResources"),
        "gpus": gpus,
    }


def environment_report() -> dict[str, object]:
    """Versions and capabilities that decide which code paths a run takes."""
    import platform

    import torch

    import hubert_lit

    cuda = torch.cuda.is_available()
    return {
        "hubert-lit": hubert_lit.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "cpus": available_cpus(),
        "faiss": faiss_report(),
    }


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m hubert_lit info``."""
    parser = argparse.ArgumentParser(
        prog="python -m hubert_lit info",
        description="Versions and devices hubert-lit sees: torch and CUDA, GPUs, CPUs, the FAISS build (faiss-cpu or "
        "faiss-gpu) and whether it uses GPUs for k-means.",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m hubert_lit info``: print :func:`environment_report`."""
    import json

    args = build_parser().parse_args(argv)
    report = environment_report()
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    for key, value in report.items():
        if key == "faiss":
            faiss = value
            builds = ", ".join(f"{k} {v}" for k, v in faiss["distributions"].items()) or "none"
            if faiss.get("module") is None:
                print(f"faiss        not importable ({faiss['error']}); installed: {builds}")
            else:
                kind = "GPU build" if faiss["gpu_build"] else "CPU build"
                print(
                    f"faiss        {faiss['module']} ({kind}, {faiss['gpus']} GPU(s) for k-means); installed: {builds}"
                )
                if len(faiss["distributions"]) > 1:
                    print(
                        "WARNING: several FAISS distributions share the module 'faiss'; keep one (pip uninstall ...)"
                    )
        else:
            print(f"{key:<12} {value}")
    return 0
