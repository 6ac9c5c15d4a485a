"""Layer rules of docs/architecture.md, checked on the source (AST, no import needed) and in fresh interpreters.

front ends (cli, widgets, napari adapter, demo) -> pipelines -> models / schedulers / radiomics / hub -> core, errors;
training sits beside pipelines: it may use models, core, radiomics and hub, never pipelines or front ends.
Every import counts, including the lazy ones inside functions and those under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "napari_medgen"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE
MAX_LINES = 700

# layer of each top-level part of the package ("" = the package's own __init__)
FRONT_ENDS = frozenset({"cli", "widgets", "demo", "layers", "napari_io", "sample_data", "system_info"})
LAYERS: dict[str, str] = {
    **dict.fromkeys(FRONT_ENDS, "front end"),
    "pipelines": "pipelines",
    "training": "training",
    **dict.fromkeys(("models", "schedulers", "radiomics", "hub"), "models"),
    **dict.fromkeys(("core", "errors", "weights", ""), "core"),
}
_ABOVE_CORE = frozenset(LAYERS) - {"core", "errors", "weights", ""}
# what each layer must never import (top-level parts)
FORBIDDEN: dict[str, frozenset[str]] = {
    "front end": frozenset(),
    "pipelines": frozenset({"training"}) | FRONT_ENDS,
    "training": frozenset({"pipelines"}) | FRONT_ENDS,
    "models": frozenset({"pipelines", "training"}) | FRONT_ENDS,
    "core": _ABOVE_CORE,
}


@dataclass(frozen=True)
class Import:
    source: str  # module that imports, e.g. napari_medgen.pipelines.slice_generation
    path: Path
    line: int
    target: str  # imported module, e.g. napari_medgen.training.slice_dataset
    text: str  # the statement as written

    def where(self) -> str:
        return f"{self.path.relative_to(PACKAGE_DIR.parent)}:{self.line}"


def _module_files() -> list[Path]:
    return sorted(p for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in _module_files()}


def _part(module: str) -> str:
    """Top-level part of the package a module belongs to ('' for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _resolve_from(source: str, path: Path, node: ast.ImportFrom) -> str | None:
    if node.level == 0:
        return node.module
    package = source.split(".") if path.name == "__init__.py" else source.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path, text: str | None = None) -> list[Import]:
    """Imports of napari_medgen modules in ``path`` (``text``: its source, when it is not on disk)."""
    source = _module_name(path)
    text = path.read_text(encoding="utf-8") if text is None else text
    lines = text.splitlines()
    found: list[Import] = []

    def add(node: ast.AST, target: str) -> None:
        seen = any(i.line == node.lineno and i.target == target for i in found)
        if (target == PACKAGE or target.startswith(PACKAGE + ".")) and not seen:
            found.append(Import(source, path, node.lineno, target, lines[node.lineno - 1].strip()))

    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(source, path, node)
            if base is None:
                continue
            for alias in node.names:  # `from napari_medgen import training` imports a module
                candidate = f"{base}.{alias.name}"
                add(node, candidate if candidate in MODULES else base)
        elif (  # importlib.import_module("napari_medgen....") with a literal name
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            add(node, node.args[0].value)
    return found


def _violations() -> list[str]:
    problems = []
    for path in MODULES.values():
        for imp in _imports(path):
            layer = LAYERS.get(_part(imp.source))
            if layer is None:
                continue  # reported by test_every_module_has_a_layer
            target_part = _part(imp.target)
            if target_part in FORBIDDEN[layer] and target_part != _part(imp.source):
                problems.append(
                    f"{imp.where()}: {imp.source} ({layer}) imports {imp.target} ({LAYERS[target_part]}): {imp.text}"
                )
    return sorted(problems)


def test_every_module_has_a_layer() -> None:
    unknown = sorted({_part(m) for m in MODULES} - set(LAYERS))
    assert not unknown, (
        f"top-level parts of {PACKAGE} with no layer in tests/test_layering.py: {unknown}; "
        "add them to LAYERS (and to docs/architecture.md)"
    )


def test_no_upward_imports() -> None:
    problems = _violations()
    assert not problems, f"{len(problems)} upward import(s) (see docs/architecture.md, Layers):\n" + "\n".join(problems)


def test_the_checker_sees_lazy_relative_and_importlib_imports() -> None:
    code = (
        "import importlib\n"
        "def f():\n"
        "    from ..training import slice_dataset\n"
        "    import napari_medgen.cli as c\n"
        "    return importlib.import_module('napari_medgen.widgets.feedback')\n"
        "from napari_medgen import demo\n"
        "from . import diffusion_sampling\n"
    )
    imports = _imports(PACKAGE_DIR / "pipelines" / "fake.py", text=code)
    assert {(i.line, i.target) for i in imports} == {
        (3, f"{PACKAGE}.training.slice_dataset"),
        (4, f"{PACKAGE}.cli"),
        (5, f"{PACKAGE}.widgets.feedback"),
        (6, f"{PACKAGE}.demo"),
        (7, f"{PACKAGE}.pipelines.diffusion_sampling"),
    }
    assert all(i.source == f"{PACKAGE}.pipelines.fake" for i in imports)


def test_no_module_over_700_lines() -> None:
    long = sorted(
        (n, str(p.relative_to(PACKAGE_DIR.parent)))
        for p in MODULES.values()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    )
    assert not long, f"modules over {MAX_LINES} lines: " + ", ".join(f"{path} ({n})" for n, path in long)


def test_cli_is_a_package() -> None:
    assert (PACKAGE_DIR / "cli" / "__init__.py").is_file(), (
        "napari_medgen/cli/ must be a package (one module per command group)"
    )
    assert not (PACKAGE_DIR / "cli.py").exists(), "napari_medgen/cli.py must be gone (it became napari_medgen/cli/)"


PIPELINE_MODULES = sorted(m for m in MODULES if m == f"{PACKAGE}.pipelines" or m.startswith(f"{PACKAGE}.pipelines."))

_PROBE = (
    "import importlib, json, sys\n"
    "importlib.import_module(sys.argv[1])\n"
    "print(json.dumps(sorted(m for m in sys.modules if m == 'napari_medgen.training' "
    "or m.startswith('napari_medgen.training.'))))\n"
)


@pytest.mark.parametrize("module", PIPELINE_MODULES)
def test_importing_a_pipeline_imports_no_training(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, module],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=PACKAGE_DIR.parent,
    )
    assert done.returncode == 0, f"importing {module} failed:\n{done.stderr[-2000:]}"
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert not loaded, f"importing {module} in a fresh interpreter loaded {loaded}"
