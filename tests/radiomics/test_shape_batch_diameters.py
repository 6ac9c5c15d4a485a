"""Diameters computed for a whole batch at once equal brute force over every mesh vertex of every crop.

The compiled kernel keeps only line-extreme vertices, prunes them with per-crop bounds along a set of directions
and measures planes widest first; these tests mix very different crops (elongated along a diagonal,
near-spherical, flat, single voxel, noise) in one batch, with anisotropic spacing, and also prune with a much
coarser direction set (a weaker, but still exact, bound).
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_medgen.radiomics import shape as shape_module
from napari_medgen.radiomics.shape import shape_features_batch

NAMES = ("Maximum3DDiameter", "Maximum2DDiameterSlice", "Maximum2DDiameterColumn", "Maximum2DDiameterRow")


def _brute(mask: np.ndarray, spacing_zyx: np.ndarray) -> list[float]:
    """Largest distances over all mesh vertices (midpoints between inside and outside voxel centres)."""
    padded = np.pad(mask, 1)
    pts = []
    for a in range(3):
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[a], hi[a] = slice(0, -1), slice(1, None)
        idx = np.argwhere(padded[tuple(lo)] != padded[tuple(hi)]).astype(float)
        idx[:, a] += 0.5
        pts.append(idx)
    v = np.concatenate(pts) * spacing_zyx
    d = np.sqrt(((v[:, None] - v[None]) ** 2).sum(-1))
    out = [d.max()]
    for a in range(3):
        out.append(np.where(np.isclose(v[:, None, a], v[None, :, a]), d, 0).max())
    return out


def _batch(rng: np.random.Generator) -> np.ndarray:
    shape = (11, 12, 13)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(float)
    masks = np.zeros((14, *shape), dtype=bool)
    centre = np.array(shape)[:, None, None, None] / 2 - 0.5
    rel = np.stack([zz, yy, xx]) - centre
    for k in range(6):  # noisy ellipsoids with random orientation
        rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        axes = rng.uniform(1.5, 6.0, 3)
        r = np.einsum("ij,jzyx->izyx", rot, rel)
        masks[k] = ((r / axes[:, None, None, None]) ** 2).sum(0) + rng.normal(0, 0.2, shape) < 1
    masks[6] = (rel**2).sum(0) < 4.6**2  # near-spherical: many candidates survive the pruning
    masks[7, 5, 2:9, 3:11] = rng.random((7, 8)) < 0.7  # one slice
    masks[8, 4, 6, 7] = True  # one voxel
    masks[9] = rng.random(shape) < 0.3  # noise touching every border
    masks[10, np.arange(10), np.arange(10), np.arange(10)] = True  # a diagonal line of voxels
    masks[11, 2:9, 3, 4] = True  # a straight line
    masks[12, 1:10, 1:11, 1:12] = True  # a box
    masks[13] = masks[0] | masks[8]
    return masks


@pytest.mark.parametrize("spacing_xyz", [(1.0, 1.0, 1.0), (0.7, 1.3, 2.1)])
@pytest.mark.parametrize("directions", [3, 1])
def test_batched_diameters_equal_brute_force(spacing_xyz: tuple[float, float, float], directions: int,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shape_module, "_DIRS_3D", shape_module._directions_3d(directions))
    masks = _batch(np.random.default_rng(12))
    got = shape_features_batch(masks, spacing_xyz)
    spacing_zyx = np.asarray(spacing_xyz[::-1])
    for k, mask in enumerate(masks):
        np.testing.assert_allclose([got[name][k] for name in NAMES], _brute(mask, spacing_zyx), rtol=1e-12,
                                   err_msg=f"crop {k}")


def test_batch_position_does_not_change_diameters() -> None:
    """A crop gives the same diameters alone and anywhere in a batch (keys never mix crops)."""
    masks = _batch(np.random.default_rng(5))
    spacing = (0.8, 0.9, 1.7)
    whole = shape_features_batch(masks, spacing)
    backwards = shape_features_batch(masks[::-1].copy(), spacing)
    for k in range(len(masks)):
        alone = shape_features_batch(masks[k:k + 1], spacing)
        for name in NAMES:
            assert whole[name][k] == pytest.approx(alone[name][0], rel=1e-12), (k, name)
            assert whole[name][k] == pytest.approx(backwards[name][len(masks) - 1 - k], rel=1e-12), (k, name)
