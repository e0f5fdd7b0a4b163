"""A deployment run as the dashboard's "Custom run" does: `prefect deploy` from prefect.yaml,
a run triggered through the API with a parameter of its own, and a real process worker (a
subprocess, the package installed, no checkout path) that runs it to completion."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from sweep_helpers import read_results, write_manifest

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def test_a_process_worker_runs_the_sweep_deployment(prefect_server, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import PrefectHTTPStatusError

    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    with get_client(sync_client=True) as client:
        if not any(p.name == "local-cpu" for p in client.read_work_pools()):
            client.create_work_pool(WorkPoolCreate(name="local-cpu", type="process"))
    deployed = subprocess.run([PREFECT, "--no-prompt", "deploy", "--name", "sweep-local"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr  # fmt: skip

    manifest = write_manifest(tmp_path / "m.parquet", [
        {"id": "a", "prompt": "a red circle on a blue background", "num_inference_steps": 2},
    ])  # fmt: skip
    params = {"manifest": manifest, "out": str(tmp_path / "out" / "{flow_run_name}")}
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("sweep/sweep-local")
        for bad in ({"batch_size": 0}, {"scheduler": "magic"}, {"typo": 1}):
            with pytest.raises(PrefectHTTPStatusError):  # refused before a run exists
                client.create_flow_run_from_deployment(
                    deployment.id, parameters={"params": {**params, **bad}}
                )
        run = client.create_flow_run_from_deployment(deployment.id, parameters={"params": params})
    worker = subprocess.run([PREFECT, "worker", "start", "--pool", "local-cpu", "--run-once"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]  # fmt: skip
    with get_client(sync_client=True) as client:
        finished = client.read_flow_run(run.id)
    assert finished.state.is_completed(), finished.state
    (result,) = read_results(tmp_path / "out" / finished.name)
    assert result["status"] == "ok" and os.path.exists(result["image_uri"])
    tags = mlflow.MlflowClient().get_run(result["mlflow_run_id"]).data.tags
    assert tags["prefect.flow_run_id"] == str(run.id)


@pytest.fixture(autouse=True)
def _no_worker_left_behind():
    yield
    subprocess.run(["pkill", "-f", "prefect worker start --pool local-cpu"], check=False)
