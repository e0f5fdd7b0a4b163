"""Tasks of `easel bootstrap`: thin adapters over `easel.models.shapes`.

One task trains any stage of `STAGES` (the table of what each stage trains, from what, into
which folder under the work folder, returning the path); each stage logs to child MLflow
runs of the flow's run (one per trained part), through Lightning's MLflow logger. A sample
grid and the publishing of a folder are tasks of their own.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from prefect import task

from easel import tracking
from easel.data import storage
from easel.models.engine.generation import text_to_image
from easel.models.engine.loading import load_model
from easel.models.shapes import tiny_shapes, tiny_shapes_k22, tiny_shapes_k22_inpaint
from easel.models.shapes import training as tiny_shapes_training
from easel.models.shapes.evaluation import image_grid
from easel.models.shapes.judge import train_judge

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


@dataclass(frozen=True)
class Stage:
    """One training stage of the bootstrap (a row of `STAGES`): `train(config, source,
    checkpoints, loggers, progress, folder)` trains from `source` (a folder, or None),
    checkpointing into `checkpoints`, logging through `loggers` (run name -> Lightning
    logger, None without a parent run), writes `folder`, and returns the parameters to log
    per run name."""

    runs: tuple[str, ...]  # its child MLflow runs of the flow's run, one per trained part
    checkpoints: str  # its checkpoint folder, under the work folder (a rerun resumes there)
    folder: str  # what it writes, under the work folder
    train: Callable[..., dict[str, dict]]


def _vae(config, source, checkpoints, loggers, progress, folder) -> dict[str, dict]:
    vae = tiny_shapes_training.train_vae(config, checkpoints, loggers["vae"], progress)
    vae.save_pretrained(folder, safe_serialization=True)
    return {"vae": {"vae": asdict(config.vae), "scaling_factor": vae.config.scaling_factor}}


def _decoder(config, vae_dir, checkpoints, loggers, progress, folder) -> dict[str, dict]:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir)
    logger = loggers["vae-decoder"]
    refined = tiny_shapes_training.refine_decoder(config, vae, checkpoints, logger, progress)
    refined.save_pretrained(folder, safe_serialization=True)
    return {"vae-decoder": {"decoder": asdict(config.decoder)}}


def _text_to_image(config, vae_dir, checkpoints, loggers, progress, folder) -> dict[str, dict]:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir)
    module = tiny_shapes_training.train_diffusion(
        config, vae, checkpoints, loggers["text-to-image"], progress
    )
    pipeline = tiny_shapes.assemble_pipeline(
        module.tokenizer, module.text_encoder, vae, module.unet
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    logged = {"diffusion": asdict(config.diffusion), "architecture": asdict(config.architecture)}
    return {"text-to-image": logged}


def _k22(config, base_dir, checkpoints, loggers, progress, folder) -> dict[str, dict]:
    by_stage = {stage: loggers[f"k22-{stage}"] for stage in tiny_shapes_k22.STAGES}
    pipeline = tiny_shapes_k22.train(base_dir, config, checkpoints, by_stage, progress)
    tiny_shapes_k22.save(
        pipeline, folder, "tiny-shapes-k22",
        "The shapes world as a Kandinsky 2.2 model (`easel bootstrap --model tiny-shapes-k22`).",
    )  # fmt: skip
    shared = {"images": config.images, "seed": config.seed}  # each stage's own schedule too
    return {f"k22-{stage}": {**asdict(getattr(config, stage.replace("-", "_"))), **shared}
            for stage in tiny_shapes_k22.STAGES}  # fmt: skip


def _k22_inpaint(config, base_dir, checkpoints, loggers, progress, folder) -> dict[str, dict]:
    logger = loggers["k22-inpaint-decoder"]
    pipeline = tiny_shapes_k22_inpaint.train(base_dir, config, checkpoints, logger, progress)
    tiny_shapes_k22.save(
        pipeline, folder, "tiny-shapes-k22-inpaint",
        "tiny-shapes-k22 with Kandinsky 2.2's inpainting decoder "
        "(`easel bootstrap --model tiny-shapes-k22-inpaint`).",
    )  # fmt: skip
    schedule = asdict(config.schedule)
    return {"k22-inpaint-decoder": {**schedule, "images": config.images, "seed": config.seed}}


def _judge(config, source, checkpoints, loggers, progress, folder) -> dict[str, dict]:
    train_judge(config, checkpoints, loggers["judge"], progress).save(folder)
    return {"judge": asdict(config)}


STAGES = {  # a stage's name -> how it trains; the flows run them in their order
    "vae": Stage(("vae",), "vae-checkpoints", "vae", _vae),
    # the VAE's decoder alone (encoder and latents unchanged), from the VAE's folder
    "refine-decoder": Stage(("vae-decoder",), "decoder-checkpoints", "vae-refined", _decoder),
    # text encoder and UNet over the VAE's folder: the assembled tiny-shapes pipeline
    "text-to-image": Stage(("text-to-image",), "diffusion-checkpoints", "tiny-shapes",
                           _text_to_image),  # fmt: skip
    # grown from the tiny-shapes pipeline: image encoder, prior and decoder
    "tiny-shapes-k22": Stage(tuple(f"k22-{s}" for s in tiny_shapes_k22.STAGES),
                             "k22-checkpoints", "tiny-shapes-k22", _k22),  # fmt: skip
    # the inpainting decoder grown from the tiny-shapes-k22 pipeline, with its prior
    "tiny-shapes-k22-inpaint": Stage(("k22-inpaint-decoder",), "k22-inpaint-checkpoints",
                                     "tiny-shapes-k22-inpaint", _k22_inpaint),  # fmt: skip
    "judge": Stage(("judge",), "judge-checkpoints", "judge", _judge),
}


@task(name="train-stage", task_run_name="train-{stage}")
def train_stage_task(
    stage: str,
    config,
    source: str | None,
    work_dir: str,
    parent_run_id: str | None,
    progress: bool = False,
) -> str:
    """Train the stage `stage` of `STAGES` with `config` (its recipe's training config) from
    `source` (a folder it grows from; None: from scratch), each of its parts logging to a
    child run of `parent_run_id` (None: no MLflow); returns the folder it wrote under
    `work_dir`."""
    row = STAGES[stage]
    runs = {name: tracking.child_run(parent_run_id, name) if parent_run_id else None
            for name in row.runs}  # fmt: skip
    loggers = {name: None if run_id is None else tracking.lightning_logger(run_id)
               for name, run_id in runs.items()}  # fmt: skip
    folder = os.path.join(work_dir, row.folder)
    checkpoints = os.path.join(work_dir, row.checkpoints)
    logged = row.train(config, source, checkpoints, loggers, progress, folder)
    for name, run_id in runs.items():
        if run_id is not None:
            tracking.finish_run(run_id, logged[name])
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
