"""The napari manifest follows the napari hub conventions: valid categories, a title and a short title for every
command, a display name for every widget and sample, and every python_name importable."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

MANIFEST = Path(__file__).resolve().parents[1] / "napari_medgen" / "napari.yaml"


def test_manifest_conventions() -> None:
    npe2 = pytest.importorskip("npe2")
    from npe2.manifest.schema import Category

    data = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    npe2.PluginManifest.from_file(MANIFEST)  # schema-valid
    assert set(data["categories"]) <= {c.value for c in Category}
    contributions = data["contributions"]
    for command in contributions["commands"]:
        assert command["title"] and command["short_title"], command["id"]
        assert len(command["short_title"]) <= 30, command["id"]
        module, _, attr = command["python_name"].partition(":")
        assert hasattr(importlib.import_module(module), attr), command["python_name"]
    ids = {c["id"] for c in contributions["commands"]}
    for widget in contributions["widgets"]:
        assert widget["display_name"] and widget["command"] in ids
    for sample in contributions["sample_data"]:
        assert sample["display_name"] and sample["command"] in ids
    patterns = contributions["readers"][0]["filename_patterns"]
    assert {"*.nii.gz", "*.nrrd", "*.png", "*.jpg"} <= set(patterns)
