"""Random-weight pipelines built from config, for tests and benchmarks (test support).

Nothing is downloaded: the tokenizer is tiny-shapes' kind (byte-level BPE, whole words for
the words the tests use), the networks get random weights.
- `build_random_sd`: Stable Diffusion; `tiny` is a few hundred thousand parameters for CPU
  tests, `sd15` has the shapes of Stable Diffusion 1.5 for benchmarks on an accelerator.
- `build_random_kandinsky22`: Kandinsky 2.2 in the layout `KandinskyV22CombinedPipeline.
  save_pretrained` writes: the diffusion prior (`prior_*`: CLIP text and image encoders with
  projection, a PriorTransformer, an unCLIP scheduler) beside the decoder (`unet`
  conditioned on CLIP image embeddings, `movq`, `scheduler`); `inpaint=True` gives the
  decoder the 9-channel input (latents, masked image, mask) of Kandinsky's inpainting
  decoder.
- `build_random_kandinsky21`: Kandinsky 2.1 in `KandinskyCombinedPipeline`'s layout: the
  same prior, and a decoder whose UNet also reads the prompt through a multilingual CLIP
  (XLM-RoBERTa) text encoder; its tokenizer is a SentencePiece unigram over English and
  Russian words and single letters, built in code.
"""

from __future__ import annotations

import torch

from easel.models.shapes.tiny_shapes import build_tokenizer

# Words that get a single token each, so prompts like "a photo of sks shape" are short.
_SD_WORDS = [
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


def build_random_sd(
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

    tokenizer = build_tokenizer(_SD_WORDS, max_length)
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


# -- Kandinsky 2.2 -----------------------------------------------------------------------

_KANDINSKY_WORDS = [
    "a", "red", "blue", "green", "circle", "square", "star", "on", "white", "background"
]  # fmt: skip
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

    tokenizer = build_tokenizer(_KANDINSKY_WORDS, max_length)
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


def _kandinsky_unet(inpaint: bool, **conditioning):
    """A tiny Kandinsky decoder UNet; `conditioning`: how it reads embeddings (2.1, 2.2)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=9 if inpaint else 4,  # latents (+ masked-image latents and mask)
        out_channels=8,  # noise and learned variance, as Kandinsky's decoder predicts
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=8,
        resnet_time_scale_shift="scale_shift",
        **conditioning,
    )


def _decoder_components(inpaint: bool) -> dict:
    from diffusers import DDPMScheduler, VQModel

    unet = _kandinsky_unet(
        inpaint, addition_embed_type="image", encoder_hid_dim=_EMBEDDING,
        encoder_hid_dim_type="image_proj", cross_attention_dim=64,
    )  # fmt: skip
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


# -- Kandinsky 2.1 -----------------------------------------------------------------------

# Whole words of the multilingual tokenizer, English and Russian ("красный круг на синем
# фоне": a red circle on a blue background); any other text falls back to single letters.
_MULTILINGUAL_WORDS = [
    "a", "red", "blue", "green", "circle", "square", "star", "on", "white", "background",
    "красный", "синий", "зелёный", "круг", "квадрат", "звезда", "на", "синем", "белом", "фоне",
]  # fmt: skip
_LETTERS = "abcdefghijklmnopqrstuvwxyzабвгдеёжзийклмнопрстуфхцчшщъыьэюя"
_MULTILINGUAL_HIDDEN = 48  # the XLM-RoBERTa encoder's width (a real one: 1024)
_MULTILINGUAL_POSITIONS = 80  # 77 tokens the decoder keeps, after XLM-R's 2 offset positions


def build_multilingual_tokenizer():
    """An XLM-RoBERTa tokenizer (SentencePiece unigram) over `_MULTILINGUAL_WORDS` and single
    letters, built in code: its 5 special tokens have XLM-R's ids (`<s>` 0, `<pad>` 1, `</s>`
    2, `<unk>` 3, `<mask>` 4)."""
    from transformers import XLMRobertaTokenizer

    specials = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("<mask>", 0.0)]
    words = [(f"▁{word}", -1.0) for word in _MULTILINGUAL_WORDS]  # whole words score best
    letters = [(piece, -5.0) for letter in _LETTERS for piece in (f"▁{letter}", letter)]
    return XLMRobertaTokenizer(vocab=[*specials, *words, *letters], model_max_length=512)


def _kandinsky21_decoder_components(inpaint: bool) -> dict:
    from diffusers import DDIMScheduler
    from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig, MultilingualCLIP

    tokenizer = build_multilingual_tokenizer()
    text_encoder = MultilingualCLIP(
        MCLIPConfig(
            transformerDimSize=_MULTILINGUAL_HIDDEN, imageDimSize=_EMBEDDING,
            vocab_size=len(tokenizer), hidden_size=_MULTILINGUAL_HIDDEN, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=_MULTILINGUAL_POSITIONS,
        )
    )  # fmt: skip
    unet = _kandinsky_unet(
        inpaint,
        addition_embed_type="text_image",  # time embedding + pooled text + image embedding
        encoder_hid_dim=_MULTILINGUAL_HIDDEN,
        encoder_hid_dim_type="text_image_proj",  # cross-attends to text tokens and the image
        cross_attention_dim=_EMBEDDING,  # = the prior's embedding = the pooled text's width
    )
    scheduler = DDIMScheduler(
        beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        num_train_timesteps=1000, prediction_type="epsilon", set_alpha_to_one=False,
        steps_offset=1,
    )  # fmt: skip
    movq = _decoder_components(inpaint=False)["movq"]
    return {"text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet,
            "scheduler": scheduler, "movq": movq}  # fmt: skip


def build_random_kandinsky21(folder: str, seed: int = 0, inpaint: bool = False) -> str:
    """Write a random-weight KandinskyCombinedPipeline (safetensors) to `folder`: the prior
    as Kandinsky 2.2's (`prior_*`) beside the decoder, whose UNet reads the prior's image
    embedding and the prompt through a multilingual CLIP (XLM-RoBERTa) text encoder;
    `inpaint=True` gives it the 9-channel input of the inpainting decoder."""
    from diffusers import KandinskyCombinedPipeline

    torch.manual_seed(seed)
    # the prior keeps 77 tokens, as real CLIP does: a short Cyrillic prompt (a few bytes a
    # letter in CLIP's byte-level BPE) fits
    components = {**_prior_components(max_length=77),
                  **_kandinsky21_decoder_components(inpaint)}  # fmt: skip
    KandinskyCombinedPipeline(**components).save_pretrained(folder, safe_serialization=True)
    return folder
