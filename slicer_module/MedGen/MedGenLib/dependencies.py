"""What MedGen needs in Slicer's Python, and how to install it without replacing Slicer's own packages.

napari-medgen is installed without its dependencies first; then its requirements are installed one by one except
the packages Slicer ships or manages elsewhere (numpy, SimpleITK, vtk, Qt bindings; torch comes from the PyTorch
extension), with a constraints file that pins whatever of those is installed, so pip can never upgrade or
downgrade them as a side effect. The GUI extra (napari, PyQt) is never installed. Everything here is plain Python;
`MedGen.py` runs the plan with ``slicer.util.pip_install`` after asking the user.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

PACKAGE = "napari-medgen"
#: distributions Slicer ships or manages itself: never installed, upgraded or downgraded by MedGen
PROTECTED = ("numpy", "simpleitk", "vtk", "torch", "torchvision", "pyqt5", "pyqt6", "pyside2", "pyside6", "qtpy",
             "napari", "magicgui")
#: import name -> what to tell the user when it is missing
REQUIRED_IMPORTS = {
    "napari_medgen": "napari-medgen (the MedGen backend)",
    "torch": "PyTorch (install the PyTorch extension from the Extensions Manager)",
}
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalise(name: str) -> str:
    """PEP 503 name normalisation (``SimpleITK`` -> ``simpleitk``, ``typing_extensions`` -> ``typing-extensions``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def missing_imports(names: Iterable[str] = REQUIRED_IMPORTS) -> list[str]:
    """The import names of ``names`` that cannot be found in this Python (nothing is imported)."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def missing_message(missing: Iterable[str]) -> str:
    """One message naming what is missing and how to get it."""
    items = [REQUIRED_IMPORTS.get(name, name) for name in missing]
    if not items:
        return ""
    return ("MedGen needs " + ", ".join(items) + ". Click 'Install dependencies' in the module (it asks first), then "
            "restart Slicer if it says so.")


def requirement_name(requirement: str) -> str | None:
    """The distribution name of a requirement string (``"scipy>=1.11"`` -> ``"scipy"``)."""
    match = _NAME.match(requirement)
    return match.group(1) if match else None


def runtime_requirements(requires: Iterable[str], protected: Iterable[str] = PROTECTED) -> list[str]:
    """napari-medgen's requirements (``importlib.metadata.requires`` strings) that MedGen installs: no extras
    (``extra == "gui"`` ...), nothing protected. Environment markers other than extras are kept for pip."""
    skip = {normalise(p) for p in protected}
    out = []
    for requirement in requires:
        marker = requirement.split(";", 1)[1] if ";" in requirement else ""
        if "extra" in marker:
            continue
        name = requirement_name(requirement)
        if name is None or normalise(name) in skip:
            continue
        out.append(requirement.strip())
    return out


def installed_versions(names: Iterable[str] = PROTECTED) -> dict[str, str]:
    """Installed version of each of ``names`` that is a pip distribution here (Slicer's vtk usually is not)."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def constraints_text(versions: Mapping[str, str]) -> str:
    """A pip constraints file pinning ``versions`` (``name==version`` lines)."""
    return "".join(f"{name}=={version}\n" for name, version in sorted(versions.items()))


def default_source(module_dir: Path) -> str:
    """What to pip-install napari-medgen from: the checkout this module lives in (``slicer_module/`` beside
    ``pyproject.toml``), else the package name."""
    root = Path(module_dir).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "napari-medgen"' in pyproject.read_text(encoding="utf-8", errors="replace"):
        return str(root)
    return PACKAGE


def pip_commands(source: str, requires: Iterable[str], constraints_file: Path | None) -> list[list[str]]:
    """The ``slicer.util.pip_install`` argument lists, in order: the backend without dependencies, then its runtime
    requirements under the constraints file (lists, not strings: paths and markers may hold spaces)."""
    commands = [["--no-deps", str(source)]]
    wanted = runtime_requirements(requires)
    if wanted:
        prefix = ["-c", str(constraints_file)] if constraints_file is not None else []
        commands.append([*prefix, *wanted])
    return commands


def backend_requirements() -> list[str]:
    """The installed napari-medgen's requirement strings (after the ``--no-deps`` step)."""
    return list(importlib.metadata.requires(PACKAGE) or [])


__all__ = [
    "PACKAGE",
    "PROTECTED",
    "REQUIRED_IMPORTS",
    "backend_requirements",
    "constraints_text",
    "default_source",
    "installed_versions",
    "missing_imports",
    "missing_message",
    "normalise",
    "pip_commands",
    "requirement_name",
    "runtime_requirements",
]
