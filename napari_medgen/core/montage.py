"""Axial / coronal / sagittal PNG montages for reports, the demo and batch QA.

Volumes are first reoriented to LPS with SimpleITK so that every montage reads the same way
whatever the file's direction matrix (radiological convention: patient left on image right,
anterior up in axial views, superior up in coronal and sagittal views). Slices are drawn at their
physical aspect ratio, so anisotropic scans are not squashed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_medgen.core.volume import LabelMap, Volume
from napari_medgen.errors import InvalidInputError

# Distinct, colour-blind friendly overlay colours (label value -> RGB); cycles for larger values.
_LABEL_COLOURS = np.array(
    [
        [230, 159, 0],
        [86, 180, 233],
        [0, 158, 115],
        [240, 228, 66],
        [0, 114, 178],
        [213, 94, 0],
        [204, 121, 167],
    ],
    dtype=np.float32,
)


def _to_lps_arrays(volume: Volume, labels: LabelMap | None) -> tuple[np.ndarray, np.ndarray | None, tuple]:
    import SimpleITK as sitk

    def orient(arr: np.ndarray) -> tuple[np.ndarray, tuple]:
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
        img.SetSpacing(volume.spacing)
        img.SetOrigin(volume.origin)
        img.SetDirection(volume.direction)
        oriented = sitk.DICOMOrient(img, "LPS")
        return sitk.GetArrayFromImage(oriented), oriented.GetSpacing()

    image, spacing = orient(volume.array)
    label_arr = None
    if labels is not None:
        volume.require_same_grid(labels, "label map")
        label_arr, _ = orient(labels.array)
    return image, label_arr, spacing


def _window(image: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0) -> np.ndarray:
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.zeros_like(image, dtype=np.float32)
    lo, hi = np.percentile(finite, [low_pct, high_pct])
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((image.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def _overlay(gray: np.ndarray, labels: np.ndarray | None, alpha: float) -> np.ndarray:
    rgb = np.repeat(gray[..., None] * 255.0, 3, axis=-1)
    if labels is None:
        return rgb
    for value in np.unique(labels):
        if value == 0:
            continue
        colour = _LABEL_COLOURS[(int(value) - 1) % len(_LABEL_COLOURS)]
        sel = labels == value
        rgb[sel] = (1 - alpha) * rgb[sel] + alpha * colour
    return rgb


def _physical_resize(rgb: np.ndarray, row_mm: float, col_mm: float, pixel_mm: float):
    from PIL import Image

    rows, cols = rgb.shape[:2]
    size = (max(1, round(cols * col_mm / pixel_mm)), max(1, round(rows * row_mm / pixel_mm)))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).resize(size, Image.Resampling.NEAREST)


def montage_image(
    volume: Volume,
    labels: LabelMap | None = None,
    center_index: Sequence[int] | None = None,
    alpha: float = 0.45,
    panel_height: int = 256,
):
    """Build the three-view montage as a PIL image (axial | coronal | sagittal).

    ``center_index`` is a (z, y, x) index in the LPS-reoriented array; by default the centroid of
    the labels (so a lesion is in view) or the volume centre.
    """
    from PIL import Image

    image, label_arr, spacing = _to_lps_arrays(volume, labels)
    sx, sy, sz = spacing
    if center_index is None:
        if label_arr is not None and label_arr.any():
            center_index = [int(round(c)) for c in np.argwhere(label_arr).mean(axis=0)]
        else:
            center_index = [s // 2 for s in image.shape]
    z, y, x = (int(np.clip(c, 0, s - 1)) for c, s in zip(center_index, image.shape, strict=True))
    gray = _window(image)

    def view(sl: tuple, flip_rows: bool) -> np.ndarray:
        rgb = _overlay(gray[sl], None if label_arr is None else label_arr[sl], alpha)
        return rgb[::-1] if flip_rows else rgb

    # Physical extent per panel: choose one pixel size so all panels share the same height.
    extent_rows = max(image.shape[1] * sy, image.shape[0] * sz)
    pixel_mm = extent_rows / panel_height
    panels = [
        _physical_resize(view((z, slice(None), slice(None)), False), sy, sx, pixel_mm),  # axial
        _physical_resize(view((slice(None), y, slice(None)), True), sz, sx, pixel_mm),  # coronal
        _physical_resize(view((slice(None), slice(None), x), True), sz, sy, pixel_mm),  # sagittal
    ]
    gap = 4
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    height = max(p.height for p in panels)
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    offset = 0
    for panel in panels:
        canvas.paste(panel, (offset, (height - panel.height) // 2))
        offset += panel.width + gap
    return canvas


def save_montage(path: str | Path, volume: Volume, labels: LabelMap | None = None, **kwargs) -> Path:
    """Write the montage PNG atomically and return its path."""
    from napari_medgen.core.atomic import atomic_file

    out = Path(path)
    if out.suffix.lower() != ".png":
        raise InvalidInputError(f"Montages are PNG files; got '{out.name}'. Use a .png file name.")
    canvas = montage_image(volume, labels, **kwargs)
    with atomic_file(out) as tmp:
        canvas.save(tmp, format="PNG")
    return out


def save_montage_rows(path: str | Path, rows: Sequence[tuple[Volume, LabelMap | None]], **kwargs) -> Path:
    """Several montages stacked top to bottom (e.g. before / after an edit), all centred on the same voxel:
    the first row's label centroid unless ``center_index`` is given. Written atomically."""
    from PIL import Image

    from napari_medgen.core.atomic import atomic_file

    out = Path(path)
    if out.suffix.lower() != ".png" or not rows:
        raise InvalidInputError(f"Montages are PNG files of at least one row; got '{out.name}' with {len(rows)} rows.")
    if kwargs.get("center_index") is None:
        for _, labels in rows:
            if labels is not None and np.any(labels.array):
                _, label_arr, _ = _to_lps_arrays(labels, labels)
                kwargs["center_index"] = [int(round(c)) for c in np.argwhere(label_arr).mean(axis=0)]
                break
    images = [montage_image(volume, labels, **kwargs) for volume, labels in rows]
    canvas = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images) + 4 * (len(images) - 1)))
    top = 0
    for image in images:
        canvas.paste(image, (0, top))
        top += image.height + 4
    with atomic_file(out) as tmp:
        canvas.save(tmp, format="PNG")
    return out
