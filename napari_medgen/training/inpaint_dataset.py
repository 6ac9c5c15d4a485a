"""Training items for healthy-tissue inpainting, built the way the BraTS inpainting challenge builds its test masks.

An item is a region of *healthy* brain whose truth is known: a tumour shape (another training case's tumour,
flipped, rotated and rescaled) placed at least `GAP_VOXELS` from the scan's own (dilated) tumour and at least 75 %
inside the brain, then cut to the brain. Its inputs are made by `models.inpainter.prepare` from the scan with the
region hidden, exactly as at inference; its target is the true tissue on the same coarse grid.

Building an item costs a harmonic, a mirror-harmonic and (atlas models) an atlas-guided fill (about a second; the
atlas is registered once per scan, with the scan's tumour left out), so a pool is built once per run,
cached as one ``.npz`` beside the run's checkpoints (a resumed run reuses it), and items are drawn from it with
left-right / front-back flips.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_medgen.errors import InvalidInputError

#: voxels between the placed region and the scan's own tumour (challenge: at least 5 from the dilated tumour)
GAP_VOXELS = 6
MIN_BRAIN_FRACTION = 0.75
MIN_REGION_VOXELS = 300


@dataclass(frozen=True)
class Scan:
    """One training image (a sequence of a case), its tumour and its left-right symmetry plane."""

    name: str
    image: np.ndarray  # (z, y, x) float32
    tumour: np.ndarray  # bool
    brain: np.ndarray  # bool
    spacing_zyx: tuple[float, float, float]
    mirror_index: int
    labels: np.ndarray | None = None  # the full label map (sub-regions), kept when appearance is fitted
    tissue: dict[str, np.ndarray] | None = None  # the atlas registered to this scan (`core.atlas.register_atlas`)


def tumour_shapes(label_maps: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Tumour shapes to place: the whole tumour and the tumour core (labels 1, 3, 4) of each map, cropped."""
    shapes = []
    for labels in label_maps:
        for mask in (labels > 0, np.isin(labels, (1, 3, 4))):
            if mask.sum() >= MIN_REGION_VOXELS:
                coords = np.argwhere(mask)
                box = tuple(slice(int(a), int(b) + 1) for a, b in zip(coords.min(0), coords.max(0), strict=True))
                shapes.append(mask[box])
    if not shapes:
        raise InvalidInputError("No tumour shapes in the training labels (need label maps with tumours).")
    return shapes


def _augment_shape(shape: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    out = shape
    for axis in range(3):
        if rng.random() < 0.5:
            out = np.flip(out, axis)
    out = np.rot90(out, k=int(rng.integers(4)), axes=(1, 2))
    scale = float(rng.uniform(0.6, 1.3))
    out = ndimage.zoom(out.astype(np.float32), scale, order=1) >= 0.5
    return np.ascontiguousarray(out)


def place_region(scan: Scan, shape: np.ndarray, rng: np.random.Generator, tries: int = 60) -> np.ndarray | None:
    """The shape at a random place of healthy brain (challenge rules), cut to the brain; None if it never fits."""
    from scipy import ndimage

    forbidden = ndimage.binary_dilation(scan.tumour, iterations=GAP_VOXELS) if scan.tumour.any() else scan.tumour
    candidates = np.argwhere(scan.brain & ~forbidden)
    if len(candidates) == 0:
        return None
    size = np.asarray(shape.shape)
    for _ in range(tries):
        centre = candidates[rng.integers(len(candidates))]
        start = centre - size // 2
        if np.any(start < 1) or np.any(start + size > np.asarray(scan.image.shape) - 1):
            continue
        box = tuple(slice(int(a), int(a + n)) for a, n in zip(start, size, strict=True))
        if np.any(shape & forbidden[box]):
            continue
        inside = np.count_nonzero(shape & scan.brain[box])
        if inside < MIN_BRAIN_FRACTION * np.count_nonzero(shape) or inside < MIN_REGION_VOXELS:
            continue
        region = np.zeros(scan.image.shape, dtype=bool)
        region[box] = shape & scan.brain[box]
        return region
    return None


def make_item(scan: Scan, region: np.ndarray, work_mm: float, crop: int) -> dict[str, np.ndarray]:
    """Network input and coarse target of one placed region (with the atlas estimate when the scan has its
    registered atlas)."""
    from napari_medgen.models.inpainter import prepare, sample_coarse

    inputs = prepare(scan.image, region, scan.spacing_zyx, work_mm=work_mm, crop=crop, brain=scan.brain,
                     mirror_index=scan.mirror_index, atlas=scan.tissue is not None, tissue=scan.tissue)
    truth = (scan.image - inputs.low) / (inputs.high - inputs.low)
    target = sample_coarse(truth, inputs.grid_start, inputs.grid_steps, crop)
    return {"inputs": inputs.coarse.astype(np.float16), "target": target.astype(np.float16)[None]}


def build_pool(scans: Sequence[Scan], shapes: Sequence[np.ndarray], size: int, *, work_mm_range: tuple[float, float],
               crop: int, seed: int, progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """``size`` items, spread evenly over the scans; reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    inputs, targets, owners = [], [], []
    attempts = 0
    while len(inputs) < size:
        attempts += 1
        if attempts > 20 * size:
            raise InvalidInputError(f"Could only place {len(inputs)} of {size} regions in healthy brain; the scans' "
                                    "tumours leave too little room. Use fewer or smaller shapes.")
        scan = scans[len(inputs) % len(scans)]
        region = place_region(scan, _augment_shape(shapes[int(rng.integers(len(shapes)))], rng), rng)
        if region is None:
            continue
        item = make_item(scan, region, float(rng.uniform(*work_mm_range)), crop)
        inputs.append(item["inputs"])
        targets.append(item["target"])
        owners.append(scan.name)
        if progress is not None:
            progress(len(inputs), size)
    return {"inputs": np.stack(inputs), "target": np.stack(targets), "owners": np.array(owners)}


def pool_key(settings: dict[str, Any]) -> str:
    """A short hash of everything a pool depends on (scans, shapes, sizes, seed): a changed config rebuilds it."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def load_or_build_pool(path: Path, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The cached pool at ``path`` or a new one (written atomically)."""
    from napari_medgen.core.atomic import atomic_file

    if path.is_file():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    pool = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **pool)
    return pool


class InpaintItems:
    """Random items from a pool with left-right and front-back flips (a torch-style map dataset)."""

    def __init__(self, pool: dict[str, np.ndarray], samples_per_epoch: int, flip: bool = True) -> None:
        self.pool = pool
        self.samples_per_epoch = int(samples_per_epoch)
        self.flip = flip

    def __len__(self) -> int:
        return self.samples_per_epoch

    def get_item(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        import torch

        k = int(rng.integers(len(self.pool["inputs"])))
        x = self.pool["inputs"][k].astype(np.float32)
        y = self.pool["target"][k].astype(np.float32)
        if self.flip:
            for axis in (2, 3):  # y (front-back) and x (left-right); the mirror estimate stays valid under both
                if rng.random() < 0.5:
                    x, y = np.flip(x, axis), np.flip(y, axis)
        return {"inputs": torch.from_numpy(np.ascontiguousarray(x)),
                "target": torch.from_numpy(np.ascontiguousarray(y))}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get_item(index, np.random.default_rng(index))


__all__ = ["GAP_VOXELS", "InpaintItems", "Scan", "build_pool", "load_or_build_pool", "make_item", "place_region",
           "pool_key", "tumour_shapes"]
