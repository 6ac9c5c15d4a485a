"""Attention maps <-> region masks: the losses and the mask read-out of DiDGen (seed 001, ch. 4; spec 1.3-1.7).

* `attention_alignment_loss` -- L_attn (eq. 4.5), training: the cross-attention of the region tokens at
  the 1/4 scale should look like the lesion mask and its complement (max-normalised, as Break-a-Scene).
* `cross_attention_loss` / `self_attention_loss` -- L_CA and L_SA (eqs. 4.7-4.9), sampling: pull the
  lesion token's attention mass inside a layout mask and keep the self-attention of mask pixels inside it.
* `refine_with_self_attention` -- A_CS = (A_S)^tau . A_C (eq. 4.11) in the matrix-power reading (random
  walk, Dataset Diffusion's code) or the element-wise reading (the thesis text); the spec notes both.
* `extract_mask` -- Otsu threshold then dilation followed by erosion; falls back to A_C alone when the
  self-attention is not local (`self_attention_locality`), since then A_CS only blurs the map.

Maps are (B, N, n_tokens) for cross- and (B, N, N) for self-attention, N = h * w row-major, as captured by
`napari_medgen.models.attention_capture`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_medgen.errors import InvalidInputError

POWER_MODES = ("matrix", "elementwise")
REFINE_MODES = ("auto", "matrix", "elementwise", "none")


def _side(n: int, shape: tuple[int, int] | None = None) -> tuple[int, int]:
    if shape is not None:
        return int(shape[0]), int(shape[1])
    side = int(round(math.sqrt(n)))
    if side * side != n:
        raise InvalidInputError(f"Attention over {n} positions is not a square grid; pass its (h, w).")
    return side, side


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A (B, H, W) or (H, W) {0,1} mask as area fractions on a (h, w) grid (B, h, w)."""
    m = mask.float()
    if m.ndim == 2:
        m = m[None]
    return F.interpolate(m[:, None], size=size, mode="area")[:, 0]


def check_layout(mask: np.ndarray | torch.Tensor, image_size: Sequence[int]) -> np.ndarray:
    """A layout mask as a 2D {0,1} uint8 array of ``image_size``; clear errors for empty, full or wrong-size masks."""
    array = mask.detach().cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise InvalidInputError(f"A layout mask is one 2D label image; got an array of shape {array.shape}.")
    size = tuple(int(s) for s in image_size)
    if array.shape != size:
        raise InvalidInputError(
            f"The layout mask is {array.shape[0]}x{array.shape[1]} but the model makes {size[0]}x{size[1]} images; "
            "resize the mask (or paint it on an image of the model's size)."
        )
    binary = (array > 0).astype(np.uint8)
    if binary.sum() == 0:
        raise InvalidInputError("The layout mask is empty: paint the region where the lesion should appear.")
    if binary.all():
        raise InvalidInputError(
            "The layout mask covers the whole image: leave some background so the lesion has a boundary."
        )
    return binary


# ---- training ---------------------------------------------------------------------------------------
def attention_alignment_loss(cross: torch.Tensor, mask: torch.Tensor, lesion_index: int,
                             background_index: int | None, shape: tuple[int, int] | None = None) -> torch.Tensor:
    """L_attn = 1/2 sum_i mean (A_C(v_i) / max A_C(v_i) - M_i)^2 for the lesion token and (if given) the
    background token with M_background = 1 - M_lesion (eq. 4.5; max-normalised as Break-a-Scene)."""
    h, w = _side(cross.shape[1], shape)
    target = resize_mask(mask, (h, w)).reshape(cross.shape[0], -1)
    pairs = [(lesion_index, target)]
    if background_index is not None:
        pairs.append((background_index, 1.0 - target))
    total = cross.new_zeros(())
    for index, goal in pairs:
        a = cross[..., index]
        a = a / a.amax(dim=1, keepdim=True).clamp_min(1e-8)
        total = total + F.mse_loss(a, goal)
    return 0.5 * total


# ---- guidance ----------------------------------------------------------------------------------------
def gaussian_smooth(maps: torch.Tensor, sigma: float = 0.5, kernel_size: int = 3) -> torch.Tensor:
    """Reflect-padded Gaussian smoothing of (B, h, w) maps (kernel 3, sigma 0.5 as Attend-and-Excite)."""
    r = kernel_size // 2
    x = torch.arange(kernel_size, dtype=maps.dtype, device=maps.device) - r
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :])[None, None]
    padded = F.pad(maps[:, None], (r, r, r, r), mode="reflect")
    return F.conv2d(padded, kernel)[:, 0]


def token_map(cross: torch.Tensor, index: int, text_positions: Sequence[int] | None = None,
              temperature: float = 100.0, shape: tuple[int, int] | None = None, smooth: bool = True) -> torch.Tensor:
    """Ã: softmax over the prompt tokens (sink / SOT / padding excluded) of ``temperature`` x A_C, the map of
    token ``index`` (a context position), Gaussian-smoothed; (B, h, w). Spec section 1.3."""
    h, w = _side(cross.shape[1], shape)
    positions = list(text_positions) if text_positions is not None else list(range(1, cross.shape[-1]))
    if index not in positions:
        raise InvalidInputError(f"Token position {index} is not among the prompt positions {positions}.")
    probs = (cross[..., positions] * temperature).softmax(dim=-1)[..., positions.index(index)]
    maps = probs.reshape(-1, h, w)
    return gaussian_smooth(maps) if smooth and min(h, w) > 2 else maps


def cross_attention_loss(lesion_map: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_CA = (1 - sum(Ã M)/sum M) + sum(Ã (1-M))/sum(1-M), per image then averaged (eq. 4.7)."""
    m = resize_mask(mask, tuple(lesion_map.shape[-2:]))
    if m.shape[0] == 1 and lesion_map.shape[0] > 1:
        m = m.expand(lesion_map.shape[0], -1, -1)
    inside = (lesion_map * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp_min(1e-6)
    outside = (lesion_map * (1 - m)).sum(dim=(1, 2)) / (1 - m).sum(dim=(1, 2)).clamp_min(1e-6)
    return ((1 - inside) + outside).mean()


def self_attention_loss(self_attn: torch.Tensor, mask: torch.Tensor, shape: tuple[int, int] | None = None
                        ) -> torch.Tensor:
    """L_SA = sum(mean_{p in M} A_S^p * (1-M)) / sum(1-M) (eq. 4.9, rows averaged over p as Attention-Refocusing)."""
    h, w = _side(self_attn.shape[1], shape)
    m = resize_mask(mask, (h, w)).reshape(-1, h * w)
    if m.shape[0] == 1 and self_attn.shape[0] > 1:
        m = m.expand(self_attn.shape[0], -1)
    rows = (self_attn * m[:, :, None]).sum(dim=1) / m.sum(dim=1, keepdim=True).clamp_min(1e-6)
    outside = (rows * (1 - m)).sum(dim=1) / (1 - m).sum(dim=1).clamp_min(1e-6)
    return outside.mean()


# ---- read-out ----------------------------------------------------------------------------------------
def refine_with_self_attention(cross_map: torch.Tensor, self_attn: torch.Tensor, tau: int = 4,
                               mode: str = "matrix") -> torch.Tensor:
    """A_CS (B, h_s, w_s): the token map (B, h_c, w_c) upsampled to the self-attention grid (bicubic), then
    propagated by (A_S)^tau: the matrix power (random walk) or the row-normalised element-wise power."""
    if mode not in POWER_MODES:
        raise InvalidInputError(f"power mode must be one of {POWER_MODES}; got {mode!r}.")
    if int(tau) < 1:
        raise InvalidInputError(f"tau must be a positive integer; got {tau}.")
    hs, ws = _side(self_attn.shape[1])
    a_c = F.interpolate(cross_map[:, None].float(), size=(hs, ws), mode="bicubic", align_corners=False)
    a_c = a_c.reshape(cross_map.shape[0], hs * ws, 1)
    s = self_attn.float()
    if mode == "matrix":
        power = torch.linalg.matrix_power(s, int(tau))
    else:
        power = s ** int(tau)
        power = power / power.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.bmm(power, a_c).reshape(-1, hs, ws)


def self_attention_locality(self_attn: torch.Tensor) -> float:
    """1 - (mean distance attended to) / (mean distance under uniform attention): ~0 for global or random
    self-attention, towards 1 when each position attends to its neighbourhood."""
    h, w = _side(self_attn.shape[1])
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    pts = torch.stack([yy.flatten(), xx.flatten()], dim=1)
    dist = torch.cdist(pts, pts).to(self_attn.device)
    attended = (self_attn.float() * dist).sum(dim=-1).mean()
    uniform = dist.mean()
    return float(1.0 - attended / uniform)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a float array (maximises the between-class variance)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-12:
        return hi
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return (x * x + y * y) <= radius * radius


@dataclass(frozen=True)
class ExtractedMask:
    """The binary mask, the normalised map it was thresholded from, the threshold and which map was used."""

    mask: np.ndarray  # uint8 (H, W)
    score: np.ndarray  # float32 (H, W) in [0, 1]
    threshold: float
    used: str  # "A_CS (matrix)", "A_CS (elementwise)" or "A_C"
    locality: float | None


def extract_mask(cross_map: torch.Tensor, self_attn: torch.Tensor | None, image_size: Sequence[int],
                 refine: str = "auto", tau: int = 4, closing_radius: int | None = None,
                 min_locality: float = 0.3) -> ExtractedMask:
    """M̂ = close(Otsu(A_CS)) for one image: ``cross_map`` (h, w) token map, ``self_attn`` (N, N) or None.

    ``refine``: "matrix" / "elementwise" force A_CS, "none" uses A_C, "auto" uses A_CS (matrix) only when the
    self-attention locality reaches ``min_locality``. The map is upsampled (bicubic) to ``image_size`` and
    min-max normalised before Otsu; closing uses a disk of ``closing_radius`` px (default ~1 % of the side).
    """
    if refine not in REFINE_MODES:
        raise InvalidInputError(f"refine must be one of {REFINE_MODES}; got {refine!r}.")
    from scipy import ndimage

    size = tuple(int(s) for s in image_size)
    locality = None if self_attn is None else self_attention_locality(self_attn[None])
    mode = refine
    if refine == "auto":
        mode = "matrix" if locality is not None and locality >= min_locality else "none"
    if mode != "none" and self_attn is None:
        raise InvalidInputError(f"refine={refine!r} needs the self-attention map; none was captured.")
    if mode == "none":
        score, used = cross_map.float()[None], "A_C"
    else:
        score, used = refine_with_self_attention(cross_map[None], self_attn[None], tau, mode), f"A_CS ({mode})"
    up = F.interpolate(score[:, None], size=size, mode="bicubic", align_corners=False)[0, 0]
    up = up.detach().cpu().numpy().astype(np.float64)
    lo, hi = up.min(), up.max()
    norm = (up - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(up)
    thr = otsu_threshold(norm)
    binary = norm > thr
    radius = max(1, round(min(size) / 100)) if closing_radius is None else int(closing_radius)
    if radius > 0:
        disk = _disk(radius)
        pad = radius + 1
        padded = np.pad(binary, pad, mode="edge")
        binary = ndimage.binary_erosion(ndimage.binary_dilation(padded, disk), disk)[pad:-pad, pad:-pad]
    return ExtractedMask(binary.astype(np.uint8), norm.astype(np.float32), float(thr), used, locality)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two binary masks (1.0 when both are empty)."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
