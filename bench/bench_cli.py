"""How fast the `easel` command answers, and what a sweep costs besides its images.

    python bench/bench_cli.py [--repeats 5]

1. `easel --help` and every `easel CMD --help` (median of `repeats`);
2. an invalid manifest (not Parquet) to exit 2;
3. with a Prefect server running (started here, on loopback, in a temporary folder): a
   whole `easel sweep` process on an 8-image manifest (tiny-shapes, 4 steps) minus its
   generation time (the MLflow run's `generation_seconds`): the sweep's fixed cost;
4. `python -c 'from diffusers import StableDiffusionPipeline'`, the floor any diffusers
   command pays.
Prints one JSON object of medians, in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

BIN = Path(sys.executable).parent
COMMANDS = ("sweep", "priors", "dreambooth", "eval", "quickstart", "bootstrap", "automations")


def seconds(command: list[str], env: dict | None = None, ok=(0,)) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert done.returncode in ok, (command, done.returncode, done.stderr[-2000:])
    return elapsed


def median(repeats: int, command: list[str], **kwargs) -> float:
    return round(statistics.median(seconds(command, **kwargs) for _ in range(repeats)), 3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect_server(home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port),
         "--no-ui"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the Prefect server did not start")


def sweep_fixed_cost(repeats: int, work: Path, api_url: str) -> dict:
    import mlflow

    rows = [{"id": f"r{i}", "prompt": "a red circle on a blue background", "num_images": 2,
             "num_inference_steps": 4} for i in range(4)]  # fmt: skip
    manifest = work / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    tracking = f"sqlite:///{work}/mlflow.db"
    env = {**os.environ, "PREFECT_API_URL": api_url, "MLFLOW_TRACKING_URI": tracking}
    whole, generation = [], []
    for i in range(repeats):
        out = work / f"out{i}"
        whole.append(seconds([str(BIN / "easel"), "sweep", str(manifest), "--out", str(out)],
                             env=env))  # fmt: skip
        run_id = pq.read_table(out / "results.parquet").column("mlflow_run_id")[0].as_py()
        run = mlflow.MlflowClient(tracking).get_run(run_id)
        generation.append(run.data.metrics["generation_seconds"])
    fixed = [w - g for w, g in zip(whole, generation, strict=True)]
    return {"sweep_process_s": round(statistics.median(whole), 3),
            "sweep_generation_s": round(statistics.median(generation), 3),
            "sweep_fixed_cost_s": round(statistics.median(fixed), 3)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    easel = str(BIN / "easel")
    report = {"easel --help": median(args.repeats, [easel, "--help"])}
    for command in COMMANDS:
        report[f"easel {command} --help"] = median(args.repeats, [easel, command, "--help"])
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        (work / "bad.parquet").write_text("id,prompt\na,b\n")
        report["invalid manifest, exit 2"] = median(
            args.repeats, [easel, "sweep", str(work / "bad.parquet"), "--out", str(work / "x")],
            ok=(2,),
        )  # fmt: skip
        report["import diffusers' StableDiffusionPipeline"] = median(
            args.repeats, [sys.executable, "-c", "from diffusers import StableDiffusionPipeline"]
        )
        server, url = prefect_server(work / "prefect")
        try:
            report.update(sweep_fixed_cost(args.repeats, work, url))
        finally:
            server.terminate()
            server.wait(30)
    floor = report["import diffusers' StableDiffusionPipeline"]
    report["sweep fixed cost above the diffusers import"] = round(
        report["sweep_fixed_cost_s"] - floor, 3
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
