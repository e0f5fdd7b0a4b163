"""Class-prior generation (SPEC §6): N images of the class prompt through the sweep engine,
cached by content under `OUT/<key>/`."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow
from pydantic import BaseModel, Field, field_validator

from easel import tracking
from easel.data import limits, results, storage
from easel.data.limits import BatchSize, GuidanceScale, InferenceSteps, SchedulerChoice
from easel.data.priors import PriorSpec, prior_rows
from easel.flows.sweep import sweep_flow
from easel.flows.sweep_parameters import SweepParameters
from easel.models.engine.spec import ModelSpec, as_named, reference_value
from easel.orchestration.run_context import prefect_tags
from easel.tasks.priors import resolve_prior_spec_task, write_prior_manifest_task


class PriorsParameters(BaseModel):
    model_config = limits.PARAMETERS

    class_prompt: str = Field(min_length=1, description="the class: 'a photo of a dog'")
    num_images: int = Field(ge=1, le=100_000, description="images in the set")
    out: str = Field(description="cache root; the set goes to OUT/<key>/")
    model: str | ModelSpec = Field(
        "tiny-shapes", description="a model reference or a spec {path, variant, ...}"
    )
    negative_prompt: str | None = Field(None, description="negative prompt of every image")
    scheduler: SchedulerChoice = Field(None, description="default: the model's own")
    num_inference_steps: InferenceSteps = Field(
        limits.NUM_INFERENCE_STEPS, description="denoising steps"
    )
    # 1: no guidance, so the images are samples of the model's own class distribution, the
    # one DreamBooth's prior loss should preserve (see DreamBoothConfig.class_guidance_scale)
    guidance_scale: GuidanceScale = Field(1.0, description="1: unguided samples of the class")
    width: limits.OptionalSide = Field(None, description="unset: the model's native size")
    height: limits.OptionalSide = Field(None, description="unset: the model's native size")
    seed: int = Field(0, ge=0, description="image i uses seed + i")
    batch_size: BatchSize = Field(limits.BATCH_SIZE, description="images per pipeline call")
    experiment: str = Field("easel-priors", description="the MLflow experiment")
    show_progress: bool = Field(False, description="a progress bar on the terminal")

    @field_validator("model", mode="before")
    @classmethod
    def _model_spec(cls, value):
        return reference_value(value)

    def spec(self) -> PriorSpec:
        """The set asked for, the model's defaults still open."""
        return PriorSpec(
            model_digest=None, class_prompt=self.class_prompt,
            negative_prompt=self.negative_prompt, scheduler=self.scheduler,
            num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
            width=self.width, height=self.height, seed=self.seed,
        )  # fmt: skip


@dataclass(frozen=True)
class ClassPriors:
    folder: str  # OUT/<key>
    image_uris: list[str]  # images 0..N-1, in order
    generated_now: int


@flow(name="class-priors", log_prints=True)
def class_priors_flow(params: PriorsParameters) -> ClassPriors:
    """Generate (or find in the cache) N images of the class prompt."""
    spec = resolve_prior_spec_task(params.model, params.spec())
    folder = storage.join(params.out, spec.key)
    manifest = write_prior_manifest_task(folder, spec, params.num_images)
    logged = params.model_dump()
    name = tracking.run_name("class priors", repr(params.class_prompt), str(params.model))
    model, models = as_named(params.model)
    with tracking.start_run(params.experiment, name, logged, prefect_tags()):
        summary = sweep_flow(SweepParameters(  # its run nests under this one
            manifest=manifest, out=folder, model=model, models=models,
            batch_size=params.batch_size,
            experiment=params.experiment, show_progress=params.show_progress,
        ))  # fmt: skip
        tracking.log_metrics({"images": params.num_images, "generated_now": summary.generated_now,
                              "images_failed": summary.images_failed})  # fmt: skip
    if summary.images_failed:
        raise RuntimeError(
            f"{summary.images_failed} class-prior images failed; see {summary.results_uri}"
        )
    uris = [results.image_uri(folder, row["id"], 0) for row in prior_rows(spec, params.num_images)]
    return ClassPriors(folder=folder, image_uris=uris, generated_now=summary.generated_now)
