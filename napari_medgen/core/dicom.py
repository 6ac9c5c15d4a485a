"""DICOM series folders: detection, reading (largest series, uneven-spacing warning) and writing (one file
per slice, right-handed grid, integer or rescaled 16-bit voxels). See `napari_medgen.core.io` for the rules."""

from __future__ import annotations

import uuid
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_medgen.core.formats import corrupt, execute_writer, supported_list, to_sitk
from napari_medgen.core.geometry import right_handed
from napari_medgen.core.volume import Volume
from napari_medgen.errors import InvalidInputError, UnsupportedFormatError

# DICOM: SOP classes whose IOD carries the image-plane geometry; other modalities go out as Secondary Capture.
_SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_DICOM_QUANTISATION_STEPS = 65000.0


def has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def folder_has_dicom(folder: Path, max_files: int = 64) -> bool:
    try:
        entries = sorted(folder.iterdir())[:max_files]
    except OSError:
        return False
    return any(entry.is_file() and (entry.name.lower().endswith(".dcm") or has_dicom_magic(entry))
               for entry in entries)



def _dicom_positions_warning(reader: sitk.ImageSeriesReader, image: sitk.Image, files: list[str]) -> None:
    """Warn when slices are unevenly spaced (gaps, missing or unreadable slices): ITK then uses the mean spacing.
    The warning names the files on either side of the largest gap, so the user knows where to look."""
    count = len(files)
    if count < 3:
        return
    try:
        positions = np.array([[float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")] for i in range(count)])
    except (RuntimeError, ValueError):
        return
    normal = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)[:, 2]
    steps = np.diff(positions @ normal)
    if steps.size and np.ptp(steps) > 1e-3 * max(abs(float(np.mean(steps))), 1e-6) + 1e-4:
        typical = float(np.median(steps))
        worst = int(np.argmax(np.abs(steps - typical)))
        warnings.warn(
            f"DICOM slices are unevenly spaced (steps from {steps.min():.4g} to {steps.max():.4g} mm; the largest "
            f"gap, {steps[worst]:.4g} mm against {typical:.4g} mm, is between {Path(files[worst]).name} and "
            f"{Path(files[worst + 1]).name}: a missing or unreadable slice, or a gantry-tilt/variable-spacing "
            f"series). The volume uses the mean spacing {image.GetSpacing()[2]:.4g} mm, so slice positions may be "
            "off. Check the series is complete.",
            UserWarning,
            stacklevel=4,
        )


def _unread_files_warning(folder: Path, files: dict[str, list[str]]) -> None:
    """Name DICOM files of the folder that belong to no series (truncated or unreadable): GDCM skips them."""
    used = {Path(f).name for names in files.values() for f in names}
    try:
        candidates = [e for e in sorted(folder.iterdir()) if e.is_file() and e.name not in used
                      and (e.name.lower().endswith(".dcm") or has_dicom_magic(e))]
    except OSError:
        return
    if candidates:
        shown = ", ".join(e.name for e in candidates[:5]) + (" ..." if len(candidates) > 5 else "")
        warnings.warn(f"{len(candidates)} DICOM file(s) in {folder} could not be read and were left out: {shown}. "
                      "They may be truncated or damaged; the volume has a gap there.", UserWarning, stacklevel=4)


def read_dicom_folder(folder: Path, series_uid: str | None) -> tuple[sitk.Image, dict[str, str]]:
    reader = sitk.ImageSeriesReader()
    try:
        series_ids = list(reader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError as err:
        raise corrupt(folder, err) from err
    if not series_ids:
        raise UnsupportedFormatError(
            f"No DICOM series found in folder {folder}. Point at the folder that holds the slice files "
            f"(sub-folders are not searched), or at a single file with one of {supported_list()}."
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
                "largest. Pass series_uid= (Python) or move the other series to their own folders to choose "
                "another: " + "; ".join(f"{uid!r} ({len(f)} files)" for uid, f in files.items())
            )
            warnings.warn(f"DICOM {meta['dicom_series_note']}", UserWarning, stacklevel=3)
    reader.SetFileNames(files[chosen])
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise corrupt(folder, err) from err
    for tag, name in (("0008|0060", "Modality"), ("0020|000e", "SeriesInstanceUID")):
        if reader.HasMetaDataKey(0, tag):
            meta[name] = reader.GetMetaData(0, tag).strip()
    meta["dicom_file_count"] = str(len(files[chosen]))
    _unread_files_warning(folder, files)
    _dicom_positions_warning(reader, image, files[chosen])
    return image, meta



def safe_to_replace_folder(folder: Path) -> bool:
    """Only empty folders or folders of DICOM files are replaced (never a user's arbitrary directory)."""
    for entry in folder.iterdir():
        if not entry.is_file():
            return False
        if not (entry.name.lower().endswith(".dcm") or has_dicom_magic(entry)):
            return False
    return True



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


def write_dicom_series(volume: Volume, folder: Path) -> None:
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
        execute_writer(slab, folder / f"IM{k + 1:0{width}d}.dcm", compress=False, keep_uids=True)
