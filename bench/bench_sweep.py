"""Sweep throughput: `easel sweep` against bare diffusers loops on the same 64 rows.

    python bench/bench_sweep.py [--rows 64] [--steps 20] [--batch-size 8] [--model tiny-shapes]
    python bench/bench_sweep.py --model MODEL_DIR --rows 256 --batch-size auto \
        --performance '{"compile": "regional", "channels_last": true}' --skip-process  # GPU

`--model` takes any reference, a Kandinsky 2.2 folder too (the bare loops then call the
combined pipeline, whose prior runs batched; easel runs each image's prior alone).

(a) a bare loop calling the pipeline once per row at batch size 1;
(b) a bare loop calling it with easel's batching (same batches, same order);
(c) the sweep flow in-process (planning, tasks, atomic writes, records, results, contact
    sheet, MLflow, Prefect artifacts), against an already running Prefect server;
and, on their own, the start-up of Prefect's temporary server and a whole `easel sweep`
process. Each variant runs `--repeats` times, alternating; the best time counts (the flow
keeps its loaded, compiled model between repeats, as a worker process does between
batches). `--performance` sets the flow's fast path (JSON of `performance:` keys); the
bare loops stay eager. The figures the last flow run logged to MLflow are printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import torch

SHAPES = ["circle", "square", "triangle", "star", "heart", "cross"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]


def manifest_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        shape, colour, ground = SHAPES[i % 6], COLOURS[i % 8], COLOURS[(i + 3) % 8]
        rows.append({"id": f"row-{i:03d}", "prompt": f"a {colour} {shape} on a {ground} background",
                     "seed": 1000 + i})  # fmt: skip
    return rows


def bare_loop(pipe, rows, steps, guidance, batch_size, size) -> float:
    start = time.perf_counter()
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        pipe(
            [r["prompt"] for r in chunk], num_inference_steps=steps, guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(r["seed"]) for r in chunk],
            width=size, height=size,
        )  # fmt: skip
    return time.perf_counter() - start


def easel_flow(manifest, out, args) -> float:
    from easel.flows.sweep import SweepParameters, sweep_flow

    params = SweepParameters(manifest=manifest, out=out, model=args.model,
                             batch_size=args.batch_size, num_inference_steps=args.steps,
                             guidance_scale=args.guidance, device=args.device,
                             performance=json.loads(args.performance),
                             experiment="bench-sweep")  # fmt: skip
    start = time.perf_counter()
    summary = sweep_flow(params)
    assert summary.images_ok == args.rows, summary
    return time.perf_counter() - start


def last_run_figures() -> dict:
    """The utilisation metrics and run parameters of the last flow run, from MLflow."""
    import mlflow

    (run,) = mlflow.search_runs(experiment_names=["bench-sweep"], max_results=1,
                                order_by=["start_time DESC"], output_format="list")  # fmt: skip
    keep = ("device_name", "torch_dtype", "batch_size")
    params = {k: v for k, v in run.data.params.items() if k in keep or k.startswith("perf")}
    return {**run.data.metrics, **params}


def prefect_startup() -> float:
    from prefect.server.api.server import SubprocessASGIServer

    start = time.perf_counter()
    server = SubprocessASGIServer()
    server.start(timeout=120)
    seconds = time.perf_counter() - start
    server.stop()
    return seconds


def whole_process(manifest, out, args) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    start = time.perf_counter()
    command = [sys.executable, "-m", "easel.cli", "sweep", manifest, "--out", out,
               "--batch-size", str(args.batch_size), "--model", args.model]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"easel sweep exited {result.returncode}: {result.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--batch-size", type=lambda t: t if t == "auto" else int(t), default=8)
    parser.add_argument("--model", default="tiny-shapes")
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--performance", default="{}", help="the flow's `performance:` as JSON")
    parser.add_argument("--no-batch1", action="store_true", help="skip (a), the per-row loop")
    parser.add_argument("--skip-process", action="store_true",
                        help="skip the server start-up and whole-process figures")  # fmt: skip
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    from easel.models.engine.loading import load_model

    work = tempfile.mkdtemp(prefix="easel-bench-")
    rows = manifest_rows(args.rows)
    manifest = os.path.join(work, "manifest.parquet")
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    loaded = load_model(args.model, args.device)
    pipe = loaded.pipeline  # the same pipeline easel uses (Kandinsky 2.2: the combined one)
    size = loaded.family.native_size(loaded.model.path)
    pipe.set_progress_bar_config(disable=True)
    sync = torch.cuda.synchronize if pipe.device.type == "cuda" else (lambda: None)
    bare_loop(pipe, rows[:2], args.steps, args.guidance, 2, size)  # warm-up
    bare_batch = 8 if args.batch_size == "auto" else args.batch_size
    times = {"a_bare_batch1": [], "b_bare_batched": [], "easel_flow": []}
    with prefect_test_harness(server_startup_timeout=120):
        for repeat in range(args.repeats):
            if not args.no_batch1:
                times["a_bare_batch1"].append(
                    bare_loop(pipe, rows, args.steps, args.guidance, 1, size)
                )
            sync()
            times["b_bare_batched"].append(
                bare_loop(pipe, rows, args.steps, args.guidance, bare_batch, size)
            )
            sync()
            times["easel_flow"].append(
                easel_flow(manifest, os.path.join(work, f"out{repeat}"), args)
            )
    best = {k: min(v) for k, v in times.items() if v}
    figures = {
        "model": args.model, "rows": args.rows, "steps": args.steps,
        "batch_size": args.batch_size, "size": size,
        "device": str(pipe.device), "torch_threads": torch.get_num_threads(),
        **{f"{k}_s": round(v, 2) for k, v in best.items()},
        "images_per_s_easel": round(args.rows / best["easel_flow"], 2),
        "speedup_vs_a": round(best.get("a_bare_batch1", 0) / best["easel_flow"], 2),
        "ratio_vs_b": round(best["b_bare_batched"] / best["easel_flow"], 2),
        "performance": json.loads(args.performance), "mlflow": last_run_figures(),
    }  # fmt: skip
    if not args.skip_process:
        figures["prefect_server_startup_s"] = round(prefect_startup(), 2)
        whole = whole_process(manifest, os.path.join(work, "cli"), args)
        figures["whole_easel_sweep_process_s"] = round(whole, 2)
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
