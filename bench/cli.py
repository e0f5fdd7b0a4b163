"""How fast the `easel` command answers, and what a sweep costs besides its images.

    python -m bench.cli [--repeats 5]

1. `easel --help` and every `easel CMD --help`;
2. an invalid manifest (not Parquet) to exit 2;
3. with a Prefect server running (started here, on loopback, in a temporary folder): a
   whole `easel sweep` process on an 8-image manifest (tiny-shapes, 4 steps) minus its
   generation time (the MLflow run's `generation_seconds`): the sweep's fixed cost;
4. `python -c 'from diffusers import StableDiffusionPipeline'`, the floor any diffusers
   command pays.
Each `--repeats` times (default 5). `--smoke`: one repeat of `easel --help`, the invalid
manifest and the import, no sweep.
"""

from __future__ import annotations

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

from bench import harness

BIN = Path(sys.executable).parent
IMPORT = "import diffusers' StableDiffusionPipeline"
COMMANDS = ("sweep", "priors", "dreambooth", "eval", "quickstart", "bootstrap", "automations")


def seconds(command: list[str], env: dict | None = None, ok=(0,)) -> float:
    """Wall seconds of `command`; raises RuntimeError naming it when it exits other than `ok`."""
    done: list = []
    elapsed = harness.timed(lambda: done.append(
        subprocess.run(command, env=env, capture_output=True, text=True)))  # fmt: skip
    if done[0].returncode not in ok:
        raise RuntimeError(f"{command} exited {done[0].returncode}: {done[0].stderr[-2000:]}")
    return elapsed


def samples(repeats: int, command: list[str], **kwargs) -> list[float]:
    return [seconds(command, **kwargs) for _ in range(repeats)]


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
        whole.append(seconds([*harness.EASEL, "sweep", str(manifest), "--out", str(out)],
                             env=env))  # fmt: skip
        run_id = pq.read_table(out / "results.parquet").column("mlflow_run_id")[0].as_py()
        run = mlflow.MlflowClient(tracking).get_run(run_id)
        generation.append(run.data.metrics["generation_seconds"])
    fixed = [w - g for w, g in zip(whole, generation, strict=True)]
    return {"sweep process": whole, "sweep generation": generation,
            "sweep fixed cost (process - generation)": fixed}  # fmt: skip


def main() -> None:
    args = harness.parser(__doc__).parse_args()
    repeats = harness.repeats(args, 5)
    easel = harness.EASEL
    report = {"easel --help": samples(repeats, [*easel, "--help"])}
    for command in () if args.smoke else COMMANDS:
        report[f"easel {command} --help"] = samples(repeats, [*easel, command, "--help"])
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        (work / "bad.parquet").write_text("id,prompt\na,b\n")
        bad = [*easel, "sweep", str(work / "bad.parquet"), "--out", str(work / "x")]
        report["invalid manifest, exit 2"] = samples(repeats, bad, ok=(2,))
        report[IMPORT] = samples(
            repeats, [sys.executable, "-c", "from diffusers import StableDiffusionPipeline"]
        )
        if not args.smoke:
            server, url = prefect_server(work / "prefect")
            try:
                report.update(sweep_fixed_cost(repeats, work, url))
            finally:
                server.terminate()
                server.wait(30)
    results = harness.Results("cli", args)
    results.parameters["easel"] = " ".join(easel[1:])
    for name, values in report.items():
        results.add(name, "s", values)
    if "sweep process" in report:
        floor = statistics.median(report[IMPORT])
        above = statistics.median(report["sweep fixed cost (process - generation)"]) - floor
        results.add("sweep fixed cost above the diffusers import (of medians)", "s", above)
    results.write()


if __name__ == "__main__":
    main()
