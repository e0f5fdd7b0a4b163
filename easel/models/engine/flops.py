"""Floating-point work of an image and the device's peak: how much of the card a sweep uses.

FLOPs are counted, not looked up: the denoiser and the autoencoder are built again from
their own configs on the `meta` device (no memory, no compute) and run once under
`torch.utils.flop_counter.FlopCounterMode` at the batch's latent size, so any model of a
known family is counted right, whatever its size. An image costs
    denoising steps x rows per step (2 with classifier-free guidance) x one UNet forward
    + one VAE decode (+ one VAE encode for img2img and inpainting).
The text encoders and Kandinsky's prior are left out (about 1% of an SD 1.5 image; more for
Kandinsky, whose figures are then a lower bound).

A count takes about a second (building the network on `meta`), so counts are kept by
network config and size in `$EASEL_CACHE_DIR/flops/`.

Peaks are dense (no sparsity) tensor-core figures and memory bandwidths from the vendors'
data sheets; `EASEL_PEAK_TFLOPS` overrides the FLOP/s peak for other devices.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile

import torch

from easel.models.engine.family import autoencoder_scale
from easel.models.engine.references import cache_dir

log = logging.getLogger(__name__)

# By device-name fragment (first match wins): dense TFLOPS for 16-bit and for tf32/float32,
# memory bandwidth in TB/s
DEVICES = (
    ("H200", 989.4, 494.7, 4.8), ("H100 PCIe", 756.0, 378.0, 2.0),
    ("H100", 989.4, 494.7, 3.35), ("A100", 312.0, 156.0, 2.0), ("L40S", 362.1, 183.0, 0.864),
    ("L4", 121.0, 60.0, 0.3), ("A10G", 70.0, 35.0, 0.6), ("A10", 125.0, 62.5, 0.6),
    ("RTX 4090", 165.2, 82.6, 1.008), ("V100", 125.0, 15.7, 0.9), ("T4", 65.0, 8.1, 0.32),
)  # fmt: skip


def _spec(device: str):
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((spec for spec in DEVICES if spec[0] in name), None)


def peak_flops(device: str, dtype: torch.dtype) -> float | None:
    """The device's dense peak in FLOP/s for `dtype`, or None where unknown (CPUs)."""
    if override := os.environ.get("EASEL_PEAK_TFLOPS"):
        try:
            return float(override) * 1e12
        except ValueError:
            log.warning("EASEL_PEAK_TFLOPS %r is not a number (TFLOP/s): ignored", override)
    spec = _spec(device)
    return None if spec is None else (spec[2] if dtype == torch.float32 else spec[1]) * 1e12


def memory_bandwidth(device: str) -> float | None:
    """The device's memory bandwidth in bytes/s, or None where unknown."""
    spec = _spec(device)
    return None if spec is None else spec[3] * 1e12


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


def remembered(count):
    """`count(network, *sizes)` kept in memory and on disk, by the network's class and
    config and the sizes: the same architecture costs the same, whatever its weights."""
    memory: dict[str, int] = {}

    @functools.wraps(count)
    def cached(network, *sizes) -> int:
        content = [count.__name__, type(network).__name__, dict(network.config), sizes]
        key = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()
        path = cache_dir() / "flops" / f"{key}.json"
        if key not in memory:
            try:
                memory[key] = json.loads(path.read_text())["flops"]
            except (OSError, ValueError, KeyError):
                memory[key] = count(network, *sizes)
                _write_atomically(path, json.dumps({"flops": memory[key]}))
        return memory[key]

    return cached


def _write_atomically(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, path)


@remembered
def autoencoder_flops(autoencoder, latent_side: tuple[int, int], encode: bool) -> int:
    copy = meta_copy(autoencoder)
    channels = copy.post_quant_conv.in_channels
    latents = torch.empty(1, channels, *latent_side, device="meta")
    # MOVQ's decoder normalises its features by the latents too (spatial norm)
    spatial = latents if getattr(copy.config, "norm_type", None) == "spatial" else None
    flops = counted(copy.decoder, copy.post_quant_conv(latents), spatial)
    if encode:
        scale = autoencoder_scale(copy.config)
        pixels = torch.empty(1, copy.config.in_channels, latent_side[0] * scale,
                             latent_side[1] * scale, device="meta")  # fmt: skip
        flops += counted(copy.encoder, pixels)
    return flops


@remembered
def denoiser_flops(denoiser, latent_side: tuple[int, int], context_length: int) -> int:
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
    if config.class_embed_type == "identity":  # Kandinsky 2.0's: the pooled text vector
        pooled = torch.empty(1, 4 * config.block_out_channels[0], device="meta")
        added = {"class_labels": pooled}
    context = torch.empty(1, context_length, width, device="meta")
    if added and "class_labels" in added:
        return counted(copy, latents, timestep, encoder_hidden_states=context, **added)
    return counted(copy, latents, timestep, encoder_hidden_states=context, added_cond_kwargs=added)


def image_flops(family, pipeline, settings) -> float:
    """FLOPs of one image of `settings` (a `BatchSettings`) on `pipeline`; 0 (and a warning)
    for a network the count cannot run: a figure must never fail the images."""
    try:
        return _image_flops(family, pipeline, settings)
    except Exception as error:  # noqa: BLE001 - an architecture the meta run does not cover
        log.warning("FLOPs not counted for %s: %s", type(family.denoiser(pipeline)).__name__, error)
        return 0.0


def _image_flops(family, pipeline, settings) -> float:
    autoencoder, denoiser = family.autoencoder(pipeline), family.denoiser(pipeline)
    scale = autoencoder_scale(autoencoder.config)
    latent_side = (settings.height // scale, settings.width // scale)
    steps = settings.num_inference_steps
    if settings.task in family.strength_tasks and settings.strength is not None:
        steps = max(1, int(steps * settings.strength))
    rows = 2 if settings.guidance_scale > 1 else 1
    context = family.context_length(pipeline)
    edit = settings.task in ("img2img", "inpaint")
    return float(
        steps * rows * denoiser_flops(denoiser, latent_side, min(context, 512))
        + autoencoder_flops(autoencoder, latent_side, edit)
    )
