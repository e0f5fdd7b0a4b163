"""Random-weight Stable Diffusion pipelines built from config, for tests and benchmarks.

Nothing is downloaded: the tokenizer is tiny-shapes' kind (byte-level BPE, whole words for
the words the tests use), the networks get random weights.
`tiny` is a few hundred thousand parameters for CPU tests; `sd15` has the shapes of
Stable Diffusion 1.5 for benchmarks on an accelerator.
"""

from __future__ import annotations

import torch

from easel.models.tiny_shapes import build_tokenizer

# Words that get a single token each, so prompts like "a photo of sks shape" are short.
_WORDS = [
    "a",
    "photo",
    "of",
    "sks",
    "shape",
    "circle",
    "square",
    "red",
    "blue",
    "green",
    "on",
    "in",
    "the",
    "background",
    "triangle",
    "yellow",
    "zxq",
    "dog",
]


def build_random_pipeline(
    folder: str, size: str = "tiny", seed: int = 0, prediction_type: str = "epsilon"
) -> str:
    """Write a random-weight StableDiffusionPipeline (safetensors) to `folder`; return it."""
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    if size == "tiny":
        max_length, hidden = 16, 32
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            norm_num_groups=16,
            cross_attention_dim=hidden,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(16, 32),
            norm_num_groups=16,
            layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            sample_size=32,
        )
        text_config = {
            "hidden_size": hidden,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": max_length,
        }
    elif size == "sd15":
        max_length, hidden = 77, 768
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=hidden)  # SD 1.5 shapes
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            sample_size=512,
        )
        text_config = {
            "hidden_size": hidden,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "max_position_embeddings": max_length,
        }
    else:
        raise ValueError(f"`size` must be 'tiny' or 'sd15' but is {size!r}")

    tokenizer = build_tokenizer(_WORDS, max_length)
    special_ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    text_encoder = CLIPTextModel(
        CLIPTextConfig(vocab_size=len(tokenizer), **special_ids, **text_config)
    )
    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        num_train_timesteps=1000,
        prediction_type=prediction_type,
        clip_sample=False,
        steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder
