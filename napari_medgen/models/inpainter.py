"""`Inpainter`: healthy-tissue inpainting of a 3D region on top of classical estimates (tumour removal).

Why this design. A plain harmonic (Laplace) fill is a strong baseline for the BraTS inpainting metric, and the
contralateral hemisphere blended in the gradient domain (`core.inpainting.mirror_harmonic_fill`) brings real
anatomy where the brain is symmetric. What neither knows is *where* to trust the mirror and how the tissue
deviates from a smooth interpolation; that is what this network learns. It sees the whole edited region with
healthy context on a coarse isotropic crop (``crop_size``^3 voxels of ``work_mm``; larger regions get a coarser
grid, so a 250 cm3 oedema is still seen whole) and predicts two maps:

* ``w`` in [0, 1]: how much of the mirror estimate's detail to take (``MH - H``),
* ``r``: a smooth residual in normalised intensity units,

and the fine output is ``H + up(w) * (MH - H) + up(r)`` inside the region (`combine`). The classical fine detail
survives, the network only adds what a classical fill cannot, and with ``w = r = 0`` it *is* the harmonic fill.

Everything here reads nothing under the region (the challenge's voided input works as is): intensities are
normalised by the 0.5 / 99.5 percentiles of the brain voxels outside the region (`brain_range`), and both
estimates are built from the outside only. `prepare` is shared by training (`training.tasks.inpainter`) and
inference (`pipelines.tumour_removal`), so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_medgen.errors import InvalidInputError
from napari_medgen.hub import HubModelMixin, register_model

#: input channels: harmonic estimate, mirror-harmonic estimate, region fraction, brain fraction
IN_CHANNELS = 4
#: healthy context (mm) kept around the region on each side of the coarse crop
CONTEXT_MM = 16.0
#: the residual head's output scale (normalised intensity units): training starts near the harmonic fill
RESIDUAL_SCALE = 0.1
#: intensity percentiles of the healthy brain that map to 0 and 1
RANGE_PERCENTILES = (0.5, 99.5)


def brain_range(known: np.ndarray, region: np.ndarray, brain: np.ndarray) -> tuple[float, float]:
    """(low, high) intensities of the healthy brain (outside the region) at `RANGE_PERCENTILES`."""
    values = known[brain & ~region]
    if values.size < 100:
        raise InvalidInputError("Too few brain voxels outside the region to normalise the scan; is the region the "
                                "whole brain?")
    low, high = (float(v) for v in np.percentile(values, RANGE_PERCENTILES))
    if not high > low:
        raise InvalidInputError("The brain outside the region is uniform; there is no tissue to inpaint from.")
    return low, high


def healthy_brain(image: np.ndarray, region: np.ndarray, brain: np.ndarray | None = None
                  ) -> tuple[np.ndarray, float, float, np.ndarray]:
    """(the scan as float32 with ``region`` zeroed, low, high, brain mask): the one definition of brain-normalised
    units (``(I - low) / (high - low)``, `brain_range`) shared by removal, synthesis and training; nothing under
    ``region`` is read."""
    from napari_medgen.core.inpainting import default_brain_mask

    known = np.asarray(image, dtype=np.float32).copy()
    known[region] = 0.0
    if brain is None:
        brain = default_brain_mask(known, region)
    low, high = brain_range(known, region, brain)
    return known, low, high, brain


@dataclass(frozen=True)
class InpaintInputs:
    """Everything the network and `combine` need, in normalised units (0 = low, 1 = high brain intensity)."""

    harmonic: np.ndarray  # fine (scan grid), float32, region filled harmonically (brain-aware)
    mirror: np.ndarray  # fine, region filled by mirror + harmonic correction
    region: np.ndarray  # fine bool
    coarse: np.ndarray  # (IN_CHANNELS, n, n, n) float32 network input
    grid_start: np.ndarray  # fine voxel coordinate (z, y, x) of coarse voxel 0
    grid_mm: float  # coarse voxel size (isotropic, mm)
    grid_steps: np.ndarray  # fine voxels per coarse voxel along z, y, x
    low: float
    high: float


def coarse_grid(region: np.ndarray, spacing_zyx: Sequence[float], work_mm: float, crop: int
                ) -> tuple[np.ndarray, float, np.ndarray]:
    """The coarse crop around ``region``: (start in fine voxels, effective mm per coarse voxel, fine voxels per
    coarse voxel per axis). The grid is centred on the region's box and coarsened until box + context fits."""
    coords = np.argwhere(region)
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    spacing = np.asarray(spacing_zyx, dtype=float)
    extent_mm = float(((hi - lo + 1) * spacing).max()) + 2 * CONTEXT_MM
    mm = max(float(work_mm), extent_mm / crop)
    steps = mm / spacing
    centre = (lo + hi) / 2.0
    start = centre - steps * (crop - 1) / 2.0
    return start, mm, steps


def sample_coarse(fine: np.ndarray, start: np.ndarray, steps: np.ndarray, crop: int, order: int = 1) -> np.ndarray:
    """``fine`` smoothed to the coarse voxel size (no aliasing) and sampled on the coarse grid (edges: nearest)."""
    from scipy import ndimage

    sigma = np.maximum((steps - 1.0) / 2.0, 0.0)
    # only the part of the scan the crop covers (+ the filter's reach) is smoothed
    lo = np.clip(np.floor(start - 4 * sigma - 1).astype(int), 0, np.asarray(fine.shape) - 1)
    hi = np.clip(np.ceil(start + steps * (crop - 1) + 4 * sigma + 2).astype(int), lo + 1, np.asarray(fine.shape))
    part = fine[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))].astype(np.float32)
    smooth = ndimage.gaussian_filter(part, sigma=sigma, mode="nearest") if sigma.any() else part
    axes = [start[a] - lo[a] + steps[a] * np.arange(crop) for a in range(3)]
    grid = np.meshgrid(*axes, indexing="ij")
    return ndimage.map_coordinates(smooth, grid, order=order, mode="nearest").astype(np.float32)


def to_fine(coarse: np.ndarray, points_zyx: np.ndarray, start: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Trilinear values of a coarse map at fine voxel coordinates ``points_zyx`` (N, 3)."""
    from scipy import ndimage

    index = (points_zyx - start) / steps
    return ndimage.map_coordinates(coarse, index.T, order=1, mode="nearest")


def prepare(image: np.ndarray, region: np.ndarray, spacing_zyx: Sequence[float], *, work_mm: float, crop: int,
            brain: np.ndarray | None = None, mirror_index: int | None = None) -> InpaintInputs:
    """Normalise the scan from its healthy brain, build both classical estimates and the coarse network input.

    Nothing under ``region`` is read. ``mirror_index`` (the left-right symmetry plane, see
    `core.inpainting.estimate_mirror_index`) can be given to skip its estimation (training reuses it per scan).
    """
    from napari_medgen.core.inpainting import harmonic_fill, mirror_harmonic_fill

    region = np.asarray(region, dtype=bool)
    known, low, high, brain = healthy_brain(image, region, brain)
    norm = (known - low) / (high - low)
    norm[region] = 0.0
    spacing = tuple(float(s) for s in spacing_zyx)
    harmonic = harmonic_fill(norm, region, spacing_zyx=spacing, brain=brain, brain_aware=True)
    mirror = mirror_harmonic_fill(norm, region, spacing_zyx=spacing, brain=brain, mirror_index=mirror_index)
    start, mm, steps = coarse_grid(region, spacing, work_mm, crop)
    channels = [sample_coarse(harmonic, start, steps, crop), sample_coarse(mirror, start, steps, crop),
                sample_coarse(region.astype(np.float32), start, steps, crop),
                sample_coarse(brain.astype(np.float32), start, steps, crop)]
    return InpaintInputs(harmonic, mirror, region, np.stack(channels).astype(np.float32), start, mm, steps, low, high)


def combine(inputs: InpaintInputs, weight: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """The fine fill in normalised units: ``H + up(w) (MH - H) + up(r)`` inside the region, H's values outside."""
    points = np.argwhere(inputs.region).astype(np.float64)
    w = to_fine(weight, points, inputs.grid_start, inputs.grid_steps)
    r = to_fine(residual, points, inputs.grid_start, inputs.grid_steps)
    out = inputs.harmonic.copy()
    h, m = inputs.harmonic[inputs.region], inputs.mirror[inputs.region]
    out[inputs.region] = h + np.clip(w, 0.0, 1.0) * (m - h) + r
    return out


@register_model("inpainter")
class Inpainter(HubModelMixin, nn.Module):
    """MONAI 3D U-Net from (harmonic, mirror, region, brain) on the coarse crop to (mirror weight, residual)."""

    def __init__(
        self,
        channels: Sequence[int] = (16, 32, 64, 128),
        num_res_units: int = 1,
        crop_size: int = 64,
        work_mm: float = 2.0,
    ) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        channels = [int(c) for c in channels]
        if len(channels) < 2 or min(channels) < 1:
            raise InvalidInputError(f"channels needs at least two positive widths; got {channels}.")
        multiple = 2 ** (len(channels) - 1)
        if crop_size < 8 or crop_size % multiple:
            raise InvalidInputError(f"crop_size must be a multiple of {multiple} (>= 8); got {crop_size}.")
        if not work_mm > 0:
            raise InvalidInputError(f"work_mm must be positive; got {work_mm}.")
        self.config: dict[str, Any] = {"channels": channels, "num_res_units": int(num_res_units),
                                       "crop_size": int(crop_size), "work_mm": float(work_mm)}
        self.unet = UNet(spatial_dims=3, in_channels=IN_CHANNELS, out_channels=2, channels=channels,
                         strides=[2] * (len(channels) - 1), num_res_units=int(num_res_units), norm="instance")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 4, n, n, n) inputs -> (mirror weight in [0, 1], residual), each (B, 1, n, n, n)."""
        out = self.unet(x)
        # starts near w = 0.12 and a small residual: close to the harmonic fill, which is a good first answer
        return torch.sigmoid(out[:, :1] - 2.0), RESIDUAL_SCALE * out[:, 1:]

    def predict(self, inputs: InpaintInputs) -> tuple[np.ndarray, np.ndarray]:
        """The two coarse maps for one prepared case (on the model's device, back on the CPU)."""
        device = next(self.parameters()).device
        with torch.no_grad():
            w, r = self(torch.from_numpy(inputs.coarse)[None].to(device))
        return w[0, 0].float().cpu().numpy(), r[0, 0].float().cpu().numpy()


__all__ = ["IN_CHANNELS", "InpaintInputs", "Inpainter", "brain_range", "combine", "healthy_brain", "prepare"]
