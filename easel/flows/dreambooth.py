"""The DreamBooth flow (SPEC §6): validate → class priors → train → export → validation
sweep → (register). Running the same command again resumes where it stopped."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from prefect import flow

from easel import tracking
from easel.errors import InvalidInput
from easel.flows.priors import PriorsParameters, class_priors_flow
from easel.flows.sweep import sweep_flow
from easel.flows.sweep_parameters import SweepParameters
from easel.models.dreambooth.config import DreamBoothConfig
from easel.orchestration import locks
from easel.orchestration.run_context import prefect_tags
from easel.tasks.dreambooth import (
    EXPERIMENT,
    base_models,
    check_inputs_task,
    class_images_task,
    export_task,
    log_model_task,
    log_training_summary,
    register_task,
    resolve_model_task,
    train_task,
    validation_rows,
    write_manifest_task,
)


@dataclass(frozen=True)
class DreamBoothResult:
    pipeline: str  # the exported diffusers directory, usable as --model
    lora: str | None  # method lora: the adapter file, usable in `loras` on the base model
    checkpoint: str
    identifier: str
    validation_contact_sheet: str | None
    registered: str | None  # models:/NAME/VERSION
    mlflow_run_id: str


@flow(name="dreambooth", log_prints=True)
def dreambooth_flow(config: DreamBoothConfig) -> DreamBoothResult:
    """Fine-tune `config.model` on the instance images, bound to the identifier."""
    model = resolve_model_task(config.model)
    inputs = check_inputs_task(config, model.digest)
    tags = prefect_tags()
    with holding_output(config.output), \
         tracking.start_run(EXPERIMENT, run_name(config), config.model_dump(), tags) as run_id:
        class_images: list[str] = []
        prior = config.prior_preservation
        if prior.class_images_used and prior.class_data:
            class_images = class_images_task(config)
        elif prior.class_images_used:
            priors = class_priors_flow(
                PriorsParameters(
                    class_prompt=config.subject.class_prompt,
                    num_images=prior.num_class_images,
                    guidance_scale=prior.class_guidance_scale,
                    out=prior.class_priors_dir or f"{config.output}/class_priors",
                    model=config.model,
                    seed=config.train.seed,
                    experiment=EXPERIMENT,
                )
            )
            class_images = priors.image_uris
        checkpoint = train_task(config, model, inputs, class_images, run_id)
        log_training_summary(config, run_id)
        exported = export_task(config, checkpoint, model)
        pipeline = exported.pipeline
        tracking.set_tags(run_id, {"easel.pipeline": pipeline, "easel.checkpoint": checkpoint,
                                   **({"easel.lora": exported.lora} if exported.lora else {})})
        sheet = None
        if config.validation.prompts:
            manifest = write_manifest_task(
                f"{config.output}/validation/manifest.parquet", validation_rows(config, pipeline)
            )
            validation = sweep_flow(
                SweepParameters(
                    manifest=manifest,
                    out=f"{config.output}/validation",
                    model=pipeline,
                    models=base_models(config),
                    num_inference_steps=config.validation.inference_steps,
                    experiment=EXPERIMENT,
                )
            )
            sheet = validation.contact_sheet_uri
            if sheet:
                tracking.log_artifact(sheet, "validation")
        registered = None
        if config.register_as:
            registered = register_task(pipeline, config.register_as)
        else:
            log_model_task(config, pipeline)
    result = DreamBoothResult(
        mlflow_run_id=run_id,
        pipeline=pipeline,
        lora=exported.lora,
        checkpoint=checkpoint,
        identifier=config.subject.identifier,
        validation_contact_sheet=sheet,
        registered=registered,
    )
    _publish_summary(config, result)
    return result


def run_name(config: DreamBoothConfig) -> str:
    """E.g. "dreambooth 'sks' from subject-star on tiny-shapes"."""
    subject = config.subject
    named = f"{subject.identifier!r} from {tracking.short_name(subject.instance_data)}"
    return tracking.run_name("dreambooth", named, str(config.model))


@contextlib.contextmanager
def holding_output(output: str) -> Iterator[None]:
    """Hold the output folder for the run (`locks.hold_folder`): one live run trains into a
    folder at a time. Raises `InvalidInput` naming the folder and its live holder. MLflow
    runs an ended holder left RUNNING (a process killed -9) are ended FAILED."""
    from prefect.runtime import flow_run

    with contextlib.ExitStack() as stack:
        try:
            previous = stack.enter_context(locks.hold_folder("dreambooth", output))
        except locks.Busy as busy:
            raise InvalidInput(
                f"`output` {output} is held by another live run ({busy}): wait for it, or "
                f"train into another folder; a holder that died lets go within "
                f"{locks.LEASE_SECONDS} s"
            ) from None
        if previous and previous != str(flow_run.id):
            tracking.end_crashed_attempts(previous, "a later run took over its output folder")
        yield


def _publish_summary(config: DreamBoothConfig, result: DreamBoothResult) -> None:
    from prefect.artifacts import create_markdown_artifact

    lines = [
        f"# DreamBooth: `{config.subject.instance_prompt}`",
        "",
        f"- identifier: `{result.identifier}` (use it in prompts, e.g. "
        f"`{config.subject.instance_prompt}`)",
        f"- pipeline (use as `--model`): `{result.pipeline}`",
        *([f"- LoRA adapter (use in `loras` on `{config.model}`): `{result.lora}`"]
          if result.lora else []),
        f"- final checkpoint: `{result.checkpoint}` ({config.train.max_steps} steps, "
        f"method `{config.train.method}`)",
        f"- MLflow: {tracking.run_link(result.mlflow_run_id)}",
    ]
    if result.registered:
        lines.append(f"- registered: `{result.registered}`")
    if result.validation_contact_sheet:
        lines.append(
            f"- validation (trained vs base, same seeds): `{result.validation_contact_sheet}`"
        )
    create_markdown_artifact(
        "\n".join(lines), key="dreambooth-summary", description="DreamBooth summary"
    )
