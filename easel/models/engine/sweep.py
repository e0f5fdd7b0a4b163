"""The sweep engine without orchestration: plan a manifest's missing work, then generate
batches with a background writer. Prefect tasks (`easel.tasks.sweep`) wrap these; a
benchmark or another orchestrator can call them directly."""

from __future__ import annotations

import time
from dataclasses import dataclass

from easel.data import manifest, results, storage
from easel.data.batching import ALL, PlannedBatch, Shard, SweepPlan, build_plan
from easel.data.results import ImageRecord
from easel.data.writer import BatchWriter
from easel.errors import InvalidInput
from easel.models.engine.generation import generate_each, prompt_truncation_warning
from easel.models.engine.loading import load_model, model_facts


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


def _facts_for(ref: str):
    try:
        return model_facts(ref)
    except InvalidInput as error:  # a bad model fails its rows, not the manifest
        raise ValueError(str(error)) from None


def plan_sweep(
    inputs: SweepInputs, shard: Shard = ALL, check_done: bool = True
) -> tuple[manifest.Manifest, SweepPlan]:
    """Read and validate the manifest, resolve its models, and plan the missing work of
    `shard` (default: all of it); without `check_done`, every image of it, reading nothing
    of the output.

    Raises `InvalidInput` when the manifest as a whole is unusable."""
    table = manifest.read_manifest(inputs.manifest)
    jobs, failures = manifest.validate_manifest(table, inputs.defaults, list(inputs.input_roots))
    done = set()
    if check_done:
        done = results.done_slots(inputs.out)
        storage.remove_stale_temporaries(inputs.out)  # what a killed run was writing
    plan = build_plan(jobs, failures, _facts_for, inputs.batch_size, done, shard)
    return table, plan


def generate_batches(
    inputs: SweepInputs, batches: list[PlannedBatch], run_id: str | None, on_batch=None,
    flow_run_id: str | None = None,
) -> BatchOutcome:  # fmt: skip
    """Generate `batches` in order; a background writer stores each batch's images, then
    its record shard (the marker, last), while the next batch is generated. Records carry
    the MLflow run `run_id` and the Prefect flow run `flow_run_id`."""
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
            records = pending_records(loaded, batch, elapsed, run_id, flow_run_id)
            writer.submit(batch, outputs, records)
            if on_batch:
                on_batch(len(batch.images))
        records = writer.close()
    ok = sum(r.status == "ok" for r in records)
    return BatchOutcome(ok=ok, failed=len(records) - ok, seconds=seconds)


def pending_records(
    loaded, batch: PlannedBatch, seconds: float, run_id: str | None,
    flow_run_id: str | None = None,
) -> list[ImageRecord]:  # fmt: skip
    """The records of a generated batch, before its images are written."""
    return [
        ImageRecord(
            id=image.row_id,
            request_key=image.request_key,
            image_index=image.image_index,
            image_uri=None,
            status="failed",
            error=None,
            warning=prompt_truncation_warning(loaded, image.request),
            seed=image.request.seed,
            model_ref=batch.model,
            model_digest=loaded.model.digest,
            scheduler=batch.settings.scheduler,
            duration_s=seconds / len(batch.images),
            image_sha256=None,
            mlflow_run_id=run_id,
            flow_run_id=flow_run_id,
        )  # fmt: skip
        for image in batch.images
    ]
