"""The sweep's fast path against the eager path, one run, the same model, rows and seeds.

    python bench/bench_fast_path.py --model tiny-shapes                      # CPU
    python bench/bench_fast_path.py --model sd15 --dtype float16 --size 512  # GPU

For each performance setting (`easel.models.engine.performance.Performance`): the first
batch (compilation included), then images/s over `--repeats` batches of `--batch-size`
through the engine's one generation path, the ratio to eager, the largest pixel difference
from the eager images (of 255), and whether an image at batch 1 equals itself at batch
`--batch-size` among other rows. `--model sd15` builds random weights with SD 1.5's shapes
(nothing is downloaded). Prints a Markdown table; `--json` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

SETTINGS = {
    "eager": {},
    "channels_last": {"channels_last": True},
    "attention math": {"attention_backend": "math"},
    "vae bfloat16": {"vae_dtype": "bfloat16"},
    "compile regional": {"compile": "regional"},
    "compile regional + channels_last": {"compile": "regional", "channels_last": True},
    "compile full + channels_last": {"compile": "full", "channels_last": True},
}
PROMPTS = [
    "a red circle on a blue background", "a green star on a white background",
    "a yellow square on a black background", "a blue heart on a yellow background",
]  # fmt: skip


def model_reference(name: str) -> str:
    if name != "sd15":
        return name
    from easel.models.testing.random_pipelines import build_random_sd

    return build_random_sd(os.path.join(tempfile.mkdtemp(), "sd15"), "sd15")


def measure(loaded, settings, requests, repeats: int, sync) -> dict:
    from easel.models.engine.generation import generate

    start = time.perf_counter()
    first = generate(loaded, settings, requests)
    sync()
    first_seconds = time.perf_counter() - start
    alone = generate(loaded, settings, requests[1:2])[0]
    start = time.perf_counter()
    for _ in range(repeats):
        generate(loaded, settings, requests)
    sync()
    seconds = time.perf_counter() - start
    pixels = np.stack([np.asarray(image, dtype=np.int16) for image in first])
    batch_difference = int(np.abs(np.asarray(alone, dtype=np.int16) - pixels[1]).max())
    return {"first_batch_s": first_seconds, "images_per_s": repeats * len(requests) / seconds,
            "pixels": pixels, "batch_1_vs_batch_n": batch_difference}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-shapes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float16, bfloat16 (default: the device's)")
    parser.add_argument("--size", type=int, default=None, help="image side (default: native)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--json")
    args = parser.parse_args()

    from easel.data.batching import BatchSettings, ImageRequest
    from easel.models.engine.loading import load_model
    from easel.models.engine.performance import Performance

    ref = model_reference(args.model)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    eager = load_model(ref, args.device, dtype)
    side = args.size or eager.family.native_size(eager.model.path)
    settings = BatchSettings(task="text2img", scheduler=None, guidance_scale=7.5,
                             num_inference_steps=args.steps, width=side, height=side)  # fmt: skip
    requests = [ImageRequest(prompt=PROMPTS[i % len(PROMPTS)], negative_prompt=None, seed=i)
                for i in range(args.batch_size)]  # fmt: skip
    results, reference = {}, None
    for name in ["eager", *[s for s in args.settings if s != "eager"]]:
        loaded = load_model(ref, args.device, dtype, performance=Performance(**SETTINGS[name]))
        figures = measure(loaded, settings, requests, args.repeats, sync)
        pixels = figures.pop("pixels")
        reference = pixels if reference is None else reference
        figures["max_pixel_difference_from_eager"] = int(np.abs(pixels - reference).max())
        figures["speed_vs_eager"] = figures["images_per_s"] / results.get(
            "eager", figures)["images_per_s"]  # fmt: skip
        results[name] = figures
        print(name, {k: round(v, 3) for k, v in figures.items()}, flush=True)
    device = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{args.model}, {side}², {args.steps} steps, batch {args.batch_size}, {device}, "
          f"{str(eager.pipeline.unet.dtype).removeprefix('torch.')}\n")  # fmt: skip
    print("| setting | images/s | vs eager | first batch (s) | max diff from eager | "
          "batch 1 vs batch n |\n|---|---|---|---|---|---|")  # fmt: skip
    for name, f in results.items():
        print(f"| {name} | {f['images_per_s']:.2f} | {f['speed_vs_eager']:.2f}× | "
              f"{f['first_batch_s']:.1f} | {f['max_pixel_difference_from_eager']} | "
              f"{f['batch_1_vs_batch_n']} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "results": results, "args": vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()
