"""3D shape features: the marching-cubes case table, exact mesh volume/area, diameters and the batched API."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from napari_medgen.errors import DimensionError, InvalidInputError
from napari_medgen.radiomics import marching_cubes as mc
from napari_medgen.radiomics.shape import FEATURES, shape_features, shape_features_batch

SPACINGS_ZYX = [(1.0, 1.0, 1.0), (1.0, 1.7, 2.3), (6.5, 0.78125, 0.78125)]


def _cube(config: int) -> np.ndarray:
    """The 2x2x2 mask whose single cube has ``config``."""
    mask = np.zeros((2, 2, 2), dtype=bool)
    for c in range(8):
        if (config >> c) & 1:
            mask[tuple(mc.CORNER_OFFSETS[c])] = True
    return mask


def _random_masks(rng: np.random.Generator, n: int, max_size: int = 9) -> list[np.ndarray]:
    """Noisy masks: full of ambiguous cube configurations (the hard case for the mesh)."""
    out = []
    while len(out) < n:
        m = rng.random(rng.integers(1, max_size, 3)) < rng.uniform(0.2, 0.8)
        if m.any():
            out.append(m)
    return out


def _blobs(rng: np.random.Generator, n: int, size: int = 16) -> np.ndarray:
    from scipy import ndimage

    zz, yy, xx = np.mgrid[:size, :size, :size] - (size - 1) / 2
    r2 = (zz**2 + yy**2 + xx**2) / (size / 2) ** 2
    out = np.zeros((n, size, size, size), dtype=bool)
    for i in range(n):
        field = ndimage.gaussian_filter(rng.normal(size=(size,) * 3), 2.0)
        out[i] = field / field.std() - 2.5 * r2 + rng.uniform(0.3, 1.3) > 0
    return out


def _vertices(mask: np.ndarray, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """All mesh vertices (midpoints of edges between an inside and an outside voxel), physical units."""
    padded = np.pad(mask, 1)
    pts = []
    for a in range(3):
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[a], hi[a] = slice(0, -1), slice(1, None)
        idx = np.argwhere(padded[tuple(lo)] != padded[tuple(hi)]).astype(float)
        idx[:, a] += 0.5
        pts.append(idx)
    return np.concatenate(pts) * np.asarray(spacing_zyx)


def _brute_diameters(mask: np.ndarray, spacing_zyx: tuple[float, float, float]) -> list[float]:
    v = _vertices(mask, spacing_zyx)
    d = np.sqrt(((v[:, None] - v[None]) ** 2).sum(-1))
    out = [d.max()]
    for a in range(3):
        same = np.isclose(v[:, None, a], v[None, :, a])
        out.append(np.where(same, d, 0).max())
    return out


def test_case_table_is_a_surface_over_the_crossed_edges() -> None:
    table = mc.triangle_table()
    assert len(table) == 256 and table[0] == () and table[255] == ()
    for config, tris in enumerate(table):
        crossed = {i for i, (a, b) in enumerate(mc.EDGES) if ((config >> a) & 1) != ((config >> b) & 1)}
        used = {e for t in tris for e in t}
        assert used == crossed, config
        # every triangle side is either shared with another triangle or lies on a cube face (the polygon rim)
        sides: dict[frozenset, int] = {}
        for t in tris:
            assert len(set(t)) == 3
            for u, v in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0])):
                sides[frozenset((u, v))] = sides.get(frozenset((u, v)), 0) + 1
        for side, count in sides.items():
            assert count <= 2, (config, side)
    # rotations and complements of the 15 base cases leave nothing uncovered and at most 5 triangles per cube
    assert max(len(t) for t in table) == 5


@pytest.mark.parametrize("spacing", SPACINGS_ZYX)
def test_every_single_cube_matches_pyradiomics(spacing: tuple[float, float, float]) -> None:
    cshape = pytest.importorskip("radiomics._cshape")
    const, _ = mc.volume_tables()
    area = mc.area_table(spacing)
    for config in range(256):
        ref_area, ref_volume, _ = cshape.calculate_coefficients(_cube(config), np.asarray(spacing))
        assert area[config] == pytest.approx(ref_area, rel=1e-12, abs=1e-12), config
        assert const[config] / 48 * np.prod(spacing) == pytest.approx(ref_volume, rel=1e-12, abs=1e-12), config


def test_single_voxel_is_the_face_centre_octahedron() -> None:
    s = (2.0, 0.5, 1.5)  # x, y, z
    f = shape_features(np.ones((1, 1, 1), bool), s)
    a, b, c = 0.5 * np.array(s)
    assert f["MeshVolume"] == pytest.approx(4 / 3 * a * b * c)
    assert f["SurfaceArea"] == pytest.approx(4 * np.sqrt((a * b) ** 2 + (b * c) ** 2 + (a * c) ** 2))
    assert f["VoxelVolume"] == pytest.approx(1.5)
    assert f["Maximum3DDiameter"] == pytest.approx(2.0)
    assert f["Maximum2DDiameterSlice"] == pytest.approx(2.0)  # the x, y face centres: 2 apart along x
    assert f["MajorAxisLength"] == 0.0 and np.isnan(f["Elongation"])


def test_table_lookup_equals_explicit_mesh_with_any_origin() -> None:
    """The vectorised sums (constant + position-linear term) against triangles built cube by cube."""
    rng = np.random.default_rng(5)
    table = mc.triangle_table()
    mid = mc.CORNER_OFFSETS[[a for a, _ in mc.EDGES]] + mc.CORNER_OFFSETS[[b for _, b in mc.EDGES]]
    for mask in _random_masks(rng, 10):
        spacing = tuple(rng.uniform(0.5, 2.0, 3))
        origin = rng.integers(-3, 4, 3)
        configs = mc.configurations(mask[None])[0]
        volume = area = 0.0
        for pos in np.argwhere((configs != 0) & (configs != 255)):
            for t in table[configs[tuple(pos)]]:
                p = (mid[list(t)] / 2 + pos - origin) * spacing
                volume += np.linalg.det(p) / 6
                area += 0.5 * np.linalg.norm(np.cross(p[1] - p[0], p[2] - p[0]))
        vol, ar = mc.mesh_volume_area(mask[None], spacing, origins=origin[None])
        assert vol[0] == pytest.approx(volume, rel=1e-10, abs=1e-10)
        assert ar[0] == pytest.approx(area, rel=1e-10)


def test_noisy_masks_match_pyradiomics_mesh_and_diameters() -> None:
    cshape = pytest.importorskip("radiomics._cshape")
    rng = np.random.default_rng(11)
    for mask in _random_masks(rng, 60):
        spacing_xyz = tuple(float(s) for s in rng.uniform(0.4, 3.0, 3))
        spacing_zyx = np.array(spacing_xyz[::-1])
        # embed off-centre in a larger array: the mesh origin must follow the ROI's bounding box, as in pyradiomics
        big = np.zeros(np.array(mask.shape) + 4, dtype=bool)
        off = rng.integers(0, 5, 3)
        big[off[0]:off[0] + mask.shape[0], off[1]:off[1] + mask.shape[1], off[2]:off[2] + mask.shape[2]] = mask
        box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(big))
        ref_area, ref_volume, diam = cshape.calculate_coefficients(np.pad(big[box], 1), spacing_zyx)
        got = shape_features(big, spacing_xyz)
        assert got["MeshVolume"] == pytest.approx(ref_volume, rel=1e-10, abs=1e-10)
        assert got["SurfaceArea"] == pytest.approx(ref_area, rel=1e-10)
        ref_diam = (diam[3], diam[0], diam[1], diam[2])  # pyradiomics order: slice, column, row, 3D
        ours = [got[k] for k in ("Maximum3DDiameter", "Maximum2DDiameterSlice", "Maximum2DDiameterColumn",
                                 "Maximum2DDiameterRow")]
        np.testing.assert_allclose(ours, ref_diam, rtol=1e-12)


def test_all_features_match_pyradiomics_extractor() -> None:
    radiomics = pytest.importorskip("radiomics")
    import logging

    import SimpleITK as sitk
    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    radiomics.setVerbosity(logging.ERROR)
    rng = np.random.default_rng(2)
    spacing = (0.8, 1.1, 2.5)
    labels = np.zeros((14, 20, 18), dtype=np.uint8)
    labels[3:11, 4:16, 2:15] = (_blobs(rng, 1, 16)[0][4:12, 2:14, 1:14] | (rng.random((8, 12, 13)) < 0.15))
    image = sitk.GetImageFromArray(rng.normal(100, 10, labels.shape))
    mask = sitk.GetImageFromArray(labels)
    for im in (image, mask):
        im.SetSpacing(spacing)
    ext = featureextractor.RadiomicsFeatureExtractor()
    ext.disableAllFeatures()
    ext.enableFeatureClassByName("shape")
    ref = {k.removeprefix("original_shape_"): float(v) for k, v in ext.execute(image, mask).items()
           if k.startswith("original_shape_")}
    got = shape_features(labels.astype(bool), spacing)
    assert set(ref) == set(FEATURES)
    for name in FEATURES:
        assert got[name] == pytest.approx(ref[name], rel=1e-9), name


@pytest.mark.parametrize("spacing_zyx", SPACINGS_ZYX)
def test_diameters_equal_brute_force_over_all_vertices(spacing_zyx: tuple[float, float, float]) -> None:
    rng = np.random.default_rng(7)
    masks = _random_masks(rng, 12, 8) + list(_blobs(rng, 3, 12))
    masks += [np.ones((1, 1, 6), bool), np.ones((1, 5, 4), bool), np.eye(5, dtype=bool)[None]]
    for mask in masks:
        got = shape_features(mask, spacing_zyx[::-1])
        ours = [got[k] for k in ("Maximum3DDiameter", "Maximum2DDiameterSlice", "Maximum2DDiameterColumn",
                                 "Maximum2DDiameterRow")]
        np.testing.assert_allclose(ours, _brute_diameters(mask, spacing_zyx), rtol=1e-12)


@pytest.mark.parametrize("directions", [3, 1])
def test_ball_diameters_and_mesh(directions: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A digital ball keeps many near-diametral candidates (the pruning can drop few of them). Its face centres
    lie within r + 1/2 of the centre and reach it along the axes, so every diameter is exactly 2r + 1 voxels."""
    import napari_medgen.radiomics.shape as shape_module

    monkeypatch.setattr(shape_module, "_DIRS_3D", shape_module._directions_3d(directions))
    r = 9
    zz, yy, xx = np.mgrid[-r:r + 1, -r:r + 1, -r:r + 1]
    ball = zz**2 + yy**2 + xx**2 <= r * r
    got = shape_features(ball, (1.0, 1.0, 1.0))
    for name in ("Maximum3DDiameter", "Maximum2DDiameterSlice", "Maximum2DDiameterColumn", "Maximum2DDiameterRow"):
        assert got[name] == pytest.approx(2 * r + 1, rel=1e-12), name
    cshape = pytest.importorskip("radiomics._cshape")
    ref_area, ref_volume, _ = cshape.calculate_coefficients(np.pad(ball, 1), np.ones(3))
    assert got["MeshVolume"] == pytest.approx(ref_volume, rel=1e-12)
    assert got["SurfaceArea"] == pytest.approx(ref_area, rel=1e-12)


def test_batch_equals_single_masks_and_empty_rows_are_nan() -> None:
    rng = np.random.default_rng(3)
    blobs = _blobs(rng, 6, 12)
    batch = np.zeros((10, 14, 15, 16), dtype=bool)
    for i, b in enumerate(blobs):
        o = rng.integers(0, 3, 3)
        batch[i, o[0]:o[0] + 12, o[1]:o[1] + 12, o[2]:o[2] + 12] = b
    batch[6, 3, 4, 5] = True  # single voxel
    batch[7, 5, 2:9, 3:12] = rng.random((7, 9)) < 0.7  # one slice
    # batch[8] stays empty
    batch[9] = rng.random((14, 15, 16)) < 0.4  # noise touching every border
    spacing = (0.7, 1.3, 2.0)
    frozen = batch.copy()
    batch.setflags(write=False)
    out = shape_features_batch(batch, spacing)
    assert np.array_equal(batch, frozen)
    assert set(out) == set(FEATURES) and all(v.shape == (10,) for v in out.values())
    for i in range(10):
        single = shape_features(batch[i], spacing)
        for name in FEATURES:
            if i == 8:
                assert np.isnan(out[name][i]) and np.isnan(single[name])
            else:
                assert out[name][i] == pytest.approx(single[name], rel=1e-12, nan_ok=True), (i, name)


def test_chunked_batch_equals_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    import napari_medgen.radiomics.shape as shape_module

    rng = np.random.default_rng(4)
    masks = _blobs(rng, 5, 10)
    whole = shape_features_batch(masks, (1.0, 1.0, 1.0))
    monkeypatch.setattr(shape_module, "_CHUNK_VOXELS", 1)
    chunked = shape_features_batch(masks, (1.0, 1.0, 1.0))
    for name in FEATURES:
        np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-12)


def test_bad_inputs_raise_medgen_errors() -> None:
    with pytest.raises(DimensionError, match="batch"):
        shape_features_batch(np.ones((3, 3, 3), bool), (1, 1, 1))
    with pytest.raises(DimensionError, match="3D"):
        shape_features(np.ones((2, 3, 3, 3), bool), (1, 1, 1))
    for bad in ((1, 1), (1, 0, 1), (1, float("nan"), 1)):
        with pytest.raises(InvalidInputError, match="spacing"):
            shape_features_batch(np.ones((1, 2, 2, 2), bool), bad)
    empty = shape_features_batch(np.zeros((0, 4, 4, 4), bool), (1, 1, 1))
    assert all(v.shape == (0,) for v in empty.values())


def test_rotated_unambiguous_shapes_have_equal_area_and_volume() -> None:
    """A mask without ambiguous faces (a solid box with a bump) gives the same mesh in any of its rotations."""
    mask = np.zeros((5, 6, 7), bool)
    mask[1:4, 1:5, 1:6] = True
    mask[0, 2, 3] = True
    ref = shape_features(mask, (1.0, 1.0, 1.0))
    for k, axes in itertools.product(range(1, 4), ((0, 1), (1, 2), (0, 2))):
        got = shape_features(np.rot90(mask, k, axes), (1.0, 1.0, 1.0))
        assert got["MeshVolume"] == pytest.approx(ref["MeshVolume"], rel=1e-12)
        assert got["SurfaceArea"] == pytest.approx(ref["SurfaceArea"], rel=1e-12)
