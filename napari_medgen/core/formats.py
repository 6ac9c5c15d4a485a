"""The file formats napari-medgen reads and writes, and the SimpleITK <-> `Volume` conversion they share.

`napari_medgen.core.io` is the public entry point (it re-exports `FORMAT_EXTENSIONS`, `SUPPORTED_EXTENSIONS`,
`to_sitk` and `from_sitk`); `core.dicom` and `core.segnrrd` hold the DICOM series and Slicer ``.seg.nrrd``
details.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import CorruptFileError, DimensionError

# Format name -> file name endings. A folder (or a path without extension, when writing) is a DICOM series.
FORMAT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "nifti": (".nii", ".nii.gz"),
    "nrrd": (".nrrd", ".nhdr"),
    "seg.nrrd": (".seg.nrrd",),
    "metaimage": (".mha", ".mhd"),
    "dicom": (".dcm",),
    "image2d": (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"),
}
SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(
    sorted({ext for exts in FORMAT_EXTENSIONS.values() for ext in exts}, key=lambda e: (-len(e), e))
)
_IMAGE_IO = {
    ".nii": "NiftiImageIO",
    ".nii.gz": "NiftiImageIO",
    ".nrrd": "NrrdImageIO",
    ".nhdr": "NrrdImageIO",
    ".seg.nrrd": "NrrdImageIO",
    ".mha": "MetaImageIO",
    ".mhd": "MetaImageIO",
    ".dcm": "GDCMImageIO",
    ".png": "PNGImageIO",
    ".jpg": "JPEGImageIO",
    ".jpeg": "JPEGImageIO",
    ".bmp": "BMPImageIO",
    ".tif": "TIFFImageIO",
    ".tiff": "TIFFImageIO",
}
# Luminance weights (ITU-R BT.601, the same as Pillow's "L" conversion) for RGB slices.
_UNPRINTABLE = "[UNKNOWN_PRINT_CHARACTERISTICS]"


def extension(path: Path) -> str | None:
    name = path.name.lower()
    for ext in SUPPORTED_EXTENSIONS:  # longest first, so ".seg.nrrd" wins over ".nrrd"
        if name.endswith(ext) and len(name) > len(ext):
            return ext
    return None


def format_of_extension(ext: str) -> str:
    return next(fmt for fmt, exts in FORMAT_EXTENSIONS.items() if ext in exts)



def supported_list() -> str:
    return ", ".join(SUPPORTED_EXTENSIONS) + " and DICOM series folders"


# ---- numpy <-> SimpleITK ------------------------------------------------------------------------------
def to_sitk(volume: Volume) -> sitk.Image:
    """A SimpleITK image with the voxels and geometry of ``volume`` (metadata is not copied).

    Booleans become uint8 and float16 becomes float32 because ITK has no such pixel types.
    Vanishing direction entries (< 1e-200, e.g. left by a QR decomposition) are flushed to 0: near the
    subnormal range ITK's SVD turns them into NaN and every resampled voxel would become background.
    """
    arr = np.asarray(volume.array)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=False)
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    direction = np.asarray(volume.direction)
    image.SetDirection(tuple(float(v) for v in np.where(np.abs(direction) < 1e-200, 0.0, direction)))
    return image


def metadata_of(image: sitk.Image) -> dict[str, str]:
    meta: dict[str, str] = {}
    for key in image.GetMetaDataKeys():
        if key.startswith("ITK_"):
            continue
        try:
            value = image.GetMetaData(key)
        except (RuntimeError, UnicodeDecodeError):
            continue
        if value.startswith(_UNPRINTABLE):
            continue
        meta[key] = value
    return meta


def from_sitk(image: sitk.Image, *, labels: bool = False) -> Volume:
    """A `Volume` (or `LabelMap` with ``labels=True``) from a scalar 2D or 3D SimpleITK image.

    2D images become ``(1, y, x)`` volumes with unit slice spacing. Vector and 4D images raise
    `DimensionError`: pick one component first (``read_volume(..., channel=k)`` does that).
    """
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DimensionError(
            f"The image has {image.GetNumberOfComponentsPerPixel()} components per voxel (vector/RGB); "
            "a scalar image is needed. Select one component, e.g. read_volume(path, channel=0)."
        )
    dim = image.GetDimension()
    arr = sitk.GetArrayFromImage(image)
    if dim == 3:
        spacing, origin, direction = image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    elif dim == 2:
        arr = arr[np.newaxis]
        sx, sy = image.GetSpacing()
        ox, oy = image.GetOrigin()
        d = image.GetDirection()
        spacing, origin = (sx, sy, 1.0), (ox, oy, 0.0)
        direction = (d[0], d[1], 0.0, d[2], d[3], 0.0, 0.0, 0.0, 1.0)
    else:
        raise DimensionError(
            f"The image is {dim}D (size {image.GetSize()}); napari-medgen works on 3D volumes and 2D slices. "
            "For 4D data pick one volume, e.g. read_volume(path, channel=0)."
        )
    cls = LabelMap if labels else Volume
    return cls(arr, spacing=spacing, origin=origin, direction=direction, metadata=metadata_of(image))



def corrupt(path: Path, err: Exception | str) -> CorruptFileError:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Exception thrown in SimpleITK")]
    reason = re.sub(r"\(0x[0-9a-f]+\)", "", " ".join(lines)) or "unknown decoding error"
    if len(reason) > 300:
        reason = reason[:140] + " ... " + reason[-150:]
    return CorruptFileError(
        f"Could not decode {path} ({reason}). The file is truncated, corrupt, or its content does not match "
        "its extension; re-export or re-copy it (check that the download finished)."
    )


def execute_writer(image: sitk.Image, path: Path, compress: bool, keep_uids: bool = False) -> None:
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(path))
    writer.SetUseCompression(compress)
    if keep_uids:
        writer.KeepOriginalImageUIDOn()
    writer.Execute(image)
