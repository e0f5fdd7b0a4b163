"""Tasks of `easel bootstrap`: thin adapters over `easel.models.shapes`.

Each task takes a config and paths, writes its result under a work folder, and returns the
path. Training tasks log to a child MLflow run of the flow's run (one per stage), through
Lightning's MLflow logger.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict

import torch
from prefect import task

from easel import tracking
from easel.data import storage
from easel.models.engine.generation import text_to_image
from easel.models.engine.loading import load_model
from easel.models.shapes import tiny_shapes, tiny_shapes_k22, tiny_shapes_k22_inpaint
from easel.models.shapes import training as tiny_shapes_training
from easel.models.shapes.evaluation import image_grid
from easel.models.shapes.judge import JudgeTraining, train_judge

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


def _stage_run(parent_run_id: str | None, name: str):
    """(run id, Lightning logger) of a training stage: a child run of the flow's run."""
    if parent_run_id is None:
        return None, None
    run_id = tracking.child_run(parent_run_id, name)
    return run_id, tracking.lightning_logger(run_id)


def _finish(run_id: str | None, params: dict) -> None:
    if run_id is not None:
        tracking.finish_run(run_id, params)


@task(name="train-vae")
def train_vae_task(
    config: tiny_shapes_training.TinyShapesTraining,
    work_dir: str,
    parent_run_id: str | None,
    progress: bool = False,
) -> str:
    """Stage 1: the VAE; returns its diffusers-format folder."""
    run_id, logger = _stage_run(parent_run_id, "vae")
    vae = tiny_shapes_training.train_vae(
        config, os.path.join(work_dir, "vae-checkpoints"), logger, progress
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

    run_id, logger = _stage_run(parent_run_id, "vae-decoder")
    vae = AutoencoderKL.from_pretrained(vae_dir)
    checkpoints = os.path.join(work_dir, "decoder-checkpoints")
    refined = tiny_shapes_training.refine_decoder(config, vae, checkpoints, logger, progress)
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

    run_id, logger = _stage_run(parent_run_id, "text-to-image")
    vae = AutoencoderKL.from_pretrained(vae_dir)
    checkpoints = os.path.join(work_dir, "diffusion-checkpoints")
    module = tiny_shapes_training.train_diffusion(config, vae, checkpoints, logger, progress)
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
    runs = {stage: _stage_run(parent_run_id, f"k22-{stage}") for stage in tiny_shapes_k22.STAGES}
    run_ids = {stage: run_id for stage, (run_id, _) in runs.items()}
    loggers = {stage: logger for stage, (_, logger) in runs.items()}
    checkpoints = os.path.join(work_dir, "k22-checkpoints")
    pipeline = tiny_shapes_k22.train(base_dir, config, checkpoints, loggers, progress)
    folder = tiny_shapes_k22.save(
        pipeline, os.path.join(work_dir, "tiny-shapes-k22"), "tiny-shapes-k22",
        "The shapes world as a Kandinsky 2.2 model (`easel bootstrap --model tiny-shapes-k22`).",
    )  # fmt: skip
    for stage, run_id in run_ids.items():  # each stage's schedule, and the shared sizes
        schedule = asdict(getattr(config, stage.replace("-", "_")))
        _finish(run_id, {**schedule, "images": config.images, "seed": config.seed})
    return folder


@task(name="train-tiny-shapes-k22-inpaint")
def train_k22_inpaint_task(
    config: tiny_shapes_k22_inpaint.InpaintTraining,
    base_dir: str,
    work_dir: str,
    parent_run_id: str | None,
    progress: bool = False,
) -> str:
    """The inpainting decoder grown from the tiny-shapes-k22 pipeline at `base_dir`, with
    its prior; returns the folder."""
    run_id, logger = _stage_run(parent_run_id, "k22-inpaint-decoder")
    checkpoints = os.path.join(work_dir, "k22-inpaint-checkpoints")
    pipeline = tiny_shapes_k22_inpaint.train(base_dir, config, checkpoints, logger, progress)
    folder = tiny_shapes_k22.save(
        pipeline, os.path.join(work_dir, "tiny-shapes-k22-inpaint"), "tiny-shapes-k22-inpaint",
        "tiny-shapes-k22 with Kandinsky 2.2's inpainting decoder "
        "(`easel bootstrap --model tiny-shapes-k22-inpaint`).",
    )  # fmt: skip
    _finish(run_id, {**asdict(config.schedule), "images": config.images, "seed": config.seed})
    return folder


@task(name="train-judge")
def train_judge_task(
    config: JudgeTraining, work_dir: str, parent_run_id: str | None, progress: bool = False
) -> str:
    """The judge; returns its folder."""
    run_id, logger = _stage_run(parent_run_id, "judge")
    judge = train_judge(config, os.path.join(work_dir, "judge-checkpoints"), logger, progress)
    folder = os.path.join(work_dir, "judge")
    judge.save(folder)
    _finish(run_id, asdict(config))
    return folder


@task(name="sample-grid")
def sample_grid_task(
    pipeline_dir: str, out_png: str, seeds: int = 4, steps: int = 20, guidance_scale: float = 7.5
) -> str:
    """A grid of SAMPLE_PROMPTS (rows of `seeds` images each), written as a PNG."""
    model = load_model(pipeline_dir, dtype=torch.float32)
    prompts = [p for p in SAMPLE_PROMPTS for _ in range(seeds)]
    images = text_to_image(model, prompts, list(range(len(prompts))), guidance_scale, steps)
    storage.write_png_atomic(out_png, image_grid(images, columns=seeds * 2))
    return out_png


@task(name="publish")
def publish_task(source_dir: str, target_dir: str) -> str:
    """Copy `source_dir` to `target_dir`, replacing it: readers see the old or the new
    folder, never a mix."""
    with storage.staged_folder(target_dir) as staging:
        shutil.copytree(source_dir, staging, dirs_exist_ok=True)
    return target_dir
