"""The embedded model `tiny-shapes`: sizes, tokenizer and the assembled SD pipeline.

A Stable-Diffusion-family pipeline small enough to train on two CPU cores in under an
hour: a CLIP BPE tokenizer over the shapes world's words (with byte-level fallback, so any
word, `sks` included, tokenizes), a 2-layer CLIPTextModel, an AutoencoderKL that
downsamples 64x64 images to 8x8x4 latents, and a UNet2DConditionModel over those
latents. Training lives in `tiny_shapes_training.py`.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from easel.data import shapes

BOS, EOS, PAD = "<|startoftext|>", "<|endoftext|>", "<|pad|>"
END_OF_WORD = "</w>"
# SD's training noise schedule; sampling schedulers are built from the same betas
NOISE_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}


@dataclass(frozen=True)
class TinyShapesArchitecture:
    max_length: int = 16  # tokens, BOS and EOS included; the longest caption needs 12
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    vae_channels: tuple[int, ...] = (8, 16, 32, 32)  # 4 levels: 64x64 -> 8x8 latents
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (32, 64, 64)
    unet_attention_head_dim: int = 8
    vae_norm_groups: int = (
        2  # few channels: a per-group norm must keep colour levels across channels
    )
    unet_norm_groups: int = 8


# -- tokenizer -----------------------------------------------------------------------------


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's printable stand-in for each of the 256 bytes, in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Split `word` (byte-level characters) by greedy lowest-rank merges, as CLIP's BPE does."""
    pieces = [*word[:-1], word[-1] + END_OF_WORD]
    while len(pieces) > 1:
        pairs = [
            (ranks.get(pair, len(ranks)), i) for i, pair in enumerate(itertools.pairwise(pieces))
        ]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def _learn_merges(words: list[str], merges: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """`merges` extended until every word of `words` is one token. New merges rank after the
    old ones, so every word the old merges made one token still is, with the same pieces."""
    alphabet = _bytes_to_unicode()
    byte_words = ["".join(alphabet[b] for b in word.lower().encode()) for word in words]
    merges = list(merges)
    ranks = {pair: rank for rank, pair in enumerate(merges)}
    changed = True
    while changed:  # appending a merge can only join pieces; stops once every word is one token
        changed = False
        for word in byte_words:
            pieces = _bpe(word, ranks)
            if len(pieces) > 1:
                ranks[(pieces[0], pieces[1])] = len(merges)
                merges.append((pieces[0], pieces[1]))
                changed = True
    return merges


def _clip_tokenizer(vocab_tokens: list[str], merges, max_length: int) -> CLIPTokenizer:
    return CLIPTokenizer(
        vocab={token: i for i, token in enumerate(vocab_tokens)}, merges=merges,
        unk_token=EOS, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=max_length,
    )  # fmt: skip


def build_tokenizer(words: list[str], max_length: int) -> CLIPTokenizer:
    """A CLIP tokenizer whose every word of `words` is one token; any other text falls back
    to byte-level pieces (e.g. `sks` -> `s`, `k`, `s</w>`), never to an unknown token."""
    alphabet = _bytes_to_unicode()
    vocab_tokens = alphabet + [c + END_OF_WORD for c in alphabet]
    merges = _learn_merges(words, [])
    for left, right in merges:
        if left + right not in vocab_tokens:
            vocab_tokens.append(left + right)
    return _clip_tokenizer([*vocab_tokens, BOS, EOS, PAD], merges, max_length)


def extend_tokenizer(tokenizer: CLIPTokenizer, words: list[str]) -> CLIPTokenizer:
    """`tokenizer` with every word of `words` one token too. Existing tokens keep their ids
    (new ones come after them, so an embedding table grows by rows) and every text that
    `tokenizer` knew tokenizes as before."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [tuple(pair) for pair in model["merges"]]
    vocab = sorted(tokenizer.get_vocab(), key=tokenizer.get_vocab().get)
    extended = _learn_merges(words, merges)
    for left, right in extended[len(merges) :]:
        if left + right not in vocab:
            vocab.append(left + right)
    return _clip_tokenizer(vocab, extended, tokenizer.model_max_length)


def tokenize(tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    """(N, max_length) token ids, padded and truncated as the SD pipeline does."""
    return tokenizer(
        prompts,
        padding="max_length",
        truncation=True,
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    ).input_ids


# -- components ----------------------------------------------------------------------------


def build_text_encoder(arch: TinyShapesArchitecture, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.text_width,
        intermediate_size=arch.text_width * 4,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        max_position_embeddings=arch.max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_vae(arch: TinyShapesArchitecture) -> AutoencoderKL:
    levels = len(arch.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=arch.vae_channels,
        layers_per_block=1,
        latent_channels=arch.latent_channels,
        norm_num_groups=arch.vae_norm_groups,
        sample_size=shapes.IMAGE_SIZE,
        mid_block_add_attention=False,  # plain convolutions: trainable on crops, cheap on CPU
    )


def latent_size(arch: TinyShapesArchitecture) -> int:
    return shapes.IMAGE_SIZE // 2 ** (len(arch.vae_channels) - 1)


def build_unet(arch: TinyShapesArchitecture) -> UNet2DConditionModel:
    levels = len(arch.unet_channels)
    # cross-attention on every level but the full-resolution one (cost grows with its area)
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1)
    up = ("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",)
    return UNet2DConditionModel(
        sample_size=latent_size(arch),
        in_channels=arch.latent_channels,
        out_channels=arch.latent_channels,
        block_out_channels=arch.unet_channels,
        layers_per_block=1,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=arch.text_width,
        attention_head_dim=arch.unet_attention_head_dim,
        norm_num_groups=arch.unet_norm_groups,
    )


def noise_scheduler() -> DDPMScheduler:
    """The training scheduler (adds noise); sampling uses DDIM with the same betas."""
    return DDPMScheduler(**NOISE_SCHEDULE, prediction_type="epsilon", clip_sample=False)


def sampling_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        **NOISE_SCHEDULE,
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def assemble_pipeline(
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
) -> StableDiffusionPipeline:
    """The complete pipeline, ready for `save_pretrained` (no safety checker)."""
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=sampling_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
