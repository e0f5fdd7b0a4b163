"""The image built and run (`make test-image`, which builds it first and names it in
EASEL_TEST_IMAGE): the local stack (deploy/local_stack.py) with no process worker, a docker
work pool made from deploy/'s template, a prefect-docker worker, the docker deployments of
prefect.yaml, and their runs in containers of the image on the host's network, with
manifests, models and outputs on S3 and runs tracked on the MLflow server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from e2e.test_stack import (  # the process pool's end-to-end test, the same stack
    HEARTBEAT,
    Stack,
    deploy,
    dreambooth_config,
    mlflow_runs,
    put_manifest,
    recorded_by,
    retried_once,
    start_stack,
    stop_stack,
    subject,  # noqa: F401 - a fixture: a tiny model and a subject on S3
    top_level,
)

IMAGE = os.environ.get("EASEL_TEST_IMAGE")
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POOL = "gpu-docker"  # prefect.yaml's docker pool
DEPLOYMENTS = ("sweep-gpu-docker", "priors-gpu-docker", "dreambooth-gpu-docker")
CONTAINER_UID = 1000  # the image's user, `easel`
WRITABLE = ("/tmp", "/home/easel")  # where a run may write inside its container
KILLED_IMAGES = 64  # the killed sweep's: still at work when its container is killed
EXIT_SECONDS = 120  # from a run's final state to its container's exit
WAIT = 900.0  # a run here: a container starts, imports torch and Prefect on 2 shared cores
DREAMBOOTH_STEPS = 40  # of the process pool's test's DreamBooth, cut for containers' slower start

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not IMAGE, reason="needs the image: run `make test-image`"),
]


def docker(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def pool_template(env: dict[str, str], volumes: list[str]) -> dict:
    """deploy/'s docker template as this machine needs it: no GPU request (no GPU here), the
    host's network (the servers listen on 127.0.0.1), the local image never pulled, and the
    store's endpoint and credentials in the containers' environment."""
    template = json.loads((ROOT / "deploy" / "docker-gpu-job-template.json").read_text())
    del template["job_configuration"]["container_create_kwargs"]["device_requests"]
    variables = template["variables"]["properties"]
    variables["network_mode"]["default"] = "host"
    variables["image_pull_policy"]["default"] = "Never"
    variables["env"]["default"].update(env)
    variables["volumes"]["default"] = volumes
    return template


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack")
    stack, env = start_stack(root, "--workers", "0")
    try:
        cache = root / "model-cache"  # a volume for the containers' model cache
        cache.mkdir()
        os.chown(cache, CONTAINER_UID, CONTAINER_UID)
        store = {key: stack.env[key] for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                 "AWS_DEFAULT_REGION", "FSSPEC_S3_ENDPOINT_URL")}
        store.update(PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(HEARTBEAT), OMP_NUM_THREADS="1")
        create_pool(stack, pool_template(store, [f"{cache}:/cache"]))
        worker_env = {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"],
                      "PREFECT_API_URL": stack.env["PREFECT_API_URL"],
                      "PREFECT_WORKER_QUERY_SECONDS": "2"}  # fmt: skip
        stack.scripts.launch(root, "docker-worker", [
            str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "docker",
            "--name", "docker-worker"], worker_env)  # fmt: skip
        deploy(stack, {**env, "EASEL_IMAGE": IMAGE}, DEPLOYMENTS)
        yield stack
    finally:
        stop_stack(root, env)
        for container in docker("ps", "-aq", "--filter", f"ancestor={IMAGE}").split():
            docker("rm", "-f", container)


def dreambooth(on: dict, output: str) -> dict:
    """The process pool's test's DreamBooth `config` (model and images `on`), trained for
    DREAMBOOTH_STEPS."""
    config = dreambooth_config(on, output)
    config["train"]["max_steps"] = DREAMBOOTH_STEPS
    return config


def last_checkpoint(output: str) -> str:
    return f"{output}/checkpoints/step={DREAMBOOTH_STEPS:08d}.ckpt"


def create_pool(stack: Stack, template: dict) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate

    with stack.client() as client:
        client.create_work_pool(
            WorkPoolCreate(name=POOL, type="docker", base_job_template=template), overwrite=True
        )


@pytest.fixture(scope="module")
def finished(stack, subject, tmp_path_factory):  # noqa: F811 - the imported fixture
    """The sweep, class-priors and DreamBooth deployments, run once, in containers."""
    tmp = tmp_path_factory.mktemp("manifests")
    rows = [{"id": f"r{i}", "prompt": "a red circle on a blue background",
             "num_inference_steps": 3, "num_images": 2} for i in range(3)]  # fmt: skip
    sweep = {"manifest": put_manifest(stack, "image/a.parquet", rows, tmp),
             "out": "s3://renders/image/{flow_run_name}", "batch_size": 2,
             "model": "tiny-shapes"}  # fmt: skip
    priors = {"class_prompt": "a photo of a shape", "num_images": 2, "num_inference_steps": 3,
              "out": "s3://renders/image-priors"}  # fmt: skip
    runs = {
        "sweep": stack.trigger("sweep/sweep-gpu-docker", {"params": sweep}),
        "priors": stack.trigger("class-priors/priors-gpu-docker", {"params": priors}),
        "dreambooth": stack.trigger("dreambooth/dreambooth-gpu-docker",
                                    {"config": dreambooth(subject, "s3://renders/db")}),
    }  # fmt: skip
    done = dict(zip(runs, stack.wait(list(runs.values()), seconds=WAIT), strict=True))
    for name, run in done.items():
        assert run.state.is_completed(), (name, run.state)
    return done


def test_the_image_answers_as_a_user_with_the_tests_torch_and_no_build_files():
    import torch

    assert "usage" in docker("run", "--rm", IMAGE, "easel", "--help").lower()
    script = ("import os, torch; print(os.getuid(), torch.__version__, "
              "os.path.exists('/pip'), os.environ['EASEL_CACHE_DIR'])")  # fmt: skip
    uid, version, build_files, cache = docker("run", "--rm", IMAGE, "python", "-c",
                                              script).split()  # fmt: skip
    assert int(uid) == CONTAINER_UID  # not root
    assert version.split("+")[0] == torch.__version__.split("+")[0]  # the tests' torch line
    assert build_files == "False"  # the build's CA bundle and wheels stayed in its first stage
    assert cache == "/cache"


def test_the_deployments_run_in_containers_with_outputs_on_s3_and_linked_tracking(
    stack, finished
):
    # each run ran in a container of the image (the worker names the container after it)
    containers = docker("ps", "-a", "--filter", f"ancestor={IMAGE}", "--format", "{{.Names}}")
    for run in finished.values():
        (name,) = [name for name in containers.split() if run.name in name]
        # a Completed run's process may still be closing: its container's exit code
        assert docker("wait", name, timeout=EXIT_SECONDS) == "0", run.name
        # it wrote nothing but its home and /tmp in the container (the cache is a volume)
        written = [change.split(" ", 1)[1] for change in docker("diff", name).splitlines()]
        assert all(p == "/home" or p.startswith(WRITABLE) for p in written), (name, written)

    out = f"renders/image/{finished['sweep'].name}"
    with stack.s3.open(f"{out}/results.parquet") as f:
        results = pq.read_table(f).to_pylist()
    assert len(results) == 6 and {r["status"] for r in results} == {"ok"}
    assert all(stack.s3.exists(r["image_uri"]) for r in results)
    assert len(stack.s3.glob("renders/image-priors/*/images/*/0.png")) == 2
    assert stack.s3.exists("renders/db/pipeline/easel_export.json")
    assert stack.s3.exists(last_checkpoint("renders/db"))

    for name, run in finished.items():  # on the MLflow server, linked both ways
        (tracked,) = top_level(mlflow_runs(stack, run.id))
        assert tracked.info.status == "FINISHED", name
        assert tracked.data.tags["prefect.flow_run_url"].endswith(f"/flow-run/{run.id}")
        assert tracked.info.artifact_uri.startswith("mlflow-artifacts:"), tracked.info.artifact_uri
    with stack.client() as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        (summary,) = [a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["sweep-summary"])),
        ) if a.flow_run_id == finished["sweep"].id]  # fmt: skip
    (sweep_run,) = top_level(mlflow_runs(stack, finished["sweep"].id))
    assert f"/runs/{sweep_run.info.run_id}" in summary.data


def container_of(run_id) -> str | None:
    """The running container of the flow run `run_id` (the worker labels it), if any."""
    found = docker("ps", "-q", "--filter", f"label=io.prefect.flow-run-id={run_id}").split()
    return found[0] if found else None


def test_killed_containers_are_crashed_retried_and_finished_in_new_containers(
    stack, subject, finished, tmp_path  # noqa: F811 - the imported fixture
):
    rows = [{"id": f"k{i}", "prompt": "a blue square on a white background",
             "num_inference_steps": 40, "num_images": 4} for i in range(KILLED_IMAGES // 4)]
    params = {"manifest": put_manifest(stack, "image/big.parquet", rows, tmp_path),
              "batch_size": 4, "out": "s3://renders/image-k", "model": "tiny-shapes"}
    sweep = stack.trigger("sweep/sweep-gpu-docker", {"params": params})
    trained = stack.trigger("dreambooth/dreambooth-gpu-docker",
                            {"config": dreambooth(subject, "s3://renders/db-k")})  # fmt: skip
    # each container killed mid-work: the sweep with images recorded, DreamBooth with a
    # checkpoint published (and before the sweep's kill: what its store held)
    ready = {
        sweep: lambda: sum(recorded_by(stack, "renders/image-k").values()) >= 8,
        trained: lambda: stack.s3.glob("renders/db-k/checkpoints/*.ckpt"),
    }
    killed, deadline = [], time.monotonic() + WAIT
    while ready:
        for run in [run for run, check in ready.items() if check()]:
            if run == sweep:
                recorded = sum(recorded_by(stack, "renders/image-k").values())
                before = {p: stack.s3.info(p)["LastModified"]
                          for p in stack.s3.find("renders/image-k/images")}  # fmt: skip
            killed.append(container_of(run))
            assert killed[-1], f"{run} ended before its kill"
            docker("kill", killed[-1])  # the flow run's process dies with its container
            del ready[run]
        assert time.monotonic() < deadline, "no progress to kill in"
        time.sleep(1.0)
    done, history = retried_once(stack, [sweep, trained], WAIT)
    for run in done:
        assert any("exited with non-zero status code 137" in (message or "")
                   for _, message in history[run.id]), history[run.id]  # the worker saw it
        ran_in = docker("ps", "-aq", "--filter", f"label=io.prefect.flow-run-id={run.id}")
        assert len(set(ran_in.split()) - set(killed)) == 1, run.name  # one new container

    # only the missing work: images recorded before the kill were never generated again
    stack.s3.invalidate_cache()
    with stack.s3.open("renders/image-k/results.parquet") as f:
        results = pq.read_table(f).to_pylist()
    assert len(results) == KILLED_IMAGES and {r["status"] for r in results} == {"ok"}
    after = {p: stack.s3.info(p)["LastModified"] for p in before}
    unchanged = sum(after[p] == before[p] for p in before)
    assert unchanged >= recorded, (unchanged, recorded)
    assert len(before) - unchanged <= 2 * 4, (len(before), unchanged)  # batches in flight

    # DreamBooth resumed from its last checkpoint, to the weights of the untroubled run
    def weights(path: str) -> dict:
        with stack.s3.open(path) as f:
            return torch.load(f, weights_only=True)["state_dict"]

    resumed = weights(last_checkpoint("renders/db-k"))
    straight = weights(last_checkpoint("renders/db"))
    assert resumed.keys() == straight.keys()
    for key, value in straight.items():
        assert torch.equal(resumed[key], value), key
