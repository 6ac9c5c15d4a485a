"""Reading and writing volumes with their geometry: NIfTI, NRRD (incl. Slicer ``.seg.nrrd``), MetaImage,
DICOM series folders and 2D PNG/JPEG/BMP/TIFF slices.

SimpleITK does all the decoding so that spacing, origin and the direction matrix survive every format;
this module adds the rules napari-medgen promises on top of it:

* every read returns a `Volume` (or `LabelMap`) in (z, y, x) order, 2D slices as ``(1, y, x)``;
* every write is atomic: files are written in a hidden temporary folder next to the destination and
  moved into place only once complete, so an error or interruption never leaves a partial file;
* every failure is a `MedGenError` that says what is wrong and what to do.

Format notes
* DICOM has no left-handed voxel grids: readers order slices along ``row x column`` of the
  ImageOrientationPatient. A volume whose direction matrix has determinant -1 is therefore written as
  the equivalent right-handed grid (`geometry.right_handed`: slice axis reversed, same voxel values at
  the same physical points) and reads back that way.
* DICOM stores integers. Integer volumes round-trip exactly (8, 16 and 32 bit). Float volumes whose
  values are all whole numbers are stored as 16/32-bit integers (exact; they read back as integers).
  Other float volumes are quantised to 16 bits with RescaleSlope/RescaleIntercept:
  ``slope = (max - min) / 65000``, so each voxel comes back within ``slope / 2`` of its value; a
  `UserWarning` says so. Use NIfTI, NRRD or MHA to keep float voxels exact.
* DICOM folders: a folder holding several series reads the one with most files (say which with
  ``series_uid=``; ``metadata["dicom_series_note"]`` lists them); unevenly spaced slices give a
  `UserWarning`. Writing replaces an existing folder only if it holds nothing but DICOM files.
* Slicer ``.seg.nrrd``: written as a labelmap NRRD with ``Segment<i>_*`` fields (3D Slicer reads the
  segments, names and colours); multi-layer files are flattened into one label map when segments do
  not overlap (otherwise pick a layer with ``channel=``).
* 2D formats keep only the in-plane spacing; origin, direction and slice spacing are not stored.
  JPEG is lossy. PNG holds uint8/uint16, JPEG/BMP uint8, TIFF any voxel type.
* Truncated files raise `CorruptFileError` (ITK alone reads a truncated NIfTI silently as zeros, so
  NIfTI files are checked against the size their header announces).
* Header metadata of the source file is exposed in ``Volume.metadata`` but is not written back:
  keys are format specific. For DICOM only ``Modality`` and ``SeriesInstanceUID`` are kept (privacy).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import uuid
import warnings
import zlib
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from napari_medgen.core.atomic import commit_folder
from napari_medgen.core.geometry import right_handed
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import (
    CorruptFileError,
    DimensionError,
    InvalidInputError,
    UnsupportedFormatError,
)

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
_LUMA = np.array([0.299, 0.587, 0.114])
_UNPRINTABLE = "[UNKNOWN_PRINT_CHARACTERISTICS]"
# DICOM: SOP classes whose IOD carries the image-plane geometry; other modalities go out as Secondary Capture.
_SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_DICOM_QUANTISATION_STEPS = 65000.0
_TMP_SUFFIX = ".medgen-tmp"


# ---- format detection ---------------------------------------------------------------------------------
def _extension(path: Path) -> str | None:
    name = path.name.lower()
    for ext in SUPPORTED_EXTENSIONS:  # longest first, so ".seg.nrrd" wins over ".nrrd"
        if name.endswith(ext) and len(name) > len(ext):
            return ext
    return None


def _format_of_extension(ext: str) -> str:
    return next(fmt for fmt, exts in FORMAT_EXTENSIONS.items() if ext in exts)


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _folder_has_dicom(folder: Path, max_files: int = 64) -> bool:
    try:
        entries = sorted(folder.iterdir())[:max_files]
    except OSError:
        return False
    for entry in entries:
        if entry.is_file() and (entry.name.lower().endswith(".dcm") or _has_dicom_magic(entry)):
            return True
    return False


def detect_format(path: str | os.PathLike[str]) -> str | None:
    """Name of the format napari-medgen would use to read ``path``, or None; never raises.

    Cheap enough for a napari reader hook: it looks at the extension, and for folders and
    extension-less files at the 4-byte DICOM signature, without decoding any image.
    """
    try:
        p = Path(path).expanduser()
        if p.is_dir():
            return "dicom" if _folder_has_dicom(p) else None
        if not p.is_file():
            return None
        ext = _extension(p)
        if ext is not None:
            return _format_of_extension(ext)
        return "dicom" if _has_dicom_magic(p) else None
    except (OSError, TypeError, ValueError):
        return None


def _supported_list() -> str:
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


def _metadata_of(image: sitk.Image) -> dict[str, str]:
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
    return cls(arr, spacing=spacing, origin=origin, direction=direction, metadata=_metadata_of(image))


# ---- reading --------------------------------------------------------------------------------------------
def _corrupt(path: Path, err: Exception | str) -> CorruptFileError:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Exception thrown in SimpleITK")]
    reason = re.sub(r"\(0x[0-9a-f]+\)", "", " ".join(lines)) or "unknown decoding error"
    if len(reason) > 300:
        reason = reason[:140] + " ... " + reason[-150:]
    return CorruptFileError(
        f"Could not decode {path} ({reason}). The file is truncated, corrupt, or its content does not match "
        "its extension; re-export or re-copy it (check that the download finished)."
    )


def _nifti_data_end(meta: Mapping[str, str]) -> int | None:
    """Bytes a complete NIfTI file must hold (header + voxels), from its header fields."""
    try:
        ndim = int(meta["dim[0]"])
        nvox = int(np.prod([int(meta[f"dim[{i}]"]) for i in range(1, ndim + 1)]))
        return int(float(meta["vox_offset"])) + nvox * int(meta["bitpix"]) // 8
    except (KeyError, ValueError):
        return None


def _check_nifti_complete(path: Path, ext: str, meta: Mapping[str, str]) -> None:
    """ITK reads truncated NIfTI files without complaint (missing voxels become zeros); refuse them."""
    expected = _nifti_data_end(meta)
    if expected is None:
        return
    if ext == ".nii":
        size = path.stat().st_size
        if size < expected:
            raise _corrupt(path, f"file has {size} bytes, its header needs {expected}")
        return
    with open(path, "rb") as handle:  # gzip trailer: uncompressed size mod 2**32
        handle.seek(-4, os.SEEK_END)
        if int.from_bytes(handle.read(4), "little") == expected % 2**32:
            return
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 22):
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as err:
        raise _corrupt(path, f"gzip stream broken: {err}") from err
    if total < expected:
        raise _corrupt(path, f"holds {total} bytes of data, its header needs {expected}")


def _read_file(path: Path, ext: str | None) -> sitk.Image:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    if ext is not None:
        reader.SetImageIO(_IMAGE_IO[ext])
    else:
        reader.SetImageIO("GDCMImageIO")
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise _corrupt(path, err) from err
    if ext in (".nii", ".nii.gz"):
        _check_nifti_complete(path, ext, _metadata_of(image))
    return image


def _dicom_positions_warning(reader: sitk.ImageSeriesReader, image: sitk.Image, count: int) -> None:
    """Warn when slices are unevenly spaced (gaps, missing slices): ITK then uses the mean spacing."""
    if count < 3:
        return
    try:
        positions = np.array([[float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")] for i in range(count)])
    except (RuntimeError, ValueError):
        return
    normal = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)[:, 2]
    steps = np.diff(positions @ normal)
    if steps.size and np.ptp(steps) > 1e-3 * max(abs(float(np.mean(steps))), 1e-6) + 1e-4:
        warnings.warn(
            f"DICOM slices are unevenly spaced (steps from {steps.min():.4g} to {steps.max():.4g} mm: "
            "missing "
            f"slices or a gantry-tilt/variable-spacing series); the volume uses the mean spacing "
            f"{image.GetSpacing()[2]:.4g} mm, so slice positions may be off. Check the series is complete.",
            UserWarning,
            stacklevel=4,
        )


def _read_dicom_folder(folder: Path, series_uid: str | None) -> tuple[sitk.Image, dict[str, str]]:
    reader = sitk.ImageSeriesReader()
    try:
        series_ids = list(reader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError as err:
        raise _corrupt(folder, err) from err
    if not series_ids:
        raise UnsupportedFormatError(
            f"No DICOM series found in folder {folder}. Point at the folder that holds the slice files "
            f"(sub-folders are not searched), or at a single file with one of {_supported_list()}."
        )
    files = {uid: list(reader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in series_ids}
    meta: dict[str, str] = {}
    if series_uid is not None:
        if series_uid not in files:
            raise InvalidInputError(
                f"Series {series_uid!r} is not in {folder}; it holds: "
                + "; ".join(f"{uid!r} ({len(f)} files)" for uid, f in files.items())
            )
        chosen = series_uid
    else:
        chosen = max(series_ids, key=lambda uid: (len(files[uid]), uid))
        if len(series_ids) > 1:
            meta["dicom_series_note"] = (
                f"folder holds {len(series_ids)} series; read {chosen!r} ({len(files[chosen])} files), the "
                "largest. Pass series_uid= to choose another: "
                + "; ".join(f"{uid!r} ({len(f)} files)" for uid, f in files.items())
            )
    reader.SetFileNames(files[chosen])
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise _corrupt(folder, err) from err
    for tag, name in (("0008|0060", "Modality"), ("0020|000e", "SeriesInstanceUID")):
        if reader.HasMetaDataKey(0, tag):
            meta[name] = reader.GetMetaData(0, tag).strip()
    meta["dicom_file_count"] = str(len(files[chosen]))
    _dicom_positions_warning(reader, image, len(files[chosen]))
    return image, meta


def _luminance(image: sitk.Image) -> sitk.Image:
    """Grey values from an RGB(A) or grey+alpha 2D slice (alpha is dropped)."""
    arr = sitk.GetArrayFromImage(image)
    ncomp = arr.shape[-1]
    if ncomp in (3, 4):
        grey = arr[..., :3].astype(np.float64) @ _LUMA
        if arr.dtype.kind in "iu":
            info = np.iinfo(arr.dtype)
            grey = np.clip(np.rint(grey), info.min, info.max)
        grey = grey.astype(arr.dtype)
    else:
        grey = arr[..., 0]
    out = sitk.GetImageFromArray(grey)
    out.SetSpacing(image.GetSpacing())
    out.SetOrigin(image.GetOrigin())
    out.SetDirection(image.GetDirection())
    return out


def _segments(meta: Mapping[str, str]) -> list[dict[str, Any]]:
    """Slicer segment descriptions (``Segment<i>_*`` header keys) in file order."""
    segs = []
    i = 0
    while f"Segment{i}_ID" in meta or f"Segment{i}_LabelValue" in meta:
        try:
            layer = int(meta.get(f"Segment{i}_Layer", "0") or 0)
            value = int(meta.get(f"Segment{i}_LabelValue", "1") or 1)
        except ValueError as err:
            raise CorruptFileError(
                f"Segment {i} has a non-integer layer or label value in the header ({err}); re-save the "
                "segmentation from 3D Slicer."
            ) from err
        name = meta.get(f"Segment{i}_Name", meta.get(f"Segment{i}_ID", f"Segment_{i + 1}"))
        segs.append({"name": name, "layer": layer, "value": value})
        i += 1
    return segs


def _without_segment_keys(meta: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in meta.items() if not re.match(r"Segment\d+_", k)}


def _flatten_segmentation(image: sitk.Image, meta: dict[str, str], path: Path) -> sitk.Image:
    """One label map from a multi-layer Slicer segmentation (segments numbered 1..N in file order)."""
    segs = _segments(meta)
    layers = image.GetNumberOfComponentsPerPixel()
    if not segs:
        raise DimensionError(
            f"{path} has {layers} layers but no Slicer segment description; read one layer with channel=k "
            f"(0..{layers - 1})."
        )
    arr = sitk.GetArrayFromImage(image)
    out = np.zeros(arr.shape[:-1], dtype=np.uint8 if len(segs) < 256 else np.uint16)
    owner: dict[int, str] = {}
    for label, seg in enumerate(segs, start=1):
        if not 0 <= seg["layer"] < layers:
            raise CorruptFileError(
                f"{path}: segment {seg['name']!r} refers to layer {seg['layer']}, "
                f"but the file has {layers} layers. Re-save it from Slicer."
            )
        inside = arr[..., seg["layer"]] == seg["value"]
        clash = np.unique(out[inside & (out != 0)])
        if clash.size:
            raise InvalidInputError(
                f"Segments {owner[int(clash[0])]!r} and {seg['name']!r} in {path} overlap, so they cannot "
                "share "
                f"one label map. Read one layer with channel=k (0..{layers - 1}), or remove the overlap in "
                "Slicer."
            )
        out[inside] = label
        owner[label] = seg["name"]
    flat = sitk.GetImageFromArray(out)
    flat.SetSpacing(image.GetSpacing())
    flat.SetOrigin(image.GetOrigin())
    flat.SetDirection(image.GetDirection())
    meta.clear()
    meta.update(_without_segment_keys(_metadata_of(image)))
    meta["segment_names"] = json.dumps({str(k): v for k, v in owner.items()})
    return flat


def _select_channel(image: sitk.Image, channel: int, path: Path) -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() > 1:
        n = image.GetNumberOfComponentsPerPixel()
        if not 0 <= channel < n:
            raise InvalidInputError(f"channel={channel} is out of range: {path} has {n} components (0..{n - 1}).")
        return sitk.VectorIndexSelectionCast(image, channel)
    if image.GetDimension() == 4:
        size = list(image.GetSize())
        if not 0 <= channel < size[3]:
            raise InvalidInputError(
                f"channel={channel} is out of range: {path} has {size[3]} volumes along its 4th axis "
                f"(0..{size[3] - 1})."
            )
        return sitk.Extract(image, size[:3] + [0], [0, 0, 0, channel])
    raise InvalidInputError(f"channel={channel} was given but {path} holds a single scalar volume; omit channel.")


def _read_image(
    path: str | os.PathLike[str], channel: int | None, series_uid: str | None
) -> tuple[sitk.Image, dict[str, str], str]:
    """Decode ``path`` into a scalar 2D/3D SimpleITK image plus the metadata to keep, and the format name."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UnsupportedFormatError(f"Nothing to read at {p}: no such file or folder. Check the path.")
    if p.is_dir():
        image, meta = _read_dicom_folder(p, series_uid)
        fmt = "dicom"
    else:
        ext = _extension(p)
        if ext is None and not _has_dicom_magic(p):
            raise UnsupportedFormatError(
                f"Cannot read {p.name}: unknown file type. Supported: {_supported_list()}. Convert it with "
                "3D Slicer or SimpleITK first, or rename it if the extension is wrong."
            )
        fmt = "dicom" if ext is None else _format_of_extension(ext)
        image = _read_file(p, ext)
        meta = _metadata_of(image)
        if fmt == "metaimage" and "Modality" in meta:  # MET_MOD_CT -> CT, as DICOM names it
            modality = meta.pop("Modality").removeprefix("MET_MOD_")
            if modality != "UNKNOWN":
                meta["Modality"] = modality
        if fmt == "dicom":  # privacy: keep no patient data
            meta = {
                name: meta[tag].strip()
                for tag, name in (("0008|0060", "Modality"), ("0020|000e", "SeriesInstanceUID"))
                if tag in meta
            }
    if series_uid is not None and fmt != "dicom":
        raise InvalidInputError(f"series_uid= only applies to DICOM folders; {p.name} is {fmt}.")
    ncomp = image.GetNumberOfComponentsPerPixel()
    if channel is not None:
        image = _select_channel(image, channel, p)
    elif ncomp > 1 and _segments(meta):
        image = _flatten_segmentation(image, meta, p)
    elif ncomp > 1 and image.GetDimension() == 2:
        image = _luminance(image)
    elif ncomp > 1:
        raise DimensionError(
            f"{p.name} holds {ncomp} components per voxel (vector/multi-channel image); pick one with "
            f"channel=k (0..{ncomp - 1})."
        )
    elif image.GetDimension() == 4:
        raise DimensionError(
            f"{p.name} is 4D ({image.GetSize()[3]} volumes of size {image.GetSize()[:3]}); pick one with "
            f"channel=k (0..{image.GetSize()[3] - 1})."
        )
    elif image.GetDimension() not in (2, 3):
        raise DimensionError(f"{p.name} is {image.GetDimension()}D; only 2D slices and 3D volumes are supported.")
    if fmt == "seg.nrrd" and "segment_names" not in meta:
        segs = _segments(meta)
        if segs:
            meta = _without_segment_keys(meta)
            meta["segment_names"] = json.dumps({str(s["value"]): s["name"] for s in segs})
    meta["source_path"] = str(p)
    meta["format"] = fmt
    return image, meta, fmt


def read_volume(path: str | os.PathLike[str], *, channel: int | None = None, series_uid: str | None = None) -> Volume:
    """Read an image file or DICOM series folder as a `Volume` with its geometry.

    ``channel`` picks one component of a vector image or one volume of a 4D file; ``series_uid`` picks
    one series of a DICOM folder holding several (by default the series with most files is read and
    ``metadata["dicom_series_note"]`` says so). RGB(A) 2D slices are converted to luminance.
    """
    image, meta, _ = _read_image(path, channel, series_uid)
    volume = from_sitk(image)
    return Volume(volume.array, volume.spacing, volume.origin, volume.direction, meta)


def read_labels(
    path: str | os.PathLike[str],
    reference: Volume | None = None,
    *,
    channel: int | None = None,
    series_uid: str | None = None,
    tolerance_mm: float = 1e-4,
) -> LabelMap:
    """Read a segmentation as a `LabelMap`, optionally checking it lies on ``reference``'s grid.

    Multi-layer Slicer ``.seg.nrrd`` files are flattened into one map (segments numbered 1..N in file
    order, names in ``metadata["segment_names"]``). Grids that agree with ``reference`` within
    ``tolerance_mm`` (float32 header rounding) are snapped to it exactly; others raise
    `GeometryMismatchError`.
    """
    image, meta, _ = _read_image(path, channel, series_uid)
    vol = from_sitk(image)
    arr = vol.array
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all() or not np.array_equal(arr, np.round(arr)):
            raise InvalidInputError(
                f"{Path(path).name} holds non-integer values, so it is not a label map. Load it with "
                "read_volume, or threshold/round it into integer labels first."
            )
        if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.int32).max):
            raise InvalidInputError(f"{Path(path).name}: label values must lie in 0..2^31-1.")
        arr = arr.astype(np.uint8 if arr.size and arr.max() < 256 else np.int32)
    if arr.size and arr.min() < 0:
        raise InvalidInputError(
            f"{Path(path).name} holds negative values (min {arr.min()}); label maps use 0 for background and "
            "positive labels. Is this an image rather than a segmentation?"
        )
    labels = LabelMap(arr, vol.spacing, vol.origin, vol.direction, meta)
    if reference is not None:
        if reference.same_grid(labels, tol=tolerance_mm):
            return LabelMap(labels.array, reference.spacing, reference.origin, reference.direction, labels.metadata)
        reference.require_same_grid(labels, what=f"label map {Path(path).name}")
    return labels


# ---- writing --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _staging_dir(dest: Path) -> Iterator[Path]:
    """A hidden temporary folder beside ``dest`` that is always removed (with its content) at the end."""
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:12]}{_TMP_SUFFIX}"
    tmp.mkdir()  # not mkdtemp: a DICOM folder is renamed into place and must get the usual permissions
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _commit_files(staged: Path, dest: Path) -> None:
    """Move the staged files into ``dest``'s folder; the main file last so it never points at missing data."""
    names = sorted(os.listdir(staged), key=lambda n: (n == dest.name, n))
    if dest.name not in names:
        raise CorruptFileError(f"Writing {dest} produced no file; nothing was written. Check free disk space.")
    for name in names:
        os.replace(staged / name, dest.parent / name)


def _safe_to_replace_folder(folder: Path) -> bool:
    """Only empty folders or folders of DICOM files are replaced (never a user's arbitrary directory)."""
    for entry in folder.iterdir():
        if not entry.is_file():
            return False
        if not (entry.name.lower().endswith(".dcm") or _has_dicom_magic(entry)):
            return False
    return True


def _execute_writer(image: sitk.Image, path: Path, compress: bool, keep_uids: bool = False) -> None:
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(path))
    writer.SetUseCompression(compress)
    if keep_uids:
        writer.KeepOriginalImageUIDOn()
    writer.Execute(image)


def _segment_color(label: int) -> str:
    """A deterministic, well-separated colour per label (golden-angle hue), as Slicer's 'r g b' in 0..1."""
    hue = (label * 0.618033988749895) % 1.0
    rgb = [min(max(abs((hue * 6 + shift) % 6 - 3) - 1, 0.0), 1.0) for shift in (0, 4, 2)]
    return " ".join(f"{0.25 + 0.7 * c:.4f}" for c in rgb)


def _segmentation_image(labels: LabelMap) -> sitk.Image:
    """A 3D labelmap NRRD image with the Slicer ``Segment<i>_*`` keys that make it a ``.seg.nrrd``."""
    arr = labels.array
    if arr.size and arr.max() <= np.iinfo(np.uint8).max:
        arr = arr.astype(np.uint8)
    elif arr.size and arr.max() <= np.iinfo(np.uint16).max:
        arr = arr.astype(np.uint16)
    image = to_sitk(labels.with_array(arr))
    try:
        names = {int(k): str(v) for k, v in json.loads(labels.metadata.get("segment_names", "{}")).items()}
    except (TypeError, ValueError):
        names = {}
    for i, value in enumerate(labels.labels()):
        where = np.nonzero(arr == value)
        z0, z1 = int(where[0].min()), int(where[0].max())
        y0, y1 = int(where[1].min()), int(where[1].max())
        x0, x1 = int(where[2].min()), int(where[2].max())
        name = names.get(value, f"Segment_{value}")
        entries = {
            "ID": f"Segment_{value}",
            "Name": name,
            "NameAutoGenerated": "0" if value in names else "1",
            "LabelValue": str(value),
            "Layer": "0",
            "Color": _segment_color(value),
            "ColorAutoGenerated": "1",
            "Extent": f"{x0} {x1} {y0} {y1} {z0} {z1}",
            "Tags": "|",
        }
        for key, val in entries.items():
            image.SetMetaData(f"Segment{i}_{key}", val)
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    return image


def _image2d(volume: Volume, ext: str) -> sitk.Image:
    """The single slice of a ``(1, y, x)`` volume in a pixel type the 2D format can hold."""
    if ext in (".tif", ".tiff") and volume.shape[0] > 1:
        return to_sitk(volume)  # TIFF also holds multi-page 3D stacks
    if volume.shape[0] != 1:
        raise DimensionError(
            f"{ext} files hold one 2D slice but the volume has {volume.shape[0]} slices; write a 3D format "
            "(.nii.gz, .nrrd, .mha, DICOM folder) or select one slice first."
        )
    arr = np.asarray(volume.array[0])
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    allowed = {".png": (np.uint8, np.uint16), ".jpg": (np.uint8,), ".jpeg": (np.uint8,), ".bmp": (np.uint8,)}
    if ext in allowed and arr.dtype not in allowed[ext]:
        whole = np.all(np.isfinite(arr)) and np.array_equal(arr, np.round(arr))
        fits = [t for t in allowed[ext] if whole and arr.min() >= 0 and arr.max() <= np.iinfo(t).max]
        target = fits[0] if fits else None
        if target is None:
            raise InvalidInputError(
                f"{ext} stores {' or '.join(np.dtype(t).name for t in allowed[ext])} pixels, but this slice "
                "is "
                f"{arr.dtype} with values {arr.min():.4g}..{arr.max():.4g}. Window/normalise it and convert "
                "to "
                "integers (napari_medgen.core.intensity), or write .tif/.nii.gz which keep any type."
            )
        arr = arr.astype(target)
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    image.SetSpacing(volume.spacing[:2])
    return image


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) as precise as that allows."""
    if len(repr(float(value))) <= 16:
        return repr(float(value))
    for digits in range(16, 5, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.6g}"


def _dicom_pixels(volume: Volume) -> tuple[sitk.Image, dict[str, str]]:
    """Voxels in a type DICOM can store, plus the pixel-module tags that describe them."""
    arr = np.asarray(volume.array)
    tags: dict[str, str] = {}
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind in "iu" and arr.dtype.itemsize == 8:
        for target in (np.int32, np.uint32):
            info = np.iinfo(target)
            if arr.size and arr.min() >= info.min and arr.max() <= info.max:
                arr = arr.astype(target)
                break
        else:
            raise InvalidInputError(
                "DICOM stores at most 32-bit integers and these voxels exceed that range; write NIfTI/NRRD instead."
            )
    elif arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise InvalidInputError("The volume holds NaN or Inf, which DICOM cannot store; replace them first.")
        vmin, vmax = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        int32 = np.iinfo(np.int32)
        if np.array_equal(arr, np.round(arr)) and vmin >= int32.min and vmax <= int32.max:
            small = vmin >= np.iinfo(np.int16).min and vmax <= np.iinfo(np.int16).max
            arr = arr.astype(np.int16 if small else np.int32)
        else:
            slope = float(_ds((vmax - vmin) / _DICOM_QUANTISATION_STEPS)) if vmax > vmin else 1.0
            intercept = float(_ds((vmax + vmin) / 2.0))
            warnings.warn(
                "DICOM stores integers: float voxels were quantised to 16 bits with RescaleSlope "
                f"{slope:.6g} "
                f"and RescaleIntercept {intercept:.6g}, so they read back within +/-{slope / 2:.3g} of their "
                "values. Write .nii.gz, .nrrd or .mha to keep float voxels exact.",
                UserWarning,
                stacklevel=4,
            )
            arr = arr.astype(np.float64)
            tags.update(
                {
                    "0028|1053": _ds(slope),
                    "0028|1052": _ds(intercept),
                    "0028|0100": "16",
                    "0028|0101": "16",
                    "0028|0102": "15",
                    "0028|0103": "1",
                }
            )
    return to_sitk(Volume(arr, volume.spacing, volume.origin, volume.direction)), tags


def _write_dicom_series(volume: Volume, folder: Path) -> None:
    """One file per slice with the geometry tags spelled out (GDCM writes what the tags say).

    Left-handed grids are written as the equivalent right-handed grid (slice order reversed), which is
    what any DICOM reader reconstructs anyway; this keeps reads deterministic.
    """
    volume = right_handed(volume)
    image, pixel_tags = _dicom_pixels(volume)
    modality = str(volume.metadata.get("Modality", "")).strip().upper()
    if modality not in _SOP_CLASS:
        modality = "OT"
    d = volume.direction_matrix
    now = datetime.now()
    series = {
        "0008|0016": _SOP_CLASS.get(modality, _SECONDARY_CAPTURE),
        "0008|0060": modality,
        "0008|0008": "DERIVED\\SECONDARY",
        "0008|0020": now.strftime("%Y%m%d"),
        "0008|0021": now.strftime("%Y%m%d"),
        "0008|0030": now.strftime("%H%M%S"),
        "0008|0031": now.strftime("%H%M%S"),
        "0008|103e": "napari-medgen",
        "0020|000d": f"2.25.{uuid.uuid4().int}",
        "0020|000e": f"2.25.{uuid.uuid4().int}",
        "0020|0052": f"2.25.{uuid.uuid4().int}",
        "0020|0011": "1",
        "0020|0037": "\\".join(_ds(v) for v in (d[0, 0], d[1, 0], d[2, 0], d[0, 1], d[1, 1], d[2, 1])),
        "0028|0030": f"{_ds(volume.spacing[1])}\\{_ds(volume.spacing[0])}",  # row spacing (y) \ column (x)
        "0018|0050": _ds(volume.spacing[2]),
        "0018|0088": _ds(volume.spacing[2]),
        **pixel_tags,
    }
    nz = volume.shape[0]
    width = max(4, len(str(nz)))
    for k in range(nz):
        slab = image[:, :, k : k + 1]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        per_slice = {
            "0008|0018": f"2.25.{uuid.uuid4().int}",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(_ds(v) for v in position),
            "0020|1041": _ds(float(np.dot(position, np.cross(d[:, 0], d[:, 1])))),
        }
        for tag, value in {**series, **per_slice}.items():
            slab.SetMetaData(tag, value)
        _execute_writer(slab, folder / f"IM{k + 1:0{width}d}.dcm", compress=False, keep_uids=True)


def _destination_format(path: Path, fmt: str | None) -> tuple[str, str | None]:
    ext = _extension(path)
    if fmt == "dicom":
        return "dicom", None
    if fmt is not None and (ext is None or _format_of_extension(ext) != fmt):
        raise UnsupportedFormatError(
            f"format={fmt!r} does not match the file name {path.name}; only format='dicom' may override the "
            f"extension (for folder names containing dots). Extensions: {FORMAT_EXTENSIONS}."
        )
    if ext is None:
        if path.is_dir() or path.suffix == "":
            return "dicom", None
        raise UnsupportedFormatError(
            f"Cannot write {path.name}: unknown extension {path.suffix!r}. Use one of {_supported_list()} "
            "(a path without extension is written as a DICOM series folder)."
        )
    if ext == ".dcm":
        raise UnsupportedFormatError(
            f"DICOM is written as a series folder (one file per slice): give a folder path without extension "
            f"instead of {path.name}."
        )
    return _format_of_extension(ext), ext


def write_volume(
    volume: Volume, path: str | os.PathLike[str], *, compress: bool = True, format: str | None = None
) -> Path:
    """Write ``volume`` atomically and return the path written.

    The format follows the extension (``format=`` overrides it); a path without extension, or an
    existing folder, becomes a DICOM series folder. ``compress`` applies to NRRD, MetaImage and PNG
    (``.nii`` vs ``.nii.gz`` decides for NIfTI). See the module docstring for what each format keeps.
    """
    if not isinstance(volume, Volume):
        raise InvalidInputError(f"write_volume needs a Volume or LabelMap, not {type(volume).__name__}.")
    dest = Path(path).expanduser().absolute()
    fmt, ext = _destination_format(dest, format)
    if fmt != "dicom" and dest.is_dir():
        raise InvalidInputError(f"{dest} is a folder; give a file name such as {dest / 'image.nii.gz'}.")
    if fmt == "dicom" and dest.exists() and not (dest.is_dir() and _safe_to_replace_folder(dest)):
        raise InvalidInputError(
            f"{dest} exists and is not a folder of DICOM files, so it will not be replaced; choose a new or "
            "empty "
            "folder for the DICOM series."
        )
    created: list[Path] = []
    parent = dest.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    for folder in reversed(created):
        folder.mkdir()
    try:
        with _staging_dir(dest) as staged:
            if fmt == "dicom":
                _write_dicom_series(volume, staged)
                commit_folder(staged, dest)
            else:
                if fmt == "seg.nrrd":
                    labels = volume if isinstance(volume, LabelMap) else volume.as_labels()
                    image = _segmentation_image(labels)
                elif fmt == "image2d":
                    image = _image2d(volume, ext or ".png")
                else:
                    image = to_sitk(volume)
                _execute_writer(image, staged / dest.name, compress)
                _commit_files(staged, dest)
    except BaseException:
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return dest


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    channel: int | None = None,
    series_uid: str | None = None,
    compress: bool = True,
) -> Path:
    """Read ``src`` and write it to ``dst`` in the format of ``dst``'s extension, keeping voxels and geometry.

    A ``.seg.nrrd`` destination reads the source as a label map (integer values required).
    """
    dst_path = Path(dst)
    if _extension(dst_path) == ".seg.nrrd":
        volume: Volume = read_labels(src, channel=channel, series_uid=series_uid)
    else:
        volume = read_volume(src, channel=channel, series_uid=series_uid)
    return write_volume(volume, dst_path, compress=compress)
