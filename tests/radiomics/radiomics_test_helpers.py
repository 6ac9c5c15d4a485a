"""Test helpers: read NRRD/NIfTI with SimpleITK into Volume/LabelMap, compare values like the baseline test."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from napari_medgen.core.volume import LabelMap, Volume


def read_pair(image_path: Path, label_path: Path) -> tuple[Volume, LabelMap]:
    import SimpleITK as sitk

    im = sitk.ReadImage(str(image_path))
    lb = sitk.ReadImage(str(label_path))
    geo = {"spacing": im.GetSpacing(), "origin": im.GetOrigin(), "direction": im.GetDirection()}
    return Volume(sitk.GetArrayFromImage(im), **geo), LabelMap(sitk.GetArrayFromImage(lb), **geo)


def close(got: float, ref: float, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    if math.isnan(ref) or math.isnan(got):
        return math.isnan(ref) and math.isnan(got)
    return abs(got - ref) <= atol or abs(got - ref) <= rtol * abs(ref)


def to_sitk(vol: Volume):  # noqa: ANN201
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(vol.array))
    img.SetSpacing(vol.spacing)
    img.SetOrigin(vol.origin)
    img.SetDirection(vol.direction)
    return img
