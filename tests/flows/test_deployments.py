"""prefect.yaml (SPEC §7): every deployment points at a real flow with valid parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def load_flow(entrypoint: str):
    """The flow as a worker loads it: from the installed package, by module path."""
    from prefect.flows import load_flow_from_entrypoint

    assert not entrypoint.split(":")[0].endswith(".py"), entrypoint  # no checkout needed
    return load_flow_from_entrypoint(entrypoint)


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_deployment_parameters_validate_against_the_flow(deployment):
    flow = load_flow(deployment["entrypoint"])
    validated = flow.validate_parameters(deployment.get("parameters", {}))
    assert set(validated) == set(deployment["parameters"])
    for schedule in deployment.get("schedules", []):
        assert len(schedule["cron"].split()) == 5


def test_every_flow_has_a_local_and_a_gpu_deployment():
    pools: dict[str, set[str]] = {}
    for deployment in DEPLOYMENTS:
        pools.setdefault(deployment["entrypoint"], set()).add(deployment["work_pool"]["name"])
    assert all(pool & {"gpu-docker", "gpu-k8s"} for pool in pools.values())
    assert all("local-cpu" in pool for pool in pools.values())  # each flow on the local pool
    gpu = [d for d in DEPLOYMENTS if d["work_pool"]["name"] in ("gpu-docker", "gpu-k8s")]
    assert all(d["work_pool"]["job_variables"]["gpu_count"] >= 1 for d in gpu)
    # run-time settings come from the pool's template when a run starts, not from the shell
    assert not any("MLFLOW" in json.dumps(d["work_pool"]["job_variables"]) for d in gpu)
    assert any(d.get("schedules") for d in DEPLOYMENTS)


def test_kubernetes_template_requests_the_gpus_it_is_given():
    template = json.loads((ROOT / "deploy" / "kubernetes-gpu-job-template.json").read_text())
    assert "gpu_count" in template["variables"]["properties"]
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"][
        "containers"][0]  # fmt: skip
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"


def test_the_optional_image_steps_call_prefect_docker_with_its_own_arguments():
    import importlib
    import inspect

    steps = yaml.safe_load((ROOT / "prefect.yaml").read_text())["definitions"]["image_steps"]
    for step in steps["build"] + steps["push"]:
        ((path, arguments),) = step.items()
        module, _, name = path.rpartition(".")
        function = getattr(importlib.import_module(module), name)
        accepted = inspect.signature(function).parameters
        given = set(arguments) - {"id", "requires"}  # Prefect's own step keys
        assert given <= set(accepted) or "build_kwargs" in accepted, (path, given)


def test_the_image_installs_the_torch_line_the_tests_run():
    """The Dockerfile's default torch, prefect.yaml's build step and the Makefile's pin (the
    torch every test runs) name one release."""
    import re

    import torch

    dockerfile = re.search(r"^ARG TORCH=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)[1]
    makefile = re.search(r"^TORCH\s*\?=\s*(\S+)$", (ROOT / "Makefile").read_text(), re.M)[1]
    (build,) = yaml.safe_load((ROOT / "prefect.yaml").read_text())["definitions"][
        "image_steps"]["build"]  # fmt: skip
    step = build["prefect_docker.deployments.steps.build_docker_image"]["buildargs"]["TORCH"]
    assert dockerfile == makefile == step, (dockerfile, makefile, step)
    assert makefile == f"torch=={torch.__version__.split('+')[0]}"
