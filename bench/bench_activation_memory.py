"""What `gradient_checkpointing: true` saves and costs at Stable Diffusion 1.5's size: one
training forward and backward of a UNet with SD1.5's shapes (random weights), with and
without checkpointing, each in its own process.

    python bench/bench_activation_memory.py --resolution 512 --batch-size 2

Memory is the peak resident memory during the forward and backward minus the peak before
it (the weights): activations kept for the backward plus the gradients. On a GPU use
`--device cuda` (peak allocated memory instead).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import isolated  # beside this file
import torch


def measure(checkpointing: bool, resolution: int, batch: int, device: str) -> dict:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768).to(device).train()
    if checkpointing:
        unet.enable_gradient_checkpointing()  # what DreamBoothModule does with the option
    latents = torch.randn(batch, 4, resolution // 8, resolution // 8, device=device)
    condition = torch.randn(batch, 77, 768, device=device)
    timesteps = torch.randint(0, 1000, (batch,), device=device)
    before = isolated.peak_memory_mb(device)
    started = time.perf_counter()
    prediction = unet(latents, timesteps, encoder_hidden_states=condition).sample
    prediction.float().pow(2).mean().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return {
        "gradient_checkpointing": checkpointing,
        "forward_backward_s": round(time.perf_counter() - started, 2),
        "activations_and_gradients_mb": round(isolated.peak_memory_mb(device) - before),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpointing", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.checkpointing:
        result = measure(args.checkpointing == "on", args.resolution, args.batch_size, args.device)
        isolated.report(result)
        return
    rows = [
        isolated.run(__file__, *sys.argv[1:], "--checkpointing", setting, label=setting)
        for setting in ("off", "on")
    ]
    print(json.dumps({"resolution": args.resolution, "batch": args.batch_size, "rows": rows}))


if __name__ == "__main__":
    main()
