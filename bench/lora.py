"""LoRA adapters in a sweep: 4 adapters x `--prompts` prompts as one sweep (a `loras`
column), against 4 sweeps of one adapter each, and against a bare diffusers loop that loads
each adapter once (`load_lora_weights`), switches with `set_adapters` and saves each image
as a PNG (what a user's own loop does).

    python -m bench.lora --model tiny --prompts 64          # CPU
    python -m bench.lora --model sd15 --prompts 64          # GPU

The model has random weights (`tiny`, or SD 1.5's shapes with `sd15`; nothing downloaded);
two adapters in PEFT keys, two in kohya keys. Everything runs in one process on one loaded
pipeline (easel's engine: plan, generate, write PNGs and records; no Prefect): before each
variant the pipeline's adapters are deleted, so each variant loads what it needs.
Reported: each variant's time, the ratio one sweep / bare loop, and the adapter loads the
engine counted. `--smoke`: 2 prompts, 2 steps, batches of 2, one repeat.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bench import harness
from bench.sweep import manifest_rows
from bench.sweep_engine import engine_inputs, generation_options, run_engine

ADAPTERS = 4


def build(work: str, size: str) -> tuple[str, list[str]]:
    """The random model and its adapters (even: PEFT keys, odd: kohya keys)."""
    from easel.models.testing.random_loras import build_random_lora
    from easel.models.testing.random_pipelines import build_random_sd

    model = build_random_sd(os.path.join(work, "model"), size=size)
    adapters = [
        build_random_lora(model, os.path.join(work, f"adapter-{i}.safetensors"),
                          ("peft", "kohya")[i % 2], seed=i + 1)  # fmt: skip
        for i in range(ADAPTERS)
    ]
    return model, adapters


def write(work: str, name: str, prompts: list[dict], adapters: list[str]) -> str:
    """A manifest of every prompt with each of `adapters` (one row each)."""
    rows = [{**row, "id": f"{row['id']}-a{i}", "loras": [{"path": path, "scale": 1.0}]}
            for i, path in enumerate(adapters) for row in prompts]  # fmt: skip
    manifest = os.path.join(work, f"{name}.parquet")
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    return manifest


def bare_loop(pipe, prompts, adapters, args, folder: str) -> None:
    """diffusers alone: each adapter loaded once, then its prompts in batches, each image
    saved as a PNG in `folder` (what a user's own loop does with what it draws)."""
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    for i, path in enumerate(adapters):
        pipe.load_lora_weights(path, adapter_name=f"bare{i}")
    for i in range(len(adapters)):
        pipe.set_adapters([f"bare{i}"], [1.0])
        for start in range(0, len(prompts), args.batch_size):
            chunk = prompts[start : start + args.batch_size]
            images = pipe(
                [r["prompt"] for r in chunk], num_inference_steps=args.steps,
                guidance_scale=args.guidance, width=args.side, height=args.side,
                generator=[torch.Generator().manual_seed(r["seed"]) for r in chunk],
            ).images  # fmt: skip
            for row, image in zip(chunk, images, strict=True):
                image.save(os.path.join(folder, f"{row['id']}-a{i}.png"))


def options():
    parser = generation_options(harness.parser(__doc__))
    parser.add_argument("--model", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--prompts", type=int, default=64)
    args = parser.parse_args()
    if args.smoke:
        args.prompts, args.steps, args.batch_size = 2, 2, 2
    return args


def main() -> None:
    args = options()
    from easel.models.engine import loras
    from easel.models.engine.loading import load_model

    work = tempfile.mkdtemp(prefix="easel-bench-lora-")
    model, adapters = build(work, args.model)
    prompts = manifest_rows(args.prompts)
    pipe = load_model(model, args.device).pipeline
    args.side = load_model(model, args.device).family.native_size(model)
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def fresh():  # the pipeline without adapters: each variant loads its own
        pipe.delete_adapters([n for names in pipe.get_list_adapters().values() for n in names])

    def sweep(manifests: list[str]) -> int:
        fresh()
        shutil.rmtree(os.path.join(work, "out"), ignore_errors=True)
        for index, manifest in enumerate(manifests):
            run_engine(engine_inputs(manifest, os.path.join(work, "out", str(index)), model, args))
        return 0

    one = [write(work, "all", prompts, adapters)]
    each = [write(work, f"one-{i}", prompts, [path]) for i, path in enumerate(adapters)]
    times = {"one_sweep_s": [], "four_sweeps_s": [], "bare_loop_s": []}
    loads = {}
    bare = os.path.join(work, "bare")
    harness.timed(lambda: bare_loop(pipe, prompts[:1], adapters[:1], args, bare), sync)  # warm
    for _ in range(harness.repeats(args, 1)):
        for name, function in (("one_sweep_s", lambda: sweep(one)),
                               ("four_sweeps_s", lambda: sweep(each)),
                               ("bare_loop_s", lambda: (fresh(), bare_loop(
                                   pipe, prompts, adapters, args, bare))),
                               ):  # fmt: skip
            before = sum(loras.LOADS.values())
            times[name].append(harness.timed(function, sync))
            loads[name] = sum(loras.LOADS.values()) - before
    images = ADAPTERS * args.prompts
    results = harness.Results("lora", args, torch.cuda.get_device_name() if cuda else "cpu")
    results.parameters.update(model=args.model, adapters=ADAPTERS, prompts=args.prompts,
                              images=images, steps=args.steps, batch_size=args.batch_size,
                              side=args.side, dtype=str(pipe.unet.dtype))  # fmt: skip
    for name, samples in times.items():
        results.add(name, "s", samples)
    results.add("one sweep / bare loop, best times", "x",
                min(times["one_sweep_s"]) / min(times["bare_loop_s"]))  # fmt: skip
    results.add("four sweeps / one sweep, best times", "x",
                min(times["four_sweeps_s"]) / min(times["one_sweep_s"]))  # fmt: skip
    results.add("adapter loads, one sweep", "count", float(loads["one_sweep_s"]))
    results.add("adapter loads, four sweeps", "count", float(loads["four_sweeps_s"]))
    results.write()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
