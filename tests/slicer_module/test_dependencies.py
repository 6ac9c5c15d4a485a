"""The install plan never touches Slicer's own packages, and missing pieces give one clear message."""

from __future__ import annotations

from pathlib import Path

from conftest import REPO_ROOT
from MedGenLib import dependencies

REQUIRES = ['numpy>=1.26', 'scipy>=1.11', 'SimpleITK>=2.3', 'torch>=2.2', 'monai>=1.4', 'numba>=0.60',
            'typing_extensions>=4; python_version < "3.12"', 'napari>=0.5; extra == "gui"',
            'PyQt6>=6.5; extra == "gui"', 'pytest>=8; extra == "test"', 'vtk>=9', 'slicer-core; extra == "slicer-test"']


def test_runtime_requirements_skip_extras_and_slicer_packages() -> None:
    wanted = dependencies.runtime_requirements(REQUIRES)
    assert wanted == ['scipy>=1.11', 'monai>=1.4', 'numba>=0.60', 'typing_extensions>=4; python_version < "3.12"']


def test_pip_commands_install_the_backend_without_deps_then_constrained_requirements(tmp_path: Path) -> None:
    constraints = tmp_path / "with space" / "constraints.txt"
    commands = dependencies.pip_commands("/opt/napari medgen", REQUIRES, constraints)
    assert commands[0] == ["--no-deps", "/opt/napari medgen"]
    assert commands[1][:2] == ["-c", str(constraints)]
    assert "numpy>=1.26" not in commands[1] and "SimpleITK>=2.3" not in commands[1] and "torch>=2.2" not in commands[1]
    assert not any("napari>=" in c or "PyQt" in c for c in commands[1])
    assert dependencies.pip_commands("napari-medgen", ["numpy"], None) == [["--no-deps", "napari-medgen"]]


def test_constraints_pin_installed_protected_packages() -> None:
    versions = dependencies.installed_versions()
    import numpy

    assert versions["numpy"] == numpy.__version__
    text = dependencies.constraints_text({"numpy": "1.26.4", "SimpleITK": "2.3.1"})
    assert text == "SimpleITK==2.3.1\nnumpy==1.26.4\n"


def test_missing_imports_and_message() -> None:
    assert dependencies.missing_imports(["napari_medgen", "torch"]) == []
    assert dependencies.missing_imports(["no_such_module_medgen"]) == ["no_such_module_medgen"]
    message = dependencies.missing_message(["torch"])
    assert "PyTorch extension" in message and "Install dependencies" in message
    assert dependencies.missing_message([]) == ""


def test_default_source_is_this_checkout() -> None:
    assert dependencies.default_source(REPO_ROOT / "slicer_module" / "MedGen") == str(REPO_ROOT)
    assert dependencies.default_source(Path("/nonexistent/a/b")) == "napari-medgen"
    assert dependencies.requirement_name("SimpleITK >=2.3") == "SimpleITK"
    assert dependencies.normalise("typing_extensions") == "typing-extensions"
