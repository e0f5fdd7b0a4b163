"""What `gradient_checkpointing: true` saves and costs at Stable Diffusion 1.5's size: one
training forward and backward of a UNet with SD1.5's shapes (random weights), with and
without checkpointing, each in its own process.

    python -m bench.activation_memory --resolution 512 --batch-size 2 [--repeats 1]

Memory is the peak resident memory during the forward and backward minus the peak before
it (the weights): activations kept for the backward plus the gradients. On a GPU use
`--device cuda` (peak allocated memory instead). `--smoke`: a UNet of a few channels.
"""

from __future__ import annotations

import time

import torch

from bench import harness

SMOKE_UNET = {"block_out_channels": (32, 64), "down_block_types": ("CrossAttnDownBlock2D",
              "DownBlock2D"), "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
              "layers_per_block": 1, "cross_attention_dim": 32, "sample_size": 8}  # fmt: skip
SD15_UNET = {"sample_size": 64, "cross_attention_dim": 768}


def measure(checkpointing: bool, resolution: int, batch: int, device: str, smoke: bool) -> dict:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    shape = SMOKE_UNET if smoke else SD15_UNET
    unet = UNet2DConditionModel(**shape).to(device).train()
    if checkpointing:
        unet.enable_gradient_checkpointing()  # what DreamBoothModule does with the option
    latents = torch.randn(batch, 4, resolution // 8, resolution // 8, device=device)
    condition = torch.randn(batch, 77, shape["cross_attention_dim"], device=device)
    timesteps = torch.randint(0, 1000, (batch,), device=device)
    before = harness.peak_memory_mb(device)
    started = time.perf_counter()
    prediction = unet(latents, timesteps, encoder_hidden_states=condition).sample
    prediction.float().pow(2).mean().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return {
        "forward_backward_s": time.perf_counter() - started,
        "activations_and_gradients_mb": harness.peak_memory_mb(device) - before,
    }


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpointing", choices=["on", "off"], help=harness.argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.resolution, args.batch_size = 64, 1
    if args.checkpointing:
        on = args.checkpointing == "on"
        harness.report(measure(on, args.resolution, args.batch_size, args.device, args.smoke))
        return
    results = harness.Results("activation_memory", args, args.device)
    results.parameters.update(resolution=args.resolution, batch=args.batch_size,
                              unet="tiny (smoke)" if args.smoke else "SD1.5 shapes")  # fmt: skip
    child = ["--resolution", str(args.resolution), "--batch-size", str(args.batch_size),
             "--device", args.device, *(["--smoke"] if args.smoke else [])]  # fmt: skip
    for setting in ("off", "on"):
        runs = [harness.isolated("bench.activation_memory", *child, "--checkpointing", setting,
                                 label=f"checkpointing {setting}")
                for _ in range(harness.repeats(args, 1))]  # fmt: skip
        for key in runs[0]:
            results.add(f"checkpointing {setting}: {key}", harness.unit_of(key),
                        [r[key] for r in runs])  # fmt: skip
    results.write()


if __name__ == "__main__":
    main()
