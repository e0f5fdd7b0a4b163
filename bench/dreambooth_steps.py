"""Where one DreamBooth training step's time goes, part by part, on an accelerator.

Times (CUDA events, median of `--repeats` after warm-up) of each piece of a full
fine-tuning step of an SD-1.5-shaped model with random weights: the VAE encode and text
encode that caching removes, the UNet forward and backward, the optimizer (foreach and
fused AdamW), gradient clipping and the grad scaler; then the same UNet with a LoRA
adapter, in channels-last memory format, and at larger batches (is the step bound by
kernel launches or by arithmetic?). Each figure's repeats are its timed calls.

    python -m bench.dreambooth_steps --model-dir /tmp/easel-bench/db/model-sd15

Without `--model-dir`, random weights with SD1.5's shapes are built in a temporary folder.
On CPU (bfloat16 autocast) it is a dry run only. `--smoke`: the tiny model, 64x64, 1 repeat.
"""

from __future__ import annotations

import os
import tempfile
import time

import torch

from bench import harness

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: a smoke run only


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, warmup: int = 3) -> list[float]:
    """Wall milliseconds of each of `repeats` calls of `fn()`, the device synchronised around
    each, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


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


def model_dir(args) -> str:
    if args.model_dir:
        return args.model_dir
    from easel.models.testing.random_pipelines import build_random_sd

    size = "tiny" if args.smoke else "sd15"
    return build_random_sd(os.path.join(tempfile.mkdtemp(prefix="bench-steps-"), size), size)


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--resolution", type=int, default=512)
    args = parser.parse_args()
    if args.smoke:
        args.resolution = 64
    args.model_dir = model_dir(args)

    from diffusers import UNet2DConditionModel

    from easel.models.dreambooth.module import LORA_UNET_TARGETS, MAX_GRAD_NORM, lora_config

    cuda = DEVICE == "cuda"
    half, r = torch.float16 if cuda else torch.bfloat16, args.resolution
    n = harness.repeats(args, 10)
    device = torch.cuda.get_device_name() if cuda else "cpu"
    results = harness.Results("dreambooth_steps", args, device)
    results.parameters.update(resolution=r, model=args.model_dir)
    report: dict = {}
    report |= encoder_times(args.model_dir, r, half, n)

    unet = UNet2DConditionModel.from_pretrained(args.model_dir, subfolder="unet").to(DEVICE)
    params = list(unet.parameters())
    results.add("unet parameters", "millions", sum(p.numel() for p in params) / 1e6)
    with torch.no_grad():
        report["unet_forward_b2_ms"] = timed(unet_pass(unet, 2, r, half, False), n)
    report["unet_forward_backward_b2_ms"] = timed(unet_pass(unet, 2, r, half, True), n)
    for batch in (4, 8):
        report[f"unet_forward_backward_b{batch}_ms"] = timed(
            unet_pass(unet, batch, r, half, True), max(1, n // 2)
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
        report["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    for key, value in report.items():
        if isinstance(value, list):
            results.add(key, harness.unit_of(key), value)
    results.add_figures({k: v for k, v in report.items() if not isinstance(v, list)})
    results.write()


if __name__ == "__main__":
    main()
