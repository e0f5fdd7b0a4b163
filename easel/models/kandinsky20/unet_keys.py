"""Where each weight of Kandinsky 2.0's UNet lives: the original guided-diffusion
`Text2ImUNet` keys (`input_blocks.4.1.qkv.weight`) against diffusers' `UNet2DConditionModel`
with Kandinsky 2.1's torso (`down_blocks.1.attentions.0.to_q.weight`), both ways.

The original fuses an attention's q, k and v into one 1x1 convolution (`qkv`, per head: q,
then k, then v, of `head_channels` rows each) and the text's keys and values into another
(`encoder_kv`, per head: k, then v); diffusers keeps them apart as linear layers
(`to_q`, `to_k`, `to_v`, `add_k_proj`, `add_v_proj`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3",
          "conv_shortcut": "skip_connection"}  # fmt: skip
ATTENTION = {"group_norm": ("norm", None), "to_out.0": ("proj_out", None),
             "to_q": ("qkv", 0), "to_k": ("qkv", 1), "to_v": ("qkv", 2),
             "add_k_proj": ("encoder_kv", 0), "add_v_proj": ("encoder_kv", 1)}  # fmt: skip
FUSED = {"qkv": 3, "encoder_kv": 2}  # parts per head
FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
         "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}  # fmt: skip


@dataclass(frozen=True)
class Architecture:
    """What the original UNet's weights say of its shape (`from_weights`)."""

    in_channels: int
    out_channels: int
    channels: tuple[int, ...]  # per level, shallowest first
    attention: tuple[bool, ...]  # per level: attention after each res block
    res_blocks: int  # per level on the way down (one more on the way up)
    model_width: int  # the text tokens' width (cross-attention)

    @classmethod
    def from_weights(cls, weights: dict) -> Architecture:
        """Read from the original's state dict; `KeyError` naming a key it lacks."""
        per_level = next(k for k in range(len(weights)) if _upsamples(weights, k)) + 1
        outputs = {int(key.split(".")[1]) for key in weights if key.startswith("output_blocks.")}
        levels = len(outputs) // per_level
        deepest_first = range(0, levels * per_level, per_level)
        return cls(
            in_channels=weights["input_blocks.0.0.weight"].shape[1],
            out_channels=weights["out.2.weight"].shape[0],
            channels=tuple(weights[f"output_blocks.{k}.0.out_layers.3.weight"].shape[0]
                           for k in reversed(deepest_first)),
            attention=tuple(f"output_blocks.{k}.1.qkv.weight" in weights
                            for k in reversed(deepest_first)),
            res_blocks=per_level - 1,
            model_width=weights["to_model_dim.weight"].shape[0],
        )  # fmt: skip

    def diffusers_config(self, head_channels: int) -> dict:
        """`UNet2DConditionModel`'s config for this UNet (`head_channels`: the original's
        `num_head_channels`, 64, which its weights do not tell)."""
        down = ["SimpleCrossAttnDownBlock2D" if a else "ResnetDownsampleBlock2D"
                for a in self.attention]  # fmt: skip
        up = ["SimpleCrossAttnUpBlock2D" if a else "ResnetUpsampleBlock2D"
              for a in reversed(self.attention)]  # fmt: skip
        return {
            "in_channels": self.in_channels, "out_channels": self.out_channels,
            "down_block_types": down, "up_block_types": up,
            "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
            "block_out_channels": list(self.channels), "layers_per_block": self.res_blocks,
            "attention_head_dim": head_channels, "cross_attention_dim": self.model_width,
            "resnet_time_scale_shift": "scale_shift", "class_embed_type": "identity",
            "flip_sin_to_cos": True, "freq_shift": 0, "only_cross_attention": False,
            "sample_size": 64,  # the original's latent side: 512 pixels
        }  # fmt: skip


def _upsamples(weights: dict, k: int) -> bool:
    """Whether output block `k` ends in an up-sampling res block (the last of its level)."""
    last = 2 if f"output_blocks.{k}.1.qkv.weight" in weights else 1
    return f"output_blocks.{k}.{last}.in_layers.0.weight" in weights


def original_key(key: str, architecture: Architecture) -> tuple[str, int | None]:
    """(the original's key, which part of a fused tensor or None) for a diffusers key;
    `KeyError` for a key the original has no place for."""
    per_level = architecture.res_blocks + 1
    for new, old in FIXED.items():
        if key.startswith(new + "."):
            return old + key[len(new) :], None
    patterns = [
        (r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)",
         lambda m: f"input_blocks.{1 + int(m[1]) * per_level + int(m[3])}"),
        (r"down_blocks\.(\d+)\.(downsamplers)\.(0)\.(.*)",
         lambda m: f"input_blocks.{(int(m[1]) + 1) * per_level}"),
        (r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", None),
        (r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)",
         lambda m: f"output_blocks.{int(m[1]) * per_level + int(m[3])}"),
        (r"up_blocks\.(\d+)\.(upsamplers)\.(0)\.(.*)",
         lambda m: f"output_blocks.{int(m[1]) * per_level + per_level - 1}"),
    ]  # fmt: skip
    for pattern, block in patterns:
        if not (m := re.fullmatch(pattern, key)):
            continue
        if block is None:  # the middle: res block, attention, res block
            index = 1 if m[1] == "attentions" else 2 * int(m[2])
            return _inner(f"middle_block.{index}", m[1], m[3])
        kind, rest = m[2], m[4]
        position = {"resnets": 0, "attentions": 1, "downsamplers": 0}.get(kind)
        if kind == "upsamplers":
            level = architecture.attention[::-1][int(m[1])]
            position = 2 if level else 1
        return _inner(f"{block(m)}.{position}", kind, rest)
    raise KeyError(key)


def _inner(block: str, kind: str, rest: str) -> tuple[str, int | None]:
    name, _, tail = rest.rpartition(".")
    if kind == "attentions":
        old, part = ATTENTION[name]
        return f"{block}.{old}.{tail}", part
    return f"{block}.{RESNET[name]}.{tail}", None


def to_diffusers(
    original: dict, target: dict, architecture: Architecture, head_channels: int
) -> tuple[dict, set]:
    """The original's UNet weights as diffusers' (`target`: its state dict, for names and
    shapes), and the original keys used. `KeyError` naming the first original key missing."""
    out, used = {}, set()
    for key, like in target.items():
        name, part = original_key(key, architecture)
        if name not in original:
            raise KeyError(name)
        used.add(name)
        tensor = original[name]
        if part is not None:  # (heads x parts x head_channels, ...) -> this part's rows
            heads = like.shape[0] // head_channels
            tensor = tensor.reshape(heads, FUSED[name.split(".")[-2]], -1, *tensor.shape[1:])
            tensor = tensor[:, part]
        out[key] = tensor.reshape(like.shape).clone()
    return out, used


def to_original(weights: dict, architecture: Architecture, head_channels: int) -> dict:
    """Diffusers' UNet weights under the original's keys, attentions fused again and linear
    layers as the original's 1x1 convolutions (the inverse of `to_diffusers`)."""
    out, fused = {}, {}
    for key, tensor in weights.items():
        name, part = original_key(key, architecture)
        if tensor.ndim == 2 and ".attentions." in key:  # the original's 1x1 convolutions
            tensor = tensor[..., None]
        if part is None:
            out[name] = tensor
            continue
        heads = tensor.shape[0] // head_channels
        fused.setdefault(name, {})[part] = tensor.reshape(heads, head_channels, *tensor.shape[1:])
    for name, parts in fused.items():
        stacked = torch.stack([parts[i] for i in sorted(parts)], dim=1)
        out[name] = stacked.reshape(-1, *stacked.shape[3:])
    return out
