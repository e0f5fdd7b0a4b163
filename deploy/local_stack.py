#!/usr/bin/env python
"""The whole easel stack on one machine, on loopback: an S3-compatible store (moto), an
MLflow server (artifacts served through it, stored in the S3 store), a Prefect server, the
`local-cpu` process pool, easel's recovery automations, and process workers.

    python deploy/local_stack.py start --dir .stack [--workers 2]   # then: . .stack/stack.env
    python deploy/local_stack.py add-worker --dir .stack            # one more worker
    python deploy/local_stack.py stop --dir .stack
    python deploy/local_stack.py seed --dir .stack  # (start does it) the local deployments' inputs

Everything lives in `--dir`: each server's data and log (`logs/NAME.log`), each worker's
working folder and model cache (`worker-N/`: as on separate machines), the process ids
(`pids/NAME`), and `stack.env`, the client environment (the servers' URLs, the store's
endpoint and test credentials, under the names fsspec, MLflow, boto3, the AWS CLI, pyarrow
and polars read). The store starts with what `prefect.yaml`'s local deployments read: a
sample manifest (s3://prompts/nightly/) and DreamBooth instance images (s3://subjects/v-star).
Run it from a checkout whose virtual environment has easel installed (`make install`); the
tests start and stop the stack with this same script. `seed` needs stack.env's environment.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from easel.orchestration.recovery import HEARTBEAT_FREQUENCY

BIN = Path(sys.executable).parent  # prefect, mlflow and moto_server of this venv
BUCKETS = ("prompts", "renders", "models", "subjects", "mlflow-artifacts")
READY_SECONDS = 180.0  # the servers start slowly on a busy two-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(root: Path, name: str, command: list[str], env: dict, cwd: Path | None = None):
    """Start `command` in its own session (stop ends it and its children), logging to
    logs/NAME.log; its process id goes to pids/NAME."""
    (root / "logs").mkdir(parents=True, exist_ok=True)
    (root / "pids").mkdir(exist_ok=True)
    log = open(root / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen(command, env=env, cwd=cwd or root, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    (root / "pids" / name).write_text(str(process.pid))
    return process


def wait_until(root: Path, name: str, process, ready) -> None:
    """Wait for `ready()`; a process that exits, or a wait past READY_SECONDS, stops the
    start with the end of its log."""
    deadline = time.monotonic() + READY_SECONDS
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = (root / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
            why = f"exited with {process.returncode}" if process.poll() is not None else "timed out"
            sys.exit(f"local_stack: {name} {why}; its log ends:\n{tail}")
        time.sleep(0.5)


def answers(url: str):
    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    return ready


def read_env(root: Path) -> dict[str, str]:
    """The client environment `start` wrote (stack.env)."""
    values = {}
    for line in (root / "stack.env").read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        values[key] = shlex.split(value)[0] if value else ""
    return values


def start(
    root: Path, workers: int, heartbeat: int, window: int | None, ui: bool, limit: int | None
) -> None:
    root.mkdir(parents=True, exist_ok=True)
    base = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1"}
    s3 = f"http://127.0.0.1:{free_port()}"
    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    # every client's name for the endpoint: fsspec (s3fs), MLflow, and boto3, the AWS CLI,
    # pyarrow and polars (AWS_ENDPOINT_URL; polars also needs AWS_ALLOW_HTTP for http://)
    store = {**credentials, "FSSPEC_S3_ENDPOINT_URL": s3, "MLFLOW_S3_ENDPOINT_URL": s3,
             "AWS_ENDPOINT_URL": s3, "AWS_ALLOW_HTTP": "true"}  # fmt: skip
    moto = launch(root, "s3", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p",
                               s3.rsplit(":", 1)[1]], base)  # fmt: skip
    wait_until(root, "s3", moto, answers(f"{s3}/moto-api/"))
    for bucket in BUCKETS:
        urllib.request.urlopen(urllib.request.Request(f"{s3}/{bucket}", method="PUT")).close()

    mlflow_url = f"http://127.0.0.1:{free_port()}"
    (root / "mlflow").mkdir(exist_ok=True)
    mlflow = launch(root, "mlflow", [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1",
        "--port", mlflow_url.rsplit(":", 1)[1],
        "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
        "--artifacts-destination", "s3://mlflow-artifacts", "--serve-artifacts",
    ], {**base, **store})  # fmt: skip

    prefect_ui = f"http://127.0.0.1:{free_port()}"
    prefect_url = f"{prefect_ui}/api"
    # the UI's browser code asks the server's own API (by default it would ask port 4200)
    prefect_env = {**base, "PREFECT_HOME": str(root / "prefect"), "PREFECT_UI_API_URL": prefect_url,
                   "PREFECT_UI_URL": prefect_ui}  # fmt: skip
    server = launch(root, "prefect", [
        str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
        "--port", prefect_ui.rsplit(":", 1)[1], "--ui" if ui else "--no-ui",
    ], prefect_env)  # fmt: skip
    wait_until(root, "mlflow", mlflow, answers(f"{mlflow_url}/health"))
    wait_until(root, "prefect", server, answers(f"{prefect_url}/health"))

    client = {**store, "PREFECT_API_URL": prefect_url, "PREFECT_UI_URL": prefect_ui,
              "MLFLOW_TRACKING_URI": mlflow_url,
              "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(heartbeat)}  # fmt: skip
    (root / "stack.env").write_text(
        "".join(f"export {key}={shlex.quote(value)}\n" for key, value in client.items())
    )
    env = {**base, **client}
    setup = [
        [str(BIN / "prefect"), "work-pool", "create", "local-cpu", "--type", "process",
         "--overwrite"],
        [str(BIN / "prefect"), "variable", "set", "easel_mlflow_tracking_uri", mlflow_url,
         "--overwrite"],
        [sys.executable, "-m", "easel.cli", "automations", "--heartbeat-frequency", str(heartbeat),
         *(["--heartbeat-window", str(window)] if window else [])],
        [sys.executable, __file__, "seed", "--dir", str(root)],
    ]  # fmt: skip
    for command in setup:
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"local_stack: {shlex.join(command[1:])} failed:\n{done.stdout}{done.stderr}")
    for _ in range(workers):
        add_worker(root, limit)
    ui_or_api = f"Prefect UI {prefect_ui}" if ui else f"Prefect API {prefect_url}"
    print(f"{ui_or_api}\nMLflow UI  {mlflow_url}\nS3         {s3}\n"
          f"clients: . {root / 'stack.env'}")  # fmt: skip


SAMPLE_MANIFEST = "s3://prompts/nightly/sample.parquet"  # what sweep-local sweeps
SAMPLE_SUBJECT = "s3://subjects/v-star"  # what dreambooth-local trains on
SUBJECT_CAPTION = "a v star on a {background} background"  # docs/dreambooth.md's identifier


def seed() -> None:
    """What the shipped local deployments read (prefect.yaml), in the store: the sample
    manifest (`easel quickstart`'s rows, and the images its edit rows use) and the
    quickstart's DreamBooth subject, captioned. Run with stack.env's environment."""
    from easel.data.samples import EDIT_ROWS, SAMPLE_ROWS, write_sample_manifest
    from easel.data.shapes import write_shape_subject

    write_sample_manifest(SAMPLE_MANIFEST, SAMPLE_ROWS + EDIT_ROWS)
    write_shape_subject(SAMPLE_SUBJECT, caption=SUBJECT_CAPTION)


def add_worker(root: Path, limit: int | None = None) -> str:
    """One more process worker of `local-cpu`, in its own folder with its own model cache,
    running at most `limit` flow runs at once (default: no limit)."""
    number = 1 + sum(1 for p in (root / "pids").glob("worker-*"))
    name = f"worker-{number}"
    home = root / name
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **read_env(root), "EASEL_CACHE_DIR": str(home / "cache"),
           "PREFECT_WORKER_QUERY_SECONDS": os.environ.get("PREFECT_WORKER_QUERY_SECONDS", "5"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "OMP_NUM_THREADS": "1"}  # fmt: skip
    command = [str(BIN / "prefect"), "worker", "start", "--pool", "local-cpu", "--name", name,
               *(["--limit", str(limit)] if limit else [])]  # fmt: skip
    worker = launch(root, name, command, env, cwd=home)
    log = root / "logs" / f"{name}.log"
    wait_until(root, name, worker, lambda: "started" in log.read_text(errors="replace"))
    return name


def processes_with(variable: str, value: str) -> list[int]:
    """Ids of this user's processes whose environment has `variable=value` (Linux /proc)."""
    wanted, found = f"{variable}={value}".encode(), []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def is_flow_run(pid: int) -> bool:
    """Is `pid` a flow run's process (a worker set PREFECT__FLOW_RUN_ID for it)?"""
    try:
        return b"PREFECT__FLOW_RUN_ID=" in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def stop(root: Path) -> None:
    """End every process the stack started, with their sessions, and every flow run process
    its workers started (those run in sessions of their own)."""
    api = read_env(root).get("PREFECT_API_URL") if (root / "stack.env").exists() else None
    flow_runs = [pid for pid in (processes_with("PREFECT_API_URL", api) if api else [])
                 if is_flow_run(pid)]  # not a shell that sourced stack.env  # fmt: skip
    for pid_file in sorted((root / "pids").glob("*")):
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        pid_file.unlink()
    for pid in flow_runs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("action", choices=["start", "add-worker", "stop", "seed"])
    parser.add_argument("--dir", default=".stack", help="where everything lives (.stack)")
    parser.add_argument("--workers", type=int, default=2, help="process workers to start (2)")
    parser.add_argument("--heartbeat-frequency", type=int, default=HEARTBEAT_FREQUENCY,
                        help="the flow runs' PREFECT_FLOWS_HEARTBEAT_FREQUENCY in seconds "
                        "(%(default)s)")
    parser.add_argument("--heartbeat-window", type=int,
                        help="silence after which a run is crashed (default: easel's)")
    parser.add_argument("--worker-limit", type=int,
                        help="flow runs one worker runs at once (default: no limit); a sharded "
                        "sweep's parent takes one while its shards run")
    parser.add_argument("--no-ui", action="store_true", help="the Prefect API without its UI")
    args = parser.parse_args()
    root = Path(args.dir).resolve()
    if args.action == "start":
        start(root, args.workers, args.heartbeat_frequency, args.heartbeat_window,
              not args.no_ui, args.worker_limit)  # fmt: skip
    elif args.action == "seed":
        seed()
    elif args.action == "add-worker":
        print(add_worker(root, args.worker_limit))
    else:
        stop(root)


if __name__ == "__main__":
    main()
