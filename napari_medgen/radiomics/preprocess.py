"""Image preparation before feature computation: normalise, resample, crop, resegment and discretise.

The order and the grid arithmetic follow the pyradiomics documentation so that values agree with it:
normalisation is applied to the whole image, resampling uses a grid aligned to the mask's bounding box
(plus ``padDistance`` voxels) in the new spacing, resegmentation only changes the mask used for intensity
and texture features, and discretisation puts bin edges at multiples of ``binWidth`` (or splits the ROI range
into ``binCount`` equal bins).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from napari_medgen.core.volume import LabelMap, Volume, describe_labels
from napari_medgen.errors import InvalidInputError
from napari_medgen.radiomics.settings import RadiomicsSettings


@dataclass(frozen=True)
class PreparedROI:
    """Arrays ready for feature classes: image/mask cropped to the ROI bounding box, (z, y, x) order."""

    image: np.ndarray  # float64
    mask: np.ndarray  # bool, after resegmentation (intensity + texture classes)
    shape_mask: np.ndarray  # bool, before resegmentation (shape classes)
    spacing: tuple[float, float, float]  # (x, y, z) mm


def _to_sitk(vol: Volume):  # noqa: ANN202 - SimpleITK type
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(vol.array))
    img.SetSpacing(vol.spacing)
    img.SetOrigin(vol.origin)
    img.SetDirection(vol.direction)
    return img


def _normalize(img, settings: RadiomicsSettings):  # noqa: ANN001, ANN202
    """Whole-image z-score (SimpleITK Normalize), optional outlier clipping, then scale."""
    import SimpleITK as sitk

    out = sitk.Normalize(img)
    if settings.removeOutliers is not None:
        arr = sitk.GetArrayFromImage(out)
        limit = float(settings.removeOutliers)
        clipped = sitk.GetImageFromArray(np.clip(arr, -limit, limit))
        clipped.CopyInformation(out)
        out = clipped
    return out * float(settings.normalizeScale)


def _label_bbox(mask_arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower index and size of the mask bounding box in (x, y, z) order."""
    idx = np.nonzero(mask_arr)
    lower_zyx = np.array([int(i.min()) for i in idx])
    upper_zyx = np.array([int(i.max()) for i in idx])
    return lower_zyx[::-1].astype(float), (upper_zyx - lower_zyx + 1)[::-1].astype(float)


def _resample(img, mask_img, mask_arr: np.ndarray, settings: RadiomicsSettings):  # noqa: ANN001, ANN202
    """Resample image (chosen interpolator) and mask (nearest) on a grid cropped around the ROI.

    The new grid starts on a whole new-voxel index below the ROI's lower corner minus ``padDistance`` and
    its first voxel centre sits half a new voxel in from the original image corner, as pyradiomics does.
    """
    import SimpleITK as sitk

    spacing = np.array(mask_img.GetSpacing(), dtype=float)
    new_spacing = np.array(settings.resampledPixelSpacing, dtype=float)
    if new_spacing.shape != (3,):
        raise InvalidInputError(f"resampledPixelSpacing needs 3 values (x, y, z); got {tuple(new_spacing)}.")
    new_spacing = np.where(new_spacing == 0, spacing, new_spacing)
    if np.allclose(new_spacing, spacing):
        return img, mask_img
    ratio = spacing / new_spacing
    size = np.array(mask_img.GetSize(), dtype=float)
    lower, extent = _label_bbox(mask_arr)
    pad = settings.padDistance
    new_lo = np.floor((lower - 0.5) * ratio - pad)
    new_hi = np.ceil((lower + extent - 0.5) * ratio + pad)
    max_hi = np.ceil(size * ratio) - 1
    new_lo = np.maximum(new_lo, 0)
    new_hi = np.minimum(new_hi, max_hi)
    new_size = (new_hi - new_lo + 1).astype(int)
    origin_index = 0.5 * (new_spacing - spacing) / spacing + new_lo / ratio
    new_origin = mask_img.TransformContinuousIndexToPhysicalPoint(origin_index.tolist())
    interp = getattr(sitk, settings.interpolator or "sitkBSpline")
    rif = sitk.ResampleImageFilter()
    rif.SetOutputSpacing(new_spacing.tolist())
    rif.SetOutputDirection(mask_img.GetDirection())
    rif.SetSize([int(s) for s in new_size])
    rif.SetOutputOrigin(new_origin)
    rif.SetOutputPixelType(img.GetPixelID())
    rif.SetInterpolator(interp)
    out_img = rif.Execute(img)
    rif.SetOutputPixelType(mask_img.GetPixelID())
    rif.SetInterpolator(sitk.sitkNearestNeighbor)
    out_mask = rif.Execute(mask_img)
    return out_img, out_mask


def resegment(values: np.ndarray, settings: RadiomicsSettings) -> np.ndarray:
    """Boolean selector of ROI values kept by ``resegmentRange`` (absolute, relative or sigma mode)."""
    rng = settings.resegmentRange
    if rng is None:
        return np.ones(values.shape, dtype=bool)
    if len(rng) not in (1, 2):
        raise InvalidInputError(f"resegmentRange needs 1 or 2 values; got {rng}.")
    lo = float(rng[0])
    hi = float(rng[1]) if len(rng) == 2 else None
    if settings.resegmentMode == "relative":
        vmax = float(values.max())
        lo, hi = lo * vmax, (hi * vmax if hi is not None else None)
    elif settings.resegmentMode == "sigma":
        mean, std = float(values.mean()), float(values.std())
        lo, hi = mean + lo * std, (mean + hi * std if hi is not None else None)
    keep = values >= lo
    if hi is not None:
        keep &= values <= hi
    return keep


def _check_finite(values: np.ndarray) -> None:
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        raise InvalidInputError(
            "The image has NaN or Inf voxels inside the ROI; radiomics features would be undefined. "
            "Replace them (e.g. np.nan_to_num) or exclude them from the label first."
        )


def prepare(image: Volume, labels: LabelMap, label: int, settings: RadiomicsSettings) -> PreparedROI:
    """Validate inputs and produce the cropped arrays the feature classes work on."""
    if not isinstance(image, Volume) or not isinstance(labels, Volume):
        raise InvalidInputError("extract_features needs a Volume image and a LabelMap (napari_medgen.core.volume).")
    image.require_same_grid(labels)
    label_arr = np.asarray(labels.array)
    mask_arr = label_arr == label
    flat_idx = np.flatnonzero(mask_arr)
    if not flat_idx.size:
        present = [int(v) for v in np.unique(label_arr) if v != 0]
        raise InvalidInputError(
            f"Label {label} is not present in the label map (labels present: {describe_labels(present)}). "
            "Pass one of the present labels with label=..."
        )
    img_vals = np.asarray(image.array)
    needs_sitk = settings.normalize or settings.resampledPixelSpacing is not None
    spacing = image.spacing
    if needs_sitk:
        import SimpleITK as sitk

        _check_finite(img_vals[mask_arr])
        img = _to_sitk(image)
        mask_img = sitk.GetImageFromArray(mask_arr.astype(np.uint8))
        mask_img.CopyInformation(img)
        if settings.normalize:
            img = _normalize(img, settings)
        if settings.resampledPixelSpacing is not None:
            img, mask_img = _resample(img, mask_img, mask_arr, settings)
        img_vals = sitk.GetArrayFromImage(img)
        mask_arr = sitk.GetArrayFromImage(mask_img).astype(bool)
        spacing = tuple(float(s) for s in img.GetSpacing())
        flat_idx = np.flatnonzero(mask_arr)
        if not flat_idx.size:
            raise InvalidInputError("The ROI vanished after resampling; use a finer resampledPixelSpacing.")
    coords = np.unravel_index(flat_idx, mask_arr.shape)  # bounding box from the ROI voxels only
    sl = tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)
    crop_img = np.asarray(img_vals[sl], dtype=np.float64)
    crop_mask = np.ascontiguousarray(mask_arr[sl])
    if not needs_sitk:
        _check_finite(crop_img[crop_mask])
    dims = sum(int(s.stop - s.start > 1) for s in sl)
    if dims < settings.minimumROIDimensions:
        raise InvalidInputError(
            f"The ROI spans {dims} dimension(s) but minimumROIDimensions={settings.minimumROIDimensions}; "
            "use a larger label or lower minimumROIDimensions."
        )
    n_vox = int(crop_mask.sum())
    if settings.minimumROISize is not None and n_vox < settings.minimumROISize:
        raise InvalidInputError(f"The ROI has {n_vox} voxels, fewer than minimumROISize={settings.minimumROISize}.")
    seg_mask = crop_mask
    if settings.resegmentRange is not None:
        keep = resegment(crop_img[crop_mask], settings)
        seg_mask = np.zeros_like(crop_mask)
        seg_mask[crop_mask] = keep
        if not seg_mask.any():
            raise InvalidInputError(
                f"resegmentRange {settings.resegmentRange} ({settings.resegmentMode}) removes every ROI voxel; "
                "widen the range."
            )
    shape_mask = seg_mask if settings.resegmentShape else crop_mask
    return PreparedROI(crop_img, seg_mask, shape_mask, spacing)  # type: ignore[arg-type]


def bin_edges(values: np.ndarray, settings: RadiomicsSettings) -> np.ndarray:
    """Histogram edges for the ROI values: fixed bin width anchored at multiples of binWidth, or binCount bins.

    Same arithmetic as pyradiomics (``min - min % binWidth`` and ``np.arange``), so values that sit exactly
    on an edge fall in the same bin.
    """
    if settings.binCount is not None:
        edges = np.histogram_bin_edges(values, bins=int(settings.binCount))
        edges[-1] += 1
        return edges
    vmin, vmax = values.min(), values.max()
    width = float(settings.binWidth)
    low = vmin - vmin % width
    edges = np.arange(low, vmax + 2 * width, width)
    if len(edges) == 1:
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    return edges


def discretize_values(values: np.ndarray, starts: np.ndarray, settings: RadiomicsSettings) -> np.ndarray:
    """Gray levels (1..Ng) of ROI values of several crops, each binned on its own (as pyradiomics would).

    Crop k owns ``values[starts[k]:starts[k + 1]]``. The edges of each crop are exactly those of
    `bin_edges` (``np.digitize`` semantics: level j when edge[j-1] <= value < edge[j]); the bin of every
    value is guessed arithmetically for all crops at once and then checked against those edges.
    """
    n_crops = len(starts) - 1
    s0 = starts[:-1]
    counts = np.diff(starts)
    crop = np.repeat(np.arange(n_crops), counts)
    edge_list = [bin_edges(values[starts[k]:starts[k + 1]], settings) for k in range(n_crops)]
    n_edges = np.array([len(e) for e in edge_list])
    offset = np.concatenate([[0], np.cumsum(n_edges)[:-1]])
    edges = np.concatenate(edge_list)
    first = edges[offset]
    width = (edges[offset + 1] - first)  # all bins but the binCount top one share this width
    base = offset[crop]
    top = (n_edges - 2)[crop]
    j = np.clip(np.floor((values - first[crop]) / width[crop]), 0, top).astype(np.intp)
    j += base  # index of the guessed lower edge in ``edges``
    ok = values >= edges[j]
    ok &= values < edges[j + 1]
    if not ok.all():  # rounding put a value one bin off: step it towards its true bin
        lo = base[~ok]
        hi = lo + (n_edges - 2)[crop[~ok]]
        jj, vv = j[~ok], values[~ok]
        for _ in range(2):
            jj -= (vv < edges[jj]) & (jj > lo)
            jj += (vv >= edges[jj + 1]) & (jj < hi)
        j[~ok] = jj
        ok = (values >= edges[j]) & (values < edges[j + 1])
    out = j - base + 1
    if not ok.all():  # a guess more than two bins off (never seen): redo those crops with np.digitize
        for k in np.unique(crop[~ok]):
            out[s0[k]:starts[k + 1]] = np.digitize(values[s0[k]:starts[k + 1]], edge_list[k])
    return out


def discretize(image: np.ndarray, mask: np.ndarray, settings: RadiomicsSettings) -> np.ndarray:
    """Integer gray levels 1..Ng inside the mask (0 outside)."""
    values = image[mask]
    out = np.zeros(image.shape, dtype=np.int32)
    out[mask] = discretize_values(values, np.array([0, values.size]), settings)
    return out


def warn_nan(name: str, why: str) -> None:
    """Warn once per call that a feature is undefined for this ROI (the value is NaN, like pyradiomics)."""
    warnings.warn(f"Radiomics feature {name} is NaN: {why}", RuntimeWarning, stacklevel=3)
