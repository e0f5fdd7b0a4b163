"""Each part of Kandinsky 2.0 as the hub ships it, converted to its diffusers or
transformers class: the UNet and its conditioning stem (`Kandinsky-2-0.pt`), the LDM VAE
(`vae.ckpt`), multilingual CLIP (`text_encoder1/`), mT5's encoder (`text_encoder2/`), and the
original's diffusion as a scheduler. Each reads its files through `accounting`, so every
key is used, known to be unused, or named in a failure."""

from __future__ import annotations

import os

from easel.errors import ModelReferenceError
from easel.models.kandinsky20 import unet_keys
from easel.models.kandinsky20.accounting import (
    Report,
    check_keys,
    load_pickle,
    load_strict,
    read_json,
)

VAE_FILE = "vae.ckpt"
CLIP_FOLDER, T5_FOLDER = "text_encoder1", "text_encoder2"
STEM = ("to_model_dim.", "to_model_dim2.", "proj.", "proj2.", "ln_model1.", "ln_model2.",
        "ln_model3.")  # fmt: skip
HEAD_CHANNELS = 64  # the original's `num_head_channels`
VAE_SCALE = 0.0512  # the original's `image_enc_params.scale`
VAE_TRAINING_KEYS = "loss."  # the autoencoder's training loss, unused at inference
AUTOENCODER_KEYS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
UNUSED_CLIP_KEYS = ("transformer.pooler.", "transformer.embeddings.position_ids")
UNUSED_T5_KEYS = ("decoder.", "lm_head.")  # a whole mT5's other half
MIN_VOCABULARY_SHARE = 0.9  # of an encoder's embedding rows its tokenizer must cover


def convert_unet(path: str, report: Report, head_channels: int = HEAD_CHANNELS):
    """(UNet2DConditionModel, Kandinsky2TextConditioning) from the original's state dict."""
    from diffusers import UNet2DConditionModel

    from easel.models.kandinsky20.conditioning import Kandinsky2TextConditioning

    part = os.path.basename(path)
    weights = load_pickle(path)
    try:
        architecture = unet_keys.Architecture.from_weights(weights)
        odd = [c for c, a in zip(architecture.channels, architecture.attention, strict=True)
               if a and c % head_channels]  # fmt: skip
        if odd:
            raise ModelReferenceError(
                f"{part}: attention over {odd[0]} channels cannot have heads of "
                f"`attention_head_dim` {head_channels} channels (Kandinsky 2.0's is 64)"
            )
        unet = UNet2DConditionModel(**architecture.diffusers_config(head_channels))
        converted, used = unet_keys.to_diffusers(
            weights, unet.state_dict(), architecture, head_channels
        )
    except KeyError as error:
        raise ModelReferenceError(f"{part}: no key {error}: not Kandinsky 2.0's UNet") from None
    except StopIteration:
        raise ModelReferenceError(
            f"{part}: no output block ends in an up-sampling res block: not Kandinsky 2.0's UNet"
        ) from None
    unet.load_state_dict(converted, strict=True)
    stem_weights = {k: v for k, v in weights.items() if k.startswith(STEM)}
    t5_width = weights["to_model_dim2.weight"].shape[1]
    stem = Kandinsky2TextConditioning(
        clip_width=weights["to_model_dim.weight"].shape[1],
        clip_pooled_width=weights["proj.weight"].shape[1], t5_width=t5_width,
        model_width=architecture.model_width,
        time_embed_width=weights["time_embed.0.weight"].shape[0],
    )  # fmt: skip
    load_strict(stem, stem_weights, part)
    check_keys(part, used | set(stem_weights), set(weights), (), report)
    report.tensors[part] = len(weights)
    return unet, stem


def convert_vae(path: str, report: Report):
    """The LDM autoencoder of the Lightning checkpoint at `path` as diffusers' AutoencoderKL."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    weights = load_pickle(path, full=True)
    vae_weights = {k: v for k, v in weights.items() if k.startswith(AUTOENCODER_KEYS)}
    check_keys(VAE_FILE, set(vae_weights), set(weights), (VAE_TRAINING_KEYS,), report)
    vae = AutoencoderKL(**vae_config(vae_weights))
    converted = convert_ldm_vae_checkpoint(vae_weights, vae.config)
    if len(converted) != len(vae_weights):  # diffusers' converter skips what it cannot place
        placed = {tensor.untyped_storage().data_ptr() for tensor in converted.values()}
        unplaced = sorted(k for k, tensor in vae_weights.items()
                          if tensor.untyped_storage().data_ptr() not in placed)  # fmt: skip
        raise ModelReferenceError(
            f"{os.path.basename(path)}: {len(vae_weights)} autoencoder tensors but "
            f"{len(converted)} have a place in an LDM AutoencoderKL (not placed: "
            f"{', '.join(unplaced[:3])}): not Kandinsky 2.0's VAE"
        )
    load_strict(vae, converted, os.path.basename(path))
    report.tensors[VAE_FILE] = len(vae_weights)
    return vae


def vae_config(weights: dict) -> dict:
    """diffusers' `AutoencoderKL` config for the LDM autoencoder `weights` (its keys
    without prefix): widths and depth read from the tensors, the original's scale."""
    levels = sorted({int(k.split(".")[2]) for k in weights if k.startswith("encoder.down.")})
    return {
        "in_channels": weights["encoder.conv_in.weight"].shape[1],
        "out_channels": weights["decoder.conv_out.weight"].shape[0],
        "latent_channels": weights["post_quant_conv.weight"].shape[0],
        "block_out_channels": [weights[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]
                               for i in levels],
        "layers_per_block": len({k.split(".")[4] for k in weights
                                 if k.startswith("encoder.down.0.block.")}),
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "norm_num_groups": min(32, weights["encoder.conv_in.weight"].shape[0]),
        "sample_size": 512, "scaling_factor": VAE_SCALE,
    }  # fmt: skip


def convert_clip(folder: str, report: Report):
    """Multilingual CLIP (diffusers' `MultilingualCLIP`) and its tokenizer."""
    from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig, MultilingualCLIP

    weights = load_pickle(os.path.join(folder, "pytorch_model.bin"))
    config = read_json(os.path.join(folder, "config.json"), CLIP_FOLDER)
    if "LinearTransformation.weight" not in weights:
        raise ModelReferenceError(
            f"{CLIP_FOLDER}/pytorch_model.bin: no key 'LinearTransformation.weight': not "
            "multilingual CLIP"
        )
    for name in ("model_type", "architectures", "transformers_version", "_name_or_path"):
        config.pop(name, None)
    projection = weights["LinearTransformation.weight"]
    config.update(transformerDimSize=projection.shape[1], imageDimSize=projection.shape[0])
    encoder = MultilingualCLIP(MCLIPConfig(**config))
    expected = encoder.state_dict()
    used = {k for k in weights if k in expected}
    unused_present = {k: v for k, v in expected.items() if k.startswith(UNUSED_CLIP_KEYS)}
    load_strict(encoder, {**unused_present, **{k: weights[k] for k in used}}, CLIP_FOLDER)
    absent = sorted(set(unused_present) - used)
    if absent:
        report.absent[f"{CLIP_FOLDER}/pytorch_model.bin"] = absent
    check_keys(f"{CLIP_FOLDER}/pytorch_model.bin", used, set(weights), UNUSED_CLIP_KEYS, report)
    report.tensors[CLIP_FOLDER] = len(used)
    return encoder, tokenizer_of(folder, CLIP_FOLDER, encoder.config.vocab_size)


def convert_t5(folder: str, report: Report):
    """mT5's encoder (`MT5EncoderModel`) and its tokenizer."""
    from transformers import MT5EncoderModel

    load_pickle(os.path.join(folder, "pytorch_model.bin"))  # a readable state dict, or named
    try:
        encoder, info = MT5EncoderModel.from_pretrained(
            folder, use_safetensors=False, output_loading_info=True
        )
    except (OSError, ValueError) as error:  # config.json unreadable, or not mT5's
        raise ModelReferenceError(
            f"{T5_FOLDER}: cannot be loaded as mT5's encoder: {error}"
        ) from None
    if info["missing_keys"] or info.get("mismatched_keys"):
        keys = [*info["missing_keys"], *[k[0] for k in info.get("mismatched_keys", [])]]
        raise ModelReferenceError(f"{T5_FOLDER}: missing or mismatched {', '.join(keys[:4])}")
    unexpected = set(info["unexpected_keys"])
    check_keys(f"{T5_FOLDER}/pytorch_model.bin", set(), unexpected, UNUSED_T5_KEYS, report)
    report.tensors[T5_FOLDER] = len(encoder.state_dict())
    return encoder, tokenizer_of(folder, T5_FOLDER, encoder.config.vocab_size)


def tokenizer_of(folder: str, part: str, vocab_size: int):
    """The tokenizer in `folder`, checked against its encoder's vocabulary: one with far
    fewer tokens than the embedding has rows was built from missing or wrong files (a
    tokenizer of special tokens alone reads every word as unknown)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as error:
        raise ModelReferenceError(f"{part}: its tokenizer cannot be loaded: {error}") from None
    if not MIN_VOCABULARY_SHARE * vocab_size <= len(tokenizer) <= vocab_size:
        raise ModelReferenceError(
            f"{part}: its tokenizer has {len(tokenizer)} tokens but the encoder's embedding "
            f"{vocab_size}: not the tokenizer files it was trained with"
        )
    return tokenizer


def scheduler():
    """The original's diffusion: 1000 linear betas 1e-4 -> 0.02, epsilon prediction; DDIM
    from `alphas_cumprod[0]` at the end, as its sampler does."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
        prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
        timestep_spacing="leading",
    )  # fmt: skip
