"""The diffusion backbones training-free composition runs on, behind one small interface.

Composition (seed 000) only needs: a working image size, an encoder to and decoder from the space the diffusion
runs in, the noise network, the training noise schedule, and two conditions: a *content-free* one for inversion
(and plain reconstruction) and optionally a guiding one for the final denoising. Two kinds exist:

* `PixelBackbone`: the project's own mask-diffusion models (64x64, pixel space). The content-free condition is the
  all-unconstrained mask code (every class dropped: a model trained with mask ablation learned it as "no
  constraint"); the guiding condition constrains the lesion class to the placed tumour mask.
* `LatentBackbone`: any Stable Diffusion folder in diffusers layout, loaded from disk only. The content-free condition
  is the *exceptional prompt* of TF-ICON (every token the same id, no positional embedding); the guiding condition is
  the user's text prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_medgen.errors import CheckpointError, InvalidInputError

#: token id every position of the exceptional prompt carries (any fixed id works: with all tokens equal and no
#: positional embedding the encoder output carries no content; 0 keeps it tokenizer-independent)
EXCEPTIONAL_TOKEN_ID = 0
#: the last Stable Diffusion pipeline loaded, by (folder, device): reloading costs seconds to minutes
_SD_CACHE: dict[tuple[str, str], Any] = {}


@dataclass
class PixelBackbone:
    """A mask-diffusion model (pixel space): ``encode``/``decode`` are the identity on [-1, 1] images."""

    net: Any
    name: str
    lesion_class: int
    kind: str = "pixel"
    clip: bool = True
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.net.config["image_channels"])

    @property
    def normalization(self) -> str:
        return str(self.net.config["normalization"])

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def working_size(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.net.image_size)  # type: ignore[return-value]

    def latent_factor(self) -> int:
        return 1

    def scheduler_config(self) -> dict[str, Any]:
        return {"num_train_timesteps": int(self.net.config["num_train_timesteps"]),
                "beta_schedule": self.net.config["beta_schedule"], "prediction_type": "epsilon"}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.clamp(-1.0, 1.0)

    def content_free(self, batch: int) -> torch.Tensor:
        h, w = self.working_size()
        return torch.zeros(batch, self.net.num_classes, h, w, device=self.device)

    def guided(self, placed_mask: np.ndarray | None, prompt: str | None, batch: int) -> torch.Tensor:
        """The lesion class constrained to ``placed_mask`` (working size), every other class unconstrained."""
        from napari_medgen.models.mask_code import encode_mask

        if placed_mask is None:
            return self.content_free(batch)
        labels = torch.from_numpy(np.where(placed_mask, self.lesion_class, 0).astype(np.int64))[None]
        dropped = [v for v in self.net.class_values if v != self.lesion_class]
        code = encode_mask(labels, self.net.class_values, dropped).to(self.device)
        return code.expand(batch, -1, -1, -1)

    def eps(self, x: torch.Tensor, t: Any, cond: torch.Tensor) -> torch.Tensor:
        if cond.shape[0] != x.shape[0]:
            cond = cond[:1].expand(x.shape[0], -1, -1, -1)
        return self.net(x, torch.as_tensor(t, device=self.device).reshape(-1)[:1], cond).float()


@dataclass
class LatentBackbone:
    """A Stable Diffusion pipeline (latent space) read from a local diffusers folder."""

    pipe: Any
    name: str
    kind: str = "latent"
    clip: bool = False
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return 3

    @property
    def normalization(self) -> str:
        return "percentile"

    @property
    def device(self) -> torch.device:
        return next(self.pipe.unet.parameters()).device

    def latent_factor(self) -> int:
        return int(2 ** (len(self.pipe.vae.config.block_out_channels) - 1))

    def working_size(self) -> tuple[int, int]:
        size = self.pipe.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        f = self.latent_factor()
        return int(size[0]) * f, int(size[1]) * f

    def scheduler_config(self) -> dict[str, Any]:
        keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type")
        cfg = {k: v for k, v in dict(self.pipe.scheduler.config).items() if k in keep and v is not None}
        cfg.setdefault("prediction_type", "epsilon")
        return cfg

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        x = images.to(self.device, vae.dtype)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return vae.encode(x).latent_dist.mean.float() * float(vae.config.scaling_factor)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        out = vae.decode((latents / float(vae.config.scaling_factor)).to(vae.dtype)).sample
        return out.float().clamp(-1.0, 1.0)

    def _length(self) -> int:
        return int(self.pipe.tokenizer.model_max_length)

    def content_free(self, batch: int) -> torch.Tensor:
        """The exceptional prompt: one token id everywhere and no positional embedding.

        With identical inputs and no position, every causal-attention position sees copies of one vector, so the
        whole sequence equals the encoding of that single token, repeated; it is computed that way (exactly)."""
        if "exceptional" not in self.cache:
            text = getattr(self.pipe.text_encoder, "text_model", self.pipe.text_encoder)  # transformers < 5 nests it
            ids = torch.tensor([[EXCEPTIONAL_TOKEN_ID]], device=self.device)
            with torch.no_grad():
                hidden = text.embeddings.token_embedding(ids)
                hidden = text.encoder(inputs_embeds=hidden, attention_mask=None).last_hidden_state
                hidden = text.final_layer_norm(hidden)
            self.cache["exceptional"] = hidden.expand(1, self._length(), -1).contiguous()
        return self.cache["exceptional"].expand(batch, -1, -1)

    def prompt(self, text: str) -> torch.Tensor:
        key = f"prompt:{text}"
        if key not in self.cache:
            tok = self.pipe.tokenizer(text, padding="max_length", max_length=self._length(), truncation=True,
                                      return_tensors="pt")
            with torch.no_grad():
                self.cache[key] = self.pipe.text_encoder(tok.input_ids.to(self.device))[0]
        return self.cache[key]

    def guided(self, placed_mask: np.ndarray | None, prompt: str | None, batch: int) -> torch.Tensor:
        if not prompt:
            return self.content_free(batch)
        return self.prompt(prompt).expand(batch, -1, -1)

    def eps(self, x: torch.Tensor, t: Any, cond: torch.Tensor) -> torch.Tensor:
        unet = self.pipe.unet
        if cond.shape[0] != x.shape[0]:
            cond = cond[:1].expand(x.shape[0], -1, -1)
        t = torch.as_tensor(t, device=self.device).reshape(-1)[:1]
        return unet(x.to(unet.dtype), t, encoder_hidden_states=cond.to(unet.dtype)).sample.float()


def is_diffusers_folder(model: Any) -> bool:
    """A local Stable Diffusion folder in diffusers layout (``model_index.json`` at its top)."""
    if not isinstance(model, str | Path):
        return False
    return Path(model).is_dir() and (Path(model) / "model_index.json").is_file()


def load_backbone(model: Any, device: Any = None, lesion_class: int | None = None) -> PixelBackbone | LatentBackbone:
    """A backbone from a bundled/cached mask-diffusion name or folder, a local Stable Diffusion folder, or an
    already loaded diffusers pipeline / `MaskDiffusionUNet` (tests, notebooks)."""
    from napari_medgen.core.device import select_device

    if hasattr(model, "unet") and hasattr(model, "vae") and hasattr(model, "text_encoder"):
        return LatentBackbone(model, type(model).__name__)
    if hasattr(model, "config") and isinstance(getattr(model, "config", None), dict) and hasattr(model, "class_values"):
        return _pixel(model, getattr(model, "hub_path", None) or "in-memory model", lesion_class)
    if is_diffusers_folder(model):
        from diffusers import StableDiffusionPipeline

        target = select_device(device)
        key = (str(Path(model).resolve()), str(target))
        if key in _SD_CACHE:
            return LatentBackbone(_SD_CACHE[key], str(model))
        try:
            pipe = StableDiffusionPipeline.from_pretrained(str(model), local_files_only=True, safety_checker=None,
                                                           requires_safety_checker=False)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise CheckpointError(
                f"Could not load the Stable Diffusion folder {model}: {error}. Point to a complete local diffusers "
                "folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/); nothing is downloaded."
            ) from error
        pipe.set_progress_bar_config(disable=True)
        pipe.to(target)
        _SD_CACHE.clear()  # one pipeline at a time: they are large
        _SD_CACHE[key] = pipe
        return LatentBackbone(pipe, str(model))
    from napari_medgen.hub import load_cached

    net = load_cached(model, expected_type="mask-diffusion", device=device)
    return _pixel(net, str(model), lesion_class)


def _pixel(net: Any, name: str, lesion_class: int | None) -> PixelBackbone:
    if not net.config.get("trained_with_ablation", False):
        raise InvalidInputError(
            f"The model {name} was trained on complete masks only, so it has no content-free (unconstrained) condition "
            "to invert under. Use a mask-ablated model (the bundled seg2img-busi-ablation or seg2img-brain), or a "
            "Stable Diffusion folder."
        )
    values = list(net.class_values)
    lesion = values[0] if lesion_class is None else int(lesion_class)
    if lesion not in values:
        raise InvalidInputError(f"lesion_class {lesion} is not one of the model's classes {values}.")
    return PixelBackbone(net, name, lesion)


__all__ = ["EXCEPTIONAL_TOKEN_ID", "LatentBackbone", "PixelBackbone", "is_diffusers_folder", "load_backbone"]
