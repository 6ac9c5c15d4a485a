"""Reading attention maps out of a diffusion UNet while it runs (thesis eq. 4.4 / spec section 1.1).

Layout guidance, mask extraction and the region-aware training loss all need the softmax maps
A_C = softmax(Q_I K_T^T / sqrt(d)) and A_S = softmax(Q_I K_I^T / sqrt(d)) *with gradients*. Fused
attention kernels never materialise them, so capture swaps in processors (diffusers ``Attention``) or
forward hooks (MONAI ``CrossAttentionBlock`` / ``SABlock``) that compute the probabilities explicitly and
hand them, averaged over heads, to an `AttentionStore`. The network itself is never copied: the
original processors are put back when the `capture_attention` context ends.

Maps are kept only at the requested latent scales (side lengths, e.g. 16 for cross- and 32 for
self-attention) so a 32x32 self-attention (1024 x 1024 per image) is the largest thing stored.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from napari_medgen.errors import InvalidInputError


@dataclass
class AttentionStore:
    """Head-averaged attention probabilities of one UNet call, per layer, at chosen scales.

    ``latent_size`` is the (H, W) of the UNet input, so a layer's token count tells its scale.
    ``keep_grad``: keep maps in the autograd graph (guidance, training loss); otherwise detached.
    ``history``: also keep a detached copy of every call's maps (``steps``) for inspection.
    """

    latent_size: tuple[int, int]
    cross_scales: tuple[int, ...] = (16,)
    self_scales: tuple[int, ...] = (32,)
    keep_grad: bool = False
    history: bool = False
    cross: dict[str, torch.Tensor] = field(default_factory=dict)
    self_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    steps: list[dict[str, dict[str, torch.Tensor]]] = field(default_factory=list)
    layers_seen: dict[str, tuple[str, int]] = field(default_factory=dict)

    def scale_of(self, tokens: int) -> int:
        """Height of the latent grid of a layer with ``tokens`` spatial positions (-1 when it is not a grid)."""
        h, w = self.latent_size
        factor = math.sqrt(h * w / max(tokens, 1))
        side_h, side_w = round(h / factor), round(w / factor)
        return int(side_h) if side_h * side_w == tokens else -1

    def wants(self, kind: str, tokens: int) -> bool:
        """Whether a ``kind`` layer with ``tokens`` query positions is to be stored (others run fused attention)."""
        return self.scale_of(tokens) in (self.cross_scales if kind == "cross" else self.self_scales)

    def record(self, name: str, kind: str, probs: torch.Tensor) -> None:
        """Store ``probs`` (B, heads, N_query, N_key) of layer ``name`` averaged over heads, if its scale is wanted."""
        scale = self.scale_of(probs.shape[-2])
        self.layers_seen[name] = (kind, scale)
        wanted = self.cross_scales if kind == "cross" else self.self_scales
        if scale not in wanted:
            return
        mean = probs.float().mean(dim=1)
        if not self.keep_grad:
            mean = mean.detach()
        (self.cross if kind == "cross" else self.self_maps)[name] = mean

    def new_step(self) -> None:
        """Start a new UNet call: archive the current maps (when ``history``) and clear them."""
        if self.history and (self.cross or self.self_maps):
            self.steps.append({"cross": {k: v.detach().cpu() for k, v in self.cross.items()},
                               "self": {k: v.detach().cpu() for k, v in self.self_maps.items()}})
        self.cross = {}
        self.self_maps = {}

    def finish(self) -> None:
        """Archive the maps of the last call too (when ``history``)."""
        if self.history and (self.cross or self.self_maps):
            self.new_step()

    def cross_map(self, scale: int | None = None) -> torch.Tensor:
        """Cross-attention (B, N, n_tokens) averaged over the stored layers (of one ``scale`` when given)."""
        return _mean_maps(self.cross, self, scale, "cross-attention")

    def self_map(self, scale: int | None = None) -> torch.Tensor:
        """Self-attention (B, N, N) averaged over the stored layers (of one ``scale`` when given)."""
        return _mean_maps(self.self_maps, self, scale, "self-attention")


def _mean_maps(maps: dict[str, torch.Tensor], store: AttentionStore, scale: int | None, what: str) -> torch.Tensor:
    chosen = [m for m in maps.values() if scale is None or store.scale_of(m.shape[-2]) == scale]
    if not chosen:
        seen = sorted({s for k, s in store.layers_seen.values() if (k == "cross") == (what == "cross-attention")})
        raise InvalidInputError(
            f"No {what} maps were captured at latent scale {scale if scale is not None else 'any'}; the model has "
            f"{what} at scales {seen or 'none'}. Choose one of those scales."
        )
    if len({m.shape for m in chosen}) > 1:
        raise InvalidInputError(f"{what} layers at the chosen scale disagree in shape; pass one scale.")
    return torch.stack(chosen).mean(dim=0)


class CapturingAttnProcessor:
    """A diffusers attention processor that computes softmax(QK^T) explicitly and reports it to a store."""

    def __init__(self, store: AttentionStore, name: str) -> None:
        self.store = store
        self.name = name

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, n_query, _ = hidden_states.shape
        kind = "self" if encoder_hidden_states is None else "cross"
        seq = n_query if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        attention_mask = attn.prepare_attention_mask(attention_mask, seq, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        query = attn.head_to_batch_dim(query)
        if self.store.wants(kind, n_query):
            probs = attn.get_attention_scores(query, key, attention_mask)
            self.store.record(self.name, kind, probs.view(batch, attn.heads, n_query, -1))
            hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        else:  # not wanted: the fused kernel (same result, no N x N map in memory)
            self.store.layers_seen[self.name] = (kind, self.store.scale_of(n_query))
            heads = attn.heads
            q, k, v = (z.view(batch, heads, z.shape[1], z.shape[2]) for z in (query, key, value))
            mask = None if attention_mask is None else attention_mask.view(batch, heads, *attention_mask.shape[1:])
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
            hidden_states = attn.batch_to_head_dim(out.reshape(batch * heads, n_query, -1))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _monai_probs(block: nn.Module, x: torch.Tensor, context: torch.Tensor | None) -> tuple[torch.Tensor, str]:
    """Recompute a MONAI attention block's softmax map from its input (its own ``att_mat`` has no gradient)."""
    if getattr(block, "rel_positional_embedding", None) is not None or getattr(block, "causal", False):
        raise InvalidInputError(
            f"{type(block).__name__} uses relative positions or causal masking; attention capture supports plain "
            "MONAI attention blocks only."
        )
    if hasattr(block, "qkv") and getattr(block, "use_combined_linear", False):
        q, k = block.input_rearrange(block.qkv(x))[:2]
        kind = "self"
    else:
        kv = x if context is None else context
        q, k = block.input_rearrange(block.to_q(x)), block.input_rearrange(block.to_k(kv))
        kind = "self" if context is None else "cross"
    probs = (torch.einsum("blxd,blyd->blxy", q.float(), k.float()) * block.scale).softmax(dim=-1)
    return probs, kind


def _monai_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    try:
        from monai.networks.blocks.crossattention import CrossAttentionBlock
        from monai.networks.blocks.selfattention import SABlock
    except ImportError:  # MONAI is optional for diffusers models
        return []
    return [(n, m) for n, m in model.named_modules() if isinstance(m, CrossAttentionBlock | SABlock)]


def _diffusers_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    try:
        from diffusers.models.attention_processor import Attention
    except ImportError:
        return []
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Attention)]


def attention_layer_names(model: nn.Module) -> list[str]:
    """Names of the attention layers capture would instrument (diffusers ``Attention``, MONAI blocks)."""
    return [n for n, _ in _diffusers_layers(model)] + [n for n, _ in _monai_blocks(model)]


@contextlib.contextmanager
def capture_attention(model: nn.Module, store: AttentionStore) -> Iterator[AttentionStore]:
    """Within the block every attention layer of ``model`` reports its maps to ``store``; restored afterwards.

    Works on any module containing diffusers ``Attention`` layers (``UNet2DConditionModel``, our
    `TokenDiffusionModel`) and on MONAI networks built from ``CrossAttentionBlock`` / ``SABlock`` (a forward
    hook recomputes the map, so the block's flash-attention setting does not matter).
    """
    layers = _diffusers_layers(model)
    monai = _monai_blocks(model)
    if not layers and not monai:
        raise InvalidInputError(
            f"{type(model).__name__} has no attention layers that can be captured (diffusers Attention or MONAI "
            "CrossAttentionBlock / SABlock); layout guidance and mask extraction need a UNet with attention."
        )
    originals = [(module, module.processor) for _, module in layers]
    hooks = []
    try:
        for name, module in layers:
            module.processor = CapturingAttnProcessor(store, name)
        for name, block in monai:
            def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any,
                     _name: str = name) -> None:
                x = args[0]
                context = args[1] if len(args) > 1 else kwargs.get("context")
                probs, kind = _monai_probs(module, x, context)
                store.record(_name, kind, probs)

            hooks.append(block.register_forward_hook(hook, with_kwargs=True))
        yield store
    finally:
        for handle in hooks:
            handle.remove()
        for module, processor in originals:
            module.processor = processor


def has_cross_attention(model: nn.Module) -> bool:
    """Whether ``model`` conditions on a token context through cross-attention (needed by layout guidance)."""
    config = getattr(model, "config", None)
    dim = config.get("cross_attention_dim") if hasattr(config, "get") else None
    if dim:
        return True
    try:
        from monai.networks.blocks.crossattention import CrossAttentionBlock
    except ImportError:
        return False
    return any(isinstance(m, CrossAttentionBlock) for m in model.modules())


def check_scales(store: AttentionStore, scales: Sequence[int], kind: str) -> None:
    """Raise a clear error when none of ``scales`` holds ``kind`` attention after a captured call."""
    have = {s for k, s in store.layers_seen.values() if k == kind}
    if not have & set(scales):
        raise InvalidInputError(
            f"The model has {kind}-attention at latent scales {sorted(have) or 'none'}, not at {list(scales)}; "
            "choose scales the model has."
        )
