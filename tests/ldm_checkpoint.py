"""A diffusers Stable Diffusion folder written as an A1111 / original-LDM single file: the
UNet under `model.diffusion_model.*`, the VAE under `first_stage_model.*`, the CLIP text
encoder under `cond_stage_model.transformer.*`, each key as the LDM code names it."""

from __future__ import annotations

import re

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel

from easel.models.testing.ldm_keys import vae_state_dict

RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
def unet_key(key: str, per_level: int) -> str:
    """A diffusers UNet key as LDM's UNetModel names it (`per_level`: layers per block + 1)."""
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    for old, new in fixed.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = f"input_blocks.{1 + level * per_level + j}"
        return f"{block}.1.{rest}" if kind == "attentions" else f"{block}.0.{_resnet(rest)}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m[1]) + 1) * per_level}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key):
        if m[1] == "attentions":
            return f"middle_block.1.{m[3]}"
        return f"middle_block.{2 * int(m[2])}.{_resnet(m[3])}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        block = f"output_blocks.{int(m[1]) * per_level + int(m[3])}"
        return f"{block}.1.{m[4]}" if m[2] == "attentions" else f"{block}.0.{_resnet(m[4])}"
    raise KeyError(key)  # upsamplers: placed by `unet_state_dict`, which knows the attentions


def _resnet(rest: str) -> str:
    name, _, tail = rest.partition(".")
    return f"{RESNET[name]}.{tail}"


def unet_state_dict(unet: UNet2DConditionModel) -> dict:
    per_level = unet.config.layers_per_block + 1
    out = {}
    for key, value in unet.state_dict().items():
        if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            level = int(m[1])
            has_attention = hasattr(unet.up_blocks[level], "attentions")
            block = level * per_level + per_level - 1
            out[f"output_blocks.{block}.{2 if has_attention else 1}.conv.{m[2]}"] = value
        else:
            out[unet_key(key, per_level)] = value
    return out


def clip_key(key: str) -> str:
    """A CLIPTextModel key as the original checkpoints hold it: under `text_model.`
    (transformers 5 leaves that prefix out of `state_dict`)."""
    return key if key.startswith("text_model.") else f"text_model.{key}"


def write_single_file(folder: str, path: str) -> str:
    """The diffusers SD folder at `folder` as one LDM-keyed safetensors file at `path`."""
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    text = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    return write_components(unet, vae, text, path)


def write_components(unet, vae, text, path: str, dtype=torch.float32) -> str:
    """An SD 1.x UNet, VAE and CLIP text encoder as one LDM-keyed safetensors file."""
    state = {f"model.diffusion_model.{k}": v for k, v in unet_state_dict(unet).items()}
    state |= {f"first_stage_model.{k}": v for k, v in vae_state_dict(vae).items()}
    state |= {
        f"cond_stage_model.transformer.{clip_key(k)}": v for k, v in text.state_dict().items()
    }
    save_file({k: v.contiguous().to(dtype) for k, v in state.items()}, path)
    return path


def write_ldm_yaml(folder: str, path: str, parameterization: str = "eps") -> str:
    """The LDM (A1111) config at `path` of the diffusers SD folder at `folder`: the UNet's
    and VAE's architecture as the original `v1-inference.yaml` spells it."""
    import yaml

    unet = UNet2DConditionModel.load_config(folder, subfolder="unet")
    vae = AutoencoderKL.load_config(folder, subfolder="vae")
    base = unet["block_out_channels"][0]
    attention = [2**i for i, kind in enumerate(unet["down_block_types"]) if "CrossAttn" in kind]
    unet_params = {
        "image_size": unet["sample_size"], "in_channels": unet["in_channels"],
        "out_channels": unet["out_channels"], "model_channels": base,
        "attention_resolutions": attention, "num_res_blocks": unet["layers_per_block"],
        "channel_mult": [c // base for c in unet["block_out_channels"]],
        "num_heads": unet["attention_head_dim"], "context_dim": unet["cross_attention_dim"],
        "use_linear_in_transformer": unet["use_linear_projection"], "transformer_depth": 1,
    }  # fmt: skip
    ddconfig = {
        "double_z": True, "z_channels": vae["latent_channels"], "resolution": vae["sample_size"],
        "in_channels": vae["in_channels"], "out_ch": vae["out_channels"],
        "ch": vae["block_out_channels"][0],
        "ch_mult": [c // vae["block_out_channels"][0] for c in vae["block_out_channels"]],
        "num_res_blocks": vae["layers_per_block"], "attn_resolutions": [],
    }  # fmt: skip
    config = {"model": {
        "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
        "params": {
            "parameterization": parameterization, "linear_start": 0.00085,
            "linear_end": 0.012, "timesteps": 1000, "scale_factor": 0.18215,
            "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                            "params": unet_params},
            "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL",
                                   "params": {"embed_dim": vae["latent_channels"],
                                              "ddconfig": ddconfig}},
            "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"},
        },
    }}  # fmt: skip
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path


def ldm_expressible_sd(folder: str, target: str, prediction_type: str = "epsilon") -> str:
    """The tiny SD folder at `folder` with a UNet and VAE an LDM `.yaml` can describe (its
    conversion assumes 32 groups per norm), random weights, saved at `target`."""
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(1)
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    unet = UNet2DConditionModel.from_config({**pipe.unet.config, "norm_num_groups": 32})
    vae = AutoencoderKL.from_config({**pipe.vae.config, "norm_num_groups": 32,
                                     "block_out_channels": (32, 64)})  # fmt: skip
    pipe.register_modules(unet=unet, vae=vae)
    pipe.scheduler.register_to_config(prediction_type=prediction_type)
    pipe.save_pretrained(target, safe_serialization=True)
    return target
