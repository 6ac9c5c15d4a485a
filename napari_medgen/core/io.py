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
* NaN / Inf voxels of float NIfTI files are kept: ITK's NIfTI reader returns them as 0, so the raw data is
  scanned for non-finite values (streamed, one pass) and they are put back in the returned `Volume`; the
  pipelines' guards (generation, inpainting, radiomics) then refuse them with a clear error instead of
  silently working on zeros, and `convert` writes them out unchanged where the format stores floats.
* Header metadata of the source file is exposed in ``Volume.metadata`` but is not written back:
  keys are format specific. For DICOM only ``Modality`` and ``SeriesInstanceUID`` are kept (privacy).
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_medgen.core.atomic import staged_outputs
from napari_medgen.core.dicom import (
    folder_has_dicom,
    has_dicom_magic,
    read_dicom_folder,
    safe_to_replace_folder,
    write_dicom_series,
)
from napari_medgen.core.formats import (
    _IMAGE_IO,
    FORMAT_EXTENSIONS,
    SUPPORTED_EXTENSIONS,
    corrupt,
    execute_writer,
    extension,
    format_of_extension,
    from_sitk,
    metadata_of,
    supported_list,
    to_sitk,
)
from napari_medgen.core.segnrrd import flatten_segmentation, segmentation_image, segments, without_segment_keys
from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import (
    DimensionError,
    InvalidInputError,
    MedGenError,
    UnsupportedFormatError,
)

__all__ = [
    "FORMAT_EXTENSIONS",
    "SUPPORTED_EXTENSIONS",
    "convert",
    "detect_format",
    "from_sitk",
    "read_labels",
    "read_volume",
    "to_sitk",
    "write_outputs",
    "write_volume",
]

# Luminance weights (ITU-R BT.601, the same as Pillow's "L" conversion) for RGB slices.
_LUMA = np.array([0.299, 0.587, 0.114])


# ---- format detection ---------------------------------------------------------------------------------
def detect_format(path: str | os.PathLike[str]) -> str | None:
    """Name of the format napari-medgen would use to read ``path``, or None; never raises.

    Cheap enough for a napari reader hook: it looks at the extension, and for folders and
    extension-less files at the 4-byte DICOM signature, without decoding any image.
    """
    try:
        p = Path(path).expanduser()
        if p.is_dir():
            return "dicom" if folder_has_dicom(p) else None
        if not p.is_file():
            return None
        ext = extension(p)
        if ext is not None:
            return format_of_extension(ext)
        return "dicom" if has_dicom_magic(p) else None
    except (OSError, TypeError, ValueError):
        return None



# ---- reading --------------------------------------------------------------------------------------------
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
            raise corrupt(path, f"file has {size} bytes, its header needs {expected}")
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
        raise corrupt(path, f"gzip stream broken: {err}") from err
    if total < expected:
        raise corrupt(path, f"holds {total} bytes of data, its header needs {expected}")


#: NIfTI float datatypes (code -> numpy type; byte order from the header): the only ones that hold NaN / Inf
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _nifti_header(head: bytes) -> tuple[str, int, list[int], int, float, float] | None:
    """(byte order, datatype, dims, vox_offset, scl_slope, scl_inter) of a NIfTI-1 or NIfTI-2 header, or None."""
    for order in "<>":
        size = int(np.frombuffer(head[:4], dtype=f"{order}i4")[0]) if len(head) >= 4 else 0
        if size == 348 and len(head) >= 120:
            datatype = int(np.frombuffer(head[70:72], f"{order}i2")[0])
            dim = np.frombuffer(head[40:56], f"{order}i2").astype(int).tolist()
            offset = int(np.frombuffer(head[108:112], f"{order}f4")[0])
            slope, inter = np.frombuffer(head[112:120], f"{order}f4").astype(float).tolist()
        elif size == 540 and len(head) >= 192:
            datatype = int(np.frombuffer(head[12:14], f"{order}i2")[0])
            dim = np.frombuffer(head[16:80], f"{order}i8").astype(int).tolist()
            offset = int(np.frombuffer(head[168:176], f"{order}i8")[0])
            slope, inter = np.frombuffer(head[176:192], f"{order}f8").astype(float).tolist()
        else:
            continue
        if not 1 <= dim[0] <= 7:
            return None
        return order, datatype, [max(1, d) for d in dim[1 : dim[0] + 1]], offset, slope, inter
    return None


def _nifti_nonfinite(path: Path, ext: str) -> tuple[np.ndarray, np.ndarray, int] | None:
    """The NaN / Inf voxels of a float NIfTI file, read from its raw data (cheap: streamed in chunks, only the
    non-finite voxels are kept): flat indices in file order, their values (after ``scl_slope`` / ``scl_inter``,
    as ITK applies them) and the number of voxels per volume. None when the file holds none or is not float."""
    opener = gzip.open if ext == ".nii.gz" else open
    try:
        with opener(path, "rb") as stream:
            header = _nifti_header(stream.read(540))
            if header is None or header[1] not in _NIFTI_FLOATS:
                return None
            order, datatype, dims, offset, slope, inter = header
            dtype = np.dtype(order + _NIFTI_FLOATS[datatype])
            total = int(np.prod(dims))
            stream.seek(offset)
            indices, values = [], []
            start = 0
            chunk_voxels = (1 << 24) // dtype.itemsize
            while start < total:
                raw = stream.read(min(chunk_voxels, total - start) * dtype.itemsize)
                chunk = np.frombuffer(raw[: len(raw) - len(raw) % dtype.itemsize], dtype=dtype)
                if chunk.size == 0:
                    break
                bad = np.flatnonzero(~np.isfinite(chunk))
                if bad.size:
                    indices.append(bad + start)
                    values.append(chunk[bad].astype(dtype.newbyteorder("=")))
                start += chunk.size
    except (OSError, EOFError, zlib.error):
        return None  # unreadable data is reported by the completeness check
    if not indices:
        return None
    found = np.concatenate(values).astype(np.float64)
    if slope != 0 and np.isfinite(slope) and np.isfinite(inter) and (slope, inter) != (1.0, 0.0):
        with np.errstate(invalid="ignore"):
            found = found * slope + inter
    return np.concatenate(indices), found, int(np.prod(dims[:4]))


def _restore_nonfinite(image: sitk.Image, path: Path, ext: str) -> sitk.Image:
    """Put back the NaN / Inf voxels of a float NIfTI file: ITK's NIfTI reader returns them as 0."""
    found = _nifti_nonfinite(path, ext)
    if found is None or image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkVectorFloat32,
                                                   sitk.sitkVectorFloat64):
        return image
    indices, values, per_volume = found
    arr = sitk.GetArrayFromImage(image)
    ncomp = image.GetNumberOfComponentsPerPixel()
    if arr.size != per_volume * ncomp or indices.max() >= arr.size:
        return image  # a layout ITK read differently: leave it as it is
    if ncomp > 1:  # the file stores one volume per component, ITK interleaves them per voxel
        indices = (indices % per_volume) * ncomp + indices // per_volume
    flat = arr.reshape(-1)
    flat[indices] = values.astype(arr.dtype)
    restored = sitk.GetImageFromArray(flat.reshape(arr.shape), isVector=ncomp > 1)
    restored.CopyInformation(image)
    for key in image.GetMetaDataKeys():
        try:
            restored.SetMetaData(key, image.GetMetaData(key))
        except (RuntimeError, UnicodeDecodeError):
            continue
    return restored


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
        raise corrupt(path, err) from err
    if ext in (".nii", ".nii.gz"):
        _check_nifti_complete(path, ext, metadata_of(image))
        image = _restore_nonfinite(image, path, ext)
    return image



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
        image, meta = read_dicom_folder(p, series_uid)
        fmt = "dicom"
    else:
        ext = extension(p)
        if ext is None and not has_dicom_magic(p):
            raise UnsupportedFormatError(
                f"Cannot read {p.name}: unknown file type. Supported: {supported_list()}. Convert it with "
                "3D Slicer or SimpleITK first, or rename it if the extension is wrong."
            )
        fmt = "dicom" if ext is None else format_of_extension(ext)
        image = _read_file(p, ext)
        meta = metadata_of(image)
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
    elif ncomp > 1 and segments(meta):
        image = flatten_segmentation(image, meta, p)
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
        segs = segments(meta)
        if segs:
            meta = without_segment_keys(meta)
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


def _destination_format(path: Path, fmt: str | None) -> tuple[str, str | None]:
    ext = extension(path)
    if fmt == "dicom":
        return "dicom", None
    if fmt is not None and (ext is None or format_of_extension(ext) != fmt):
        raise UnsupportedFormatError(
            f"format={fmt!r} does not match the file name {path.name}; only format='dicom' may override the "
            f"extension (for folder names containing dots). Extensions: {FORMAT_EXTENSIONS}."
        )
    if ext is None:
        if path.is_dir() or path.suffix == "":
            return "dicom", None
        raise UnsupportedFormatError(
            f"Cannot write {path.name}: unknown extension {path.suffix!r}. Use one of {supported_list()} "
            "(a path without extension is written as a DICOM series folder)."
        )
    if ext == ".dcm":
        raise UnsupportedFormatError(
            f"DICOM is written as a series folder (one file per slice): give a folder path without extension "
            f"instead of {path.name}."
        )
    return format_of_extension(ext), ext


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
    if fmt == "dicom" and dest.exists() and not (dest.is_dir() and safe_to_replace_folder(dest)):
        raise InvalidInputError(
            f"{dest} exists and is not a folder of DICOM files, so it will not be replaced; choose a new or "
            "empty "
            "folder for the DICOM series."
        )
    with staged_outputs([dest]) as (staged,):
        if fmt == "dicom":
            staged.mkdir()
            write_dicom_series(volume, staged)
        else:
            if fmt == "seg.nrrd":
                labels = volume if isinstance(volume, LabelMap) else volume.as_labels()
                image = segmentation_image(labels)
            elif fmt == "image2d":
                image = _image2d(volume, ext or ".png")
            else:
                image = to_sitk(volume)
            execute_writer(image, staged, compress)
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
    if extension(dst_path) == ".seg.nrrd":
        volume: Volume = read_labels(src, channel=channel, series_uid=series_uid)
    else:
        volume = read_volume(src, channel=channel, series_uid=series_uid)
    return write_volume(volume, dst_path, compress=compress)


def write_outputs(outputs: Sequence[tuple[Volume | str, str | os.PathLike[str]]]) -> list[Path]:
    """Write several outputs -- volumes (any `write_volume` format) and texts (reports, UTF-8) -- all or none
    (`core.atomic.staged_outputs`): an error or Ctrl-C while writing leaves no new file behind. An `OSError`
    becomes a `MedGenError` saying that none was written."""
    paths = [Path(path).expanduser().absolute() for _, path in outputs]
    try:
        with staged_outputs(paths) as staged:
            for (content, _), tmp in zip(outputs, staged, strict=True):
                if isinstance(content, str):
                    tmp.write_text(content, encoding="utf-8")
                else:
                    write_volume(content, tmp)
    except OSError as error:
        raise MedGenError(f"Could not write the outputs ({error}); none was written. Check the output paths "
                          "and free disk space.") from error
    return paths
