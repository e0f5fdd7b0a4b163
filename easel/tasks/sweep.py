"""Prefect tasks of the sweep flow: thin adapters over `easel.data` and `easel.models`."""

from __future__ import annotations

import time
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NONE

from easel.data import contact_sheet, manifest, results, storage
from easel.data.jobs import PlannedBatch, SweepPlan, build_plan, planned_images
from easel.data.results import ImageRecord
from easel.data.writer import BatchWriter
from easel.errors import InvalidInput
from easel.models.generation import (
    generate_each,
    model_facts,
    prompt_truncation_warning,
)
from easel.models.loading import load_model


@dataclass(frozen=True)
class SweepInputs:
    """What the tasks need from the flow's parameters."""

    manifest: str
    out: str
    defaults: manifest.SweepDefaults
    input_roots: tuple[str, ...]
    batch_size: int
    device: str | None
    dtype: str | None
    trust_pickle: bool


@dataclass(frozen=True)
class BatchOutcome:
    ok: int
    failed: int
    seconds: float


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


def _facts_for(ref: str):
    try:
        return model_facts(ref)
    except InvalidInput as error:  # a bad model fails its rows, not the manifest
        raise ValueError(str(error)) from None


def plan_sweep(inputs: SweepInputs) -> tuple[manifest.Manifest, SweepPlan]:
    """Read and validate the manifest, resolve its models, and plan the missing work.

    Raises `InvalidInput` when the manifest as a whole is unusable."""
    table = manifest.read_manifest(inputs.manifest)
    jobs, failures = manifest.validate_manifest(table, inputs.defaults, list(inputs.input_roots))
    done = results.done_request_keys(inputs.out)
    storage.remove_stale_temporaries(inputs.out)  # what a killed run was writing
    plan = build_plan(jobs, failures, _facts_for, inputs.batch_size, done)
    return table, plan


@task(name="plan-sweep", cache_policy=NONE, persist_result=False)
def plan_sweep_task(inputs: SweepInputs) -> tuple[manifest.Manifest, SweepPlan]:
    """Validate the manifest and plan the batches still to do."""
    return plan_sweep(inputs)


@task(name="generate-images", retries=1, retry_delay_seconds=2, cache_policy=NONE,
      persist_result=False)  # fmt: skip
def generate_images(
    inputs: SweepInputs, batches: list[PlannedBatch], run_id: str | None, on_batch=None
) -> BatchOutcome:
    """Generate a chunk of batches; a background writer stores each batch's images, then
    its record shard (the marker, last), while the next batch is generated."""
    import torch

    dtype = getattr(torch, inputs.dtype) if inputs.dtype else None
    seconds = 0.0
    with BatchWriter(inputs.out) as writer:
        for batch in batches:
            loaded = load_model(batch.model, inputs.device, dtype, inputs.trust_pickle)
            start = time.perf_counter()
            outputs = generate_each(loaded, batch.settings, [i.request for i in batch.images])
            elapsed = time.perf_counter() - start
            seconds += elapsed
            writer.submit(batch, outputs, pending_records(loaded, batch, elapsed, run_id))
            if on_batch:
                on_batch(len(batch.images))
        records = writer.close()
    ok = sum(r.status == "ok" for r in records)
    return BatchOutcome(ok=ok, failed=len(records) - ok, seconds=seconds)


def pending_records(
    loaded, batch: PlannedBatch, seconds: float, run_id: str | None
) -> list[ImageRecord]:
    """The records of a generated batch, before its images are written."""
    return [
        ImageRecord(
            id=image.row_id,
            request_key=image.request_key,
            image_index=image.image_index,
            image_uri=None,
            status="failed",
            error=None,
            warning=prompt_truncation_warning(loaded, image.request.prompt),
            seed=image.request.seed,
            model_ref=batch.model,
            model_digest=loaded.model.digest,
            scheduler=batch.settings.scheduler,
            duration_s=seconds / len(batch.images),
            image_sha256=None,
            mlflow_run_id=run_id,
        )  # fmt: skip
        for image in batch.images
    ]


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
