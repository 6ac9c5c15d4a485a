"""`Inpainter`: healthy-tissue inpainting of a 3D region on top of classical estimates (tumour removal).

Why this design. A plain harmonic (Laplace) fill is a strong baseline for the BraTS inpainting metric, but it is a
blur. Two classical estimates bring structure into the region: the contralateral hemisphere blended in the gradient
domain (`core.inpainting.mirror_harmonic_fill`), real anatomy where the brain is symmetric, and (models trained
with ``atlas``) the MNI152 atlas registered to the scan and blended the same way (`core.atlas.atlas_harmonic_fill`),
anatomy where the scan itself has none to offer. What none of them knows is *where* to trust which estimate and how
the tissue deviates from them; that is what this network learns. It sees the whole edited region with healthy
context on a coarse isotropic crop (``crop_size``^3 voxels of ``work_mm``; larger regions get a coarser grid, so a
250 cm3 oedema is still seen whole) and predicts one map per structured estimate and a residual:

* ``w_k`` in [0, 1]: how much of estimate k's detail to take (``E_k - H``; mirror, then atlas),
* ``r``: a smooth residual in normalised intensity units,

and the fine output is ``H + sum_k up(w_k) * (E_k - H) + up(r)`` inside the region (`combine`). The classical fine
detail survives, the network only adds what a classical fill cannot, and with ``w = r = 0`` it *is* the harmonic
fill.

Everything here reads nothing under the region (the challenge's voided input works as is): intensities are
normalised by the 0.5 / 99.5 percentiles of the brain voxels outside the region (`brain_range`), and every
estimate is built from the outside only. `prepare` is shared by training (`training.tasks.inpainter`) and
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

#: input channels: harmonic estimate, mirror-harmonic estimate, region fraction, brain fraction (+1 with the atlas
#: estimate, which comes after the mirror: `in_channels`)
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


def in_channels(atlas: bool) -> int:
    """Network input channels: the estimates (harmonic, mirror, [atlas]), region and brain."""
    return IN_CHANNELS + int(bool(atlas))


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
    atlas: np.ndarray | None = None  # fine, region filled by the registered atlas + harmonic correction
    atlas_r2: float | None = None  # how well the atlas explains the healthy tissue around the region
    atlas_note: str = ""  # why the atlas estimate fell back to the harmonic fill ("" when it was used)

    @property
    def estimates(self) -> list[np.ndarray]:
        """The structured estimates whose detail the network weighs, in channel order (mirror, [atlas])."""
        return [self.mirror] + ([] if self.atlas is None else [self.atlas])


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
            brain: np.ndarray | None = None, mirror_index: int | None = None, atlas: bool = False,
            tissue: dict[str, np.ndarray] | None = None, origin: Sequence[float] = (0.0, 0.0, 0.0),
            direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1)) -> InpaintInputs:
    """Normalise the scan from its healthy brain, build the classical estimates and the coarse network input.

    Nothing under ``region`` is read. ``mirror_index`` (the left-right symmetry plane, see
    `core.inpainting.estimate_mirror_index`) can be given to skip its estimation (training reuses it per scan).
    With ``atlas`` the MNI152 atlas estimate is added: ``tissue`` (registered tissue maps, `core.atlas.register_atlas`)
    can be given to skip the registration, else the atlas is registered to the healthy brain here, using the scan's
    ``origin`` and ``direction``. An atlas that cannot be registered or fitted falls back to the harmonic fill
    (``atlas_note`` says why).
    """
    from napari_medgen.core.inpainting import harmonic_fill, mirror_harmonic_fill

    region = np.asarray(region, dtype=bool)
    known, low, high, brain = healthy_brain(image, region, brain)
    norm = (known - low) / (high - low)
    norm[region] = 0.0
    spacing = tuple(float(s) for s in spacing_zyx)
    harmonic = harmonic_fill(norm, region, spacing_zyx=spacing, brain=brain, brain_aware=True)
    mirror = mirror_harmonic_fill(norm, region, spacing_zyx=spacing, brain=brain, mirror_index=mirror_index)
    atlas_fill, atlas_r2, note = None, None, ""
    if atlas:
        from napari_medgen.core.atlas import atlas_harmonic_fill

        atlas_fill, fit = atlas_harmonic_fill(norm, region, spacing_zyx=spacing, brain=brain, tissue=tissue,
                                              harmonic=harmonic, origin=origin, direction=direction)
        atlas_r2, note = (None if np.isnan(fit.r2) else fit.r2), fit.reason
    start, mm, steps = coarse_grid(region, spacing, work_mm, crop)
    estimates = [harmonic, mirror] + ([] if atlas_fill is None else [atlas_fill])
    channels = [sample_coarse(e, start, steps, crop) for e in estimates]
    channels += [sample_coarse(region.astype(np.float32), start, steps, crop),
                 sample_coarse(brain.astype(np.float32), start, steps, crop)]
    return InpaintInputs(harmonic, mirror, region, np.stack(channels).astype(np.float32), start, mm, steps, low, high,
                         atlas_fill, atlas_r2, note)


def combine(inputs: InpaintInputs, weight: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """The fine fill in normalised units: ``H + sum_k up(w_k) (E_k - H) + up(r)`` inside the region, H's values
    outside. ``weight`` is (k, n, n, n), one map per estimate in `InpaintInputs.estimates` (or (n, n, n) for one)."""
    weights = weight[None] if weight.ndim == 3 else weight
    estimates = inputs.estimates
    if len(weights) != len(estimates):
        raise InvalidInputError(f"The network gave {len(weights)} weight maps for {len(estimates)} estimates; the "
                                "inputs were prepared for another model.")
    points = np.argwhere(inputs.region).astype(np.float64)
    h = inputs.harmonic[inputs.region]
    values = h + to_fine(residual, points, inputs.grid_start, inputs.grid_steps)
    for w, estimate in zip(weights, estimates, strict=True):
        values += np.clip(to_fine(w, points, inputs.grid_start, inputs.grid_steps), 0.0, 1.0) * (
            estimate[inputs.region] - h)
    out = inputs.harmonic.copy()
    out[inputs.region] = values
    return out


@register_model("inpainter")
class Inpainter(HubModelMixin, nn.Module):
    """MONAI 3D U-Net from (harmonic, mirror, [atlas], region, brain) on the coarse crop to (one weight per
    structured estimate, residual)."""

    def __init__(
        self,
        channels: Sequence[int] = (16, 32, 64, 128),
        num_res_units: int = 1,
        crop_size: int = 64,
        work_mm: float = 2.0,
        atlas: bool = False,
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
                                       "crop_size": int(crop_size), "work_mm": float(work_mm), "atlas": bool(atlas)}
        #: structured estimates weighed by the network (mirror, [atlas])
        self.n_estimates = 1 + int(bool(atlas))
        self.unet = UNet(spatial_dims=3, in_channels=in_channels(atlas), out_channels=self.n_estimates + 1,
                         channels=channels,
                         strides=[2] * (len(channels) - 1), num_res_units=int(num_res_units), norm="instance")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, n, n, n) inputs -> (weights in [0, 1], (B, k, n, n, n); residual, (B, 1, n, n, n))."""
        out = self.unet(x)
        k = self.n_estimates
        # starts near w = 0.12 and a small residual: close to the harmonic fill, which is a good first answer
        return torch.sigmoid(out[:, :k] - 2.0), RESIDUAL_SCALE * out[:, k:]

    def blend(self, x: torch.Tensor) -> torch.Tensor:
        """The coarse prediction from coarse inputs (training and validation): ``H + sum_k w_k (E_k - H) + r``."""
        w, r = self(x)
        harmonic = x[:, :1]
        estimates = x[:, 1:1 + self.n_estimates]
        return harmonic + (w * (estimates - harmonic)).sum(dim=1, keepdim=True) + r

    def predict(self, inputs: InpaintInputs) -> tuple[np.ndarray, np.ndarray]:
        """(weights (k, n, n, n), residual (n, n, n)) for one prepared case (on the model's device, back on the
        CPU)."""
        if inputs.coarse.shape[0] != in_channels(self.config["atlas"]):
            raise InvalidInputError(f"The inputs have {inputs.coarse.shape[0]} channels; this model takes "
                                    f"{in_channels(self.config['atlas'])} (atlas={self.config['atlas']}).")
        device = next(self.parameters()).device
        with torch.no_grad():
            w, r = self(torch.from_numpy(inputs.coarse)[None].to(device))
        return w[0].float().cpu().numpy(), r[0, 0].float().cpu().numpy()


__all__ = ["IN_CHANNELS", "InpaintInputs", "Inpainter", "brain_range", "combine", "healthy_brain", "in_channels",
           "prepare"]
