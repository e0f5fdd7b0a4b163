"""End to end, as a team runs easel: the whole local stack (deploy/local_stack.py: a real
`prefect server`, a real `mlflow server` serving artifacts from an S3-compatible store,
moto's S3 server, two process workers, easel's recovery automations, all on loopback),
deployments from prefect.yaml, runs triggered through the API as the dashboard's "Custom
run" does, manifests, images, models and outputs on S3.

Then the crashes nobody attends to: a worker killed with its runs (a sweep and a DreamBooth)
and a flow process killed while its worker lives on. Each run is crashed (by the heartbeat
automation, or by its worker), scheduled again by the retry automation, and finished by the
surviving worker, doing only the missing work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from dreambooth_fixtures import write_images
from sweep_helpers import write_manifest

from easel.models.testing.random_pipelines import build_random_sd

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HEARTBEAT, WINDOW = 30, 45  # seconds: Prefect's shortest heartbeat; one missed, plus slack
DEPLOYMENTS = ("sweep-local", "priors-local", "dreambooth-local")
WAIT = 300.0  # the longest a run may take here, retries included
POOL = "local-cpu"  # the pool deploy/local_stack.py creates


class Stack:
    """The started stack: its environment, its clients, its processes."""

    def __init__(self, root: Path):
        sys.path.insert(0, str(ROOT / "deploy"))
        import local_stack

        self.root, self.scripts = root, local_stack
        self.env = local_stack.read_env(root)
        import s3fs

        self.s3 = s3fs.S3FileSystem(
            endpoint_url=self.env["FSSPEC_S3_ENDPOINT_URL"], key=self.env["AWS_ACCESS_KEY_ID"],
            secret=self.env["AWS_SECRET_ACCESS_KEY"], skip_instance_cache=True,
            use_listings_cache=False,  # the workers write while the test reads
        )  # fmt: skip

    def client(self):
        from prefect import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.env["PREFECT_API_URL"]}):
            return get_client(sync_client=True)

    def mlflow(self):
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.env["MLFLOW_TRACKING_URI"])

    def trigger(self, deployment: str, parameters: dict):
        with self.client() as client:
            found = client.read_deployment_by_name(deployment)
            return client.create_flow_run_from_deployment(found.id, parameters=parameters).id

    def state(self, run_id):
        with self.client() as client:
            return client.read_flow_run(run_id)

    def wait(self, run_ids, until=lambda run: run.state.is_final(), seconds=WAIT) -> list:
        deadline = time.monotonic() + seconds
        while True:
            runs = [self.state(run_id) for run_id in run_ids]
            if all(until(run) for run in runs):
                return runs
            assert time.monotonic() < deadline, [(r.name, r.state) for r in runs]
            time.sleep(1.0)

    def worker_pid(self, name: str) -> int:
        return int((self.root / "pids" / name).read_text())

    def flow_process(self, run_id) -> int | None:
        found = self.scripts.processes_with("PREFECT__FLOW_RUN_ID", str(run_id))
        return found[0] if found else None


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


SCRIPT = [sys.executable, str(ROOT / "deploy" / "local_stack.py")]


def start_stack(root: Path, *options: str) -> tuple[Stack, dict]:
    """`local_stack.py start` into `root` with `options` (quick heartbeats, no UI): the stack
    and the environment to deploy and stop it with; a failed start is stopped and failed."""
    env = {**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "2"}
    env.pop("PREFECT_API_URL", None)
    started = subprocess.run(
        [*SCRIPT, "start", "--dir", str(root), "--no-ui", "--heartbeat-frequency",
         str(HEARTBEAT), "--heartbeat-window", str(WINDOW), *options],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if started.returncode:
        stop_stack(root, env)
        pytest.fail(started.stdout + started.stderr)
    return Stack(root), env


def stop_stack(root: Path, env: dict) -> None:
    subprocess.run([*SCRIPT, "stop", "--dir", str(root)], env=env, timeout=60)


def deploy(stack: Stack, env: dict, deployments: tuple[str, ...]) -> None:
    """`prefect deploy` of `deployments` from prefect.yaml, as a team deploys."""
    names = [arg for name in deployments for arg in ("--name", name)]
    deployed = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", *names], cwd=ROOT,
                              env={**env, **stack.env}, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack")
    stack, env = start_stack(root, "--worker-limit", "2")
    try:
        deploy(stack, env, DEPLOYMENTS)
        yield stack
    finally:
        stop_stack(root, env)


def put_manifest(stack: Stack, key: str, rows: list[dict], tmp_path: Path) -> str:
    local = write_manifest(tmp_path / Path(key).name, rows)
    stack.s3.put(local, f"prompts/{key}")
    return f"s3://prompts/{key}"


@pytest.fixture(scope="module")
def subject(stack, tmp_path_factory):
    """A tiny random Stable Diffusion model and 4 subject images, on S3."""
    local = tmp_path_factory.mktemp("subject")
    build_random_sd(str(local / "model"))
    stack.s3.put(str(local / "model"), "models/tiny-sd", recursive=True)
    stack.s3.put(write_images(str(local / "instance"), 4, seed=1), "subjects/sks",
                 recursive=True)  # fmt: skip
    return {"model": "s3://models/tiny-sd", "instance_data": "s3://subjects/sks"}


def dreambooth_config(subject: dict, output: str) -> dict:
    """A deployment's `config` parameter: the grouped keys (Prefect checks a run's parameters
    against the flow's schema, so the old flat keys are for config files and `--set` only)."""
    return {
        "model": subject["model"], "output": output,
        "subject": {"instance_data": subject["instance_data"],
                    "instance_prompt": "a photo of sks shape", "class_prompt": "a photo of shape"},
        "prior_preservation": {"num_class_images": 2},
        "train": {"resolution": 32, "batch_size": 2, "learning_rate": 1e-3, "max_steps": 120},
        "checkpoints": {"every_n_steps": 10, "keep_last_n": 2},
        "runtime": {"accelerator": "cpu"},
        "validation": {"images_per_prompt": 1, "prompts": ["a photo of sks shape"],
                       "inference_steps": 2},
    }  # fmt: skip


@pytest.fixture(scope="module")
def finished(stack, subject, tmp_path_factory):
    """The sweep, priors and DreamBooth deployments run once, side by side, untroubled."""
    tmp = tmp_path_factory.mktemp("manifests")
    rows = [{"id": f"r{i}", "prompt": "a red circle on a blue background",
             "num_inference_steps": 3, "num_images": 2} for i in range(3)]  # fmt: skip
    sweep = {"manifest": put_manifest(stack, "e2e/a.parquet", rows, tmp),
             "out": "s3://renders/e2e/{flow_run_name}", "batch_size": 2}  # fmt: skip
    priors = {"class_prompt": "a photo of a shape", "num_images": 2, "num_inference_steps": 3,
              "out": "s3://renders/priors"}  # fmt: skip
    runs = {
        "sweep": stack.trigger("sweep/sweep-local", {"params": sweep}),
        "priors": stack.trigger("class-priors/priors-local", {"params": priors}),
        "dreambooth": stack.trigger(
            "dreambooth/dreambooth-local", {"config": dreambooth_config(subject, "s3://renders/db")}
        ),
    }
    # the same DreamBooth again, into the folder the first one holds: refused, naming it
    stack.wait([runs["dreambooth"]], lambda run: stack.s3.exists("renders/db/.easel/holder"))
    twice = stack.trigger("dreambooth/dreambooth-local",
                          {"config": dreambooth_config(subject, "s3://renders/db")})  # fmt: skip
    (refused,) = stack.wait([twice])
    done = dict(zip(runs, stack.wait(list(runs.values())), strict=True))
    for name, run in done.items():
        assert run.state.is_completed(), (name, run.state)
    return {**done, "refused": refused}


def mlflow_runs(stack: Stack, flow_run_id) -> list:
    """The MLflow runs on the server tagged with the Prefect flow run `flow_run_id`."""
    client = stack.mlflow()
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, f"tags.`prefect.flow_run_id` = '{flow_run_id}'")


def top_level(runs: list) -> list:
    return [run for run in runs if "mlflow.parentRunId" not in run.data.tags]


def outermost(runs: list) -> list:
    """The runs whose parent (if any) is not among `runs` (a shard's run has the sweep's)."""
    ids = {run.info.run_id for run in runs}
    return [run for run in runs if run.data.tags.get("mlflow.parentRunId") not in ids]


def test_deployments_run_end_to_end_with_outputs_on_s3_and_linked_tracking(stack, finished):
    # the sweep: every image on S3, its folder named after the flow run
    out = f"renders/e2e/{finished['sweep'].name}"
    with stack.s3.open(f"{out}/results.parquet") as f:
        results = pq.read_table(f).to_pylist()
    assert len(results) == 6 and {r["status"] for r in results} == {"ok"}
    assert all(stack.s3.exists(r["image_uri"]) for r in results)

    # MLflow, on the server: linked to the flow run both ways, artifacts served through it
    for name in ("sweep", "priors", "dreambooth"):
        run = finished[name]
        (tracked,) = top_level(mlflow_runs(stack, run.id))
        assert tracked.info.status == "FINISHED", name
        assert tracked.data.tags["prefect.flow_run_url"].endswith(f"/flow-run/{run.id}")
        assert tracked.info.artifact_uri.startswith("mlflow-artifacts:"), tracked.info.artifact_uri
    sweep_run = next(iter(mlflow_runs(stack, finished["sweep"].id)))
    artifacts = {a.path for a in stack.mlflow().list_artifacts(sweep_run.info.run_id)}
    assert {"results.parquet", "contact_sheet.png"} <= artifacts
    assert stack.s3.find("mlflow-artifacts")  # the server stored them in the object store
    with stack.client() as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        (summary,) = [a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["sweep-summary"])),
        ) if a.flow_run_id == finished["sweep"].id]  # fmt: skip
    assert f"/runs/{sweep_run.info.run_id}" in summary.data  # the summary links the MLflow run

    # the class priors and DreamBooth: all on S3
    assert len(stack.s3.glob("renders/priors/*/images/*/0.png")) == 2
    assert stack.s3.exists("renders/db/pipeline/easel_export.json")  # the marker, last
    assert stack.s3.exists("renders/db/validation/results.parquet")
    assert stack.s3.glob("renders/db/checkpoints/step=00000120.ckpt")
    assert stack.s3.glob("renders/db/checkpoints/*-v1.ckpt") == []  # one run trained there

    # a second DreamBooth into the folder a live run holds was refused, naming both
    refused = finished["refused"]
    assert refused.state.is_failed()
    message = refused.state.message
    assert "s3://renders/db" in message and str(finished["dreambooth"].id) in message, message


def test_bad_parameters_are_refused_before_a_run_exists_and_a_missing_manifest_fails_fast(
    stack,
):
    from prefect.exceptions import PrefectHTTPStatusError

    params = {"manifest": "s3://prompts/e2e/none.parquet", "out": "s3://renders/none"}
    for bad in ({"batch_size": 0}, {"scheduler": "magic"}, {"typo": 1}):
        with pytest.raises(PrefectHTTPStatusError):
            stack.trigger("sweep/sweep-local", {"params": {**params, **bad}})
    (run,) = stack.wait([stack.trigger("sweep/sweep-local", {"params": params})])
    assert run.state.is_failed()
    assert "s3://prompts/e2e/none.parquet" in run.state.message, run.state.message
    assert (run.end_time - run.start_time).total_seconds() < 30
    assert not stack.s3.exists("renders/none/results.parquet")


def rows_of(prefix: str, count: int, steps: int = 4) -> list[dict]:
    return [{"id": f"{prefix}{i}", "prompt": "a green triangle on a black background",
             "num_inference_steps": steps, "num_images": 4} for i in range(count)]  # fmt: skip


def read_results_of(stack: Stack, out: str) -> list[dict]:
    with stack.s3.open(f"{out}/results.parquet") as f:
        return pq.read_table(f).to_pylist()


def submitted_by(stack: Stack, run_id) -> str:
    """The worker that started the flow run `run_id` (from the workers' logs)."""
    for log in sorted((stack.root / "logs").glob("worker-*.log")):
        if f"submitting flow run '{run_id}'" in log.read_text(errors="replace"):
            return log.stem
    return "none"


def most_at_once(runs: list) -> int:
    """The most of `runs` (flow runs with start and end times) that ran at one moment."""
    edges = sorted([(r.start_time, 1) for r in runs] + [(r.end_time, -1) for r in runs],
                   key=lambda edge: (edge[0], edge[1]))  # an end before a start at one instant
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def test_a_sharded_sweep_runs_each_shard_as_its_own_run_within_the_limits_and_merges_one_result(
    stack, finished, tmp_path
):
    manifest = put_manifest(stack, "e2e/sharded.parquet", rows_of("s", 16), tmp_path)
    params = {"manifest": manifest, "out": "s3://renders/sharded", "batch_size": 4, "shards": 4}
    (parent,) = stack.wait([stack.trigger("sweep/sweep-local", {"params": params})])
    assert parent.state.is_completed(), parent.state

    results = read_results_of(stack, "renders/sharded")
    assert len(results) == 64 and {r["status"] for r in results} == {"ok"}
    assert len({(r["id"], r["image_index"]) for r in results}) == 64
    shard_runs = {r["flow_run_id"] for r in results}
    assert len(shard_runs) == 4 and str(parent.id) not in shard_runs  # each shard its own run
    # Which worker takes which shard is Prefect's choice; what a user counts on: each run went
    # to a worker of the pool, both workers stayed able to take work, and no worker ran more
    # flow runs at once than its `--limit` (2, docs/operations.md: the parent holds one slot)
    runs = [stack.state(run_id) for run_id in [parent.id, *shard_runs]]
    by_worker: dict[str, list] = {}
    for run in runs:
        by_worker.setdefault(submitted_by(stack, run.id), []).append(run)
    assert set(by_worker) <= {"worker-1", "worker-2"}, set(by_worker)
    assert all(most_at_once(taken) <= 2 for taken in by_worker.values())
    with stack.client() as client:
        workers = client.read_workers_for_work_pool(POOL)
    assert sorted(w.name for w in workers if w.status == "ONLINE") == ["worker-1", "worker-2"]

    (sweep_run,) = top_level(mlflow_runs(stack, parent.id))
    client = stack.mlflow()
    children = client.search_runs(
        [sweep_run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{sweep_run.info.run_id}'"
    )
    assert sorted(c.info.run_name for c in children) == [f"sweep shard {i}/4" for i in range(1, 5)]
    assert sum(c.data.metrics["images_generated"] for c in children) == 64
    assert sweep_run.data.metrics["images_generated"] == 64

    # a rerun does nothing: every shard is done, the results are the same, so no MLflow run
    # repeats the first (docs/sweeps.md: its logs name the run holding the results)
    (again,) = stack.wait([stack.trigger("sweep/sweep-local", {"params": params})])
    assert again.state.is_completed() and top_level(mlflow_runs(stack, again.id)) == []
    assert read_results_of(stack, "renders/sharded") == results


def test_concurrent_runs_never_generate_an_image_twice_nor_lose_results(stack, finished, tmp_path):
    same = {"manifest": put_manifest(stack, "e2e/same.parquet", rows_of("t", 8, steps=8), tmp_path),
            "out": "s3://renders/twice", "batch_size": 4}  # fmt: skip
    mixed = [{"manifest": put_manifest(stack, f"e2e/{p}.parquet", rows_of(p, 3), tmp_path),
              "out": "s3://renders/mixed", "batch_size": 4} for p in ("c", "d")]  # fmt: skip
    runs = [stack.trigger("sweep/sweep-local", {"params": params})
            for params in (same, same, *mixed)]  # fmt: skip
    done = stack.wait(runs)
    assert all(run.state.is_completed() for run in done), [r.state for r in done]

    # the same sweep twice at once: every image generated once (count the writes)
    generated = [top_level(mlflow_runs(stack, run.id))[0].data.metrics["images_generated"]
                 for run in done[:2]]  # fmt: skip
    assert sum(generated) == 32, generated
    results = read_results_of(stack, "renders/twice")
    assert len(results) == 32 and {r["status"] for r in results} == {"ok"}
    assert len({r["flow_run_id"] for r in results}) == 1  # one run generated them all

    # two manifests into one output: the last results hold both
    results = read_results_of(stack, "renders/mixed")
    assert sorted({r["id"][0] for r in results}) == ["c", "d"] and len(results) == 24


def shard_runs(stack: Stack, parent) -> list:
    """The flow runs the sharded sweep `parent` started, oldest first."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with stack.client() as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])))  # fmt: skip
    return [run.id for run in sorted(runs, key=lambda run: run.created)]


def recorded_by(stack: Stack, out: str) -> Counter:
    """Images recorded in `out` per flow run."""
    stack.s3.invalidate_cache()
    counts = Counter()  # small record files and the parts they are compacted into
    for path in stack.s3.glob(f"{out}/.easel/records/**/*.parquet"):
        with stack.s3.open(path) as f:
            counts.update(pq.read_table(f, columns=["flow_run_id"]).column(0).to_pylist())
    return counts


def retried_once(stack: Stack, run_ids: list, seconds: float = WAIT) -> tuple[list, dict]:
    """The killed runs `run_ids` once settled, and their states (type, message) by run id:
    each crashed once, was retried once, and completed."""
    from prefect.client.schemas.objects import StateType

    settled = lambda run: run.state.is_final() and not run.state.is_crashed()  # noqa: E731
    runs = stack.wait(run_ids, settled, seconds)  # a crashed run is retried
    with stack.client() as client:
        history = {r.id: [(s.type, s.message) for s in client.read_flow_run_states(r.id)]
                   for r in runs}  # fmt: skip
    for run in runs:
        assert run.state.is_completed(), (run.name, history[run.id])
        assert run.run_count == 2, (run.name, history[run.id])  # crashed once, retried once
        assert StateType.CRASHED in dict(history[run.id]), history[run.id]
    return runs, history


IMAGES = 192  # the killed sweep's: each shard must still be at work when the other starts


# Last: it kills worker-1 (the tests above need both workers).
def test_killed_runs_are_crashed_retried_and_finished_by_the_other_worker(
    stack, subject, finished, tmp_path
):
    rows = [{"id": f"k{i}", "prompt": "a blue square on a white background",
             "num_inference_steps": 40, "num_images": 4} for i in range(IMAGES // 4)]  # fmt: skip
    sharded = {"manifest": put_manifest(stack, "e2e/big.parquet", rows, tmp_path),
               "batch_size": 4, "out": "s3://renders/k1", "shards": 2}  # fmt: skip
    one, two = stack.worker_pid("worker-1"), stack.worker_pid("worker-2")

    # worker-2 takes a sharded sweep and one of its 2 shards (its limit is 2) ...
    os.kill(one, signal.SIGSTOP)
    try:
        parent = stack.trigger("sweep/sweep-local", {"params": sharded})
        stack.wait([parent], lambda _: len(shard_runs(stack, parent)) == 2, seconds=90)
        stack.wait([parent], lambda _: any(map(stack.flow_process, shard_runs(stack, parent))),
                   seconds=60)  # fmt: skip
        dreambooth = stack.trigger(
            "dreambooth/dreambooth-local",
            {"config": dreambooth_config(subject, "s3://renders/db-k")},
        )
    finally:
        os.kill(one, signal.SIGCONT)
    # ... worker-1 the other shard and a DreamBooth
    shards = shard_runs(stack, parent)
    stack.wait([*shards, dreambooth], lambda run: stack.flow_process(run.id), seconds=60)
    on = {parent_of(stack.flow_process(r)): r for r in shards}
    assert parent_of(stack.flow_process(parent)) == two and set(on) == {one, two}
    assert parent_of(stack.flow_process(dreambooth)) == one

    # mid-work: each shard has recorded images, a checkpoint is published, nothing finished
    def progressed(_run) -> bool:
        counts = recorded_by(stack, "renders/k1")
        return (all(counts[str(r)] >= 4 for r in shards)
                and stack.s3.glob("renders/db-k/checkpoints/*.ckpt"))  # fmt: skip

    stack.wait([parent], progressed, seconds=120)
    recorded = sum(recorded_by(stack, "renders/k1").values())  # first: their images exist
    before = {p: stack.s3.info(p)["LastModified"] for p in stack.s3.find("renders/k1/images")}
    for pid in (one, stack.flow_process(on[one]), stack.flow_process(dreambooth)):
        os.kill(pid, signal.SIGKILL)  # a worker killed with its runs: nobody reports it
    lost = stack.flow_process(on[two])
    assert lost, "the shard on worker-2 ended before the kill: make IMAGES larger"
    os.kill(lost, signal.SIGKILL)  # a lost shard; its worker lives
    killed_at = time.monotonic()

    runs, history = retried_once(stack, [on[one], dreambooth, on[two]])
    for run_id in (on[one], dreambooth):  # crashed by the zombie automation
        assert any("No heartbeat" in (m or "") for _, m in history[run_id]), history[run_id]
    (merged,) = stack.wait([parent])
    assert merged.state.is_completed() and merged.run_count == 1, merged.state
    assert shard_runs(stack, parent) == shards  # the parent left the crashed shards alone
    assert time.monotonic() - killed_at < WAIT

    # only the missing work: images recorded before the kill were never generated again
    stack.s3.invalidate_cache()
    with stack.s3.open("renders/k1/results.parquet") as f:
        results = pq.read_table(f).to_pylist()
    assert len(results) == IMAGES and {r["status"] for r in results} == {"ok"}
    assert len({(r["id"], r["image_index"]) for r in results}) == IMAGES
    after = {p: stack.s3.info(p)["LastModified"] for p in before}
    unchanged = sum(after[p] == before[p] for p in before)
    assert unchanged >= recorded, (unchanged, recorded)  # every recorded image
    assert len(before) - unchanged <= 2 * 2 * 4, (len(before), unchanged)  # those in flight

    # DreamBooth resumed from its last checkpoint, to the weights of an untroubled run
    def weights(path: str) -> dict:
        with stack.s3.open(path) as f:
            return torch.load(f, weights_only=True)["state_dict"]

    resumed = weights("renders/db-k/checkpoints/step=00000120.ckpt")
    straight = weights("renders/db/checkpoints/step=00000120.ckpt")
    assert resumed.keys() == straight.keys()
    for key, value in straight.items():
        assert torch.equal(resumed[key], value), key

    # the crashed attempts' MLflow runs end FAILED; the retries' FINISHED
    for run in runs:
        tracked = outermost(mlflow_runs(stack, run.id))
        by_attempt = {r.data.tags["prefect.run_count"]: r.info.status for r in tracked}
        assert by_attempt == {"1": "FAILED", "2": "FINISHED"}, (run.name, by_attempt)
