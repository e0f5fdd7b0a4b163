"""Floating-point work of an image and the device's peak: how much of the card a sweep uses.

FLOPs are counted, not looked up: the denoiser and the autoencoder are built again from
their own configs on the `meta` device (no memory, no compute) and run once under
`torch.utils.flop_counter.FlopCounterMode` at the batch's latent size, so any model of a
known family is counted right, whatever its size. An image costs
    denoising steps x rows per step (2 with classifier-free guidance) x one UNet forward
    + one VAE decode (+ one VAE encode for img2img and inpainting).
The text encoders and Kandinsky's prior are left out (about 1% of an SD 1.5 image; more for
Kandinsky, whose figures are then a lower bound).

Peaks are dense (no sparsity) tensor-core figures from the vendors' data sheets, for the
dtype the sweep runs in; `EASEL_PEAK_TFLOPS` overrides them for other devices.
"""

from __future__ import annotations

import functools
import os

import torch

# Dense TFLOPS by device-name fragment (first match wins): (16-bit, tf32/float32)
PEAK_TFLOPS = (
    ("H200", 989.4, 494.7), ("H100 PCIe", 756.0, 378.0), ("H100", 989.4, 494.7),
    ("A100", 312.0, 156.0), ("L40S", 362.1, 183.0), ("L4", 121.0, 60.0),
    ("A10G", 70.0, 35.0), ("A10", 125.0, 62.5), ("RTX 4090", 165.2, 82.6),
    ("V100", 125.0, 15.7), ("T4", 65.0, 8.1),
)  # fmt: skip


def peak_flops(device: str, dtype: torch.dtype) -> float | None:
    """The device's dense peak in FLOP/s for `dtype`, or None where unknown (CPUs)."""
    if override := os.environ.get("EASEL_PEAK_TFLOPS"):
        return float(override) * 1e12
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    for fragment, half, single in PEAK_TFLOPS:
        if fragment in name:
            return (single if dtype == torch.float32 else half) * 1e12
    return None


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return device


def counted(function, *args, **kwargs) -> int:
    """FLOPs of one call of `function` (on meta tensors)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        function(*args, **kwargs)
    return counter.get_total_flops()


def meta_copy(network):
    """`network`'s architecture, rebuilt from its config on the meta device."""
    with torch.device("meta"):
        return type(network).from_config(network.config)


@functools.lru_cache(maxsize=64)
def _autoencoder_flops(autoencoder, latent_side: tuple[int, int], encode: bool) -> int:
    copy = meta_copy(autoencoder)
    channels = copy.post_quant_conv.in_channels
    latents = torch.empty(1, channels, *latent_side, device="meta")
    # MOVQ's decoder normalises its features by the latents too (spatial norm)
    spatial = latents if getattr(copy.config, "norm_type", None) == "spatial" else None
    flops = counted(copy.decoder, copy.post_quant_conv(latents), spatial)
    if encode:
        pixels = torch.empty(1, copy.config.in_channels, *_pixels(copy, latent_side), device="meta")
        flops += counted(copy.encoder, pixels)
    return flops


def _pixels(autoencoder, latent_side):
    scale = 2 ** (len(autoencoder.config.block_out_channels) - 1)
    return latent_side[0] * scale, latent_side[1] * scale


@functools.lru_cache(maxsize=64)
def _denoiser_flops(denoiser, latent_side: tuple[int, int], context_length: int) -> int:
    """One forward of one latent (batch 1)."""
    copy = meta_copy(denoiser)
    config = copy.config
    latents = torch.empty(1, config.in_channels, *latent_side, device="meta")
    timestep = torch.zeros((), device="meta")
    if config.addition_embed_type == "image":  # Kandinsky 2.2's decoder: image embeddings
        embeds = torch.empty(1, config.encoder_hid_dim, device="meta")
        return counted(copy, latents, timestep, encoder_hidden_states=None,
                       added_cond_kwargs={"image_embeds": embeds})  # fmt: skip
    width, added = config.cross_attention_dim, None
    if config.addition_embed_type == "text_image":  # Kandinsky 2.1's: text tokens and image
        width = config.encoder_hid_dim  # the text encoder's, projected inside the UNet
        pooled = torch.empty(1, config.cross_attention_dim, device="meta")
        added = {"text_embeds": pooled, "image_embeds": pooled}
    context = torch.empty(1, context_length, width, device="meta")
    return counted(copy, latents, timestep, encoder_hidden_states=context, added_cond_kwargs=added)


def image_flops(family, pipeline, settings) -> float:
    """FLOPs of one image of `settings` (a `BatchSettings`) on `pipeline`."""
    autoencoder, denoiser = family.autoencoder(pipeline), family.denoiser(pipeline)
    scale = 2 ** (len(autoencoder.config.block_out_channels) - 1)
    latent_side = (settings.height // scale, settings.width // scale)
    steps = settings.num_inference_steps
    if settings.task in family.strength_tasks and settings.strength is not None:
        steps = max(1, int(steps * settings.strength))
    rows = 2 if settings.guidance_scale > 1 else 1
    context = family.context_length(pipeline)
    edit = settings.task in ("img2img", "inpaint")
    return float(
        steps * rows * _denoiser_flops(denoiser, latent_side, min(context, 512))
        + _autoencoder_flops(autoencoder, latent_side, edit)
    )
