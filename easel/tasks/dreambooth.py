"""DreamBooth tasks: thin adapters over `easel.data.dreambooth`, `easel.models.dreambooth`
and the engine.

Layout under the config's `output` folder:
`checkpoints/step=NNNNNNNN.ckpt` (+ `training_run_id`, the MLflow run a rerun continues),
`pipeline/` (the exported diffusers directory), `lora/` (method lora: the adapter alone,
`pytorch_lora_weights.safetensors`, for `loras` on the base model), `validation/` (a sweep),
and `class_priors/` (the content-addressed class-prior cache, unless the config names another).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from prefect import task

from easel import tracking
from easel.data import manifest, storage
from easel.data.dreambooth import (
    caption_uri,
    check_instance_data,
    images_digest,
    list_images,
    read_captions,
)
from easel.errors import InvalidInput, ModelReferenceError
from easel.models.dreambooth import resume
from easel.models.dreambooth.config import DreamBoothConfig, words
from easel.models.engine import serving, stable_diffusion
from easel.models.engine.loading import resolve_family
from easel.models.engine.references import ResolvedModel, resolve_model_reference
from easel.models.engine.spec import ModelReference, ModelSpec, as_named
from easel.models.lightning import last_complete_checkpoint

EXPERIMENT = "easel-dreambooth"


def checkpoint_dir(config: DreamBoothConfig) -> str:
    return storage.join(config.output, "checkpoints")


def pipeline_dir(config: DreamBoothConfig) -> str:
    return storage.join(config.output, "pipeline")


def lora_dir(config: DreamBoothConfig) -> str:
    return storage.join(config.output, "lora")


@dataclass(frozen=True)
class TrainingInputs:
    instance_images: list[str]
    snapshot: dict  # what every checkpoint records (resume.snapshot)
    changes: list  # list[resume.Change]: what a resume honours of an edited config


def resolve_model(model: ModelReference) -> ResolvedModel:
    """A model reference or spec resolved to a local diffusers folder (`.path`, its weight
    files' `.variant`); `ModelReferenceError` unless Stable Diffusion."""
    resolved = resolve_model_reference(model)
    family = resolve_family(resolved)
    if family is not stable_diffusion.FAMILY:
        raise ModelReferenceError(
            f"`model` {str(model)!r} is a {family.name} model; DreamBooth fine-tuning "
            "runs on Stable Diffusion 1.x/2.x models"
        )
    return resolved


def check_inputs(config: DreamBoothConfig, model_digest: str) -> TrainingInputs:
    """Everything about the config that needs I/O, before any work: the output folder, the
    instance and class images, and what a resume from the last checkpoint may honour."""
    storage.check_output_folder(config.output, "output")
    images = check_instance_data(config.subject.instance_data)
    class_data = config.prior_preservation.class_data
    if class_data is not None and config.prior_preservation.class_images_used:
        if not storage.exists(class_data) or not list_images(class_data):
            raise InvalidInput(
                f"config field `prior_preservation.class_data` must be a folder of images but "
                f"{class_data!r} holds none"
            )
    captions = check_captions(config, images)
    snapshot = resume.snapshot(config, model_digest, images_digest(images, captions))
    checkpoint = last_complete_checkpoint(checkpoint_dir(config))
    return TrainingInputs(images, snapshot, resume.check_resume(snapshot, checkpoint))


def check_captions(config: DreamBoothConfig, images: list[str]) -> dict[str, str]:
    """The instance images' own captions (`{image uri: caption}`, those that differ from
    `instance_prompt`), each checked to name the subject by its identifier."""
    if not config.subject.captions:
        return {}
    captions = dict(zip(images, read_captions(images, config.subject.instance_prompt), strict=True))
    for uri, caption in captions.items():
        if config.subject.identifier.lower() not in words(caption):
            raise InvalidInput(
                f"config field `subject.instance_data`: caption {caption_uri(uri)!r} must contain "
                f"the identifier {config.subject.identifier!r} as a word but is {caption!r}"
            )
    return {uri: c for uri, c in captions.items() if c != config.subject.instance_prompt}


@task
def check_inputs_task(config: DreamBoothConfig, model_digest: str) -> TrainingInputs:
    """Validate the instance images (and class images when given) and a resume."""
    return check_inputs(config, model_digest)


@task
def resolve_model_task(model: ModelReference) -> ResolvedModel:
    """A model reference resolved to a local folder, refused unless Stable Diffusion."""
    return resolve_model(model)


@task
def write_manifest_task(uri: str, rows: list[dict]) -> str:
    """Write a sweep manifest (Parquet) atomically."""
    return manifest.write_manifest(uri, rows)


def validation_rows(config: DreamBoothConfig, trained_model: str) -> list[dict]:
    """Each validation prompt on the trained and the base model, same seeds (a base given
    as a spec by its name in `base_models`)."""
    base, _ = as_named(config.model)
    rows = []
    for i, prompt in enumerate(config.validation.prompts):
        for tag, model in (("trained", trained_model), ("base", base)):
            rows.append(
                {
                    "id": f"{tag}-{i:03d}",
                    "prompt": prompt,
                    "model": model,
                    "seed": config.train.seed + i,
                    "num_images": config.validation.images_per_prompt,
                }
            )
    return rows


def base_models(config: DreamBoothConfig) -> dict[str, ModelSpec]:
    """The sweep key `models` that `validation_rows`' base rows need."""
    return as_named(config.model)[1]


@task
def class_images_task(config: DreamBoothConfig) -> list[str]:
    """The user's class images (`class_data`)."""
    return list_images(config.prior_preservation.class_data)


@task
def train_task(
    config: DreamBoothConfig,
    model: ResolvedModel,
    inputs: TrainingInputs,
    class_images: list[str],
    parent_run_id: str | None,
) -> str:
    """Train or resume to `max_steps`, logging to the training run (a child of the flow's
    run, the same one for every rerun, its parameters the first run's config and a tag per
    change a resume honoured); return the final checkpoint path."""
    from easel.models.dreambooth.training import train

    run_file = storage.join(checkpoint_dir(config), "training_run_id")
    run_id = tracking.resumable_child_run(
        run_file, parent_run_id, f"training {config.subject.identifier!r} ({config.train.method}, "
        f"{config.train.max_steps} steps)", EXPERIMENT, params=inputs.snapshot
    )
    for change in inputs.changes:
        print(f"resuming with a changed config: {change}")
        tracking.set_tags(run_id, {f"easel.resumed.{change.key}": str(change)})
    return train(
        config,
        model.path,
        inputs.instance_images,
        class_images or None,
        checkpoint_dir(config),
        logger=tracking.lightning_logger(run_id),
        callbacks=validation_callbacks(config, model.path, run_id, model.variant),
        before_checkpoint=tracking.flush_metrics,
        snapshot=inputs.snapshot,
        progress="bar" if sys.stderr.isatty() else "lines",
        variant=model.variant,
    )


@task
def log_training_summary(config: DreamBoothConfig, run_id: str) -> None:
    """On the flow's run `run_id`: the training run's last metric values as
    `training/<name>`, `steps`, and the validation grids the training run logged."""
    run_file = storage.join(checkpoint_dir(config), "training_run_id")
    training_run_id = storage.read_bytes(run_file).decode()
    metrics = {f"training/{k}": v for k, v in tracking.latest_metrics(training_run_id).items()}
    tracking.log_metrics({"steps": config.train.max_steps, **metrics})
    tracking.copy_images(training_run_id, run_id)


def validation_callbacks(
    config: DreamBoothConfig, model_dir: str, run_id: str, variant: str | None = None
) -> list:
    """The grid every `validation_every_n_steps` steps of the model in `model_dir` (its
    weight files' `variant`), logged to the training run `run_id` as the image `validation`
    at its step; none when not asked for."""
    from easel.models.dreambooth.validation import ValidationGrid

    if not (config.validation.every_n_steps and config.validation.prompts):
        return []
    seeds = [config.train.seed + k for k in range(config.validation.images_per_prompt)]

    def log_grid(image, step: int) -> None:
        tracking.log_image(run_id, image, "validation", step)

    return [ValidationGrid(
        model_dir, config.validation.prompts, seeds, config.validation.inference_steps,
        config.train.resolution, config.validation.every_n_steps, log_grid, variant,
    )]  # fmt: skip


@task
def export_task(config: DreamBoothConfig, checkpoint: str, model: ResolvedModel):
    """Export the final checkpoint as a diffusers pipeline directory (and, method lora, the
    adapter alone) from the base model's resolved folder; returns `export.Exported`."""
    from easel.models.dreambooth.export import export

    return export(checkpoint, model.path, str(config.model), pipeline_dir(config),
                  lora_dir(config), model.variant)  # fmt: skip


@task
def log_model_task(config: DreamBoothConfig, pipeline: str) -> str:
    """The exported pipeline as a model of the flow's run, by its location; returns the
    model's id (`register_task` logs and registers a copy instead)."""
    return tracking.log_external_model(f"dreambooth-{config.subject.identifier}", pipeline,
                                       "diffusers-pipeline")  # fmt: skip


@task
def register_task(pipeline: str, register_as: str) -> str:
    """Register the exported pipeline in the MLflow model registry; return its reference."""
    local = resolve_model_reference(pipeline).path  # an object store's: the cached copy
    return tracking.register_model(local, register_as, serving.load_registered, serving.predict)
