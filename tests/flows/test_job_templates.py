"""The GPU work pools' base job templates (deploy/), rendered for a flow run through the
prefect-docker and prefect-kubernetes workers' own configuration classes (no cluster, no
Docker daemon): the GPU request, the image and the run-time environment arrive, and the
workers' own validation passes."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from unittest import mock

import pytest

from easel.orchestration.recovery import HEARTBEAT_FREQUENCY

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
IMAGE = "registry.example.com/easel:0.1.0-cuda"
MLFLOW = "http://mlflow.easel.svc:5000"

pytestmark = pytest.mark.usefixtures("prefect_server")


def template(name: str) -> dict:
    return json.loads((DEPLOY / name).read_text())


def render(configuration_class, name: str, values: dict):
    """The worker's job configuration for a flow run, as a worker builds it (the Prefect
    variables in the template are read now, at run time)."""
    from prefect import get_client
    from prefect.client.schemas.actions import VariableCreate
    from prefect.client.schemas.objects import FlowRun

    async def build():
        async with get_client() as client:
            if await client.read_variable_by_name("easel_mlflow_tracking_uri") is None:
                await client.create_variable(
                    VariableCreate(name="easel_mlflow_tracking_uri", value=MLFLOW)
                )
            configuration = await configuration_class.from_template_and_values(
                template(name), values, client=client
            )
        flow_run = FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="nightly-sweep")
        configuration.prepare_for_flow_run(flow_run)
        return configuration

    return asyncio.run(build())


@pytest.mark.parametrize("gpus", [1, 4])
def test_the_kubernetes_job_carries_the_gpus_the_image_and_the_run_time_environment(gpus):
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    configuration = render(KubernetesWorkerJobConfiguration, "kubernetes-gpu-job-template.json",
                           {"image": IMAGE, "gpu_count": gpus})  # fmt: skip
    pod = configuration.job_manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    for kind in ("requests", "limits"):
        assert container["resources"][kind]["nvidia.com/gpu"] == gpus
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["MLFLOW_TRACKING_URI"] == MLFLOW  # a Prefect variable, read at run time
    assert env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == str(HEARTBEAT_FREQUENCY)  # zombies seen
    assert "PREFECT__FLOW_RUN_ID" in env
    assert pod["restartPolicy"] == "Never"


def test_the_docker_container_carries_the_gpu_request_the_image_and_the_environment():
    from docker.models.containers import _create_container_args
    from prefect_docker.worker import DockerWorker, DockerWorkerJobConfiguration

    configuration = render(DockerWorkerJobConfiguration, "docker-gpu-job-template.json",
                           {"image": IMAGE, "gpu_count": 2})  # fmt: skip
    client = mock.MagicMock()
    client.version.return_value = {"Version": "28.2.2"}
    settings = DockerWorker(work_pool_name="gpu-docker")._build_container_settings(
        client, configuration
    )
    created = _create_container_args({**settings, "version": "1.50"})  # docker-py's own
    assert created["image"] == IMAGE
    assert created["environment"]["MLFLOW_TRACKING_URI"] == MLFLOW
    assert created["environment"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == str(HEARTBEAT_FREQUENCY)
    (request,) = created["host_config"]["DeviceRequests"]
    assert (request["Driver"], request["Count"], request["Capabilities"]) == (
        "nvidia", 2, [["gpu"]]
    )


@pytest.mark.parametrize("image", [None, ""])
@pytest.mark.parametrize("name", ["docker-gpu-job-template.json",
                                  "kubernetes-gpu-job-template.json"])  # fmt: skip
def test_a_run_without_an_image_is_refused_before_it_exists(name, image):
    """The image has no default: a run of a deployment that sets none (or an empty one) is
    refused by the server when it is triggered, naming the variable; nothing runs."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import PrefectHTTPStatusError

    pool_type = "docker" if name.startswith("docker") else "kubernetes"
    variables = {} if image is None else {"image": image}

    async def trigger(job_variables: dict):
        async with get_client() as client:
            pool = f"gpu-{pool_type}-{uuid.uuid4().hex[:6]}"
            await client.create_work_pool(
                WorkPoolCreate(name=pool, type=pool_type, base_job_template=template(name))
            )
            flow_id = await client.create_flow_from_name("sweep")
            deployment = await client.create_deployment(
                flow_id=flow_id, name=f"sweep-{pool}", work_pool_name=pool,
                job_variables=job_variables, entrypoint="easel.flows.sweep:sweep_flow",
            )  # fmt: skip
            return await client.create_flow_run_from_deployment(deployment)

    with pytest.raises(PrefectHTTPStatusError) as error:
        asyncio.run(trigger(variables))
    assert "image" in str(error.value.response.text)
    assert asyncio.run(trigger({"image": IMAGE})).id  # with an image: the run exists
