"""Build, cache and load the C++ kernels (``torch.ops.hubert_lit_bits``), or say once why they are unavailable.

The extension is compiled on first use with ``torch.utils.cpp_extension`` (ninja) into
``<cache>/hubert_lit/extensions/<key>/``, where ``<cache>`` is ``$XDG_CACHE_HOME`` (default ``~/.cache``) or the
folder ``$HUBERT_LIT_EXTENSION_CACHE`` names, and ``<key>`` hashes the sources, the compiler flags, the torch
version, the Python tag and the machine type. A later process finds the finished library there (marked complete)
and loads it without running ninja or a compiler; deleting the folder forces a rebuild. Concurrent first builds
are serialised by torch's lock file in that folder.

``HUBERT_LIT_BINARY_KERNELS=0`` disables the extension (the pure-PyTorch fallback runs instead), and
``HUBERT_LIT_BINARY_ISA=avx2|generic`` starts the extension on a lower ISA than the best one the CPU supports.
Whenever the extension cannot be used, one ``RuntimeWarning`` per process names the reason.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

DISABLE_ENV = "HUBERT_LIT_BINARY_KERNELS"
ISA_ENV = "HUBERT_LIT_BINARY_ISA"
CACHE_ENV = "HUBERT_LIT_EXTENSION_CACHE"
LIBRARY = "hubert_lit_bits"  # the TORCH_LIBRARY namespace in csrc/ops.cpp
FALLBACK = "torch"  # what active_isa() reports when the pure-PyTorch fallback runs

SOURCE_DIR = Path(__file__).resolve().parent / "csrc"
SOURCES = ("ops.cpp", "kernels_generic.cpp", "kernels_avx2.cpp", "kernels_avx512.cpp")
HEADERS = ("binary_kernels.h",)
# -fopenmp: at::parallel_for is an inline OpenMP region, compiled into this library. -ffp-contract=off: no fused
# multiply-add in the epilogue, so it rounds exactly like the fallback's separate float multiply and add.
CFLAGS = ("-O3", "-fopenmp", "-ffp-contract=off")
LDFLAGS = ("-fopenmp",)


@dataclass(frozen=True)
class LoadResult:
    """How the extension was obtained in this process."""

    available: bool
    compiled: bool  # True when this process ran the compiler
    build_dir: Path | None
    reason: str = ""  # why it is unavailable


_state: LoadResult | None = None


def cache_root() -> Path:
    """Folder holding one sub-folder per build key."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hubert_lit" / "extensions"


def compiler() -> str:
    """The C++ compiler torch.utils.cpp_extension will call."""
    return os.environ.get("CXX", "c++")


def build_key() -> str:
    """Hash of everything the compiled library depends on."""
    digest = hashlib.sha256()
    for name in (*HEADERS, *SOURCES):
        digest.update(name.encode())
        digest.update((SOURCE_DIR / name).read_bytes())
    for part in (
        *CFLAGS,
        *LDFLAGS,
        torch.__version__,
        sys.implementation.cache_tag,
        platform.machine(),
    ):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def _library_name(key: str) -> str:
    return f"{LIBRARY}_{key}"


@contextmanager
def _ninja_on_path():
    """Put the pip ``ninja`` package's binary on PATH while building (a venv's bin/ may not be on it)."""
    old = os.environ.get("PATH", "")
    try:
        import ninja

        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, old])
    except ImportError:
        pass
    try:
        yield
    finally:
        os.environ["PATH"] = old


def _import_cpp_extension():
    """``torch.utils.cpp_extension``, without its import-time note that a CPU-only machine has no CUDA runtime."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        log.setLevel(level)
    return cpp_extension


def _build(build_dir: Path, name: str) -> None:
    cpp_extension = _import_cpp_extension()
    if shutil.which(compiler()) is None:
        raise RuntimeError(f"no C++ compiler found ({compiler()!r} is not on PATH; set CXX)")
    with _ninja_on_path():
        if not cpp_extension.is_ninja_available():
            raise RuntimeError("ninja is not installed (pip install ninja)")
        build_dir.mkdir(parents=True, exist_ok=True)
        cpp_extension.load(
            name=name,
            sources=[str(SOURCE_DIR / s) for s in SOURCES],
            extra_cflags=list(CFLAGS),
            extra_ldflags=list(LDFLAGS),
            extra_include_paths=[str(SOURCE_DIR)],
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=False,
        )


def _load() -> LoadResult:
    if os.environ.get(DISABLE_ENV, "1").strip().lower() in ("0", "off", "false", "no"):
        return LoadResult(False, False, None, f"disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}")
    try:
        key = build_key()
        build_dir = cache_root() / key
        name = _library_name(key)
        library = build_dir / (
            name + (".pyd" if sys.platform == "win32" else ".so")
        )  # cpp_extension's suffix
        done = build_dir / "complete"
        compiled = False
        if library.exists() and done.exists():
            torch.ops.load_library(str(library))
        else:
            _build(build_dir, name)  # also loads the library
            done.write_text(f"{name}\n")
            compiled = True
        isa = os.environ.get(ISA_ENV)
        if isa:
            torch.ops.hubert_lit_bits.set_isa(isa)
        return LoadResult(True, compiled, build_dir)
    except Exception as err:  # any failure to build or load means: use the fallback
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        detail = lines[-1] if lines else type(err).__name__
        return LoadResult(False, False, None, f"{type(err).__name__}: {detail}")


def load() -> LoadResult:
    """Load (building on first use) the extension once per process; warn once if it is unavailable."""
    global _state
    if _state is None:
        _state = _load()
        if not _state.available:
            warnings.warn(
                f"hubert_lit binary kernels unavailable ({_state.reason}); "
                "using the pure-PyTorch fallback (same results, much slower)",
                RuntimeWarning,
                stacklevel=3,
            )
    return _state


def kernels_available() -> bool:
    """True when the compiled kernels are loaded (building them on first call)."""
    return load().available


def active_isa() -> str:
    """The code path in use: ``"avx512"`` (VPOPCNTDQ), ``"avx2"``, ``"generic"`` or ``"torch"`` (fallback)."""
    return str(torch.ops.hubert_lit_bits.isa()) if kernels_available() else FALLBACK


def supported_isas() -> list[str]:
    """ISAs the extension can run on this CPU, best first (empty without the extension)."""
    return list(torch.ops.hubert_lit_bits.supported_isas()) if kernels_available() else []


def set_isa(name: str) -> str:
    """Switch the extension to ``name`` (one of :func:`supported_isas`); returns the ISA now active."""
    if not kernels_available():
        raise RuntimeError(f"binary kernels unavailable: {load().reason}")
    return str(torch.ops.hubert_lit_bits.set_isa(name))
