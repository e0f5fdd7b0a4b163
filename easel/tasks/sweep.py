"""Prefect tasks of the sweep flow: thin adapters over the engine (`easel.models.engine.sweep`)
and `easel.data.results`."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from easel.data import manifest, results
from easel.data.batching import ALL, PlannedBatch, Shard, SweepPlan
from easel.data.results import SweepSummary
from easel.models.engine.sweep import BatchOutcome, SweepInputs, generate_batches, plan_sweep


@task(name="plan-sweep", cache_policy=NONE, persist_result=False)
def plan_sweep_task(
    inputs: SweepInputs, shard: Shard = ALL, check_done: bool = True,
    vouched_by: str | None = None, hand_down: str | None = None,
) -> tuple[manifest.Manifest, SweepPlan]:  # fmt: skip
    """Validate the manifest and plan the batches of `shard` still to do (every one of them
    without `check_done`; `vouched_by`, `hand_down`: a parent's verdict, as `plan_sweep`)."""
    return plan_sweep(inputs, shard, check_done, vouched_by, hand_down)


@task(name="generate-batches", retries=1, retry_delay_seconds=2, cache_policy=NONE,
      persist_result=False)  # fmt: skip
def generate_batches_task(
    inputs: SweepInputs, batches: list[PlannedBatch], run_id: str | None, on_batch=None
) -> BatchOutcome:
    """Generate a chunk of batches (one task per chunk: retries and progress per chunk)."""
    from prefect.runtime import flow_run

    return generate_batches(inputs, batches, run_id, on_batch, str(flow_run.id or "") or None)


@task(name="write-results", cache_policy=NONE, persist_result=False)
def write_results_task(
    inputs: SweepInputs, table: manifest.Manifest, plan: SweepPlan, generated_now: int
) -> SweepSummary:
    """Assemble `results.parquet` from every record, and draw the contact sheet, holding the
    output's results (two runs into one output merge, never overwrite, each other's rows)."""
    from easel.orchestration import locks

    with locks.hold(locks.lock_name("results", inputs.out)):
        return results.publish_results(inputs.out, table.table, plan, generated_now)
