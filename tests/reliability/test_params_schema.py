"""Params: radiomics params files are checked against pyradiomics' schema. Unknown settings, classes and feature
names are errors with the closest valid name; wrong types name the key; binary files are refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from napari_medgen.cli import app
from napari_medgen.core.io import write_volume
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import ConfigError
from napari_medgen.radiomics.params import params_from_mapping
from napari_medgen.radiomics.params_schema import SETTING_RULES
from napari_medgen.radiomics.settings import RadiomicsSettings

runner = CliRunner()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"binwidth": 5}, "Unknown radiomics setting 'binwidth' (did you mean 'binWidth'?)"),
        ({"fooBar": 1}, "Unknown radiomics setting 'fooBar'"),
        ({"binWidth": "abc"}, "'binWidth' must be a number"),
        ({"distances": 2}, "'distances' must be a list of int values"),
        ({"distances": [1, "x"]}, "'distances' must be a list of int values"),
        ({"label": "two"}, "'label' must be a whole number"),
        ({"label": 0}, "'label' must be > 0"),
        ({"binCount": 2.5}, "'binCount' must be a whole number"),
        ({"normalize": "yes"}, "'normalize' must be true or false"),
        ({"force2Ddimension": 3}, "'force2Ddimension' must be >= 0 and <= 2"),
    ],
)
def test_bad_settings_are_errors_naming_the_key(setting: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        RadiomicsSettings.from_any(setting)
    assert message in str(info.value)


def test_valid_pyradiomics_settings_are_accepted() -> None:
    cfg = RadiomicsSettings.from_any({"binWidth": 10, "distances": [1, 2], "label": 2, "sigma": [1.0, 2.0],
                                      "geometryTolerance": 1e-5, "voxelArrayShift": 300})
    assert cfg.binWidth == 10.0 and cfg.distances == (1, 2) and cfg.label == 2
    assert cfg.extra == {"sigma": [1.0, 2.0], "geometryTolerance": 1e-5}


def test_unknown_feature_names_and_classes_suggest_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"Unknown firstorder feature 'Meen' \(did you mean 'Mean'\?\)"):
        params_from_mapping({"featureClass": {"firstorder": ["Meen"]}})
    with pytest.raises(ConfigError, match=r"Unknown radiomics feature class 'firstOrder' \(did you mean "
                                          r"'firstorder'\?\)"):
        params_from_mapping({"featureClass": {"firstOrder": []}})
    kept = params_from_mapping({"featureClass": {"firstorder": ["Mean"], "glcm": None}})
    assert kept.keep("original_firstorder_Mean") and not kept.keep("original_firstorder_Median")


def test_schema_table_matches_installed_pyradiomics() -> None:
    radiomics = pytest.importorskip("radiomics")
    import yaml

    schema_file = Path(radiomics.__file__).parent / "schemas" / "paramSchema.yaml"
    schema = yaml.safe_load(schema_file.read_text(encoding="utf-8"))
    theirs = schema["mapping"]["setting"]["mapping"]
    assert set(theirs) == set(SETTING_RULES)
    for key, spec in theirs.items():
        rule = SETTING_RULES[key]
        kind = spec["seq"][0]["type"] if "seq" in spec else spec["type"]
        assert rule.seq == ("seq" in spec), key
        # numbers may be given as floats where pyradiomics says int only for voxelArrayShift / gldm_a (ours: float)
        assert rule.kind == kind or (key in ("voxelArrayShift", "gldm_a") and rule.kind == "float"), key


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("setting:\n  binWidth: abc\n", "error: Radiomics setting 'binWidth' must be a number, e.g. 25; got 'abc'."),
        ("setting:\n  binwidth: 5\n", "error: Unknown radiomics setting 'binwidth' (did you mean 'binWidth'?)"),
        ("featureClass:\n  firstorder: [Meen]\n", "error: Unknown firstorder feature 'Meen' (did you mean 'Mean'?)"),
        (b"\x7fELF\x02\x01\x01\x00\xd0\xff\xfe", "is not a text file"),
    ],
)
def test_cli_bad_params_file_is_one_line(tmp_path: Path, text: str | bytes, message: str) -> None:
    rng = np.random.default_rng(0)
    image = tmp_path / "image.nrrd"
    labels = tmp_path / "labels.nrrd"
    write_volume(Volume(rng.normal(size=(8, 8, 8)).astype(np.float32)), image)
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:6, 2:6, 2:6] = 1
    write_volume(LabelMap(mask), labels)
    params = tmp_path / "params.yaml"
    params.write_bytes(text if isinstance(text, bytes) else text.encode())
    result = runner.invoke(app, ["radiomics", str(image), str(labels), "--params", str(params),
                                 "--out", str(tmp_path / "out.csv")])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "out.csv").exists()
