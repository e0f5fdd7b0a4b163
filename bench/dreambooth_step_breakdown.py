"""Where one DreamBooth training step's time goes, part by part, on an accelerator.

Times (CUDA events, median of `--repeats` after warm-up) of each piece of a full
fine-tuning step of an SD-1.5-shaped model with random weights: the VAE encode and text
encode that caching removes, the UNet forward and backward, the optimizer (foreach and
fused AdamW), gradient clipping and the grad scaler; then the same UNet with a LoRA
adapter, in channels-last memory format, and at larger batches (is the step bound by
kernel launches or by arithmetic?). Prints one JSON object.

    python bench/dreambooth_step_breakdown.py --model-dir /tmp/easel-bench/db/model-sd15
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: a smoke run only


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, warmup: int = 3) -> float:
    """Median wall milliseconds of `fn()`, the device synchronised around each call."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        samples.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(samples), 2)


def unet_pass(unet, batch: int, resolution: int, dtype, backward: bool, channels_last=False):
    latents = torch.randn(batch, 4, resolution // 8, resolution // 8, device=DEVICE)
    if channels_last:
        latents = latents.to(memory_format=torch.channels_last)
    condition = torch.randn(batch, 77, unet.config.cross_attention_dim, device=DEVICE)
    timesteps = torch.randint(0, 1000, (batch,), device=DEVICE)

    def run():
        with torch.autocast(DEVICE, dtype=dtype):
            out = unet(latents, timesteps, encoder_hidden_states=condition).sample
        if backward:
            out.float().pow(2).mean().backward()

    return run


@torch.no_grad()
def encoder_times(model_dir: str, resolution: int, dtype, repeats: int) -> dict[str, float]:
    """What caching removes: the VAE encode of two images and the text encode of two prompts."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae").to(DEVICE, dtype)
    text = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder").to(DEVICE, dtype)
    pixels = torch.randn(2, 3, resolution, resolution, device=DEVICE, dtype=dtype)
    length = text.config.max_position_embeddings
    ids = torch.randint(0, text.config.vocab_size, (2, length), device=DEVICE)
    return {
        "vae_encode_2_ms": timed(lambda: vae.encode(pixels).latent_dist.sample(), repeats),
        "text_encode_2_ms": timed(lambda: text(ids)[0], repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    from diffusers import UNet2DConditionModel

    from easel.models.dreambooth.module import LORA_UNET_TARGETS, MAX_GRAD_NORM, lora_config

    cuda = DEVICE == "cuda"
    half, r, n = torch.float16 if cuda else torch.bfloat16, args.resolution, args.repeats
    name = torch.cuda.get_device_name() if cuda else "cpu"
    report: dict[str, float | str] = {"device": name, "resolution": r}
    report |= encoder_times(args.model_dir, r, half, n)

    unet = UNet2DConditionModel.from_pretrained(args.model_dir, subfolder="unet").to(DEVICE)
    params = list(unet.parameters())
    report["unet_params_m"] = round(sum(p.numel() for p in params) / 1e6, 1)
    with torch.no_grad():
        report["unet_forward_b2_ms"] = timed(unet_pass(unet, 2, r, half, False), n)
    report["unet_forward_backward_b2_ms"] = timed(unet_pass(unet, 2, r, half, True), n)
    for batch in (4, 8):
        report[f"unet_forward_backward_b{batch}_ms"] = timed(
            unet_pass(unet, batch, r, half, True), max(3, n // 2)
        )
    scaler = torch.amp.GradScaler(DEVICE)
    for fused in (False, True) if cuda else (False,):
        optimizer = torch.optim.AdamW(params, lr=1e-6, fused=fused, foreach=not fused)
        report[f"adamw_{'fused' if fused else 'foreach'}_ms"] = timed(optimizer.step, n)
        del optimizer
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    report["clip_grad_norm_ms"] = timed(
        lambda: torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM), n
    )

    def unscale():
        scaler._per_optimizer_states.clear()  # unscale_ once per step is the rule
        scaler.scale(torch.ones((), device=DEVICE))
        scaler.unscale_(optimizer)

    report["grad_scaler_unscale_ms"] = timed(unscale, n)

    unet.to(memory_format=torch.channels_last)
    report["unet_forward_backward_b2_channels_last_ms"] = timed(
        unet_pass(unet, 2, r, half, True, channels_last=True), n
    )
    unet.to(memory_format=torch.contiguous_format)
    unet.requires_grad_(False)
    unet.zero_grad(set_to_none=True)
    unet.add_adapter(lora_config(4, LORA_UNET_TARGETS))
    report["unet_lora_forward_backward_b2_ms"] = timed(unet_pass(unet, 2, r, half, True), n)
    if cuda:
        report["peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
