"""The sweep flow (SPEC §5): a Parquet manifest in, images + results + MLflow run out."""

from __future__ import annotations

import argparse
import base64
import io
import sys
import time
from typing import Literal

from prefect import flow
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from pydantic import BaseModel, Field, field_validator, model_validator

from easel import tracking
from easel.data import contact_sheet, limits, manifest, storage
from easel.data.batching import ALL, Shard, chunk_batches
from easel.data.limits import (
    BatchSizeSetting,
    FusionWeights,
    GuidanceScale,
    InferenceSteps,
    PriorInferenceSteps,
    SchedulerName,
    Shards,
)
from easel.data.manifest import SweepDefaults
from easel.data.results import SweepSummary
from easel.errors import InvalidInput
from easel.flows.config import load_parameters
from easel.flows.run_context import (
    PLACEHOLDER,
    check_placeholders,
    expand_placeholders,
    prefect_tags,
)
from easel.flows.shards import run_shards
from easel.models.engine.performance import Performance
from easel.models.engine.references import resolve_model_reference
from easel.models.engine.sweep import BatchOutcome, SweepInputs, runtime_params, utilisation
from easel.progress import ProgressLine
from easel.tasks import locks
from easel.tasks.sweep import generate_batches_task, plan_sweep_task, write_results_task


class SweepParameters(BaseModel):
    """Everything a sweep run takes; validated before any work."""

    model_config = limits.PARAMETERS

    manifest: str = Field(description="Parquet file, folder or glob (any fsspec URI)")
    out: str = Field(
        description="output folder (any fsspec URI); `{scheduled_date}` (YYYY-MM-DD, UTC) and "
        "`{flow_run_name}` in it are filled in from the run, so scheduled runs keep their "
        "outputs apart (any other `{word}` is refused); a local folder is made absolute"
    )
    model: str = Field("tiny-shapes", description="default for rows without a `model`")
    batch_size: BatchSizeSetting = Field(
        limits.BATCH_SIZE, description="images per pipeline call, or `auto`: the largest the "
        "device's free memory holds, measured for each model and settings (CUDA; elsewhere "
        f"{limits.BATCH_SIZE})",
    )  # fmt: skip
    guidance_scale: GuidanceScale = Field(
        limits.GUIDANCE_SCALE, description="default for rows without a `guidance_scale`"
    )
    num_inference_steps: InferenceSteps = Field(
        limits.NUM_INFERENCE_STEPS, description="default for rows without `num_inference_steps`"
    )
    scheduler: SchedulerName | None = Field(
        None, description="default for rows without a `scheduler` (None: the model's own)"
    )
    prior_guidance_scale: GuidanceScale | None = Field(
        None, description="Kandinsky's prior: default guidance (None: the model card's "
        f"`prior_guidance_scale`, else diffusers' {limits.PRIOR_GUIDANCE_SCALE:g})",
    )  # fmt: skip
    prior_num_inference_steps: PriorInferenceSteps = Field(
        limits.PRIOR_NUM_INFERENCE_STEPS, description="Kandinsky's prior: default steps"
    )
    fusion_weights: FusionWeights = Field(
        "sum_to_one", description="Kandinsky fusion: `fusion_inputs` weights divided by their "
        "sum, so the mixed embedding keeps the scale the decoder knows (`sum_to_one`), or as "
        "written (`raw`: diffusers' `interpolate`, which sums the weighted embeddings as they are)",
    )  # fmt: skip
    max_pixels: int = Field(
        limits.DEFAULT_MAX_PIXELS, ge=limits.MIN_MAX_PIXELS,
        description="pixel budget for width x height",
    )  # fmt: skip
    input_roots: list[str] = Field(
        default_factory=list, description="folders init, mask and fusion images may come from, "
        "besides the manifest's",
    )  # fmt: skip
    device: str | None = Field(None, description="torch device (default: cuda if present)")
    dtype: Literal["float32", "float16", "bfloat16"] | None = Field(
        None, description="weights' dtype (default: float16 on cuda, else float32)"
    )
    trust_pickle: bool = Field(False, description="allow pickle (.bin/.ckpt) weights")
    performance: Performance = Field(
        Performance(), description="the fast path: compile, channels_last, attention_backend, "
        "vae_dtype (docs/performance.md)",
    )  # fmt: skip
    experiment: str = Field("easel-sweep", description="the MLflow experiment")
    show_progress: bool = Field(False, description="a progress bar on the terminal")
    images_per_task: int = Field(
        256, ge=1, le=100_000, description="images per Prefect task (a retry unit)"
    )
    shards: Shards = Field(
        1, description="flow runs the work is split into, by content (the same on every "
        "rerun): a deployment's run starts each on any worker of its pool, a run from a shell "
        "runs them one after the other; runs into one output should use the same number",
    )  # fmt: skip
    shard: int | None = Field(
        None, ge=0, lt=limits.MAX_SHARDS,
        description="set by the parent run: the one shard this run generates (leave empty)",
    )  # fmt: skip
    parent_mlflow_run_id: str | None = Field(
        None, description="set by the parent run: its MLflow run (leave empty)"
    )

    @field_validator("out")
    @classmethod
    def _placeholders_known_and_local_folders_absolute(cls, out: str) -> str:
        """A misspelt placeholder refused; a local folder made absolute, so that the
        results' `image_uri`s do not depend on where they are read from."""
        return storage.absolute(check_placeholders(out, "out"))

    @model_validator(mode="after")
    def _shard_in_range(self):
        if self.shard is not None and self.shard >= self.shards:
            raise ValueError(f"`shard` {self.shard} must be below `shards` ({self.shards})")
        return self

    def inputs(self) -> SweepInputs:
        defaults = SweepDefaults(
            model=self.model, guidance_scale=self.guidance_scale,
            num_inference_steps=self.num_inference_steps, max_pixels=self.max_pixels,
            scheduler=self.scheduler, prior_guidance_scale=self.prior_guidance_scale,
            prior_num_inference_steps=self.prior_num_inference_steps,
            fusion_weights=self.fusion_weights,
        )  # fmt: skip
        return SweepInputs(
            manifest=self.manifest, out=self.out, defaults=defaults,
            input_roots=tuple(self.input_roots), batch_size=self.batch_size, device=self.device,
            dtype=self.dtype, trust_pickle=self.trust_pickle, performance=self.performance,
        )  # fmt: skip


@flow(name="sweep", log_prints=True)
def sweep_flow(params: SweepParameters) -> SweepSummary | BatchOutcome:
    """Validate the manifest, generate the missing images chunk by chunk (split into
    `shards` flow runs when asked), record everything, merge `results.parquet`."""
    params = params.model_copy(update={"out": expand_placeholders(params.out)})
    storage.check_output_folder(params.out, "out")
    if params.shard is not None:
        return _shard_run(params)
    inputs = params.inputs()
    sharded = params.shards > 1
    # the manifest checked before any MLflow run; what is missing, the shard plans in its hold
    table, plan = plan_sweep_task(inputs, check_done=sharded)
    tags = prefect_tags()
    models = sorted({batch.model for batch in plan.batches}) or [params.model]
    name = tracking.run_name("sweep", tracking.short_name(params.manifest), *models)
    logged = {**params.model_dump(), **runtime_params(inputs)}
    with tracking.start_run(params.experiment, name, logged, tags) as run_id:
        progress = Progress(params.out, params.show_progress)
        if sharded:
            progress.start(plan.pending_images)
            outcome = run_shards(params, plan, run_id, progress, sweep_flow)
        else:
            outcome, plan = _generate_shard(inputs, ALL, run_id, progress, params)
        progress.close()
        summary = write_results_task(inputs, table, plan, outcome.ok)
        _log_to_mlflow(summary, plan.pending_images, outcome)
        tracking.log_metrics(utilisation(outcome, inputs))
    _publish_artifacts(summary, run_id)
    return summary


def _generate_shard(inputs: SweepInputs, shard: Shard, run_id: str, progress, params):
    """Hold the shard of the output (a second run reaching it waits, then finds it done),
    plan what is still missing in it, and generate it chunk by chunk. Returns the outcome
    and the plan."""
    name = locks.lock_name("sweep", inputs.out, f"{shard.index}-of-{shard.count}")
    outcome = BatchOutcome(ok=0, failed=0, seconds=0.0)
    with locks.hold(name):
        _, plan = plan_sweep_task(inputs, shard)
        on_batch = None
        if progress:
            progress.start(plan.pending_images)
            on_batch = progress.advance
        for chunk in chunk_batches(plan.batches, params.images_per_task):
            outcome = outcome + generate_batches_task(inputs, chunk, run_id, on_batch)
    return outcome, plan


def _shard_run(params: SweepParameters) -> BatchOutcome:
    """One shard, as its own flow run: an MLflow child run of the parent's, with its figures."""
    shard = Shard(params.shard, params.shards)
    name = f"sweep shard {shard.index + 1}/{shard.count}"
    inputs = params.inputs()
    logged = {**params.model_dump(), **runtime_params(inputs)}
    with tracking.start_run(params.experiment, name, logged, prefect_tags(),
                            parent_run_id=params.parent_mlflow_run_id) as run_id:  # fmt: skip
        outcome, _ = _generate_shard(inputs, shard, run_id, None, params)
        tracking.log_metrics({"images_generated": outcome.ok, "images_failed": outcome.failed,
                              "generation_seconds": outcome.seconds,
                              **utilisation(outcome, inputs)})  # fmt: skip
    return outcome


class Progress:
    """A terminal progress bar (elsewhere, a progress line every ~10 s: a log file gets no
    escape codes), and the Prefect progress artifact updated every ~10 s."""

    def __init__(self, description: str, show_bar: bool):
        self.description, self.show_bar = description, show_bar
        self.total, self.done, self.bar, self.line, self.artifact = 0, 0, None, None, None

    def start(self, total: int) -> None:
        from tqdm import tqdm

        self.total, self.reported_at = total, time.monotonic()
        self.bar = tqdm(total=total, unit="img", desc="sweep", disable=not self.show_bar)
        self.line = None if self.show_bar else ProgressLine("sweep", total, "images")
        if self.line and total:
            self.line.update(0)  # the rate counts from here (a one-batch sweep has one too)
        start = 0.0 if total else 100.0
        self.artifact = create_progress_artifact(
            start, key="sweep-progress", description=self.description
        )

    def advance(self, images: int) -> None:
        self.done += images
        self.bar.update(images)
        if self.line:
            self.line.update(self.done)
        if time.monotonic() - self.reported_at > 10.0:  # each update is an API call
            self._report()

    def _report(self) -> None:
        self.reported_at = time.monotonic()
        update_progress_artifact(self.artifact, 100.0 * self.done / max(1, self.total))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.total:
            self._report()


def _log_to_mlflow(summary: SweepSummary, pending: int, outcome: BatchOutcome) -> None:
    tracking.log_metrics({
        "images_ok": summary.images_ok, "images_failed": summary.images_failed,
        "rows": summary.rows, "rows_failed": summary.rows_failed, "failures": summary.rows_failed,
        "images_generated": outcome.ok, "images_pending_at_start": pending,
        "generation_seconds": outcome.seconds,
    })  # fmt: skip
    tracking.log_artifact(summary.results_uri)
    if summary.contact_sheet_uri:
        tracking.log_artifact(summary.contact_sheet_uri)


def _publish_artifacts(summary: SweepSummary, mlflow_run_id: str) -> None:
    import pyarrow.parquet as pq

    with io.BytesIO(storage.read_bytes(summary.results_uri)) as f:
        rows = pq.read_table(f).to_pylist()
    shown = ("id", "image_index", "status", "error", "seed", "scheduler", "image_uri")
    create_table_artifact(
        [{k: row.get(k) for k in shown} for row in rows[:500]], key="sweep-results",
        description=f"{summary.results_uri} ({len(rows)} rows; the first 500 shown)",
    )  # fmt: skip
    markdown = (
        f"# Sweep into `{summary.out}`\n\n| | |\n|---|---|\n| rows | {summary.rows} |\n"
        f"| images ok | {summary.images_ok} |\n| images failed | {summary.images_failed} |\n"
        f"| rows failed | {summary.rows_failed} |\n| generated by this run | "
        f"{summary.generated_now} |\n\nResults: `{summary.results_uri}`\n\n"
        f"MLflow: {tracking.run_link(mlflow_run_id)}\n"
    )
    if summary.contact_sheet_uri:
        png, factor = contact_sheet.embeddable_png(storage.read_bytes(summary.contact_sheet_uri))
        scale = "" if factor == 1 else f" (1/{factor} of its size: the whole is in the folder)"
        markdown += (f"\nContact sheet: `{summary.contact_sheet_uri}`{scale}\n\n"
                     f"![contact sheet](data:image/png;base64,{base64.b64encode(png).decode()})\n")
    create_markdown_artifact(markdown, key="sweep-summary", description="sweep summary")


# --- CLI -----------------------------------------------------------------------------


def run_sweep_command(args: argparse.Namespace) -> int:
    overrides = {
        "manifest": args.manifest, "out": args.out, "model": args.model,
        "batch_size": args.batch_size, "shards": args.shards, "input_roots": args.input_roots,
        "trust_pickle": args.trust_pickle, "show_progress": sys.stderr.isatty(),
    }  # fmt: skip
    params = load_parameters(SweepParameters, args.config, overrides,
                             {"input_roots": "--input-root"})  # fmt: skip
    summary = run_sweep(params)
    print_summary(summary)
    return 1 if summary.rows_failed else 0


def run_sweep(params: SweepParameters) -> SweepSummary:
    """Check the manifest as a whole first (exit 2, no flow run, nothing generated), then run
    the flow, which validates each row (a bad row fails alone)."""
    checked = manifest.check_manifest(params.manifest)
    if not PLACEHOLDER.search(params.out):  # else known once the flow run is
        storage.check_output_folder(params.out, "out")
    if manifest.uses_default(checked.table, "model"):  # a default no row can use: refused whole
        try:
            resolve_model_reference(params.model, params.trust_pickle)
        except InvalidInput as error:
            raise InvalidInput(f"`model` (rows without their own): {error}") from None
    return sweep_flow(params)


def print_summary(summary: SweepSummary) -> None:
    print(
        f"images:        {summary.out}/images  ({summary.images_ok} ok, "
        f"{summary.images_failed} failed, {summary.generated_now} generated now)"
    )
    print(f"results:       {summary.results_uri}")
    if summary.contact_sheet_uri:
        print(f"contact sheet: {summary.contact_sheet_uri}")
    print(f"mlflow runs:   {tracking.tracking_uri()}")
    if summary.failures:
        print(
            f"failed: {summary.images_failed} images in {summary.rows_failed} rows (the first "
            f"{len(summary.failures)} below; every one is in results.parquet):", file=sys.stderr,
        )  # fmt: skip
        for failure in summary.failures:
            print(f"  {failure}", file=sys.stderr)
