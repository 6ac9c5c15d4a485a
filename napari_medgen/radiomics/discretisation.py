"""Is the grey-level discretisation meaningful for this ROI? pyradiomics' default fixed bin width (25) suits CT in
HU and raw MR, but puts a whole tumour of a z-scored or [0, 1] scan into one or two bins, where entropy and
uniformity say nothing. Values stay pyradiomics-exact; the user is told, with a bin width that would work."""

from __future__ import annotations

import numpy as np

from napari_medgen.core.volume import Volume
from napari_medgen.radiomics.settings import RadiomicsSettings

#: fewer occupied grey-level bins than this make texture features near-degenerate (a warning says so)
MIN_OCCUPIED_BINS = 8
TEXTURE_CLASSES = ("glcm", "glrlm", "glszm", "gldm", "ngtdm")


def discretisation_warning(image: Volume, region: np.ndarray, settings: RadiomicsSettings) -> str | None:
    """A warning when the fixed bin width puts the ROI into fewer than `MIN_OCCUPIED_BINS` grey levels: the
    pyradiomics default (binWidth 25) suits CT in HU or raw MR, not z-scored or [0, 1] scans, where a whole tumour
    falls into one bin and entropy / uniformity become meaningless. The values stay pyradiomics-exact; the user
    is told which bin width would resolve the ROI."""
    if settings.binCount is not None or settings.normalize or settings.resampledPixelSpacing is not None:
        return None
    values = np.asarray(image.array)[region].astype(np.float64) + settings.voxelArrayShift
    if values.size == 0:
        return None
    occupied = np.unique(np.floor(values / settings.binWidth)).size
    if occupied >= MIN_OCCUPIED_BINS:
        return None
    low, high = float(values.min()), float(values.max())
    suggestion = (high - low) / 32 if high > low else None
    hint = (f"set binWidth to about {suggestion:.3g} (the ROI's range / 32) or binCount: 32 in a params file"
            if suggestion else "the ROI has a single intensity")
    return (f"Only {occupied} grey level(s) occupied with binWidth {settings.binWidth:g} on this ROI (intensities "
            f"{low:.3g} to {high:.3g}; the scan looks normalised): texture features are near-degenerate. To "
            f"resolve the texture, {hint}.")
