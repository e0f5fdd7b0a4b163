"""Tasks of `easel bootstrap` and `easel eval`: thin adapters over `models/`.

Each task takes a config and paths, writes its result under a work folder, and returns the
path (or a small dict of numbers). Training tasks log to a nested MLflow run of the flow's
run, through Lightning's MLflow logger.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict

import torch
from prefect import task

from easel import tracking
from easel.data import storage
from easel.models import evaluation, tiny_shapes, tiny_shapes_k22, tiny_shapes_training
from easel.models.judge import Judge, JudgeTraining, train_judge

SAMPLE_PROMPTS = [
    f"a {c} {s} on a {b} background"
    for s, c, b in [
        ("circle", "red", "blue"),
        ("square", "yellow", "black"),
        ("triangle", "blue", "white"),
        ("star", "orange", "purple"),
        ("heart", "red", "white"),
        ("cross", "green", "yellow"),
        ("star", "white", "green"),
        ("heart", "purple", "orange"),
    ]
]


def nested_run(parent_run_id: str | None, name: str) -> str | None:
    """A child run of `parent_run_id` (None without a parent): its id."""
    if parent_run_id is None:
        return None
    import mlflow

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    child = client.create_run(
        parent.info.experiment_id, run_name=name, tags={"mlflow.parentRunId": parent_run_id}
    )
    return child.info.run_id


def lightning_logger(run_id: str | None):
    if run_id is None:
        return None
    import mlflow

    return tracking.lightning_logger(run_id, mlflow.get_tracking_uri())


def _finish(run_id: str | None, params: dict) -> None:
    if run_id is None:
        return
    import mlflow

    client = mlflow.MlflowClient()
    for key, value in params.items():
        client.log_param(run_id, key, str(value)[:500])
    client.set_terminated(run_id)


@task(name="train-vae")
def train_vae_task(
    config: tiny_shapes_training.TinyShapesTraining,
    work_dir: str,
    parent_run_id: str | None,
    progress: bool = False,
) -> str:
    """Stage 1: the VAE; returns its diffusers-format folder."""
    run_id = nested_run(parent_run_id, "vae")
    vae = tiny_shapes_training.train_vae(
        config, os.path.join(work_dir, "vae-checkpoints"), lightning_logger(run_id), progress
    )
    folder = os.path.join(work_dir, "vae")
    vae.save_pretrained(folder, safe_serialization=True)
    _finish(run_id, {"vae": asdict(config.vae), "scaling_factor": vae.config.scaling_factor})
    return folder


@task(name="refine-decoder")
def refine_decoder_task(
    config: tiny_shapes_training.TinyShapesTraining,
    vae_dir: str,
    work_dir: str,
    parent_run_id: str | None,
    progress: bool = False,
) -> str:
    """Stage 1b: the VAE's decoder alone (encoder and latents unchanged); returns its folder."""
    from diffusers import AutoencoderKL

    run_id = nested_run(parent_run_id, "vae-decoder")
    vae = AutoencoderKL.from_pretrained(vae_dir)
    checkpoints = os.path.join(work_dir, "decoder-checkpoints")
    refined = tiny_shapes_training.refine_decoder(
        config, vae, checkpoints, lightning_logger(run_id), progress
    )
    folder = os.path.join(work_dir, "vae-refined")
    refined.save_pretrained(folder, safe_serialization=True)
    _finish(run_id, {"decoder": asdict(config.decoder)})
    return folder


@task(name="train-text-to-image")
def train_text_to_image_task(
    config: tiny_shapes_training.TinyShapesTraining,
    vae_dir: str,
    work_dir: str,
    parent_run_id: str | None,
    progress: bool = False,
) -> str:
    """Stage 2: text encoder and UNet; returns the assembled pipeline's folder."""
    from diffusers import AutoencoderKL

    run_id = nested_run(parent_run_id, "text-to-image")
    vae = AutoencoderKL.from_pretrained(vae_dir)
    checkpoints = os.path.join(work_dir, "diffusion-checkpoints")
    module = tiny_shapes_training.train_diffusion(
        config, vae, checkpoints, lightning_logger(run_id), progress
    )
    pipeline = tiny_shapes.assemble_pipeline(
        module.tokenizer, module.text_encoder, vae, module.unet
    )
    folder = os.path.join(work_dir, "tiny-shapes")
    pipeline.save_pretrained(folder, safe_serialization=True)
    _finish(
        run_id, {"diffusion": asdict(config.diffusion), "architecture": asdict(config.architecture)}
    )
    return folder


@task(name="train-tiny-shapes-k22")
def train_tiny_shapes_k22_task(
    config: tiny_shapes_k22.TinyShapesK22Training,
    base_dir: str,
    work_dir: str,
    parent_run_id: str | None,
    progress: bool = False,
) -> str:
    """tiny-shapes-k22 grown from the tiny-shapes pipeline at `base_dir`; returns its folder.
    Each stage logs to its own nested run."""
    run_ids = {stage: nested_run(parent_run_id, f"k22-{stage}") for stage in tiny_shapes_k22.STAGES}
    loggers = {stage: lightning_logger(run_id) for stage, run_id in run_ids.items()}
    checkpoints = os.path.join(work_dir, "k22-checkpoints")
    pipeline = tiny_shapes_k22.train(base_dir, config, checkpoints, loggers, progress)
    folder = os.path.join(work_dir, "tiny-shapes-k22")
    pipeline.save_pretrained(folder, safe_serialization=True)
    for stage, run_id in run_ids.items():  # each stage's schedule, and the shared sizes
        schedule = asdict(getattr(config, stage.replace("-", "_")))
        _finish(run_id, {**schedule, "images": config.images, "seed": config.seed})
    return folder


@task(name="train-judge")
def train_judge_task(
    config: JudgeTraining, work_dir: str, parent_run_id: str | None, progress: bool = False
) -> str:
    """The judge; returns its folder."""
    run_id = nested_run(parent_run_id, "judge")
    judge = train_judge(
        config, os.path.join(work_dir, "judge-checkpoints"), lightning_logger(run_id), progress
    )
    folder = os.path.join(work_dir, "judge")
    judge.save(folder)
    _finish(run_id, asdict(config))
    return folder


@task(name="sample-grid")
def sample_grid_task(
    pipeline_dir: str, out_png: str, seeds: int = 4, steps: int = 20, guidance_scale: float = 7.5
) -> str:
    """A grid of SAMPLE_PROMPTS (rows of `seeds` images each), written as a PNG."""
    pipeline = _load_pipeline(pipeline_dir)
    prompts = [p for p in SAMPLE_PROMPTS for _ in range(seeds)]
    images = evaluation.generate_images(
        pipeline, prompts, list(range(len(prompts))), guidance_scale, steps
    )
    storage.write_png_atomic(out_png, evaluation.image_grid(images, columns=seeds * 2))
    return out_png


@task(name="publish")
def publish_task(source_dir: str, target_dir: str) -> str:
    """Copy `source_dir` to `target_dir`, replacing it: the copy is made beside the target
    and swapped in by renames, so readers see the old or the new folder, never a mix."""
    parent = os.path.dirname(os.path.abspath(target_dir))
    os.makedirs(parent, exist_ok=True)
    staged = os.path.join(parent, f".{os.path.basename(target_dir)}.{uuid.uuid4().hex}.new")
    retired = staged.replace(".new", ".old")
    shutil.copytree(source_dir, staged)
    if os.path.exists(target_dir):
        os.replace(target_dir, retired)
    os.replace(staged, target_dir)
    shutil.rmtree(retired, ignore_errors=True)
    return target_dir


# -- eval --------------------------------------------------------------------------------


def _load_pipeline(model_path: str):
    """The pipeline at `model_path` (either family), fp32 on the default device."""
    from easel.models.loading import load_model

    return load_model(model_path, dtype=torch.float32).pipeline


def _load_subject(instance_data: str, instance_prompt: str, class_prompt: str):
    from easel.data.dreambooth import list_images
    from easel.data.images import open_image

    images = [open_image(uri, "instance_data").convert("RGB") for uri in list_images(instance_data)]
    return evaluation.Subject(images, instance_prompt, class_prompt)


@task(name="eval-suite")
def eval_suite_task(
    name: str,
    model_path: str,
    judge_path: str | None,
    settings: evaluation.EvalSettings,
    out_dir: str,
    base_model_path: str | None = None,
    subject: dict[str, str] | None = None,
) -> dict:
    """Run one suite; write its sample grid to `out_dir/<name>.png`; return metrics and rows.

    The DreamBooth suites also take the base model and `subject`: `instance_data`,
    `instance_prompt` and `class_prompt`."""
    context = evaluation.EvalContext(
        _load_pipeline(model_path),
        Judge.load(judge_path),
        settings,
        base_pipeline=_load_pipeline(base_model_path) if base_model_path else None,
        subject=_load_subject(**subject) if subject else None,
    )
    result = evaluation.run_suites(context, [name])[name]
    grid = None
    if result.images:
        grid = os.path.join(out_dir, f"{name}.png")
        storage.write_png_atomic(grid, evaluation.image_grid(result.images, columns=8))
    return {"metrics": result.metrics, "rows": result.rows, "grid": grid}


@task(name="write-report")
def write_report_task(report: dict, out_dir: str) -> str:
    path = os.path.join(out_dir, "report.json")
    storage.write_text_atomic(path, json.dumps(report, indent=2, sort_keys=True) + "\n")
    return path
