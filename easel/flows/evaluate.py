"""`easel eval`: the offline quality report of a shapes-world model (SPEC §8).

Each suite of `easel.models.shapes.evaluation.EVAL_SUITES` runs as one task; the report is a table
on the terminal, `report.json` in `--out`, and an MLflow run with every metric and the
suites' sample grids.

The DreamBooth suites (`evaluation.SUBJECT_SUITES`) score a fine-tuned `model` against
`base_model` on the subject it was taught (`instance_data`, `instance_prompt`,
`class_prompt`); they are the default when `instance_data` is given."""

from __future__ import annotations

from dataclasses import replace

from prefect import flow
from pydantic import BaseModel, Field, field_validator, model_validator

from easel import tracking
from easel.data import limits, storage
from easel.data.dreambooth import list_images
from easel.data.limits import GuidanceScale, InferenceSteps
from easel.errors import InvalidInput
from easel.models.engine.references import resolve_model_reference
from easel.models.shapes import evaluation
from easel.orchestration.run_context import prefect_tags

QUICK = {
    "adherence_images": 16,
    "guidance_images": 8,
    "negative_images": 8,
    "diversity_prompts": 2,
    "diversity_seeds": 3,
    "judge_images": 100,
    "subject_images": 8,
    "world_images": 128,
}
SUBJECT_FIELDS = ("base_model", "instance_data", "instance_prompt", "class_prompt")


class EvalParameters(BaseModel):
    model_config = limits.PARAMETERS

    model: str = Field("tiny-shapes", description="model reference (SPEC §4)")
    judge: str | None = Field(None, description="judge folder (default: the committed judge)")
    out: str = Field("easel-out/eval", description="folder for report.json and sample grids")
    suites: list[str] | None = Field(
        None, description="default: the DreamBooth suites with `instance_data`, else the others"
    )
    base_model: str | None = Field(None, description="the model `model` was fine-tuned from")
    instance_data: str | None = Field(None, description="folder of the subject's images")
    instance_prompt: str | None = Field(None, description="with the identifier: 'a sks circle'")
    class_prompt: str | None = Field(None, description="without it: 'a circle'")
    subject_images: int = Field(
        evaluation.EvalSettings.subject_images, ge=2, le=4096, description="per prompt and model"
    )
    guidance_scale: GuidanceScale = Field(
        evaluation.EvalSettings.guidance_scale, description="guidance of every image"
    )
    num_inference_steps: InferenceSteps = Field(
        evaluation.EvalSettings.num_inference_steps, description="denoising steps of every image"
    )
    seed: int = Field(0, ge=0, description="offsets every suite's seeds")
    quick: bool = Field(False, description="small samples: a smoke check, not a measurement")
    experiment: str = Field("easel-eval", description="the MLflow experiment")

    @field_validator("suites")
    @classmethod
    def _known_suites(cls, suites: list[str] | None) -> list[str] | None:
        unknown = [s for s in suites or [] if s not in evaluation.EVAL_SUITES]
        if unknown:
            raise ValueError(f"unknown suites {unknown}; known: {list(evaluation.EVAL_SUITES)}")
        return suites

    @model_validator(mode="after")
    def _default_suites(self) -> EvalParameters:
        if self.suites is None:
            chosen = evaluation.SUBJECT_SUITES if self.instance_data else evaluation.MODEL_SUITES
            self.suites = list(chosen)
        return self

    def subject(self) -> dict[str, str] | None:
        """`instance_data`, `instance_prompt`, `class_prompt` when a DreamBooth suite is chosen
        (None otherwise); one InvalidInput naming the first missing field or empty folder."""
        chosen = [s for s in self.suites if s in evaluation.SUBJECT_SUITES]
        if not chosen:
            return None
        for name in SUBJECT_FIELDS:
            if not getattr(self, name):
                raise InvalidInput(
                    f"suite {chosen[0]!r} needs `{name}` (--{name.replace('_', '-')}) but it "
                    f"is not set"
                )
        if not storage.exists(self.instance_data) or not list_images(self.instance_data):
            raise InvalidInput(
                f"`instance_data` must be a folder of images but {self.instance_data!r} "
                f"does not exist or holds none"
            )
        return {name: getattr(self, name) for name in SUBJECT_FIELDS[1:]}

    def settings(self) -> evaluation.EvalSettings:
        settings = evaluation.EvalSettings(
            guidance_scale=self.guidance_scale,
            num_inference_steps=self.num_inference_steps,
            seed=self.seed,
            subject_images=self.subject_images,
        )
        return replace(settings, **QUICK) if self.quick else settings


@flow(name="eval")
def eval_flow(params: EvalParameters) -> dict:
    """Resolve the model, run each suite as a task, write and log the report."""
    from easel.tasks.evaluate import eval_suite_task, write_report_task

    resolved = resolve_model_reference(params.model)
    subject = params.subject()
    base = resolve_model_reference(params.base_model) if subject else None
    settings = params.settings()
    logged = (
        {"model": params.model, "model_digest": resolved.digest,
         "judge": params.judge or "committed"}
        | ({"base_model": params.base_model, "base_model_digest": base.digest} if base else {})
        | (subject or {})
        | {f"settings.{k}": v for k, v in settings.__dict__.items()}
    )  # fmt: skip
    name = f"eval {params.model}"
    with tracking.start_run(params.experiment, name, logged, prefect_tags()) as run_id:
        suites = {
            name: eval_suite_task(
                name, resolved.path, params.judge, settings, params.out,
                base_model_path=base.path if base else None, subject=subject,
            )  # fmt: skip
            for name in params.suites
        }
        metrics = {k: v for suite in suites.values() for k, v in suite["metrics"].items()}
        tracking.log_metrics(metrics)
        report = {
            "model": params.model,
            "model_digest": resolved.digest,
            "base_model": params.base_model if base else None,
            "subject": subject,
            "settings": settings.__dict__,
            "metrics": metrics,
            "rows": [row for suite in suites.values() for row in suite["rows"]],
            "mlflow_run_id": run_id,
        }
        report_path = write_report_task(report, params.out)
        tracking.log_artifact(report_path)
        for suite in suites.values():
            if suite["grid"]:
                tracking.log_artifact(suite["grid"], artifact_path="grids")
    return report | {"report_path": report_path}
