"""One builder for tiny random-weight Stable Diffusion folders (composition, lesion pairs, SD fine-tuning tests):
configs only, a character-level CLIP vocabulary written locally, nothing downloaded. Saved with
``save_pretrained`` so tests load it exactly as a user's local diffusers folder is loaded."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def make_tiny_sd(folder: Path, *, seed: int = 0, latent_size: int = 8, unet_channels: Sequence[int] = (8, 16),
                 cross_attention_everywhere: bool = False, width: int = 16, max_length: int = 8,
                 train_timesteps: int = 1000, extra_tokens: Sequence[str] = (),
                 set_alpha_to_one: bool = True) -> Path:
    """A complete Stable Diffusion folder at ``folder`` (images 2x ``latent_size``, 4 latent channels); returns it.

    ``cross_attention_everywhere``: every UNet block has cross-attention (attention maps at every scale) instead of
    only the first down and last up block. ``extra_tokens`` are added to the tokenizer (placeholder tokens)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    tok_dir = folder.parent / f"{folder.name}_tokenizer_files"
    tok_dir.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz<>":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=max_length)
    if extra_tokens:
        tokenizer.add_tokens(list(extra_tokens))
    torch.manual_seed(seed)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                                        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=max_length,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=width))
    channels = tuple(int(c) for c in unet_channels)
    if cross_attention_everywhere:
        down, up = ("CrossAttnDownBlock2D",) * len(channels), ("CrossAttnUpBlock2D",) * len(channels)
    else:
        down = ("CrossAttnDownBlock2D",) + ("DownBlock2D",) * (len(channels) - 1)
        up = ("UpBlock2D",) * (len(channels) - 1) + ("CrossAttnUpBlock2D",)
    groups = min(4, min(channels)) if min(channels) < 32 else 8
    unet = UNet2DConditionModel(sample_size=latent_size, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=channels, down_block_types=down, up_block_types=up,
                                cross_attention_dim=width, norm_num_groups=groups, attention_head_dim=2)
    vae_channels = (8, 16) if latent_size <= 8 else (16, 16)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=vae_channels, latent_channels=4,
                        norm_num_groups=min(vae_channels) // 2, sample_size=2 * latent_size)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=train_timesteps, clip_sample=False, set_alpha_to_one=set_alpha_to_one,
                              steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder
