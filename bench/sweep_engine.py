"""Sweep engine throughput at Stable Diffusion 1.5 size: easel's planning, batching,
per-image generators and background writer against bare diffusers loops, no orchestration.

    python -m bench.sweep_engine --model sd15 --rows 32 --batch-size 8   # GPU
    python -m bench.sweep_engine --model tiny-shapes --rows 16           # CPU

`--model sd15` builds random weights with SD1.5's shapes (nothing is downloaded); any easel
model reference works too, a Kandinsky 2.2 folder included. Variants, on the same loaded
pipeline and the same rows: (a) a bare loop, one pipeline call per row (batch 1); (b) a
bare loop with easel's batches; (c) easel's engine (`easel.models.engine.sweep`: validate
the manifest, plan, generate, write PNGs and record shards), and (d) the same command
again into the same output, which finds everything recorded and generates nothing. The
Prefect flow adds its server and task overhead on top; bench/sweep.py measures that
on CPU. `--smoke`: 2 rows, 2 steps, batches of 2, one repeat.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bench import harness
from bench.sweep import bare_loop, manifest_rows  # the same rows, the same loop


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


def generation_options(parser):
    """The options every sweep benchmark shares: steps, guidance, batch size, device."""
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def options():
    parser = generation_options(harness.parser(__doc__))
    parser.add_argument("--model", default="tiny-shapes")
    parser.add_argument("--rows", type=int, default=32)
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.steps, args.batch_size = 2, 2, 2
    return args


def main() -> None:
    args = options()
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
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    harness.timed(lambda: loop(2, rows[:2]), sync)  # warm-up
    variants = {"a_bare_batch1_s": lambda: loop(1),
                "b_bare_batched_s": lambda: loop(args.batch_size)}  # fmt: skip
    times = {name: [] for name in [*variants, "c_easel_engine_s", "d_easel_rerun_nothing_to_do_s"]}
    out = os.path.join(work, "out")
    inputs = engine_inputs(manifest, out, model, args)
    for _ in range(harness.repeats(args, 1)):
        for name, function in variants.items():
            times[name].append(harness.timed(function, sync))
        shutil.rmtree(out, ignore_errors=True)  # (c) starts from nothing each repeat
        times["c_easel_engine_s"].append(harness.timed(lambda: run_engine(inputs), sync))
        times["d_easel_rerun_nothing_to_do_s"].append(
            harness.timed(lambda: run_engine(inputs), sync)
        )
    if (written := len(os.listdir(os.path.join(out, "images")))) != args.rows:
        raise RuntimeError(f"the engine wrote {written} row folders, not --rows {args.rows}")
    results = harness.Results("sweep_engine", args,
                              torch.cuda.get_device_name() if cuda else "cpu")  # fmt: skip
    results.parameters.update(model=args.model, dtype=str(pipe.unet.dtype), size=size,
                              rows=args.rows, steps=args.steps,
                              batch_size=args.batch_size)  # fmt: skip
    for name, samples in times.items():
        results.add(name, "s", samples)
    engine = min(times["c_easel_engine_s"])
    results.add("easel engine: images_per_s", "/s", args.rows / engine)
    results.add("speed-up of (c) on (a), best times", "x", min(times["a_bare_batch1_s"]) / engine)
    results.add("(b) time / (c) time, best times", "x", min(times["b_bare_batched_s"]) / engine)
    results.write()


if __name__ == "__main__":
    main()
