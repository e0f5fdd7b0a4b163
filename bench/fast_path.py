"""The sweep's fast path against the eager path, one run, the same model, rows and seeds.

    python -m bench.fast_path --model tiny-shapes                      # CPU
    python -m bench.fast_path --model sd15 --dtype float16 --size 512  # GPU

For each performance setting (`easel.models.engine.performance.Performance`): the first
batch (compilation included), then images/s over `--repeats` batches of `--batch-size`
through the engine's one generation path, the ratio to eager, the largest pixel difference
from the eager images (of 255), and whether an image at batch 1 equals itself at batch
`--batch-size` among other rows. `--model sd15` builds random weights with SD 1.5's shapes
(nothing is downloaded). `--smoke`: eager and channels-last, 2 images, 2 steps, 1 repeat.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np
import torch

from bench import harness

SETTINGS = {
    "eager": {},
    "channels_last": {"channels_last": True},
    "attention math": {"attention_backend": "math"},
    "vae bfloat16": {"vae_dtype": "bfloat16"},
    "compile regional": {"compile": "regional"},
    "compile regional + channels_last": {"compile": "regional", "channels_last": True},
    "compile full + channels_last": {"compile": "full", "channels_last": True},
}
UNITS = {
    "max_pixel_difference_from_eager": "of 255",
    "batch_1_vs_batch_n": "of 255",
    "speed_vs_eager": "x",
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
    batches = [harness.timed(lambda: generate(loaded, settings, requests), sync)
               for _ in range(repeats)]  # fmt: skip
    pixels = np.stack([np.asarray(image, dtype=np.int16) for image in first])
    batch_difference = int(np.abs(np.asarray(alone, dtype=np.int16) - pixels[1]).max())
    return {"first_batch_s": first_seconds, "images_per_s": [len(requests) / b for b in batches],
            "pixels": pixels, "batch_1_vs_batch_n": batch_difference}  # fmt: skip


def options():
    parser = harness.parser(__doc__)
    parser.add_argument("--model", default="tiny-shapes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float16, bfloat16 (default: the device's)")
    parser.add_argument("--size", type=int, default=None, help="image side (default: native)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.batch_size, args.settings = 2, 2, ["eager", "channels_last"]
    return args


def main() -> None:
    args = options()
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
    results = harness.Results("fast_path", args, torch.cuda.get_device_name() if cuda else "cpu")
    dtype_name = str(eager.pipeline.unet.dtype).removeprefix("torch.")
    results.parameters.update(
        model=args.model,
        size=side,
        steps=args.steps,
        dtype=dtype_name,
        batch_size=args.batch_size,
        threads=torch.get_num_threads(),
    )
    reference, eager_speed = None, None
    for name in ["eager", *[s for s in args.settings if s != "eager"]]:
        loaded = load_model(ref, args.device, dtype, performance=Performance(**SETTINGS[name]))
        figures = measure(loaded, settings, requests, harness.repeats(args, 3), sync)
        pixels = figures.pop("pixels")
        reference = pixels if reference is None else reference
        speed = statistics.median(figures["images_per_s"])
        eager_speed = eager_speed or speed
        figures["max_pixel_difference_from_eager"] = int(np.abs(pixels - reference).max())
        figures["speed_vs_eager"] = speed / eager_speed
        for key, value in figures.items():
            results.add(f"{name}: {key}", UNITS.get(key, harness.unit_of(key)), value)
    results.write()


if __name__ == "__main__":
    main()
