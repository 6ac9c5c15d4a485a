"""Training-free tumour composition (seed 000) on tiny random-weight mask-diffusion models: placement, every method,
determinism, background preservation, returned mask, bad input, inversion round trips, volumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from napari_medgen.core.progress import run_job
from napari_medgen.core.volume import Volume
from napari_medgen.errors import DimensionError, InvalidInputError, MedGenError
from napari_medgen.pipelines.composition import METHODS, compose, compose_job, place_object
from napari_medgen.pipelines.composition_solvers import denoise, invert, make_grid
from napari_medgen.pipelines.composition_volume import compose_volume

FAST = {"steps": 10, "t_prime": 4, "tau": 2}


def _scene(size: tuple[int, int] = (40, 50)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: size[0], : size[1]]
    bg = (100 + 40 * np.sin(xx / 7.0) + rng.normal(0, 5, size)).astype(np.float32)
    obj = (60 + rng.normal(0, 5, (30, 30))).astype(np.float32)
    mask = np.zeros((30, 30), np.uint8)
    oy, ox = np.mgrid[:30, :30]
    mask[(oy - 15) ** 2 + (ox - 14) ** 2 < 36] = 1
    obj[mask > 0] += 120
    return bg, obj, mask


# ---- placement -------------------------------------------------------------------------------------------------
def test_placement_centres_scales_and_boxes_the_object() -> None:
    bg, obj, mask = _scene()
    before = (bg.copy(), obj.copy(), mask.copy())
    p = place_object(bg, obj, mask > 0, at=(25, 20), scale=1.5, margin=0.2)
    ys, xs = np.nonzero(p.object_mask)
    assert abs(ys.mean() - 20) <= 1.5 and abs(xs.mean() - 25) <= 1.5
    assert p.object_mask.sum() == pytest.approx((mask > 0).sum() * 1.5**2, rel=0.2)
    y0, y1, x0, x1 = p.box
    assert p.user_mask.sum() == (y1 - y0) * (x1 - x0) and p.user_mask[y0:y1, x0:x1].all()
    assert not (p.object_mask & ~p.user_mask).any()
    assert np.array_equal(p.object_canvas[~p.user_mask], bg[~p.user_mask])
    for a, b in zip(before, (bg, obj, mask), strict=True):
        assert np.array_equal(a, b)  # inputs never mutated


def test_placement_near_the_edge_moves_the_box_inside() -> None:
    bg, obj, mask = _scene()
    p = place_object(bg, obj, mask > 0, at=(49, 0), scale=1.0)
    assert p.box[0] == 0 and p.box[3] == 50 and p.object_mask.any()


# ---- every method --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_every_method_is_deterministic_and_returns_the_placed_mask(method: str, tiny_seg2img: Path) -> None:
    bg, obj, mask = _scene()
    kwargs: dict[str, Any] = {"at": (25, 20), "method": method, "model": tiny_seg2img, "seed": 3, "label": 2, **FAST}
    a = compose(bg, obj, mask, **kwargs)
    b = compose(bg, obj, mask, **kwargs)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.image.shape == bg.shape and a.image.dtype == np.float32 and np.isfinite(a.image).all()
    placed = place_object(bg, obj, mask > 0, at=(25, 20))
    assert np.array_equal(a.mask, placed.object_mask.astype(np.uint8) * 2)
    assert np.array_equal(a.user_mask, placed.user_mask)
    # restore_background (default): the original outside the user box, bit for bit
    assert np.array_equal(a.image[~a.user_mask], bg[~a.user_mask])
    assert not np.array_equal(a.image[a.user_mask], bg[a.user_mask])
    assert a.report["method"] == method


def test_copy_paste_and_poisson_touch_only_the_tumour_and_its_rim() -> None:
    bg, obj, mask = _scene()
    cp = compose(bg, obj, mask, at=(25, 20), method="copy-paste")
    assert np.array_equal(cp.image[cp.mask == 0], bg[cp.mask == 0])
    ps = compose(bg, obj, mask, at=(25, 20), method="poisson")
    from scipy import ndimage

    rim = ndimage.binary_dilation(ps.mask > 0, iterations=2)
    assert np.array_equal(ps.image[~rim], bg[~rim])


def test_poisson_blend_matches_the_border_and_keeps_inner_detail() -> None:
    """An offset source blends to the target exactly; a bump inside the region survives (gradients kept)."""
    from napari_medgen.core.poisson import poisson_blend

    rng = np.random.default_rng(0)
    target = rng.normal(0, 1, (20, 24)).cumsum(axis=1)
    region = np.zeros((20, 24), bool)
    region[5:15, 6:18] = True
    np.testing.assert_allclose(poisson_blend(target, target + 30.0, region), target, atol=1e-8)
    bump = np.zeros_like(target)
    bump[8:12, 10:14] = 5.0
    out = poisson_blend(target, target + 30.0 + bump, region)
    np.testing.assert_allclose(out, target + bump, atol=1e-8)
    assert np.array_equal(out[~region], target[~region])
    rgb = poisson_blend(np.stack([target] * 3, -1), np.stack([target + 3.0] * 3, -1), region)
    np.testing.assert_allclose(rgb[..., 1], target, atol=1e-8)
    with pytest.raises(InvalidInputError, match="empty"):
        poisson_blend(target, target, np.zeros_like(region))


def test_seed_changes_the_stochastic_methods(tiny_seg2img: Path) -> None:
    bg, obj, mask = _scene()
    a = compose(bg, obj, mask, at=(25, 20), method="sdedit", model=tiny_seg2img, seed=0, **FAST)
    b = compose(bg, obj, mask, at=(25, 20), method="sdedit", model=tiny_seg2img, seed=1, **FAST)
    assert not np.array_equal(a.image, b.image)


def test_blended_and_ours_keep_the_background_in_model_space(tiny_seg2img: Path) -> None:
    """At the working size without restoring: blended diffusion pastes the background on the last step; seed 000 with
    tau = 0 re-injects the inverted background down to the clean image."""
    bg, obj, mask = _scene((16, 16))
    obj_small = obj[8:24, 7:23]
    mask_small = mask[8:24, 7:23]
    for method, extra in (("blended", {}), ("ours", {"tau": 0, "start_from": "inversion"})):
        r = compose(bg, obj_small, mask_small, at=(8, 8), scale=0.6, method=method, model=tiny_seg2img,
                    restore_background=False, **{**FAST, **extra})
        outside = ~r.user_mask
        assert outside.any()
        np.testing.assert_allclose(r.image[outside], bg[outside], atol=1e-3 * np.ptp(bg))
    r = compose(bg, obj_small, mask_small, at=(8, 8), scale=0.6, method="sdedit", model=tiny_seg2img,
                restore_background=False, **FAST)
    assert np.abs(r.image[~r.user_mask] - bg[~r.user_mask]).max() > 1e-2 * np.ptp(bg)  # SDEdit changes it


def test_progress_events_count_network_calls(tiny_seg2img: Path) -> None:
    bg, obj, mask = _scene()
    events = []
    run_job(compose_job(bg, obj, mask, at=(25, 20), model=tiny_seg2img, **FAST), events.append)
    totals = {e.total for e in events if e.total}
    assert totals == {10 + 6 + 4}  # inversion + reconstruction to T' + denoising from T'
    assert events[-1].step == events[-1].total


# ---- bad input -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, error, words", [
    ({"mask": "empty"}, InvalidInputError, "mask is empty"),
    ({"scale": 4.0}, InvalidInputError, "larger than"),
    ({"at": (60, 10)}, InvalidInputError, "outside"),
    ({"at": (-1, 10)}, InvalidInputError, "outside"),
    ({"obj": "rgb"}, DimensionError, "channel"),
    ({"mask": "size"}, DimensionError, "size"),
    ({"t_prime": 12}, InvalidInputError, "T'"),
    ({"tau": 5}, InvalidInputError, "tau"),
    ({"method": "magic"}, InvalidInputError, "Unknown method"),
    ({"solver": "euler"}, InvalidInputError, "solver"),
    ({"strength": 1.5, "method": "sdedit"}, InvalidInputError, "strength"),
    ({"prompt": "a tumour"}, InvalidInputError, "Stable Diffusion"),
])
def test_bad_input_gives_clear_errors(change: dict, error: type, words: str, tiny_seg2img: Path) -> None:
    bg, obj, mask = _scene()
    kwargs: dict[str, Any] = {"at": (25, 20), "model": tiny_seg2img, **FAST}
    change = dict(change)
    how = change.pop("mask", None)
    if how == "empty":
        mask = np.zeros_like(mask)
    elif how == "size":
        mask = mask[:-2]
    if change.pop("obj", None) == "rgb":
        obj = np.repeat(obj[..., None], 3, axis=2)
    kwargs.update(change)
    with pytest.raises(error, match=words):
        compose(bg, obj, mask, **kwargs)


def test_mask_size_mismatch_is_refused() -> None:
    bg, obj, mask = _scene()
    with pytest.raises(DimensionError, match="size"):
        compose(bg, obj, mask[:-2], at=(25, 20), method="copy-paste")


def test_model_without_a_content_free_condition_is_refused(tiny_seg2img_standard: Path) -> None:
    bg, obj, mask = _scene()
    with pytest.raises(InvalidInputError, match="mask-ablated"):
        compose(bg, obj, mask, at=(25, 20), model=tiny_seg2img_standard, **FAST)


def test_nan_background_is_refused() -> None:
    bg, obj, mask = _scene()
    bg[3, 3] = np.nan
    with pytest.raises(MedGenError, match="NaN"):
        compose(bg, obj, mask, at=(25, 20), method="copy-paste")


# ---- inversion round trips -----------------------------------------------------------------------------------
@dataclass
class GaussianBackbone:
    """The exact noise predictor of Gaussian data N(0, s^2): the diffusion ODE is known, so inversion error comes from
    the solver alone."""

    s: float = 0.5
    kind: str = "pixel"
    clip: bool = False
    cache: dict = field(default_factory=dict)
    device: torch.device = torch.device("cpu")

    def scheduler_config(self) -> dict[str, Any]:
        return {"num_train_timesteps": 1000, "beta_schedule": "linear", "prediction_type": "epsilon"}

    def eps(self, x: torch.Tensor, t: Any, cond: Any) -> torch.Tensor:
        a = float(self.alphas[int(torch.as_tensor(t).reshape(-1)[0])])
        return (1 - a) ** 0.5 * x / (a * self.s**2 + 1 - a)

    def __post_init__(self) -> None:
        from diffusers import DDPMScheduler

        self.alphas = DDPMScheduler(beta_schedule="linear").alphas_cumprod


@pytest.mark.parametrize("solver", ["dpmpp", "ddim"])
def test_inversion_round_trip_converges(solver: str) -> None:
    bb = GaussianBackbone()
    x0 = torch.from_numpy(np.random.default_rng(0).normal(0, 0.5, (1, 1, 8, 8)).astype(np.float32))
    errors = []
    for steps in (10, 20, 50):
        grid = make_grid(bb, solver, steps)
        latents = run_job(invert(bb, grid, x0, None))
        assert len(latents) == steps + 1 and torch.equal(latents[0], x0)
        # the exact ODE maps x0 to x0 * sqrt(abar s^2 + 1 - abar) / s ~ x0 / s at the noisiest step
        ratio = float(latents[-1].std() / x0.std())
        assert ratio == pytest.approx(1 / bb.s, rel=0.2 if steps == 10 else 0.08 if steps == 20 else 0.03)
        rec = run_job(denoise(bb, grid, latents[-1], None, steps, 0))
        errors.append(float((rec - x0).abs().mean()))
    assert errors[1] < 0.06 and errors[2] < 0.025 and errors[2] < errors[1] < errors[0]


def test_denoising_from_an_inverted_intermediate_point_lands_on_the_image() -> None:
    """Composition at T' relies on the inverted latent at grid point T' denoising back to the input."""
    bb = GaussianBackbone()
    x0 = torch.from_numpy(np.random.default_rng(1).normal(0, 0.5, (1, 1, 8, 8)).astype(np.float32))
    grid = make_grid(bb, "dpmpp", 20)
    latents = run_job(invert(bb, grid, x0, None))
    mid = run_job(denoise(bb, grid, latents[20], None, 20, 6))
    assert float((mid - latents[6]).abs().mean()) < 0.03
    assert float((run_job(denoise(bb, grid, latents[6], None, 6, 0)) - x0).abs().mean()) < 0.06


def test_bundled_brain_model_inverts_under_the_null_condition() -> None:
    """DPM-Solver++ inversion of a smooth phantom with the real seg2img-brain under the unconstrained mask code."""
    from napari_medgen.pipelines.composition_backbones import load_backbone

    bb = load_backbone("seg2img-brain", device="cpu")
    yy, xx = np.mgrid[:64, :64]
    disc = ((yy - 32) ** 2 / 26**2 + (xx - 32) ** 2 / 22**2 < 1).astype(np.float32)
    x0 = torch.from_numpy((disc * (0.2 + 0.3 * np.sin(xx / 9.0)) * 2 - 1)[None, None].astype(np.float32))
    grid = make_grid(bb, "dpmpp", 20)
    latents = run_job(invert(bb, grid, x0, bb.content_free(1)))
    rec = run_job(denoise(bb, grid, latents[-1], bb.content_free(1), 20, 0))
    assert float((rec - x0).abs().mean()) < 0.1


# ---- volumes -------------------------------------------------------------------------------------------------
def test_volume_composition_keeps_geometry_and_untouched_slices(tiny_seg2img: Path) -> None:
    rng = np.random.default_rng(0)
    geometry = {"spacing": (2.0, 0.8, 0.8), "origin": (1.0, -5.0, 3.0)}
    bg = Volume(rng.normal(100, 10, (6, 24, 24)).astype(np.float32), **geometry)
    obj_arr = rng.normal(50, 5, (4, 20, 20)).astype(np.float32)
    mask_arr = np.zeros((4, 20, 20), np.uint8)
    mask_arr[1:3, 8:13, 7:12] = 1
    obj_arr[mask_arr > 0] += 100
    obj, mask = Volume(obj_arr), Volume(obj_arr).as_labels(mask_arr)
    r = compose_volume(bg, obj, mask, at=(12, 12, 3), model=tiny_seg2img, method="tf-icon", seed=1, **FAST)
    assert r.image.spacing == bg.spacing and r.image.origin == bg.origin and r.image.direction == bg.direction
    assert r.mask.same_grid(bg)
    assert r.report["slices"] == [3, 4]  # the tumour's first slice (its middle of two) lands on slice 3
    changed = [k for k in range(6) if not np.array_equal(r.image.array[k], bg.array[k])]
    assert changed == [3, 4]
    assert sorted(set(np.nonzero(r.mask.array)[0])) == [3, 4]
    again = compose_volume(bg, obj, mask, at=(12, 12, 3), model=tiny_seg2img, method="tf-icon", seed=1, **FAST)
    assert np.array_equal(again.image.array, r.image.array)
    with pytest.raises(InvalidInputError, match="slices"):
        compose_volume(bg, obj, mask, at=(12, 12, 5), model=tiny_seg2img, **FAST)
    with pytest.raises(InvalidInputError, match="empty"):
        compose_volume(bg, obj, obj.as_labels(np.zeros_like(mask_arr)), at=(12, 12, 3), model=tiny_seg2img, **FAST)


def test_same_units_keeps_a_hyperintense_tumour_hyperintense() -> None:
    """Own-window normalisation maps each image's brightest to 1; with same_units the object keeps the background's
    scale, so a tumour brighter than anything in the background stays brighter."""
    rng = np.random.default_rng(0)
    bg = rng.uniform(90, 110, (40, 50)).astype(np.float32)
    obj = rng.uniform(90, 110, (30, 30)).astype(np.float32)
    mask = np.zeros((30, 30), np.uint8)
    mask[10:20, 10:20] = 1
    obj[mask > 0] = 300.0
    own = compose(bg, obj, mask, at=(25, 20), method="copy-paste")
    same = compose(bg, obj, mask, at=(25, 20), method="copy-paste", same_units=True)
    inside = own.mask > 0
    assert same.image[inside].mean() > own.image[inside].mean() + 1.0
    assert np.array_equal(same.image[~inside], bg[~inside]) and same.report["same_units"] is True
