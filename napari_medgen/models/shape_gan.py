"""Radiomics-conditioned 3D tumour shape GAN (seed 003, section 3.1), small enough to train on a CPU.

`ShapeGenerator` maps noise + a vector of normalised shape features to a soft tumour mask at a base
resolution (32^3 by default). Each feature becomes a token (learned per-feature embedding x value +
feature-id embedding, refined by a small MLP); the generator cross-attends to the tokens at every
resolution up to 16^3 and self-attends at 8^3 for the long-range structure that volume, sphericity and
diameters depend on. The same feature vector also modulates every block (FiLM), so volume-like
information enters early. Several output channels describe nested sub-regions (ordered inner -> outer,
e.g. necrotic core, tumour core); nesting is guaranteed by construction: ``p_outer = sigmoid(l_outer)``
and ``p_inner = sigmoid(l_inner) * p_next_outer``.

`ShapeDiscriminator` is a conditional projection discriminator (Miyato & Koyama 2018): a strided 3D conv
stack whose pooled features are scored by ``linear(h) + <embed(features), h>``.

`shape_statistics` gives differentiable proxies of radiomics shape features of soft masks (log volume,
a surface-area based sphericity, and rotation-invariant second-moment ratios); the training task uses
them (on softly thresholded masks) for the optional radiomics-consistency loss. `upsample_probabilities`
turns a base-resolution probability map into a smooth one on a finer grid (trilinear on the logits + a
light Gaussian smoothing), which keeps masks smooth at 64^3 / 128^3 without a trained upsampler.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from napari_medgen.errors import InvalidInputError
from napari_medgen.hub import HubModelMixin, register_model


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class FeatureTokenizer(nn.Module):
    """(B, F) normalised features -> (B, F, D) tokens: value x per-feature embedding + feature-id embedding."""

    def __init__(self, num_features: int, dim: int) -> None:
        super().__init__()
        self.value_embedding = nn.Parameter(torch.randn(num_features, dim) / math.sqrt(dim) * 4.0)
        self.id_embedding = nn.Parameter(torch.randn(num_features, dim) / math.sqrt(dim))
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * 2), nn.SiLU(), nn.Linear(dim * 2, dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = features[..., None] * self.value_embedding + self.id_embedding
        return tokens + self.mlp(tokens)


class AttentionBlock3d(nn.Module):
    """Optional self-attention over voxels, then cross-attention from voxels to feature tokens, then an MLP."""

    def __init__(self, channels: int, context_dim: int, heads: int, self_attention: bool) -> None:
        super().__init__()
        self.self_attention = self_attention
        if self_attention:
            self.norm_self = nn.LayerNorm(channels)
            self.attn_self = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm_cross = nn.LayerNorm(channels)
        self.attn_cross = nn.MultiheadAttention(channels, heads, kdim=context_dim, vdim=context_dim, batch_first=True)
        self.norm_ff = nn.LayerNorm(channels)
        self.ff = nn.Sequential(nn.Linear(channels, channels * 2), nn.GELU(), nn.Linear(channels * 2, channels))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        seq = x.flatten(2).transpose(1, 2)
        if self.self_attention:
            q = self.norm_self(seq)
            seq = seq + self.attn_self(q, q, q, need_weights=False)[0]
        seq = seq + self.attn_cross(self.norm_cross(seq), context, context, need_weights=False)[0]
        seq = seq + self.ff(self.norm_ff(seq))
        return seq.transpose(1, 2).reshape(b, c, d, h, w)


class ConvBlock3d(nn.Module):
    """Two 3x3x3 convolutions with GroupNorm, SiLU and FiLM modulation from the condition vector."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.norm1 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.film = nn.Linear(cond_dim, out_channels * 2)
        self.skip = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond)[:, :, None, None, None].chunk(2, dim=1)
        h = F.silu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h)) * (1 + scale) + shift
        return F.silu(h) + self.skip(x)


@register_model("shape-gan")
class ShapeGenerator(HubModelMixin, nn.Module):
    """Noise + normalised shape features -> logits of nested sub-region masks at ``base_size``^3."""

    def __init__(
        self,
        num_features: int,
        out_channels: int = 1,
        base_size: int = 32,
        z_dim: int = 64,
        token_dim: int = 64,
        channels: Sequence[int] = (64, 64, 32, 16),
        heads: int = 4,
        self_attention_sizes: Sequence[int] = (8,),
        cross_attention_sizes: Sequence[int] = (4, 8, 16),
    ) -> None:
        super().__init__()
        if num_features < 1 or out_channels < 1:
            raise InvalidInputError(f"num_features and out_channels must be >= 1; got {num_features}, {out_channels}.")
        start = base_size // 2 ** (len(channels) - 1)
        if start < 2 or start * 2 ** (len(channels) - 1) != base_size:
            raise InvalidInputError(
                f"base_size {base_size} must be a power-of-two multiple (2^{len(channels) - 1}) of a start size >= 2; "
                "use e.g. 32 with 4 channel levels or 16 with 3."
            )
        if any(c % heads for c in channels):
            raise InvalidInputError(f"Every entry of channels {list(channels)} must be divisible by heads={heads}.")
        self.config: dict[str, Any] = {
            "num_features": int(num_features), "out_channels": int(out_channels), "base_size": int(base_size),
            "z_dim": int(z_dim), "token_dim": int(token_dim), "channels": [int(c) for c in channels],
            "heads": int(heads), "self_attention_sizes": [int(s) for s in self_attention_sizes],
            "cross_attention_sizes": [int(s) for s in cross_attention_sizes],
        }
        self.start_size = start
        self.tokenizer = FeatureTokenizer(num_features, token_dim)
        self.cond_mlp = nn.Sequential(nn.Linear(num_features, token_dim), nn.SiLU(), nn.Linear(token_dim, token_dim))
        self.init = nn.Linear(z_dim + token_dim, channels[0] * start**3)
        self.blocks = nn.ModuleList()
        self.attentions = nn.ModuleDict()
        size, previous = start, channels[0]
        for level, width in enumerate(channels):
            self.blocks.append(ConvBlock3d(previous, width, token_dim))
            if size in cross_attention_sizes or size in self_attention_sizes:
                self.attentions[str(level)] = AttentionBlock3d(width, token_dim, heads, size in self_attention_sizes)
            previous = width
            size *= 2
        self.out = nn.Conv3d(previous, out_channels, 3, padding=1)

    @property
    def base_size(self) -> int:
        return int(self.config["base_size"])

    def forward(self, z: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Logits (B, C, S, S, S); use `probabilities` for the nested masks."""
        if features.ndim != 2 or features.shape[1] != self.config["num_features"]:
            raise InvalidInputError(
                f"features must be (batch, {self.config['num_features']}); got {tuple(features.shape)}."
            )
        tokens = self.tokenizer(features)
        cond = self.cond_mlp(features)
        s = self.start_size
        x = self.init(torch.cat([z, cond], dim=1)).view(z.shape[0], -1, s, s, s)
        for level, block in enumerate(self.blocks):
            if level > 0:
                x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
            x = block(x, cond)
            key = str(level)
            if key in self.attentions:
                x = self.attentions[key](x, tokens)
        return self.out(x)

    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        """Nested probabilities: channel c lies inside channel c+1 (last channel = whole tumour)."""
        probs = torch.sigmoid(logits)
        out = [probs[:, -1]]
        for c in range(logits.shape[1] - 2, -1, -1):
            out.insert(0, probs[:, c] * out[0])
        return torch.stack(out, dim=1)

    def sample(self, features: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Nested probabilities for a batch of normalised features with noise from ``generator``."""
        z = torch.randn(features.shape[0], self.config["z_dim"], generator=generator, device=features.device)
        return self.probabilities(self(z, features))


class ShapeDiscriminator(nn.Module):
    """Conditional projection discriminator on (B, C, S, S, S) soft masks."""

    def __init__(self, num_features: int, in_channels: int = 1, channels: Sequence[int] = (16, 32, 64, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for i, width in enumerate(channels):
            stride = 2 if i < len(channels) - 1 else 1
            layers += [nn.Conv3d(previous, width, 4 if stride == 2 else 3, stride=stride, padding=1),
                       nn.LeakyReLU(0.2)]
            previous = width
        self.body = nn.Sequential(*layers)
        self.linear = nn.Linear(previous, 1)
        self.embed = nn.Sequential(nn.Linear(num_features, previous), nn.LeakyReLU(0.2), nn.Linear(previous, previous))

    def forward(self, masks: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        h = self.body(masks).mean(dim=(2, 3, 4))
        return (self.linear(h) + (self.embed(features) * h).sum(dim=1, keepdim=True)).squeeze(1)


def shape_statistics(probs: torch.Tensor, voxel_mm: float) -> torch.Tensor:
    """Differentiable shape proxies of soft masks (B, S, S, S) -> (B, 4).

    Columns: log soft volume (mm3), sphericity from the soft volume and a surface-area proxy (sum of
    gradient magnitudes x voxel face area), and two rotation-invariant second-moment ratios
    ``tr(C^2)/tr(C)^2`` and ``27 det(C)/tr(C)^3`` of the probability-weighted coordinate covariance ``C``
    (they determine elongation and flatness without an eigen-decomposition, which has unstable gradients
    for near-spherical shapes).
    """
    b, d, h, w = probs.shape
    eps = 1e-6
    mass = probs.sum(dim=(1, 2, 3)) + eps
    volume = mass * voxel_mm**3
    gz = F.pad(probs[:, 1:] - probs[:, :-1], (0, 0, 0, 0, 0, 1))
    gy = F.pad(probs[:, :, 1:] - probs[:, :, :-1], (0, 0, 0, 1))
    gx = F.pad(probs[:, :, :, 1:] - probs[:, :, :, :-1], (0, 1))
    area = torch.sqrt(gz**2 + gy**2 + gx**2 + eps).sum(dim=(1, 2, 3)) * voxel_mm**2
    sphericity = (36 * math.pi * volume**2) ** (1.0 / 3.0) / (area + eps)
    axes = [torch.arange(n, dtype=probs.dtype, device=probs.device) for n in (d, h, w)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # (N, 3)
    weights = probs.reshape(b, -1) / mass[:, None]
    mean = weights @ grid  # (B, 3)
    centred = grid[None] - mean[:, None]  # (B, N, 3)
    cov = torch.einsum("bn,bni,bnj->bij", weights, centred, centred)
    trace = cov.diagonal(dim1=1, dim2=2).sum(-1) + eps
    ratio2 = (cov @ cov).diagonal(dim1=1, dim2=2).sum(-1) / trace**2
    ratio3 = 27.0 * torch.linalg.det(cov) / trace**3
    return torch.stack([torch.log(volume), sphericity, ratio2, ratio3], dim=1)


def smooth_logits(probs: torch.Tensor, sigma: float = 0.5) -> torch.Tensor:
    """Logits of (B, C, S, S, S) probabilities, Gaussian-smoothed (sigma in voxels) to remove voxel kinks.

    Interpolating logits (not probabilities) keeps the 0.5 iso-surface where the model put it.
    """
    logits = torch.logit(probs.clamp(1e-4, 1 - 1e-4))
    if sigma <= 0:
        return logits
    radius = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=probs.dtype, device=probs.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = logits.shape[1]
    for dim in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + dim] = kernel.numel()
        weight = kernel.view(shape).repeat(c, 1, 1, 1, 1)
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - dim)] = pad[2 * (2 - dim) + 1] = radius
        logits = F.conv3d(F.pad(logits, pad, mode="replicate"), weight, groups=c)
    return logits


def nest(probs: torch.Tensor) -> torch.Tensor:
    """Re-impose nesting after interpolation: inner channels never leave the next outer one."""
    out = [probs[:, -1]]
    for ch in range(probs.shape[1] - 2, -1, -1):
        out.insert(0, torch.minimum(probs[:, ch], out[0]))
    return torch.stack(out, dim=1)


def upsample_probabilities(probs: torch.Tensor, size: int | Sequence[int], smooth_sigma: float = 0.5) -> torch.Tensor:
    """Base-resolution probabilities (B, C, S, S, S) -> smooth probabilities on a finer ``size`` grid
    (the same field of view): trilinear interpolation of smoothed logits, so thresholded masks stay smooth
    at 64^3 / 128^3 without a trained upsampler."""
    target = (size, size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    up = F.interpolate(smooth_logits(probs, smooth_sigma), size=target, mode="trilinear", align_corners=False)
    return nest(torch.sigmoid(up))
