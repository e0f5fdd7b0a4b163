"""The sweep engine without orchestration: plan a manifest's missing work, then generate
batches with a background writer. Prefect tasks (`easel.tasks.sweep`) wrap these; a
benchmark or another orchestrator can call them directly."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from easel.data import loras, manifest, results, storage, verdict
from easel.data.batching import ALL, PlannedBatch, Shard, SlotSet, SweepPlan, build_plan
from easel.data.limits import MAX_BATCH
from easel.data.results import ImageRecord
from easel.data.writer import BatchWriter
from easel.errors import InvalidInput
from easel.models.engine import flops, memory
from easel.models.engine.generation import generate, generate_each, prompt_truncation_warning
from easel.models.engine.loading import default_device, default_dtype, load_model, model_facts
from easel.models.engine.performance import EAGER, Performance
from easel.models.engine.spec import ModelSpec, named_spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepInputs:
    """What the tasks need from the flow's parameters."""

    manifest: str
    out: str
    defaults: manifest.SweepDefaults
    input_roots: tuple[str, ...]
    batch_size: int | Literal["auto"]
    device: str | None
    dtype: str | None
    trust_pickle: bool
    performance: Performance = EAGER
    models: Mapping[str, ModelSpec] = field(default_factory=dict)  # named models
    safety_checker: Literal["auto", "off"] = "auto"  # off: no model's checker runs

    def spec(self, model: str) -> ModelSpec:
        """The spec a row's (or the default) `model` means: a named model or a reference."""
        return named_spec(model, self.models, self.safety_checker)

    @property
    def resolved_device(self) -> str:
        return self.device or default_device()

    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype) if self.dtype else default_dtype(self.resolved_device)


@dataclass(frozen=True)
class BatchOutcome:
    ok: int
    failed: int
    seconds: float
    flops: float = 0.0  # counted floating-point operations of the images made (`flops`)

    def __add__(self, other: BatchOutcome) -> BatchOutcome:
        return BatchOutcome(self.ok + other.ok, self.failed + other.failed,
                            self.seconds + other.seconds, self.flops + other.flops)  # fmt: skip


def _facts_for(inputs: SweepInputs):
    """The planner's model facts, of a named model or a reference: a model that cannot load
    fails its rows, in one line each, before any batch runs (not the manifest)."""

    def facts(model: str):
        try:
            return model_facts(inputs.spec(model), inputs.trust_pickle)
        except InvalidInput as error:
            raise ValueError(str(error) + unknown_name_hint(model, inputs.models)) from None

    return facts


def unknown_name_hint(model: str, models: Mapping[str, ModelSpec]) -> str:
    """For a `model` that failed as a reference: the names it might have meant."""
    if model in models or not models:
        return ""
    return f" (nor a name in `models`: {', '.join(sorted(models))})"


def plan_sweep(
    inputs: SweepInputs, shard: Shard = ALL, check_done: bool = True,
    vouched_by: str | None = None, hand_down: str | None = None,
) -> tuple[manifest.Manifest, SweepPlan]:  # fmt: skip
    """Read and validate the manifest, resolve its models, and plan the missing work of
    `shard` (default: all of it); without `check_done`, every image of it, reading nothing
    of the output. `vouched_by`, `hand_down`: a parent's verdict read, or written, by the
    check (`results.done_slots`); a shard given `vouched_by` validates and plans only the
    manifest rows its parent planned for it (`verdict.read_rows`), where it can.

    Raises `InvalidInput` when the manifest as a whole is unusable."""
    table = manifest.read_manifest(inputs.manifest)
    for warning in loras.misnamed_warnings(table.table.column_names):
        log.warning(warning)
    rows, ids = None, None  # a shard handed its parent's plan validates only its rows
    if vouched_by and shard.count > 1:
        rows = verdict.read_rows(inputs.out, vouched_by, shard.index, table.versions)
    if rows is None:  # a manifest unusable as a whole (duplicate ids) before the output
        ids = manifest.unique_row_ids(table.table, table.uri)
    done = SlotSet()  # what the output holds, read before the rows' jobs exist: less memory
    if check_done:
        done = results.done_slot_set(inputs.out, shard, vouched_by, hand_down)
        storage.remove_stale_temporaries(inputs.out)  # what a killed run was writing
    jobs, failures = manifest.validate_manifest(table, inputs.defaults,
                                                list(inputs.input_roots), rows, ids)  # fmt: skip
    batch_size = MAX_BATCH if inputs.batch_size == "auto" else inputs.batch_size  # split later
    plan = build_plan(jobs, failures, _facts_for(inputs), batch_size, done, shard)
    return table, plan


def generate_batches(
    inputs: SweepInputs, batches: list[PlannedBatch], run_id: str | None, on_batch=None,
    flow_run_id: str | None = None,
) -> BatchOutcome:  # fmt: skip
    """Generate `batches` in order; a background writer stores each batch's images, then
    its record shard (the marker, last), while the next batch is generated. Records carry
    the MLflow run `run_id` and the Prefect flow run `flow_run_id`."""
    seconds, work = 0.0, 0.0
    with BatchWriter(inputs.out) as writer:
        for planned in batches:
            loaded = load_model(inputs.spec(planned.model), inputs.device, inputs.torch_dtype(),
                                inputs.trust_pickle, inputs.performance)  # fmt: skip
            for batch in _fitted(inputs, loaded, planned):
                start = time.perf_counter()
                outputs = generate_each(loaded, batch.settings, [i.request for i in batch.images])
                elapsed = time.perf_counter() - start
                seconds += elapsed
                made = sum(not isinstance(output, Exception) for output in outputs)
                work += made * flops.image_flops(loaded.family, loaded.pipeline, batch.settings)
                records = pending_records(loaded, batch, elapsed, run_id, flow_run_id)
                writer.submit(batch, *_screened(outputs, records))
                if on_batch:
                    on_batch(len(batch.images))
        records = writer.close()
    ok = sum(r.status == "ok" for r in records)
    return BatchOutcome(ok=ok, failed=len(records) - ok, seconds=seconds, flops=work)


def _screened(outputs: list, records: list[ImageRecord]) -> tuple[list, list[ImageRecord]]:
    """The writer's images (or exceptions) and the records with the safety checker's
    verdicts, from `generate_each`'s `Screened` images (or exceptions)."""
    images = [o if isinstance(o, Exception) else o.image for o in outputs]
    records = [
        r if isinstance(o, Exception) else replace(r, nsfw_content_detected=o.nsfw_content_detected)
        for o, r in zip(outputs, records, strict=True)
    ]  # fmt: skip
    return images, records


def _fitted(inputs: SweepInputs, loaded, batch: PlannedBatch) -> list[PlannedBatch]:
    """`batch` as it runs: whole, or with `batch_size: auto` split into the largest batches
    the device's memory holds for its settings (measured once per model and settings)."""
    if inputs.batch_size != "auto":
        return [batch]
    n = memory.fitted_batch_size(
        loaded, batch.settings, batch.images[0].request, inputs.resolved_device, generate
    )
    return [replace(batch, images=batch.images[i : i + n]) for i in range(0, len(batch.images), n)]


def utilisation(outcome: BatchOutcome, inputs: SweepInputs) -> dict[str, float]:
    """Throughput metrics of generated images: images/s, achieved TFLOP/s and, where the
    device's peak is known, model FLOPs utilisation (achieved / peak, 0..1)."""
    if not outcome.seconds:
        return {}
    metrics = {"images_per_s": outcome.ok / outcome.seconds}
    if not outcome.flops:  # a sharded parent: its shards' runs have the figures
        return metrics
    achieved = outcome.flops / outcome.seconds
    metrics["achieved_tflops"] = achieved / 1e12
    metrics["tflop_per_image"] = outcome.flops / max(outcome.ok, 1) / 1e12
    if peak := flops.peak_flops(inputs.resolved_device, inputs.torch_dtype()):
        metrics["model_flops_utilization"] = achieved / peak
    return metrics


def runtime_params(inputs: SweepInputs) -> dict[str, str]:
    """What the images ran on, as MLflow parameters."""
    return {"device_name": flops.device_name(inputs.resolved_device),
            "torch_dtype": str(inputs.torch_dtype()).removeprefix("torch.")}  # fmt: skip


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
            warning=prompt_truncation_warning(loaded, image.request, batch.settings.task),
            seed=image.request.seed,
            model_ref=batch.model,
            model_digest=loaded.model.digest,
            scheduler=batch.settings.scheduler,
            duration_s=seconds / len(batch.images),
            image_sha256=None,
            mlflow_run_id=run_id,
            flow_run_id=flow_run_id,
            loras=[
                {"path": a.uri, "scale": a.scale, "sha256": a.sha256} for a in batch.settings.loras
            ]
            if batch.settings.loras
            else None,
        )  # fmt: skip
        for image in batch.images
    ]
