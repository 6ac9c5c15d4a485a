"""Training-free tumour composition (seed 000): a real tumour placed into a tumour-free image at a user-given place.

The object (a tumour image and its mask) is cropped around its mask with a context ``margin``, rescaled by
``scale`` and centred at ``at`` = (x, y) of the background; the crop's box is the *user mask*, the placed tumour mask
the *object mask*. Then one of `METHODS` makes the composite:

* ``ours`` (seed 000): inversion under a content-free condition, composition at T' (eq. 8), background re-injection
  for t in [tau, T'] (eq. 9), plain denoising; ``tf-icon``, ``sdedit``, ``blended``: the diffusion baselines
  (`composition_methods`);
* ``copy-paste`` and ``poisson`` (gradient-domain blending): classical baselines, at full resolution, no model.

Diffusion runs at the backbone's working size (64x64 for our models, the UNet's sample size for Stable Diffusion):
the images are resized to it, and the composite is resized back. ``restore_background`` (default) then keeps the
original full-resolution background outside the user box and, inside it, adds the inputs' own fine detail to the
model's coarse composite (`_paste_back`); without it the whole image is the model's, resized (what seed 000
measures as background fidelity).
Intensities: each image is mapped to [0, 1] by its own percentile window (the models' training normalisation) and
the composite is mapped back to the background's units; ``same_units=True`` maps both with one window fitted to
both images instead (one scan or scanner: a hyperintense tumour stays hyperintense).
Volumes: `compose_volume` works slice by slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_medgen.core.progress import Job, ProgressEvent, run_job
from napari_medgen.errors import DimensionError, InvalidInputError

DEFAULT_MODEL = "seg2img-busi-ablation"
METHODS = ("ours", "copy-paste", "poisson", "sdedit", "blended", "tf-icon")
CLASSICAL = ("copy-paste", "poisson")
DEFAULTS = {"steps": 20, "t_prime": 6, "tau": 3}
DEFAULT_STRENGTH = {"sdedit": 0.5, "blended": 0.8}


@dataclass(frozen=True)
class Placement:
    """The object placed on the background grid: the object image where its crop lands (background elsewhere),
    the placed tumour mask, the user mask (the crop's box) and the box (y0, y1, x0, x1)."""

    object_canvas: np.ndarray
    object_mask: np.ndarray
    user_mask: np.ndarray
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class CompositionResult:
    """The composite (background's shape and units), the placed tumour mask (uint8, 0/label), the user mask, and a
    JSON-ready report of how it was made."""

    image: np.ndarray
    mask: np.ndarray
    user_mask: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)


# ---- input checks ------------------------------------------------------------------------------------------
def _image(arr: Any, what: str) -> np.ndarray:
    a = np.asarray(getattr(arr, "array", arr))
    if a.ndim == 3 and a.shape[0] == 1 and hasattr(arr, "spacing"):
        a = a[0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise DimensionError(f"The {what} must be a 2D image (H, W) or an RGB(A) image (H, W, 3|4); got shape "
                             f"{a.shape}. For volumes use compose_volume / --slice-axis.")
    if a.dtype.kind not in "biuf":
        raise InvalidInputError(f"The {what} has unsupported type {a.dtype}.")
    a = a[..., :3] if a.ndim == 3 else a
    if not np.all(np.isfinite(a)):
        raise InvalidInputError(f"The {what} contains NaN or infinite values; fill or crop them first.")
    if min(a.shape[:2]) < 4:
        raise DimensionError(f"The {what} is too small ({a.shape[:2]}); it needs at least 4x4 pixels.")
    return a.astype(np.float32)


def _mask(arr: Any, shape: tuple[int, ...]) -> np.ndarray:
    m = np.asarray(getattr(arr, "array", arr))
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.shape != shape:
        raise DimensionError(f"The object mask {m.shape} must have the object image's size {shape}.")
    m = m != 0
    if not m.any():
        raise InvalidInputError("The object mask is empty: draw or load the tumour's segmentation (non-zero pixels).")
    return m


def check_settings(method: str, steps: int, t_prime: int, tau: int, strength: float | None) -> None:
    """Clear errors for impossible settings (before any model is loaded)."""
    if method not in METHODS:
        raise InvalidInputError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    for name, value in (("steps", steps), ("t_prime", t_prime), ("tau", tau)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise InvalidInputError(f"{name} must be a non-negative integer; got {value!r}.")
    if steps < 1:
        raise InvalidInputError(f"steps must be at least 1; got {steps}.")
    if t_prime > steps:
        raise InvalidInputError(f"T' ({t_prime}) cannot exceed the number of steps ({steps}): composition starts "
                                "at one of the steps' grid points; lower --t-prime or raise --steps.")
    if tau > t_prime:
        raise InvalidInputError(f"tau ({tau}) cannot exceed T' ({t_prime}): the background is re-injected for t in "
                                "[tau, T']; lower --tau.")
    if tau > steps:
        raise InvalidInputError(f"tau ({tau}) cannot exceed the number of steps ({steps}).")
    if strength is not None and not 0.0 < float(strength) <= 1.0:
        raise InvalidInputError(f"strength must be in (0, 1] (a fraction of the steps); got {strength}.")


# ---- placement ----------------------------------------------------------------------------------------------
def _resize(arr: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    from skimage.transform import resize

    if arr.shape[:2] == tuple(shape):
        return arr.astype(np.float32)
    down = shape[0] < arr.shape[0] or shape[1] < arr.shape[1]
    out_shape = tuple(shape) + arr.shape[2:]
    return resize(arr.astype(np.float32), out_shape, order=order, anti_aliasing=down and order > 0,
                  preserve_range=True, mode="edge").astype(np.float32)


def place_object(background: np.ndarray, object_image: np.ndarray, object_mask: np.ndarray, at: Sequence[float],
                 scale: float = 1.0, margin: float = 0.15, crop_box: Sequence[int] | None = None) -> Placement:
    """Crop the object around its mask (``margin`` of the mask's size on each side, or ``crop_box`` (y0, y1, x0, x1)),
    rescale by ``scale`` and centre it at ``at`` = (x, y); a box that would cross the edge is moved inside."""
    h, w = background.shape[:2]
    if len(at) != 2 or not all(np.isfinite(float(v)) for v in at):
        raise InvalidInputError(f"The target must be two numbers x, y; got {at!r}.")
    x, y = float(at[0]), float(at[1])
    if not (0 <= x < w and 0 <= y < h):
        raise InvalidInputError(f"The target ({x:g}, {y:g}) lies outside the {w}x{h} (width x height) background; "
                                "give x in [0, width) and y in [0, height).")
    if not np.isfinite(scale) or scale <= 0:
        raise InvalidInputError(f"scale must be a positive number; got {scale}.")
    if not 0 <= margin <= 2:
        raise InvalidInputError(f"margin must be in [0, 2] (a fraction of the tumour's size); got {margin}.")
    if crop_box is None:
        ys, xs = np.nonzero(object_mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        my, mx = max(1, round(margin * (y1 - y0))), max(1, round(margin * (x1 - x0)))
        oh, ow = object_mask.shape
        y0, y1, x0, x1 = max(0, y0 - my), min(oh, y1 + my), max(0, x0 - mx), min(ow, x1 + mx)
    else:
        y0, y1, x0, x1 = (int(v) for v in crop_box)
    crop, crop_mask = object_image[y0:y1, x0:x1], object_mask[y0:y1, x0:x1]
    th, tw = max(1, round((y1 - y0) * scale)), max(1, round((x1 - x0) * scale))
    if th > h or tw > w:
        largest = min(h / (y1 - y0), w / (x1 - x0))
        raise InvalidInputError(f"The object ({tw}x{th} pixels with its margin at scale {scale:g}) is larger than the "
                                f"{w}x{h} background; use a smaller scale (at most {largest:.3g}).")
    placed = _resize(crop, (th, tw))
    placed_mask = _resize(crop_mask.astype(np.float32), (th, tw)) >= 0.5
    if not placed_mask.any():
        raise InvalidInputError(f"At scale {scale:g} the tumour shrinks to nothing; use a larger scale.")
    by0 = min(max(0, round(y - th / 2)), h - th)
    bx0 = min(max(0, round(x - tw / 2)), w - tw)
    box = (by0, by0 + th, bx0, bx0 + tw)
    canvas = background.astype(np.float32).copy()
    canvas[box[0]:box[1], box[2]:box[3]] = placed
    obj = np.zeros((h, w), bool)
    obj[box[0]:box[1], box[2]:box[3]] = placed_mask
    user = np.zeros((h, w), bool)
    user[box[0]:box[1], box[2]:box[3]] = True
    return Placement(canvas, obj, user, box)


# ---- intensities ----------------------------------------------------------------------------------------------
def _unit(arr: np.ndarray, spec: str) -> tuple[np.ndarray, Any]:
    from napari_medgen.core.intensity import fit_normalizer

    norm = fit_normalizer(arr, spec if spec in ("percentile", "percentile_nonzero") else "percentile")
    if norm is None:
        raise InvalidInputError("An input image is constant; there is nothing to compose.")
    return np.clip(norm.forward(arr), 0.0, 1.0).astype(np.float32), norm


def _classical(method: str, bg: np.ndarray, placement: Placement) -> np.ndarray:
    from scipy import ndimage

    obj = placement.object_mask[..., None] if bg.ndim == 3 else placement.object_mask
    if method == "copy-paste":
        return np.where(obj, placement.object_canvas, bg).astype(np.float32)
    from napari_medgen.core.poisson import poisson_blend

    region = ndimage.binary_dilation(placement.object_mask, iterations=2) & placement.user_mask
    return np.clip(poisson_blend(bg, placement.object_canvas, region), 0.0, 1.0).astype(np.float32)


def _highpass(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """What the working size cannot hold: the image minus its round trip through ``size``."""
    return image - _resize(_resize(image, size), image.shape[:2])


def _paste_back(model_out: np.ndarray, bg: np.ndarray, placement: Placement, size: tuple[int, int]) -> np.ndarray:
    """The model's composite inside the user box on the full-resolution background.

    At the working size (64x64) the model keeps only the coarse image; pasting its upsampled box into a larger
    background would show a blurred rectangle. So inside the box the model supplies the low frequencies and the
    inputs their own fine detail (speckle, tumour texture): the background's high-pass outside the tumour, the
    object's inside it. The box edge is feathered over two working-size pixels; outside the box the background is
    kept bit for bit."""
    from scipy import ndimage

    detail = np.where(_expand(placement.object_mask, bg), _highpass(placement.object_canvas, size),
                      _highpass(bg, size))
    merged = np.clip(model_out + detail, 0.0, 1.0)
    ramp = max(1.0, 2.0 * max(bg.shape[0] / size[0], bg.shape[1] / size[1]))
    inside = ndimage.distance_transform_edt(np.pad(placement.user_mask, 1))[1:-1, 1:-1]
    weight = np.clip(inside / ramp, 0.0, 1.0)
    weight = weight[..., None] if bg.ndim == 3 else weight
    return (weight * merged + (1.0 - weight) * bg).astype(np.float32)


def _expand(mask: np.ndarray, like: np.ndarray) -> np.ndarray:
    return mask[..., None] if like.ndim == 3 else mask


# ---- the job --------------------------------------------------------------------------------------------------
def compose_job(
    background: Any,
    object_image: Any,
    object_mask: Any,
    *,
    at: Sequence[float],
    scale: float = 1.0,
    margin: float = 0.15,
    method: str = "ours",
    model: Any = DEFAULT_MODEL,
    steps: int = DEFAULTS["steps"],
    t_prime: int = DEFAULTS["t_prime"],
    tau: int = DEFAULTS["tau"],
    solver: str = "dpmpp",
    seed: int = 0,
    strength: float | None = None,
    prompt: str | None = None,
    guide: bool = False,
    start_from: str = "reconstruction",
    restore_background: bool = True,
    label: int = 1,
    same_units: bool = False,
    crop_box: Sequence[int] | None = None,
    noise: Any = None,
    device: Any = None,
) -> Job[CompositionResult]:
    """Job form of `compose` (one progress event per network evaluation)."""
    import torch

    from napari_medgen.core.device import cpu_generator
    from napari_medgen.pipelines.composition_methods import Scene, Settings, model_calls, run_method
    from napari_medgen.pipelines.composition_solvers import SOLVERS

    check_settings(method, steps, t_prime, tau, strength)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InvalidInputError(f"seed must be 0 or a positive integer; got {seed!r}.")
    if solver not in SOLVERS:
        raise InvalidInputError(f"Unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}.")
    if start_from not in ("reconstruction", "inversion"):
        raise InvalidInputError(f"start_from must be 'reconstruction' or 'inversion'; got {start_from!r}.")
    if isinstance(label, bool) or not isinstance(label, int | np.integer) or not 1 <= label <= 255:
        raise InvalidInputError(f"label must be an integer from 1 to 255; got {label!r}.")
    bg_raw = _image(background, "background")
    obj_raw = _image(object_image, "object image")
    if bg_raw.ndim != obj_raw.ndim:
        raise DimensionError(f"The background has {1 if bg_raw.ndim == 2 else 3} channel(s) and the object "
                             f"{1 if obj_raw.ndim == 2 else 3}; convert one so both are greyscale or both RGB.")
    m = _mask(object_mask, obj_raw.shape[:2])
    yield ProgressEvent(0, None, "composing", "placing the object")
    backbone = None
    if method not in CLASSICAL:
        from napari_medgen.pipelines.composition_backbones import load_backbone

        yield ProgressEvent(0, None, "composing", "loading model")
        backbone = load_backbone(model, device=device)
        if prompt and backbone.kind == "pixel":
            raise InvalidInputError(f"A text prompt needs a Stable Diffusion backbone; {backbone.name} is a "
                                    "mask-guided model (guide=True constrains its lesion class to the placed mask).")
        if backbone.channels == 1 and bg_raw.ndim == 3:
            raise DimensionError(f"The model {backbone.name} works on greyscale images; the inputs are RGB.")
    spec = backbone.normalization if backbone is not None else "percentile"
    if same_units:  # one window fitted to both images: neither is clipped at the other's brightest value
        _, bg_norm = _unit(np.concatenate([bg_raw.ravel(), obj_raw.ravel()]), spec)
        bg = np.clip(bg_norm.forward(bg_raw), 0.0, 1.0).astype(np.float32)
        obj = np.clip(bg_norm.forward(obj_raw), 0.0, 1.0).astype(np.float32)
    else:
        bg, bg_norm = _unit(bg_raw, spec)
        obj = _unit(obj_raw, spec)[0]
    placement = place_object(bg, obj, m, at, scale, margin, crop_box)
    settings = Settings(steps=int(steps), t_prime=int(t_prime), tau=int(tau), solver=solver,
                        strength=float(strength if strength is not None else DEFAULT_STRENGTH.get(method, 0.5)),
                        prompt=prompt, guide=bool(guide), start_from=start_from)
    if backbone is None:
        out = _classical(method, bg, placement)
    else:
        size = backbone.working_size()

        def tensor(a: np.ndarray) -> torch.Tensor:
            small = _resize(a, size) * 2.0 - 1.0
            t = torch.from_numpy(small[None, None] if small.ndim == 2 else np.moveaxis(small, -1, 0)[None])
            return t.expand(-1, 3, -1, -1) if backbone.channels == 3 and t.shape[1] == 1 else t

        cp = _classical("copy-paste", bg, placement)
        scene = Scene(tensor(bg), tensor(placement.object_canvas), tensor(cp),
                      _resize(placement.object_mask.astype(np.float32), size) >= 0.5,
                      _resize(placement.user_mask.astype(np.float32), size) > 0.01)
        if not scene.object_mask.any():
            raise InvalidInputError(f"The placed tumour is smaller than one pixel at the model's {size[1]}x{size[0]} "
                                    "working size; use a larger scale.")
        total = model_calls(method, settings)
        job = run_method(method, backbone, scene, settings, cpu_generator(int(seed)), noise)
        done = 0
        try:
            while True:
                event = next(job)
                done += 1
                yield ProgressEvent(min(done, total), total, "composing", event.stage)
        except StopIteration as stop:
            small = stop.value[0].cpu().numpy()
        small = (np.moveaxis(small, 0, -1) if bg.ndim == 3 else small.mean(axis=0)) * 0.5 + 0.5
        out = np.clip(_resize(small, bg.shape[:2]), 0.0, 1.0)
        if restore_background:
            out = _paste_back(out, bg, placement, size)
    image = bg_norm.inverse(out).astype(np.float32)
    # pixels the method left untouched keep their original value (also those the percentile window clipped)
    same = out == bg if bg.ndim == 2 else np.all(out == bg, axis=-1, keepdims=True)
    image = np.where(same, bg_raw, image).astype(np.float32)
    report = {
        "generated_by": "napari-medgen compose", "method": method, "model": None if backbone is None else backbone.name,
        "steps": int(steps), "t_prime": int(t_prime), "tau": int(tau), "solver": solver, "seed": int(seed),
        "scale": float(scale), "margin": float(margin), "at": [float(at[0]), float(at[1])],
        "box_yx": [int(v) for v in placement.box],
        "strength": settings.strength if method in DEFAULT_STRENGTH else None,
        "restore_background": bool(restore_background), "guide": bool(guide), "prompt": prompt,
        "start_from": start_from, "same_units": bool(same_units),
    }
    mask = (placement.object_mask * int(label)).astype(np.uint8)
    return CompositionResult(image, mask, placement.user_mask.copy(), report)


def compose(background: Any, object_image: Any, object_mask: Any, **kwargs: Any) -> CompositionResult:
    """Place ``object_image`` (with ``object_mask``) into ``background`` at ``at`` = (x, y) with ``method``.

    Inputs are 2D arrays (H, W) or (H, W, 3), or 2D `Volume`s (1, H, W). Same seed, same composite. Raises
    `MedGenError` subclasses for empty masks, objects larger than the background, targets outside the image,
    mismatched channels or sizes, T' > steps and tau > T'. See `compose_job` for every option.
    """
    return run_job(compose_job(background, object_image, object_mask, **kwargs))


__all__ = ["CLASSICAL", "DEFAULTS", "DEFAULT_MODEL", "METHODS", "CompositionResult", "Placement", "check_settings",
           "compose", "compose_job", "place_object"]
