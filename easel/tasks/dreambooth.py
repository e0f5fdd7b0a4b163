"""DreamBooth tasks: thin adapters over `easel.data.dreambooth` and `easel.models`.

Layout under the config's `output` folder:
`checkpoints/step=NNNNNNNN.ckpt` (+ `training_run_id`, the MLflow run a rerun continues),
`pipeline/` (the exported diffusers directory), `validation/` (a sweep), and `class_priors/`
(the content-addressed class-prior cache, unless the config names another).
"""

from __future__ import annotations

import os
import sys

import pyarrow as pa
from prefect import task

from easel.data import storage
from easel.data.dreambooth import check_instance_data
from easel.data.results import parquet_bytes
from easel.errors import InvalidInput
from easel.models.dreambooth.config import DreamBoothConfig


def checkpoint_dir(config: DreamBoothConfig) -> str:
    return os.path.join(config.output, "checkpoints")


def pipeline_dir(config: DreamBoothConfig) -> str:
    return os.path.join(config.output, "pipeline")


def check_inputs(config: DreamBoothConfig) -> list[str]:
    """Everything about the config that needs I/O; returns the instance image URIs."""
    if not storage.is_local(config.output) or "://" in config.output:
        raise InvalidInput(
            f"config field `output` must be a local folder (checkpoints are renamed "
            f"into place) but is {config.output!r}"
        )
    images = check_instance_data(config.instance_data)
    if config.class_data is not None and config.prior_preservation:
        from easel.data.dreambooth import list_images

        if not storage.exists(config.class_data) or not list_images(config.class_data):
            raise InvalidInput(
                f"config field `class_data` must be a folder of images but "
                f"{config.class_data!r} holds none"
            )
    return images


@task
def check_inputs_task(config: DreamBoothConfig) -> list[str]:
    """Validate the instance images (and class images when given)."""
    return check_inputs(config)


@task
def resolve_model_task(model: str) -> str:
    """The local diffusers directory of a model reference, refused unless Stable Diffusion."""
    from easel.data.jobs import FAMILY_NAMES
    from easel.errors import ModelReferenceError
    from easel.models.loading import detect_family
    from easel.models.references import resolve_model_reference

    path = resolve_model_reference(model).path
    if (family := detect_family(path)) != "sd":
        raise ModelReferenceError(
            f"`model` {model!r} is a {FAMILY_NAMES[family]} model; DreamBooth fine-tuning "
            "runs on Stable Diffusion 1.x/2.x models"
        )
    return path


@task
def write_manifest_task(uri: str, rows: list[dict]) -> str:
    """Write a sweep manifest (Parquet) atomically."""
    storage.write_bytes_atomic(uri, parquet_bytes(pa.Table.from_pylist(rows)))
    return uri


def validation_rows(config: DreamBoothConfig, trained_model: str) -> list[dict]:
    """Each validation prompt on the trained and the base model, same seeds."""
    rows = []
    for i, prompt in enumerate(config.validation_prompts):
        for tag, model in (("trained", trained_model), ("base", config.model)):
            rows.append(
                {
                    "id": f"{tag}-{i:03d}",
                    "prompt": prompt,
                    "model": model,
                    "seed": config.seed + i,
                    "num_images": config.validation_images_per_prompt,
                }
            )
    return rows


@task
def class_images_task(config: DreamBoothConfig) -> list[str]:
    """The user's class images (`class_data`)."""
    from easel.data.dreambooth import list_images

    return list_images(config.class_data)


def _training_run_id(config: DreamBoothConfig, parent_run_id: str | None) -> str:
    """The MLflow run of this training: created once, reused by every rerun."""
    import mlflow

    run_file = os.path.join(checkpoint_dir(config), "training_run_id")
    if os.path.exists(run_file):
        with open(run_file) as f:
            return f.read().strip()
    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id) if parent_run_id else None
    experiment_id = (
        parent.info.experiment_id
        if parent
        else mlflow.set_experiment("easel-dreambooth").experiment_id
    )
    tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
    run = client.create_run(experiment_id, run_name="training", tags=tags)
    storage.write_text_atomic(run_file, run.info.run_id)
    return run.info.run_id


@task
def train_task(
    config: DreamBoothConfig,
    model_dir: str,
    instance_images: list[str],
    class_images: list[str],
    parent_run_id: str | None,
) -> str:
    """Train or resume to `max_steps`; return the final checkpoint path."""
    from easel.models.dreambooth.training import train
    from easel.tracking import lightning_logger

    logger = lightning_logger(_training_run_id(config, parent_run_id))
    return train(
        config,
        model_dir,
        instance_images,
        class_images or None,
        checkpoint_dir(config),
        logger=logger,
        enable_progress_bar=sys.stderr.isatty(),
    )


@task
def export_task(config: DreamBoothConfig, checkpoint: str, model_dir: str) -> str:
    """Export the final checkpoint as a diffusers pipeline directory."""
    from easel.models.export import export_pipeline

    return export_pipeline(checkpoint, model_dir, config.model, pipeline_dir(config))


@task
def register_task(pipeline: str, register_as: str) -> str:
    """Register the exported pipeline in the MLflow model registry; return its reference."""
    from easel.models.registry import register_pipeline

    return register_pipeline(pipeline, register_as)
