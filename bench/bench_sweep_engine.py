"""Sweep engine throughput at Stable Diffusion 1.5 size: easel's planning, batching,
per-image generators and background writer against bare diffusers loops, no orchestration.

    python bench/bench_sweep_engine.py --model sd15 --rows 32 --batch-size 8   # GPU
    python bench/bench_sweep_engine.py --model tiny-shapes --rows 16           # CPU

`--model sd15` builds random weights with SD1.5's shapes (nothing is downloaded); any easel
model reference works too, a Kandinsky 2.2 folder included. Variants, on the same loaded
pipeline and the same rows: (a) a bare loop, one pipeline call per row (batch 1); (b) a
bare loop with easel's batches; (c) easel's engine (`easel.models.engine.sweep`: validate
the manifest, plan, generate, write PNGs and record shards), and (d) the same command
again into the same output, which finds everything recorded and generates nothing. The
Prefect flow adds its server and task overhead on top; bench/bench_sweep.py measures that
on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench_sweep import bare_loop, manifest_rows  # noqa: E402  the same rows, the same loop


def timed(function, sync) -> float:
    start = time.perf_counter()
    function()
    sync()
    return time.perf_counter() - start


def engine_inputs(manifest: str, out: str, model: str, args):
    from easel.data.manifest import SweepDefaults
    from easel.models.engine.sweep import SweepInputs

    defaults = SweepDefaults(
        model=model,
        guidance_scale=args.guidance,
        num_inference_steps=args.steps,
        max_pixels=4096 * 4096,
    )
    return SweepInputs(
        manifest=manifest,
        out=out,
        defaults=defaults,
        input_roots=(),
        batch_size=args.batch_size,
        device=args.device,
        dtype=None,
        trust_pickle=False,
    )


def run_engine(inputs) -> int:
    from easel.models.engine.sweep import generate_batches, plan_sweep

    _, plan = plan_sweep(inputs)
    return generate_batches(inputs, plan.batches, run_id=None).ok


def model_path(args, work: str) -> str:
    if args.model != "sd15":
        return args.model
    from easel.models.testing.random_pipelines import build_random_sd

    folder = os.path.join(work, "sd15")
    build_random_sd(folder, size="sd15")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-shapes")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()

    from easel.models.engine.loading import load_model

    work = tempfile.mkdtemp(prefix="easel-bench-engine-")
    model = model_path(args, work)
    rows = manifest_rows(args.rows)
    manifest = os.path.join(work, "manifest.parquet")
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    loaded = load_model(model, args.device)
    pipe = loaded.pipeline  # the pipeline the engine will use (Kandinsky: the combined one)
    size = loaded.family.native_size(loaded.model.path)
    loop = lambda batch_size, chunk=rows: bare_loop(  # noqa: E731
        pipe, chunk, args.steps, args.guidance, batch_size, size
    )
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    timed(lambda: loop(2, rows[:2]), sync)  # warm-up
    out = os.path.join(work, "out")
    inputs = engine_inputs(manifest, out, model, args)
    seconds = {
        "a_bare_batch1": timed(lambda: loop(1), sync),
        "b_bare_batched": timed(lambda: loop(args.batch_size), sync),
        "c_easel_engine": timed(lambda: run_engine(inputs), sync),
        "d_easel_rerun_nothing_to_do": timed(lambda: run_engine(inputs), sync),
    }
    images = len(os.listdir(os.path.join(out, "images")))
    figures = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "model": args.model,
        "dtype": str(pipe.unet.dtype),
        "size": size,
        "rows": args.rows,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "row_folders_written": images,
        **{f"{name}_s": round(value, 2) for name, value in seconds.items()},
        "images_per_s_easel": round(args.rows / seconds["c_easel_engine"], 2),
        "speedup_vs_a": round(seconds["a_bare_batch1"] / seconds["c_easel_engine"], 2),
        "ratio_vs_b": round(seconds["b_bare_batched"] / seconds["c_easel_engine"], 2),
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
