"""Random-weight Stable Diffusion pipelines built from config, for tests and benchmarks.

Nothing is downloaded: the tokenizer's vocabulary is written here (a byte-level BPE over
single characters plus whole words the tests use), the networks get random weights.
`tiny` is a few hundred thousand parameters for CPU tests; `sd15` has the shapes of
Stable Diffusion 1.5 for benchmarks on an accelerator.
"""

from __future__ import annotations

import json
import os
import tempfile

import torch

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


def _byte_symbols() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the bytes 0..255 (GPT-2 scheme:
    printable Latin-1 bytes stand for themselves, the rest map to code points from 256)."""
    printable = (
        set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    )
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _write_tokenizer(folder: str, max_length: int) -> None:
    symbols = _byte_symbols()
    vocab: dict[str, int] = {}
    for symbol in symbols:
        vocab.setdefault(symbol, len(vocab))
        vocab.setdefault(symbol + "</w>", len(vocab))
    merges = []
    for word in _WORDS:
        # Merge left to right: "sks</w>" <- "s" + "k" -> "sk" + "s</w>".
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer(
        os.path.join(folder, "vocab.json"),
        os.path.join(folder, "merges.txt"),
        model_max_length=max_length,
    )
    tokenizer.save_pretrained(folder)


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
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

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

    with tempfile.TemporaryDirectory() as tmp:
        _write_tokenizer(tmp, max_length)
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **text_config))
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
