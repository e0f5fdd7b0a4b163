"""A random-weight Kandinsky 2.2 pipeline built from config, for tests and benchmarks.

The same layout a real Kandinsky 2.2 model has when saved as one folder by
`KandinskyV22CombinedPipeline.save_pretrained`: the diffusion prior (`prior_*`: CLIP text
and image encoders with projection, a PriorTransformer, an unCLIP scheduler) beside the
decoder (`unet` conditioned on CLIP image embeddings, `movq`, `scheduler`). Nothing is
downloaded; the tokenizer is tiny-shapes' kind. `inpaint=True` gives the decoder the
9-channel input (latents, masked image, mask) of Kandinsky's inpainting decoder.
"""

from __future__ import annotations

import torch

from easel.models.tiny_shapes import build_tokenizer

_WORDS = ["a", "red", "blue", "green", "circle", "square", "star", "on", "white", "background"]
_EMBEDDING = 32  # CLIP projection = prior embedding = decoder's image-embedding input
_IMAGE_SIZE = 32  # what the CLIP image encoder sees


def _prior_components(max_length: int) -> dict:
    from diffusers import PriorTransformer, UnCLIPScheduler
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    tokenizer = build_tokenizer(_WORDS, max_length)
    text_encoder = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            hidden_size=_EMBEDDING, projection_dim=_EMBEDDING, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=max_length,
        )
    )  # fmt: skip
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            image_size=_IMAGE_SIZE, patch_size=8, hidden_size=_EMBEDDING,
            projection_dim=_EMBEDDING, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_channels=3,
        )
    )  # fmt: skip
    image_processor = CLIPImageProcessor(
        crop_size=_IMAGE_SIZE, size={"shortest_edge": _IMAGE_SIZE}, do_center_crop=True,
        do_normalize=True, do_resize=True, resample=3,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )  # fmt: skip
    prior = PriorTransformer(
        num_attention_heads=2, attention_head_dim=8, num_layers=1, embedding_dim=_EMBEDDING,
        num_embeddings=max_length,
    )  # fmt: skip
    prior.clip_std = torch.nn.Parameter(torch.ones(1, _EMBEDDING))  # a real prior's: CLIP's
    scheduler = UnCLIPScheduler(
        variance_type="fixed_small_log", prediction_type="sample", num_train_timesteps=1000,
        clip_sample=True, clip_sample_range=10.0,
    )  # fmt: skip
    return {
        "prior_prior": prior, "prior_image_encoder": image_encoder,
        "prior_text_encoder": text_encoder, "prior_tokenizer": tokenizer,
        "prior_scheduler": scheduler, "prior_image_processor": image_processor,
    }  # fmt: skip


def _decoder_components(inpaint: bool) -> dict:
    from diffusers import DDPMScheduler, UNet2DConditionModel, VQModel

    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=9 if inpaint else 4,
        out_channels=8,  # noise and learned variance, as Kandinsky's decoder predicts
        addition_embed_type="image",
        encoder_hid_dim=_EMBEDDING,
        encoder_hid_dim_type="image_proj",
        cross_attention_dim=64,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=8,
        resnet_time_scale_shift="scale_shift",
    )
    movq = VQModel(
        in_channels=3, out_channels=3, latent_channels=4, vq_embed_dim=4,
        num_vq_embeddings=16, block_out_channels=(32, 64), layers_per_block=1,
        norm_num_groups=8, norm_type="spatial",
        down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
        up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
    )  # fmt: skip
    scheduler = DDPMScheduler(
        beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        num_train_timesteps=1000, prediction_type="epsilon", steps_offset=1,
        variance_type="learned_range",
    )  # fmt: skip
    return {"unet": unet, "movq": movq, "scheduler": scheduler}


def build_random_kandinsky22(folder: str, seed: int = 0, inpaint: bool = False) -> str:
    """Write a random-weight KandinskyV22CombinedPipeline (safetensors) to `folder`."""
    from diffusers import KandinskyV22CombinedPipeline

    torch.manual_seed(seed)
    components = {**_prior_components(max_length=16), **_decoder_components(inpaint)}
    KandinskyV22CombinedPipeline(**components).save_pretrained(folder, safe_serialization=True)
    return folder
