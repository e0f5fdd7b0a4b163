"""diffusers' AutoencoderKL keys as the original LDM code names them (test support: writing
checkpoints in the layouts users bring, which easel then converts back)."""

from __future__ import annotations

import re

VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def vae_key(key: str, levels: int) -> str:
    """A diffusers AutoencoderKL key as LDM's AutoencoderKL names it."""
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets", r"encoder.down.\1.block", key)
    key = re.sub(
        r"encoder\.down_blocks\.(\d+)\.downsamplers\.0", r"encoder.down.\1.downsample", key
    )
    key = re.sub(
        r"decoder\.up_blocks\.(\d+)\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.", key
    )
    key = re.sub(r"(decoder\.up\.\d+)\.resnets", r"\1.block", key)
    key = re.sub(r"(decoder\.up\.\d+)\.upsamplers\.0", r"\1.upsample", key)
    key = re.sub(r"mid_block\.resnets\.(\d+)", lambda m: f"mid.block_{int(m[1]) + 1}", key)
    key = key.replace("mid_block.attentions.0.", "mid.attn_1.")
    for old, new in VAE_ATTENTION.items():
        key = key.replace(f"mid.attn_1.{old}.", f"mid.attn_1.{new}.")
    return key


def vae_state_dict(vae) -> dict:
    """A diffusers `AutoencoderKL`'s weights under LDM's keys."""
    levels = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        ldm = vae_key(key, levels)
        if ".attn_1." in ldm and ldm.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's attention is 1x1 convolutions
        out[ldm] = value
    return out
