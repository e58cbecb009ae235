"""The package's layering, read from the imports of every module (ast), and the tools' independence from Lightning.

Layers, bottom up: ``constants``/``config_dicts``/``atomic``/``system`` -> ``models`` -> ``quant`` ->
``checkpoint``/``run_config`` -> ``lit`` (Lightning) -> ``cli``; ``data`` knows no model; the tools (``labels``,
``export``, ``profile``, ``superb``) read files and configs through ``checkpoint`` and ``run_config``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hubert_lit"

# (importing package, imported package or module): imports that must not exist
FORBIDDEN = [
    *(
        ("hubert_lit.models", target)
        for target in (
            "hubert_lit.quant",
            "hubert_lit.lit",
            "hubert_lit.labels",
            "hubert_lit.data",
            "hubert_lit.superb",
            "hubert_lit.profile",
            "hubert_lit.cli",
            "hubert_lit.checkpoint",
            "hubert_lit.run_config",
            "hubert_lit.export",
        )
    ),
    ("hubert_lit.data", "hubert_lit.models"),
    ("hubert_lit.quant", "hubert_lit.lit"),
    ("hubert_lit.checkpoint", "hubert_lit.lit"),
    ("hubert_lit.run_config", "hubert_lit.lit"),
]


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` imports (at any depth: function-level imports count), as absolute names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against this module's package
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(modules: dict[str, set[str]]) -> list[str]:
    """``importer -> imported`` pairs that break the layering, for ``{module: imported modules}``."""
    found = []
    for module, imports in sorted(modules.items()):
        for source, target in FORBIDDEN:
            if _within(module, source):
                found += [f"{module} -> {name}" for name in sorted(imports) if _within(name, target)]
        if module != "hubert_lit.__main__":
            found += [
                f"{module} -> {name} (only __main__ imports the CLI)"
                for name in imports
                if _within(name, "hubert_lit.cli")
            ]
    return found


def package_imports() -> dict[str, set[str]]:
    return {
        module_name(path): imported_modules(path.read_text(), module_name(path), path.name == "__init__.py")
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def test_layering_holds():
    modules = package_imports()
    assert "hubert_lit.models.hubert" in modules and "hubert_lit.labels.pipeline" in modules
    assert violations(modules) == []


def test_the_check_fails_when_a_forbidden_import_comes_back():
    """Each rule, broken once on a copy of the real import graph, is reported."""
    real = package_imports()
    cases = {
        "hubert_lit.models.hubert": "from hubert_lit.quant.binarize import apply_stored_spec",
        "hubert_lit.models.config": "import hubert_lit.lit.pretrain",
        "hubert_lit.models.attention": "from hubert_lit.checkpoint import load_model",
        "hubert_lit.data.dataset": "from hubert_lit.models import HubertModel",
        "hubert_lit.quant.modules": "from hubert_lit.lit.losses import reduce_sums",
        "hubert_lit.profile.cli": "from hubert_lit.cli import expand_config_bases",
        "hubert_lit.labels.pipeline": "from hubert_lit import cli",
    }
    for module, statement in cases.items():
        # nested in a function, as the lazy imports this code base uses
        source = f"def f():\n    {statement}\n"
        broken = dict(real)
        broken[module] = real[module] | imported_modules(source, module)
        found = violations(broken)
        assert found and all(v.startswith(f"{module} -> ") for v in found), (statement, found)


def test_relative_imports_are_resolved():
    assert "hubert_lit.quant.spec" in imported_modules(
        "from .spec import QuantSpec", "hubert_lit.quant.binarize"
    )
    assert "hubert_lit.quant.spec" in imported_modules(
        "from . import spec", "hubert_lit.quant", is_package=True
    )


def test_tools_and_file_formats_do_not_import_lightning():
    """Configs and files are read without Lightning: tools start fast and work in any torch environment. (The
    ``evaluate`` tool trains its task heads with Lightning, so it is not in this list.)"""
    code = (
        "import sys\n"
        "import hubert_lit.run_config, hubert_lit.checkpoint, hubert_lit.profile.cli, hubert_lit.labels.cli\n"
        "import hubert_lit.export.cli, hubert_lit.data.shard, hubert_lit.data.synth\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')"
        " or m in ('hubert_lit.cli', 'hubert_lit.lit.base')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
