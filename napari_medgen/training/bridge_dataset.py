"""Training items of the texture bridge: tumour (synthesis) samples and healthy (removal) samples.

Seed 003 trains synthesis and removal jointly. Every item is a patch of a normalised scan plus an edited
region ``mask``; the condition image is the patch with the region filled with `FILL_VALUE`.

* **Synthesis** (probability ``1 - removal_fraction``): a patch centred on a tumour voxel; the region is the
  tumour inside the patch, the target the real patch, and the condition its texture features. The
  patches come from a pool drawn once per training run (``pool_size``) whose features are computed in one
  radiomics batch; features are computed on exactly the region the model must paint, so every patch of a
  large tumour is a distinct (region, texture) example.
* **Removal**: a patch of healthy brain at least half a patch diagonal away from any tumour voxel, with
  a tumour region from the pool pasted into it (clipped to the foreground); the target is the untouched
  healthy tissue and there are no features. This is how "remove the tumour" is learned without pairs.

Random flips apply to both (texture features are invariant to them: radiomics averages symmetric
directions). All randomness comes from the ``rng`` of `get_item`, so runs and resumptions are exact.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from napari_medgen.errors import InvalidInputError
from napari_medgen.models.bridge_unet import FILL_VALUE
from napari_medgen.radiomics.conditioning import FeatureNormalizer
from napari_medgen.radiomics.texture_condition import MIN_TEXTURE_VOXELS, texture_feature_names, texture_features
from napari_medgen.training.datasets import CasePair, LoadedCase, binary_relabel, load_case

#: the value the edited region gets in the condition image (network range [-1, 1])


def _crop(array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    return array[tuple(slice(int(s), int(s) + int(n)) for s, n in zip(start, size, strict=True))]


def _window(centre: Sequence[int], size: Sequence[int], shape: Sequence[int]) -> list[int]:
    """Start of a window of ``size`` around ``centre`` kept inside ``shape``."""
    return [min(max(int(c) - n // 2, 0), d - n) for c, n, d in zip(centre, size, shape, strict=True)]


class BridgePatches:
    """Synthesis and removal items for `BridgeTask` (see the module docstring)."""

    def __init__(
        self,
        pairs: Sequence[CasePair],
        *,
        patch_size: Sequence[int],
        normalize: Callable[[np.ndarray], np.ndarray],
        samples_per_epoch: int,
        removal_fraction: float = 0.5,
        pool_size: int = 512,
        min_region_voxels: int = 64,
        random_flip: bool = True,
        seed: int = 0,
        spacing_xyz: tuple[float, float, float] = (1.0, 1.0, 1.0),
        normalizer: FeatureNormalizer | None = None,
    ) -> None:
        if not pairs:
            raise InvalidInputError("The training split has no cases; add data or lower val/test fractions.")
        if not 0.0 <= removal_fraction <= 1.0:
            raise InvalidInputError(f"removal_fraction must be in [0, 1]; got {removal_fraction}.")
        if len(patch_size) != 3 or min(patch_size) < 8:
            raise InvalidInputError(f"patch_size needs 3 sizes >= 8; got {list(patch_size)}.")
        self.pairs = list(pairs)
        self.patch_size = tuple(int(s) for s in patch_size)
        self.normalize = normalize
        self.samples_per_epoch = int(samples_per_epoch)
        self.removal_fraction = float(removal_fraction)
        self.min_region_voxels = max(int(min_region_voxels), MIN_TEXTURE_VOXELS)
        self.random_flip = bool(random_flip)
        self.spacing_xyz = spacing_xyz
        self._cases: OrderedDict[int, tuple[LoadedCase, np.ndarray]] = OrderedDict()
        self.pool_images, self.pool_masks, self.pool_features = self._draw_pool(int(pool_size), seed)
        #: fitted on the pool unless given (held-out data use the training one); items carry normalised features
        self.normalizer = normalizer or FeatureNormalizer.fit(texture_feature_names(), self.pool_features)
        self._normalised = self.normalizer.transform(self.pool_features).astype(np.float32)

    def __len__(self) -> int:
        return self.samples_per_epoch

    # ---- cases --------------------------------------------------------------------------------------
    def case(self, index: int) -> tuple[LoadedCase, np.ndarray]:
        """The loaded case and its healthy patch centres (cached; every case stays in memory)."""
        if index not in self._cases:
            from scipy import ndimage

            data = load_case(self.pairs[index], normalize=self.normalize, relabel=binary_relabel)
            foreground = data.image > data.image.min()
            distance = ndimage.distance_transform_edt(data.labels == 0)
            half = np.asarray(self.patch_size) // 2
            inside = np.zeros_like(foreground)
            inside[tuple(slice(h, d - (n - h) + 1) for h, n, d in zip(half, self.patch_size, data.image.shape,
                                                                        strict=True))] = True
            radius = 0.5 * float(np.linalg.norm(self.patch_size))
            healthy = np.argwhere(foreground & inside & (distance > radius)).astype(np.int32)
            self._cases[index] = (data, healthy)
        return self._cases[index]

    # ---- the tumour pool ----------------------------------------------------------------------------
    def _draw_pool(self, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if size < 1:
            raise InvalidInputError(f"pool_size must be >= 1; got {size}.")
        rng = np.random.default_rng([seed, 0xB41D])
        images, masks = [], []
        with_tumour = [i for i in range(len(self.pairs)) if len(self.case(i)[0].foreground)]
        if not with_tumour:
            raise InvalidInputError("No training case has a labelled tumour; the texture model needs tumours.")
        attempts = 0
        while len(images) < size and attempts < 20 * size:
            attempts += 1
            data, _ = self.case(with_tumour[len(images) % len(with_tumour)])
            centre = data.foreground[rng.integers(len(data.foreground))]
            start = _window(centre, self.patch_size, data.image.shape)
            mask = _crop(data.labels, start, self.patch_size) > 0
            if int(mask.sum()) < self.min_region_voxels:
                continue
            images.append(_crop(data.image, start, self.patch_size).astype(np.float32))
            masks.append(mask)
        if not images:
            raise InvalidInputError(
                f"No tumour patch has {self.min_region_voxels} labelled voxels; lower data.min_region_voxels."
            )
        image_stack, mask_stack = np.stack(images), np.stack(masks)
        features = texture_features(image_stack, mask_stack, self.spacing_xyz)
        keep = np.isfinite(features).all(axis=1)
        if not keep.any():
            raise InvalidInputError("Texture features could not be computed for any tumour patch.")
        return image_stack[keep], mask_stack[keep], features[keep]

    # ---- items ------------------------------------------------------------------------------------------
    def _healthy_patch(self, rng: np.random.Generator) -> np.ndarray:
        for _ in range(8 * len(self.pairs)):
            data, healthy = self.case(int(rng.integers(len(self.pairs))))
            if len(healthy):
                centre = healthy[rng.integers(len(healthy))]
                return _crop(data.image, _window(centre, self.patch_size, data.image.shape), self.patch_size)
        raise InvalidInputError(
            "No case has a healthy region a patch away from its tumour; use smaller patches or removal_fraction 0."
        )

    def get_item(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """``{"image", "condition", "mask": (1, *patch) tensors, "features": (F,) normalised, "synthesis": bool}``."""
        import torch

        del index  # every item is drawn from rng (the trainer seeds it per epoch and index)
        removal = rng.random() < self.removal_fraction
        pick = int(rng.integers(len(self.pool_masks)))
        if removal:
            image = np.asarray(self._healthy_patch(rng), dtype=np.float32)
            mask = self.pool_masks[pick].copy()
            if self.random_flip:
                mask = np.flip(mask, axis=tuple(a for a in range(3) if rng.random() < 0.5))
            mask &= image > image.min()
            features = np.zeros(self.pool_features.shape[1], dtype=np.float32)
        else:
            image, mask, features = self.pool_images[pick], self.pool_masks[pick], self._normalised[pick]
        axes = tuple(a for a in range(3) if self.random_flip and rng.random() < 0.5)
        image, mask = np.flip(image, axis=axes), np.flip(mask, axis=axes)
        condition = np.where(mask, np.float32(FILL_VALUE), image)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)[None]),
            "condition": torch.from_numpy(np.ascontiguousarray(condition, dtype=np.float32)[None]),
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)[None]),
            "features": torch.from_numpy(np.asarray(features, dtype=np.float32)),
            "synthesis": torch.tensor(not removal),
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get_item(index, np.random.default_rng(index))


__all__ = ["FILL_VALUE", "BridgePatches"]
