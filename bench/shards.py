"""Shards across workers: the generation phase of one sweep on 1 worker against N workers,
and what one shard costs before its first image, on the whole local stack
(deploy/local_stack.py: Prefect and MLflow servers, S3, process workers).

    python -m bench.shards [--images 128] [--steps 20] [--batch-size 8] [--workers 2]

1. one worker, `shards: 1`: the sweep's generation phase (first to last image, from the
   records' timings) and the whole flow run;
2. N workers, `shards: N`, into a fresh output: the generation phase, from the first shard
   run taken by a worker (Pending) to the last one's end, and per shard: that span minus
   its `generation_seconds` (process start, imports, model load, planning, the hold,
   writes).
Records the speed-up, the fixed cost per shard, and the images a shard needs for that cost
to stay under 5% of its time. One run (the stack is not restarted); `--smoke`: 4 images,
2 steps, batches of 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench import harness
from deploy import local_stack

ROOT = harness.ROOT


def run(stack_env: dict, root: Path, params: dict) -> dict:
    """Trigger the sweep-local deployment with `params`, wait, return the flow run and its
    MLflow parent run."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack_env["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("sweep/sweep-local")
            flow_run = client.create_flow_run_from_deployment(
                deployment.id, parameters={"params": params}
            )
            while not (flow_run := client.read_flow_run(flow_run.id)).state.is_final():
                time.sleep(1)
    assert flow_run.state.is_completed(), flow_run.state
    return flow_run


def pending_to_end(stack_env: dict, flow_run_id: str) -> tuple[float, float]:
    """When the worker took the flow run (Pending) and when it ended, in epoch seconds."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack_env["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            states = client.read_flow_run_states(flow_run_id)
            flow_run = client.read_flow_run(flow_run_id)
    pending = min(s.timestamp for s in states if s.type.value == "PENDING")
    return pending.timestamp(), flow_run.end_time.timestamp()


def mlflow_runs(stack_env: dict, flow_run_id) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=stack_env["MLFLOW_TRACKING_URI"])
    experiments = [e.experiment_id for e in client.search_experiments()]
    (parent,) = client.search_runs(experiments, f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    children = client.search_runs(
        experiments, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    return [parent, *children]


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.smoke:
        args.images, args.steps, args.batch_size = 4, 2, 2

    root = Path(tempfile.mkdtemp(prefix="easel-bench-shards-"))
    script = [sys.executable, str(ROOT / "deploy" / "local_stack.py")]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    subprocess.run([*script, "start", "--dir", str(root), "--no-ui", "--workers", "1",
                    "--worker-limit", "2"], env=env, check=True)  # fmt: skip
    try:
        stack_env = local_stack.read_env(root)
        subprocess.run([str(Path(sys.executable).with_name("prefect")), "--no-prompt", "deploy",
                        "--name", "sweep-local"], cwd=ROOT, env={**env, **stack_env},
                       check=True, capture_output=True)  # fmt: skip
        import s3fs

        s3 = s3fs.S3FileSystem(endpoint_url=stack_env["FSSPEC_S3_ENDPOINT_URL"], key="testing",
                               secret="testing")  # fmt: skip
        rows = [{"id": f"r{i}", "prompt": "a red circle on a blue background",
                 "num_inference_steps": args.steps} for i in range(args.images)]  # fmt: skip
        local = root / "m.parquet"
        pq.write_table(pa.Table.from_pylist(rows), local)
        s3.put(str(local), "prompts/bench/m.parquet")
        base = {"manifest": "s3://prompts/bench/m.parquet", "batch_size": args.batch_size}

        one = run(stack_env, root, {**base, "out": "s3://renders/bench-1"})
        (parent,) = mlflow_runs(stack_env, one.id)[:1]
        single = {"flow_run_s": (one.end_time - one.start_time).total_seconds(),
                  "generation_s": parent.data.metrics["generation_seconds"]}  # fmt: skip

        for _ in range(args.workers - 1):
            local_stack.add_worker(root, 2)
        many = run(stack_env, root, {**base, "out": "s3://renders/bench-n", "shards": args.workers})
        _, *shards = mlflow_runs(stack_env, many.id)
        spans = [pending_to_end(stack_env, s.data.tags["prefect.flow_run_id"]) for s in shards]
        phase = max(end for _, end in spans) - min(start for start, _ in spans)
        fixed = [end - start - s.data.metrics["generation_seconds"]
                 for (start, end), s in zip(spans, shards, strict=True)]  # fmt: skip
        per_image = single["generation_s"] / args.images
        results = harness.Results("shards", args)
        results.parameters.update(images=args.images, steps=args.steps, workers=args.workers,
                                  batch_size=args.batch_size)  # fmt: skip
        results.add("one worker: flow run", "s", single["flow_run_s"])
        results.add("one worker: generation", "s", single["generation_s"])
        results.add("one worker: per image", "s", per_image)
        results.add(f"{args.workers} shards: generation phase", "s", phase)
        results.add("speed-up of the generation phase", "x", single["generation_s"] / phase)
        whole = (many.end_time - many.start_time).total_seconds()
        results.add("speed-up of the whole run", "x", single["flow_run_s"] / whole)
        results.add("fixed cost per shard", "s", fixed)
        results.add("images a shard needs for its fixed cost to stay under 5%", "images",
                    max(fixed) / (0.05 * per_image))  # fmt: skip
        results.write()
    finally:
        subprocess.run([*script, "stop", "--dir", str(root)], env=env)


if __name__ == "__main__":
    main()
