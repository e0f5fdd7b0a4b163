"""A sweep split into shards (`shards` > 1): each shard is its own flow run of the sweep
flow (`shard` set), started by the parent run and merged by it.

- Which images a shard holds is decided by content (`batching.shard_of`), so a rerun
  splits the same way and a shard already done is not started again.
- A deployment's run starts each shard as a run of the same deployment (`run_deployment`,
  linked to the parent as a subflow): any worker of the pool takes it. A run without a
  deployment (`easel sweep` on a shell) runs the shards in this process, one after another,
  through the same flow.
- A shard run that fails is started again by the parent (`SHARD_RETRIES`). A crashed one
  is first left `CRASH_GRACE_SECONDS` for `easel automations` to schedule it again (the
  same run, on any worker); only a run still Crashed after that is started again by the
  parent, so one crash never makes two runs of a shard. Two runs of one shard never
  both generate an image: each holds its shard of the output (`locks`) and plans inside the
  hold, so the later one finds the work done.
- `shards: auto` is decided from the pending images, the pool's online workers and the
  fixed cost the output's last shard run measured (`easel.data.shard_sizing`); every shard
  run measures its own (`measure_shard`).
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone

from easel import tracking
from easel.data import records, shard_sizing
from easel.models.engine.sweep import BatchOutcome
from easel.orchestration.recovery import RETRY_SETTLE_SECONDS

SHARD_RETRIES = 1  # new runs the parent starts for a shard whose run failed or crashed
POLL_SECONDS = 5.0  # how often the parent looks at its shards' runs
# how long a crashed shard run is left to the retry automation before the parent acts
CRASH_GRACE_SECONDS = RETRY_SETTLE_SECONDS + 3 * POLL_SECONDS


def run_shards(
    params, pending: dict[int, dict[int, int]], run_id: str, progress, sweep_flow,
    vouched_by: str | None = None,
) -> BatchOutcome:  # fmt: skip
    """Run every shard of `params.shards` that has pending images (`pending`:
    `SweepPlan.pending_rows`), each as a flow run of `sweep_flow` whose MLflow run is a
    child of `run_id` and that trusts the verdict `vouched_by` (`easel.data.verdict`; None:
    each vouches for its images and plans the manifest itself); wait for all;
    `progress.advance(n)` as images land. Returns what the shards generated (from their
    writers' tallies)."""
    from prefect.runtime import deployment

    handed = {"parent_mlflow_run_id": run_id, "vouched_by": vouched_by}
    children = {index: params.model_copy(update={"shard": index, **handed})
                for index in pending}  # fmt: skip
    images = sum(sum(rows.values()) for rows in pending.values())
    print(f"{images} images to generate in {len(children)} of {params.shards} shards")
    if deployment.id:
        run_ids = _on_the_pool(children, deployment.id, params.out, progress)
    else:
        run_ids = _in_this_process(children, progress, sweep_flow)
    counted = records.tallies(params.out, run_ids)
    return BatchOutcome(ok=sum(t.ok for t in counted), failed=sum(t.failed for t in counted),
                        seconds=sum(t.seconds for t in counted))  # fmt: skip


def _in_this_process(children: dict, progress, sweep_flow) -> set[str]:
    """Each shard as a subflow of this run, one after another; returns their run ids."""
    run_ids = set()
    for child in children.values():
        state = sweep_flow(child, return_state=True)
        outcome = state.result()  # raises as the shard did
        progress.advance(outcome.ok + outcome.failed)
        run_ids.add(str(state.state_details.flow_run_id))
    return run_ids


def _on_the_pool(children: dict, deployment_id, out: str, progress) -> set[str]:
    """Start each shard on the pool, wait for all, start a failed one again; returns the
    ids of every shard run started."""
    from prefect import get_client
    from prefect.deployments import run_deployment

    def start(child):
        params = child.model_dump(mode="json")  # as the API checks them ("default" for None)
        run = run_deployment(deployment_id, parameters={"params": params}, timeout=0,
                             as_subflow=True)  # fmt: skip
        print(f"shard {child.shard + 1}/{child.shards}: flow run {run.name} ({run.id})")
        return run.id

    waiting = {index: start(child) for index, child in children.items()}
    started, retries = set(waiting.values()), dict.fromkeys(children, 0)
    shown = images_recorded(out, started)
    while waiting:
        time.sleep(POLL_SECONDS)
        with get_client(sync_client=True) as client:
            states = {i: client.read_flow_run(run_id).state for i, run_id in waiting.items()}
        for index, state in states.items():
            if _left_to_the_automation(state):
                continue
            if state.is_completed() or (state.is_final() and retries[index] >= SHARD_RETRIES):
                if not state.is_completed():
                    print(f"shard {index + 1}: {state.type.value} ({state.message}); its "
                          "images stay missing until the sweep runs again")  # fmt: skip
                del waiting[index]
            elif state.is_final():
                retries[index] += 1
                waiting[index] = start(children[index])
                started.add(waiting[index])
        now = images_recorded(out, started)
        progress.advance(now - shown)
        shown = now
    return {str(run_id) for run_id in started}


def _left_to_the_automation(state) -> bool:
    """A run crashed less than `CRASH_GRACE_SECONDS` ago: the retry automation may still
    schedule it again."""
    if not state.is_crashed():
        return False
    return (datetime.now(timezone.utc) - state.timestamp).total_seconds() < CRASH_GRACE_SECONDS


def images_recorded(out: str, run_ids: set) -> int:
    """Images the given flow runs have recorded in `out`, from their writers' tallies (one
    listing and a small file per writer: the cost of a poll does not grow with the sweep)."""
    return sum(t.ok + t.failed for t in records.tallies(out, {str(r) for r in run_ids}))


def auto_shards(out: str, pending_images: int) -> int:
    """`shards: auto` for a sweep into `out` with `pending_images` to generate: the count
    recorded for `out`, or one decided now (and recorded) for this pool's workers."""
    from prefect.runtime import deployment

    decision, fresh = shard_sizing.decide(out, pending_images, pool_workers(deployment.id))
    print(f"shards: auto -> {decision.shards} (decided {'now' if fresh else 'by an earlier run'} "
          f"for {decision.pending_images} images, {decision.workers} workers, "
          f"{decision.fixed_s:.1f} s fixed and {decision.image_s:.3f} s an image per shard; "
          f"kept in {records.state_dir(out, shard_sizing.DECISION_FILE)})")  # fmt: skip
    return decision.shards


def pool_workers(deployment_id: str | None) -> int:
    """The online workers of the deployment's work pool (at least 1); 1 without a deployment
    (the shards then run one after another in this process)."""
    from prefect import get_client
    from prefect.client.schemas.objects import WorkerStatus

    if not deployment_id:
        return 1
    with get_client(sync_client=True) as client:
        pool = client.read_deployment(deployment_id).work_pool_name
        workers = client.read_workers_for_work_pool(pool)
    return max(1, sum(worker.status == WorkerStatus.ONLINE for worker in workers))


def run_started_at() -> float:
    """When this flow run's fixed cost began (Unix seconds): its process's start where the
    process was started for it (a worker's run), else the run's scheduled start (a subflow
    in a process that was already running)."""
    from prefect.runtime import flow_run

    scheduled = flow_run.scheduled_start_time
    scheduled = scheduled.timestamp() if scheduled else time.time()
    return max(_process_started_at(), scheduled)


def _process_started_at() -> float:
    """This process's start (Unix seconds) from /proc; 0 where there is none."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/stat") as system:
            boot = next(int(line.split()[1]) for line in system if line.startswith("btime"))
    except (OSError, StopIteration, ValueError, IndexError):
        return 0.0
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def measure_shard(out: str, started: float, outcome: BatchOutcome) -> shard_sizing.ShardCost:
    """A shard run's fixed cost: its seconds since `started` outside pipeline calls (process
    start, imports, model load, planning, the hold, the writer's tail, compaction), one log
    line and the metrics `shard_fixed_s`, `shard_image_s` of the active MLflow run; kept in
    `out` for the next `auto` decision where it generated images."""
    images = outcome.ok + outcome.failed
    cost = shard_sizing.ShardCost(
        fixed_s=max(0.0, time.time() - started - outcome.seconds),
        image_s=outcome.seconds / images if images else 0.0, images=images,
        measured_at=time.time(),
    )  # fmt: skip
    print(f"shard fixed cost: {cost.fixed_s:.1f} s outside pipeline calls; "
          f"{cost.image_s:.3f} s an image over {images} images")  # fmt: skip
    tracking.log_metrics({"shard_fixed_s": cost.fixed_s, "shard_image_s": cost.image_s})
    if images:
        shard_sizing.record_cost(out, cost)
    return cost
