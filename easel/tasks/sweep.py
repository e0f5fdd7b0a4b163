"""Prefect tasks of the sweep flow: thin adapters over `easel.data` and `easel.models`."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NONE

from easel.data import contact_sheet, manifest, results
from easel.data.jobs import PlannedBatch, SweepPlan, planned_images
from easel.data.results import ImageRecord
from easel.models.sweep_engine import BatchOutcome, SweepInputs, generate_batches, plan_sweep


@dataclass(frozen=True)
class SweepSummary:
    out: str
    results_uri: str
    contact_sheet_uri: str | None
    rows: int
    images_ok: int
    images_failed: int
    rows_failed: int
    generated_now: int


@task(name="plan-sweep", cache_policy=NONE, persist_result=False)
def plan_sweep_task(inputs: SweepInputs) -> tuple[manifest.Manifest, SweepPlan]:
    """Validate the manifest and plan the batches still to do."""
    return plan_sweep(inputs)


@task(name="generate-images", retries=1, retry_delay_seconds=2, cache_policy=NONE,
      persist_result=False)  # fmt: skip
def generate_images(
    inputs: SweepInputs, batches: list[PlannedBatch], run_id: str | None, on_batch=None
) -> BatchOutcome:
    """Generate a chunk of batches (one task per chunk: retries and progress per chunk)."""
    return generate_batches(inputs, batches, run_id, on_batch)


def final_records(table: manifest.Manifest, plan: SweepPlan, recorded: list[ImageRecord]):
    """(row_index, record) for every requested image; a row that failed entirely keeps one."""
    by_key: dict[str, ImageRecord] = {}
    for record in recorded:  # an ok record wins over a failed try of the same image
        existing = by_key.get(record.request_key)
        if record.request_key and (existing is None or existing.status != "ok"):
            by_key[record.request_key] = record
    rows: list[tuple[int, ImageRecord]] = []
    for failure in plan.failures:
        rows.append((failure.row_index, _failed_row(failure.id, failure.error)))
    for job in plan.jobs:
        images = planned_images(job, plan.facts[job.model])
        found = [by_key.get(image.request_key) for image in images]
        if any(r is None for r in found):
            missing = _failed_row(job.id, "not generated: the run stopped before this image")
            found = [r or missing for r in found]
        if all(r.status == "failed" for r in found):
            found = [found[0]]
        rows.extend((job.row_index, record) for record in found)
    rows.sort(key=lambda item: (item[0], item[1].image_index or 0))
    return rows


def _failed_row(row_id: str, error: str) -> ImageRecord:
    return ImageRecord(
        id=row_id, request_key=None, image_index=None, image_uri=None, status="failed",
        error=error, warning=None, seed=None, model_ref=None, model_digest=None, scheduler=None,
        duration_s=None, image_sha256=None, mlflow_run_id=None,
    )  # fmt: skip


@task(name="write-results", cache_policy=NONE, persist_result=False)
def write_results(
    inputs: SweepInputs, table: manifest.Manifest, plan: SweepPlan, generated_now: int
) -> SweepSummary:
    """Assemble `results.parquet` from every record, and draw the contact sheet."""
    rows = final_records(table, plan, results.read_records(inputs.out))
    result_table = results.assemble_results(
        table.table, [index for index, _ in rows], [record for _, record in rows]
    )
    results_uri = results.write_results(inputs.out, result_table)
    ok = [record for _, record in rows if record.status == "ok"]
    sheet = None
    if ok:
        labels = [f"{r.id}/{r.image_index}" for r in ok]
        sheet = contact_sheet.write_contact_sheet(inputs.out, [r.image_uri for r in ok], labels)
    failed_rows = {r.id for _, r in rows if r.status == "failed"}
    return SweepSummary(
        out=inputs.out, results_uri=results_uri, contact_sheet_uri=sheet,
        rows=table.table.num_rows, images_ok=len(ok), images_failed=len(rows) - len(ok),
        rows_failed=len(failed_rows), generated_now=generated_now,
    )  # fmt: skip
