"""Shared helpers for the DreamBooth tests: a tiny random pipeline and image folders."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from easel.models.testing.random_pipelines import build_random_sd


def write_images(folder: str, count: int, seed: int, size: int = 40) -> str:
    """`count` small coloured-square PNGs in `folder` (created); returns the folder."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = np.full((size, size, 3), rng.integers(0, 256, 3), dtype=np.uint8)
        x, y = rng.integers(0, size // 2, 2)
        pixels[y : y + size // 2, x : x + size // 2] = rng.integers(0, 256, 3)
        Image.fromarray(pixels).save(os.path.join(folder, f"{i:02d}.png"))
    return folder


def make_workspace(root: str) -> dict[str, str]:
    """A tiny model, 4 instance images, 6 class images under `root`."""
    model = os.path.join(root, "model")
    if not os.path.exists(os.path.join(model, "model_index.json")):
        build_random_sd(model)
    return {
        "model": model,
        "instance_data": write_images(os.path.join(root, "instance"), 4, seed=1),
        "class_data": write_images(os.path.join(root, "class"), 6, seed=2),
    }


def tiny_config(workspace: dict[str, str], output: str, **overrides) -> dict:
    """A grouped config; `overrides` by their old flat names (`max_steps=2`) or as groups."""
    from easel.models.dreambooth.flat_keys import regroup

    config, _ = regroup(flat_config(workspace, output, **overrides))
    return config


def flat_config(workspace: dict[str, str], output: str, **overrides) -> dict:
    """The same config in the flat keys of earlier releases."""
    values = {
        "model": workspace["model"],
        "instance_data": workspace["instance_data"],
        "class_data": workspace["class_data"],
        "instance_prompt": "a photo of sks shape",
        "class_prompt": "a photo of shape",
        "num_class_images": 6,
        "resolution": 32,
        "batch_size": 1,
        "learning_rate": 1e-3,
        "max_steps": 4,
        "checkpoint_every_n_steps": 2,
        "keep_last_n_checkpoints": 2,
        "accelerator": "cpu",
        "validation_prompts": ["a photo of sks shape on the red background"],
        "validation_images_per_prompt": 1,
        "validation_inference_steps": 2,
        "output": output,
    }
    values.update(overrides)
    return values


def train_logged(config_values: dict, tracking_uri: str, callbacks=()) -> str:
    """Train (or resume) with an MLflow logger whose run id is kept in the output folder,
    as a rerun of the same command would; returns the final checkpoint path."""
    import mlflow

    from easel import tracking
    from easel.data.dreambooth import list_images
    from easel.models.dreambooth.config import DreamBoothConfig
    from easel.models.dreambooth.training import train
    from easel.tasks.dreambooth import validation_callbacks

    config = DreamBoothConfig.model_validate(config_values)
    run_file = os.path.join(config.output, "run_id")
    if not os.path.exists(run_file):
        os.makedirs(config.output, exist_ok=True)
        client = mlflow.MlflowClient(tracking_uri)
        experiment = client.get_experiment_by_name("dreambooth-test")
        experiment_id = (
            experiment.experiment_id if experiment else client.create_experiment("dreambooth-test")
        )
        with open(run_file, "w") as f:
            f.write(client.create_run(experiment_id).info.run_id)
    with open(run_file) as f:
        run_id = f.read()
    logger = tracking.lightning_logger(run_id, tracking_uri)  # the flow's logger
    return train(
        config,
        config.model,
        list_images(config.subject.instance_data),
        list_images(config.prior_preservation.class_data),
        os.path.join(config.output, "checkpoints"),
        logger=logger,
        callbacks=[*callbacks, *validation_callbacks(config, config.model, run_id)],
        before_checkpoint=tracking.flush_metrics,
        enable_progress_bar=False,
    )
