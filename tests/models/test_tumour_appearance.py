"""Tumour appearance model: painted sub-regions follow the fitted statistics, and nothing else changes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from napari_medgen.errors import InvalidInputError
from napari_medgen.models import tumour_appearance as ta

SPACING = (1.0, 1.0, 1.0)
SHAPE = (40, 44, 48)


def _grid() -> np.ndarray:
    z, y, x = np.indices(SHAPE, dtype=np.float32)
    c = np.array(SHAPE, dtype=np.float32)[:, None, None, None] / 2
    return np.sqrt(((np.stack([z, y, x]) - c) ** 2).sum(axis=0))


def _labels() -> np.ndarray:
    """Necrotic ball inside an enhancing shell inside an oedema shell (BraTS labels 1, 4, 2)."""
    r = _grid()
    lab = np.zeros(SHAPE, dtype=np.uint8)
    lab[r <= 17] = 2
    lab[r <= 12] = 4
    lab[r <= 7] = 1
    return lab


def _background(seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 2.0)
    return (0.5 + 0.1 * smooth / smooth.std() + 0.002 * np.indices(SHAPE)[2]).astype(np.float32)


def _real_like() -> np.ndarray:
    """A "real" tumour to fit: dark core, bright textured rim, oedema slightly darker than brain."""
    rng = np.random.default_rng(7)
    lab = _labels()
    img = _background(3)
    tex = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1.5)
    tex /= tex.std()
    img[lab == 1] = 0.2 + 0.05 * tex[lab == 1]
    img[lab == 4] = 0.9 + 0.15 * tex[lab == 4]
    img[lab == 2] = img[lab == 2] - 0.08
    return img


def _ks(values: np.ndarray, entry: dict) -> float:
    """Largest gap between the empirical CDF of ``values`` and the requested quantile function."""
    levels = np.asarray(entry["quantile_levels"])
    quant = np.asarray(entry["quantiles"])
    ecdf = np.searchsorted(np.sort(values), quant, side="right") / values.size
    return float(np.abs(ecdf[1:-1] - levels[1:-1]).max())


@pytest.fixture(scope="module")
def stats() -> dict:
    return ta.fit_region_stats(_real_like(), _labels(), SPACING)


def test_fit_region_stats_is_json_ready_and_describes_each_label(stats: dict) -> None:
    assert set(stats["labels"]) == {"1", "2", "4"}
    back = json.loads(json.dumps(stats))
    assert back == stats
    core, rim = stats["labels"]["1"], stats["labels"]["4"]
    assert core["mean"] < rim["mean"]
    assert all(np.diff(rim["quantiles"]) >= 0)
    assert 1.0 < rim["corr_length_mm"] < 10.0
    assert len(rim["profile"]) == ta.PROFILE_BINS


def test_painted_regions_follow_the_requested_quantiles(stats: dict) -> None:
    lab = _labels()
    out = ta.paint(_background(), lab, stats, SPACING, np.random.default_rng(0), blend_mm=0.0)
    for key, entry in stats["labels"].items():
        values = out[lab == int(key)]
        assert _ks(values, entry) < 0.05, key
    # with the blend, the interior away from the boundaries still matches
    out = ta.paint(_background(), lab, stats, SPACING, 0, blend_mm=1.0)
    interior = ndimage.binary_erosion(lab == 4, iterations=2)
    assert _ks(out[interior], stats["labels"]["4"]) < 0.1


def test_rim_brighter_than_centre_when_the_profile_says_so() -> None:
    lab = np.where(_grid() <= 14, 4, 0).astype(np.uint8)
    depth = ta._depth(lab == 4, np.ones(3))
    entry = {"quantile_levels": list(ta.QUANTILE_LEVELS), "quantiles": list(np.linspace(0.3, 0.9, 33)),
             "residual_std": 0.05, "field_sigma_mm": 1.5, "nugget": 0.3}
    for profile, rim_brighter in (([0.2, 0.1, 0.0, -0.1, -0.2], True), ([-0.2, -0.1, 0.0, 0.1, 0.2], False)):
        stats = {"labels": {"4": {**entry, "profile": profile}}}
        out = ta.paint(_background(), lab, stats, SPACING, 0)
        rim = out[(lab == 4) & (depth < 0.2)].mean()
        centre = out[(lab == 4) & (depth > 0.7)].mean()
        assert (rim > centre + 0.1) == rim_brighter


def test_voxels_beyond_the_blend_band_are_bit_identical(stats: dict) -> None:
    bg = _background()
    lab = _labels()
    for blend in (0.0, 1.0, 2.5):
        out = ta.paint(bg, lab, stats, SPACING, 3, blend_mm=blend)
        band = ta.blend_band(lab, SPACING, blend)
        assert np.array_equal(out[~band], bg[~band])
        assert out.dtype == np.float32
        # independent check: farther than the kernel radius (chebyshev) from every label
        far = ~ndimage.binary_dilation(lab > 0, np.ones((3, 3, 3), bool), iterations=int(blend + 1))
        assert np.array_equal(out[far], bg[far])
    changed = ta.paint(bg, lab, stats, SPACING, 3, blend_mm=1.0) != bg
    assert changed[lab > 0].mean() > 0.99
    ring = ta.blend_band(lab, SPACING, 1.0) & (lab == 0)
    assert changed[ring].any()


def test_same_seed_same_output(stats: dict) -> None:
    bg, lab = _background(), _labels()
    a = ta.paint(bg, lab, stats, SPACING, np.random.default_rng(5))
    b = ta.paint(bg, lab, stats, SPACING, np.random.default_rng(5))
    c = ta.paint(bg, lab, stats, SPACING, np.random.default_rng(6))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_edema_keeps_the_anatomy_below(stats: dict) -> None:
    bg, lab = _background(), _labels()
    out = ta.paint(bg, lab, stats, SPACING, 0, blend_mm=0.0)
    edema = lab == 2
    assert np.corrcoef(out[edema], bg[edema])[0, 1] > 0.4
    assert _ks(out[edema], stats["labels"]["2"]) < 0.05


def test_fit_appearance_medians_and_ranges(stats: dict) -> None:
    lab = _labels()
    darker = _real_like() - 0.1
    model = ta.fit_appearance([(_real_like(), lab, SPACING), (darker, lab, SPACING)])
    rim = model["labels"]["4"]
    assert model["cases"] == 2 and rim["cases"] == 2
    lo, hi = rim["range"]["mean"]
    assert hi - lo == pytest.approx(0.1, abs=1e-3)
    assert lo <= rim["mean"] <= hi
    out = ta.paint(_background(), lab, json.loads(json.dumps(model)), SPACING, 0)
    assert np.isfinite(out).all()
    assert ta.measure(_real_like(), lab, SPACING) == stats


def test_grow_edema_is_an_irregular_shell_inside_the_brain() -> None:
    r = _grid()
    core = r <= 8
    brain = np.ones(SHAPE, bool)
    brain[:, :, :16] = False
    shell = ta.grow_edema(core, SPACING, 0, thickness_mm=(3, 8), brain=brain)
    assert shell.any() and not (shell & core).any() and not (shell & ~brain).any()
    assert r[shell].max() <= 8 + 8 + 1
    outer = r[shell & ndimage.binary_erosion(brain)]
    assert np.ptp(outer) > 3  # thickness varies: not a sphere
    assert np.array_equal(shell, ta.grow_edema(core, SPACING, 0, thickness_mm=(3, 8), brain=brain))


def test_bad_input_says_what_is_wrong(stats: dict) -> None:
    bg, lab = _background(), _labels()
    with pytest.raises(InvalidInputError, match="same shape"):
        ta.paint(bg[:-1], lab, stats, SPACING, 0)
    with pytest.raises(InvalidInputError, match="no labelled voxel"):
        ta.paint(bg, np.zeros_like(lab), stats, SPACING, 0)
    with pytest.raises(InvalidInputError, match="label 3 has no appearance stats"):
        ta.paint(bg, np.where(lab == 1, 3, lab), stats, SPACING, 0)
    with pytest.raises(InvalidInputError, match="same shape"):
        ta.fit_region_stats(bg, lab[:, :-1], SPACING)
    with pytest.raises(InvalidInputError, match="no labelled voxel"):
        ta.fit_region_stats(bg, np.zeros_like(lab), SPACING)
    with pytest.raises(InvalidInputError, match="spacing"):
        ta.paint(bg, lab, stats, (1.0, 0.0, 1.0), 0)
    with pytest.raises(InvalidInputError, match="core is empty"):
        ta.grow_edema(np.zeros(SHAPE, bool), SPACING, 0)


def test_relative_to_brain_follows_the_brain_around_the_tumour(stats: dict) -> None:
    lab = _labels()
    plain = ta.paint(_background(), lab, stats, SPACING, 0, blend_mm=0.0, relative_to_brain=True)
    brighter = ta.paint(_background() + 0.2, lab, stats, SPACING, 0, blend_mm=0.0, relative_to_brain=True)
    core = lab == 1
    assert np.median(brighter[core]) - np.median(plain[core]) == pytest.approx(0.2, abs=0.02)
    with pytest.raises(InvalidInputError, match="brain"):
        ta.paint(_background(), lab, {"labels": stats["labels"]}, SPACING, 0, relative_to_brain=True)
