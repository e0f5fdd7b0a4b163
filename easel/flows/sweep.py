"""The sweep flow (SPEC §5): a Parquet manifest in, images + results + MLflow run out."""

from __future__ import annotations

from prefect import flow

from easel import tracking
from easel.data import records, results, storage, verdict
from easel.data.batching import ALL, Shard, chunk_batches
from easel.data.results import SweepSummary
from easel.flows.sweep_parameters import SweepParameters
from easel.models.engine.sweep import BatchOutcome, SweepInputs, runtime_params, utilisation
from easel.orchestration import locks
from easel.orchestration.run_context import expand_placeholders, prefect_tags
from easel.orchestration.shards import auto_shards, measure_shard, run_shards, run_started_at
from easel.progress import SweepProgress
from easel.tasks.report import report_sweep_task, report_unchanged_task, run_holding
from easel.tasks.sweep import generate_batches_task, plan_sweep_task, write_results_task


@flow(name="sweep", log_prints=True)
def sweep_flow(params: SweepParameters) -> SweepSummary | BatchOutcome:
    """Validate the manifest, generate the missing images chunk by chunk (split into
    `shards` flow runs when asked), record everything, merge `results.parquet`."""
    params = params.model_copy(update={"out": expand_placeholders(params.out, "out")})
    storage.check_output_folder(params.out, "out")
    if params.shard is not None:
        return _shard_run(params)
    started = run_started_at()
    # a sharded parent vouches once for every image and hands its verdict to its shards
    hand_down = verdict.new_name(_flow_run_id()) if params.shards != 1 else None
    with verdict.handed_down(params.out, hand_down):
        return _parent_run(params, started, hand_down)


def _flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    return str(flow_run.id or "") or None


def _parent_run(params: SweepParameters, started: float, hand_down: str | None) -> SweepSummary:
    """The sweep as a whole: plan it (writing the verdict `hand_down` where given), then
    generate it in this run or in its shards' runs, and publish its results."""
    inputs = params.inputs()
    # the manifest checked before any MLflow run; what is missing, the shard plans in its
    # hold (a rerun checks it here too: one that changes nothing adds no MLflow run)
    rerun = storage.exists(results.results_uri(params.out))
    table, plan = plan_sweep_task(inputs, check_done=params.shards != 1 or rerun,
                                  hand_down=hand_down)  # fmt: skip
    unchanged = rerun and not plan.pending_images and _unchanged(params.experiment, inputs,
                                                                 table, plan)  # fmt: skip
    if unchanged:
        return unchanged
    if params.shards == "auto":
        params = params.model_copy(update={"shards": auto_shards(params.out, plan.pending_images)})
    sharded = params.shards > 1
    tags = prefect_tags()
    models = sorted({batch.model for batch in plan.batches}) or [params.model]
    name = tracking.run_name("sweep", tracking.short_name(params.manifest), *models)
    logged = {**params.model_dump(), **runtime_params(inputs)}
    with tracking.start_run(params.experiment, name, logged, tags) as run_id:
        progress = SweepProgress(params.out, params.show_progress)
        if sharded:
            progress.start(plan.pending_images)
            pending = plan.pending_rows(params.shards)
            if hand_down:  # each shard then plans only its rows of the manifest
                verdict.write_rows(params.out, hand_down, pending, table.versions)
            pending_images = plan.release_batches()  # the shards plan their own
            outcome = run_shards(params, pending, run_id, progress, sweep_flow, hand_down)
        else:
            plan.release_batches()  # planned again in the shard's hold
            outcome, plan = _generate_shard(inputs, ALL, run_id, progress, params, hand_down)
            pending_images = plan.release_batches()  # generated
            measure_shard(params.out, started, outcome)
        progress.close()
        summary = write_results_task(inputs, table, plan, outcome.ok)
        report_sweep_task(summary, pending_images, outcome, utilisation(outcome, inputs),
                          run_id)  # fmt: skip
    return summary


def _unchanged(experiment: str, inputs: SweepInputs, table, plan) -> SweepSummary | None:
    """A rerun with nothing to generate: its results written; when they are the very ones
    an earlier MLflow run of the experiment logged, that run reported (no new one) and the
    summary returned, else None (the flow then logs them in a new run)."""
    plan.release_batches()  # nothing pending: only the results need it now
    summary = write_results_task(inputs, table, plan, 0)
    holder = run_holding(experiment, summary.results_uri)
    if holder is None:
        return None
    report_unchanged_task(summary, holder)
    return summary


def _generate_shard(inputs: SweepInputs, shard: Shard, run_id: str, progress, params,
                    vouched_by: str | None = None):  # fmt: skip
    """Hold the shard of the output (a second run reaching it waits, then finds it done),
    plan what is still missing in it (trusting the parent's verdict `vouched_by` where
    given), and generate it chunk by chunk. Returns the outcome and the plan."""
    name = locks.lock_name("sweep", inputs.out, f"{shard.index}-of-{shard.count}")
    outcome = BatchOutcome(ok=0, failed=0, seconds=0.0)
    with locks.hold(name):
        _, plan = plan_sweep_task(inputs, shard, vouched_by=vouched_by)
        on_batch = None
        if progress:
            progress.start(plan.pending_images)
            on_batch = progress.advance
        for chunk in chunk_batches(plan.batches, params.images_per_task):
            outcome = outcome + generate_batches_task(inputs, chunk, run_id, on_batch)
        if plan.batches:
            records.compact_after_run(inputs.out)  # the small record files into their parts
    return outcome, plan


def _shard_run(params: SweepParameters) -> BatchOutcome:
    """One shard, as its own flow run: an MLflow child run of the parent's, with its figures."""
    started = run_started_at()
    shard = Shard(params.shard, params.shards)
    name = f"sweep shard {shard.index + 1}/{shard.count}"
    inputs = params.inputs()
    logged = {**params.model_dump(), **runtime_params(inputs)}
    with tracking.start_run(params.experiment, name, logged, prefect_tags(),
                            parent_run_id=params.parent_mlflow_run_id) as run_id:  # fmt: skip
        outcome, _ = _generate_shard(inputs, shard, run_id, None, params, params.vouched_by)
        measure_shard(params.out, started, outcome)
        tracking.log_metrics({"images_generated": outcome.ok, "images_failed": outcome.failed,
                              "generation_seconds": outcome.seconds,
                              **utilisation(outcome, inputs)})  # fmt: skip
    return outcome
