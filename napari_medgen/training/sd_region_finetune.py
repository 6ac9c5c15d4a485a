"""Region-aware fine-tuning of a *local* Stable Diffusion folder (DiDGen Stage II, seed 001 ch. 4.3.2).

The thesis fine-tunes SD v2.1 with the prompt "An image of <lesion> on <skin>": the two placeholder
tokens are added to the tokenizer, initialised from the embeddings of "lesion" and "skin" and kept
frozen (the whole text encoder is frozen here), and the UNet learns L = L_rec + alpha L_attn (alpha = 0.1),
where L_attn pulls the cross-attention of both tokens at the 1/4 latent scale towards the lesion mask and
its complement. The folder is only ever read with ``local_files_only=True``; the result is written as a
new pipeline folder, all or nothing. Our own token model is trained the same way with
``medgen train token-diffusion`` (`training.tasks.token_diffusion`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_medgen.core.atomic import staged_outputs
from napari_medgen.core.progress import ProgressCallback, ProgressReporter
from napari_medgen.errors import CheckpointError, InvalidInputError
from napari_medgen.models.attention_capture import AttentionStore, capture_attention
from napari_medgen.models.attention_masks import attention_alignment_loss

PROMPT = "An image of <lesion> on <skin>"


def _positions(tokenizer: Any, ids: list[int], word: str) -> int:
    sub = tokenizer(word, add_special_tokens=False).input_ids
    for i in range(len(ids) - len(sub) + 1):
        if ids[i:i + len(sub)] == sub:
            return i
    raise InvalidInputError(f"The prompt does not contain {word!r}.")


def add_placeholder_tokens(tokenizer: Any, text_encoder: Any, tokens: Sequence[str], init_words: Sequence[str]) -> None:
    """Add ``tokens`` to the vocabulary (when new), each initialised from the mean embedding of its init word."""
    new = [t for t in tokens if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if new:
        tokenizer.add_tokens(new)
        text_encoder.resize_token_embeddings(len(tokenizer))
    table = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for token, word in zip(tokens, init_words, strict=True):
            if token not in new:
                continue
            ids = tokenizer(word, add_special_tokens=False).input_ids
            table[tokenizer.convert_tokens_to_ids(token)] = table[ids].mean(dim=0)


def finetune_stable_diffusion(
    folder: str | Path,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    out_dir: str | Path,
    *,
    steps: int = 1000,
    lr: float = 1e-5,
    alpha: float = 0.1,
    batch_size: int = 1,
    prompt: str = PROMPT,
    tokens: Sequence[str] = ("<lesion>", "<skin>"),
    init_words: Sequence[str] = ("lesion", "skin"),
    seed: int = 0,
    device: Any = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Fine-tune the UNet of the SD pipeline in ``folder`` on (RGB image in [0, 1] at the pipeline's resolution,
    binary lesion mask) pairs; writes the tuned pipeline to ``out_dir``. Returns {"out_dir", "losses"}."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from napari_medgen.core.device import select_device

    if len(images) != len(masks) or not images:
        raise InvalidInputError(f"Give one mask per image (got {len(images)} images, {len(masks)} masks).")
    if isinstance(steps, bool) or int(steps) < 1 or int(batch_size) < 1:
        raise InvalidInputError("steps and batch_size must be positive integers.")
    path = Path(folder).expanduser()
    if not (path / "model_index.json").is_file():
        raise CheckpointError(f"{path} is not a Stable Diffusion folder (no model_index.json).")
    pipe = StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    target = select_device(device)
    pipe.to(target)
    add_placeholder_tokens(pipe.tokenizer, pipe.text_encoder, tokens, init_words)
    unet, vae, text_encoder, tok = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    row = ids[0].tolist()
    lesion_pos, background_pos = (_positions(tok, row, t) for t in tokens)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    side = int(unet.config.sample_size)
    size = (side * factor, side * factor)
    arrays = []
    for image, mask in zip(images, masks, strict=True):
        image = np.asarray(image, dtype=np.float32)
        if image.shape[:2] != size or np.asarray(mask).shape != size:
            raise InvalidInputError(f"Images and masks must be {size[0]}x{size[1]} (the pipeline's resolution); got "
                                    f"{image.shape[:2]} and {np.asarray(mask).shape}.")
        arrays.append((image, (np.asarray(mask) > 0).astype(np.float32)))
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        context = text_encoder(ids.to(target))[0]
        x = torch.from_numpy(np.stack([a for a, _ in arrays]).transpose(0, 3, 1, 2) * 2 - 1).to(target)
        latents = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    m_all = torch.from_numpy(np.stack([m for _, m in arrays])).to(target)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    cross_scale = side // 4 if side >= 8 else side
    unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=float(lr), betas=(0.9, 0.999), weight_decay=1e-2)
    reporter = ProgressReporter(int(steps), stage="region-aware fine-tuning", callback=progress)
    losses = []
    for _ in range(int(steps)):
        pick = torch.randint(0, len(arrays), (int(batch_size),), generator=generator)
        z0, mask = latents[pick], m_all[pick]
        noise = torch.randn(z0.shape, generator=generator).to(target)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (z0.shape[0],), generator=generator).to(target)
        store = AttentionStore((side, side), cross_scales=(cross_scale,), self_scales=(), keep_grad=True)
        with capture_attention(unet, store):
            eps = unet(scheduler.add_noise(z0, noise, t), t,
                       encoder_hidden_states=context.expand(z0.shape[0], -1, -1)).sample
        rec = F.mse_loss(eps.float(), noise.float())
        attn = attention_alignment_loss(store.cross_map(cross_scale), mask, lesion_pos, background_pos)
        loss = rec + float(alpha) * attn
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append({"l_rec": float(rec.detach()), "l_attn": float(attn.detach())})
        reporter.advance(1, f"l_rec={losses[-1]['l_rec']:.4g} l_attn={losses[-1]['l_attn']:.4g}")
    unet.eval()
    with staged_outputs([out_dir]) as (staged,):
        pipe.save_pretrained(str(staged))
    return {"out_dir": str(Path(out_dir).expanduser().absolute()), "losses": losses,
            "lesion_position": lesion_pos, "background_position": background_pos, "cross_scale": cross_scale}
