"""`easel bootstrap`: retrain the embedded model `tiny-shapes` and the judge from scratch
(SPEC §8); `easel bootstrap --model tiny-shapes-k22` grows its Kandinsky 2.2 sibling from
it. Deterministic: the same parameters on the same machine and thread count give the same
weights. The committed weights under `easel/models/weights/` are their output."""

from __future__ import annotations

import os
from dataclasses import replace

from prefect import flow
from pydantic import BaseModel, Field

from easel import tracking
from easel.data import limits
from easel.data.limits import InferenceSteps
from easel.models.engine.references import WEIGHTS_DIR, resolve_model_reference
from easel.models.shapes import recipe, tiny_shapes_k22, tiny_shapes_k22_inpaint, training
from easel.models.shapes.judge import JudgeTraining
from easel.orchestration.run_context import prefect_tags

_MODEL, _JUDGE = training.TinyShapesTraining(), JudgeTraining()
_K22 = tiny_shapes_k22.TinyShapesK22Training()
_INPAINT = tiny_shapes_k22_inpaint.InpaintTraining()


class BootstrapParameters(BaseModel):
    """Sizes and lengths of the bootstrap; the defaults made the committed weights."""

    model_config = limits.PARAMETERS

    out: str = Field(str(WEIGHTS_DIR), description="folder receiving tiny-shapes/ and judge/")
    work_dir: str = Field(
        "easel-out/bootstrap", description="checkpoints; a rerun resumes from them"
    )
    seed: int = Field(_MODEL.seed, ge=0, description="seeds data, initialisation and order")
    threads: limits.OptionalCount = Field(
        1, description="torch CPU threads (None, in Python or YAML: torch's default)"
    )
    vae_steps: int = Field(_MODEL.vae.steps, ge=1, description="VAE training steps")
    vae_images: int = Field(_MODEL.vae_images, ge=1, description="VAE training images")
    decoder_steps: int = Field(_MODEL.decoder.steps, ge=1, description="VAE decoder steps")
    diffusion_steps: int = Field(_MODEL.diffusion.steps, ge=1, description="UNet steps")
    diffusion_images: int = Field(_MODEL.diffusion_images, ge=1, description="UNet images")
    diffusion_batch_size: int = Field(_MODEL.diffusion.batch_size, ge=1, description="UNet batch")
    diffusion_ema_decay: float = Field(
        _MODEL.diffusion_ema_decay, ge=0, lt=1, description="EMA of the UNet weights (0: off)"
    )
    judge_steps: int = Field(_JUDGE.steps, ge=1, description="judge training steps")
    judge_images: int = Field(_JUDGE.images, ge=1, description="judge training images")
    judge_batch_size: int = Field(_JUDGE.batch_size, ge=1, description="judge batch")
    sample_steps: InferenceSteps = Field(20, description="denoising steps of the sample grid")
    experiment: str = Field("easel-bootstrap", description="the MLflow experiment")
    show_progress: bool = Field(False, description="progress bars on the terminal")

    def model_training(self) -> training.TinyShapesTraining:
        return replace(
            _MODEL,
            seed=self.seed,
            vae=replace(
                _MODEL.vae,
                steps=self.vae_steps,
                warmup_steps=min(_MODEL.vae.warmup_steps, self.vae_steps),
            ),
            vae_images=self.vae_images,
            decoder=replace(
                _MODEL.decoder,
                steps=self.decoder_steps,
                warmup_steps=min(_MODEL.decoder.warmup_steps, self.decoder_steps),
            ),
            diffusion=replace(
                _MODEL.diffusion,
                steps=self.diffusion_steps,
                batch_size=self.diffusion_batch_size,
                warmup_steps=min(_MODEL.diffusion.warmup_steps, self.diffusion_steps),
            ),
            diffusion_images=self.diffusion_images,
            diffusion_ema_decay=self.diffusion_ema_decay,
        )

    def judge_training(self) -> JudgeTraining:
        return replace(
            _JUDGE,
            seed=self.seed,
            steps=self.judge_steps,
            images=self.judge_images,
            batch_size=self.judge_batch_size,
        )


class BootstrapK22Parameters(BaseModel):
    """Lengths of the tiny-shapes-k22 recipe; the defaults made the committed weights."""

    model_config = limits.PARAMETERS

    out: str = Field(str(WEIGHTS_DIR), description="folder receiving tiny-shapes-k22/")
    base: str = Field("tiny-shapes", description="the tiny-shapes model it grows from")
    work_dir: str = Field("easel-out/bootstrap-k22", description="checkpoints; a rerun resumes")
    seed: int = Field(_K22.seed, ge=0, description="seeds data, initialisation and order")
    threads: limits.OptionalCount = Field(
        1, description="torch CPU threads (None, in Python or YAML: torch's default)"
    )
    images: int = Field(_K22.images, ge=1, description="training images of every stage")
    image_encoder_steps: int = Field(_K22.image_encoder.steps, ge=1, description="its steps")
    prior_steps: int = Field(_K22.prior.steps, ge=1, description="prior training steps")
    decoder_steps: int = Field(_K22.decoder.steps, ge=1, description="decoder training steps")
    sample_steps: InferenceSteps = Field(20, description="denoising steps of the sample grid")
    experiment: str = Field("easel-bootstrap", description="the MLflow experiment")
    show_progress: bool = Field(False, description="progress bars on the terminal")

    def training(self) -> tiny_shapes_k22.TinyShapesK22Training:
        def schedule(base: recipe.TrainingSchedule, steps: int) -> recipe.TrainingSchedule:
            return replace(base, steps=steps, warmup_steps=min(base.warmup_steps, steps))

        return replace(
            _K22, seed=self.seed, images=self.images,
            image_encoder=schedule(_K22.image_encoder, self.image_encoder_steps),
            prior=schedule(_K22.prior, self.prior_steps),
            decoder=schedule(_K22.decoder, self.decoder_steps),
        )  # fmt: skip


class BootstrapK22InpaintParameters(BaseModel):
    """Lengths of the tiny-shapes-k22-inpaint recipe; the defaults made the committed weights."""

    model_config = limits.PARAMETERS

    out: str = Field(str(WEIGHTS_DIR), description="folder receiving tiny-shapes-k22-inpaint/")
    base: str = Field("tiny-shapes-k22", description="the Kandinsky 2.2 model it grows from")
    work_dir: str = Field("easel-out/bootstrap-k22-inpaint", description="checkpoints; a "
                          "rerun resumes")  # fmt: skip
    seed: int = Field(_INPAINT.seed, ge=0, description="the base's seed (its embeddings)")
    threads: limits.OptionalCount = Field(
        1, description="torch CPU threads (None, in Python or YAML: torch's default)"
    )
    images: int = Field(_INPAINT.images, ge=1, description="training images")
    steps: int = Field(_INPAINT.schedule.steps, ge=1, description="training steps")
    experiment: str = Field("easel-bootstrap", description="the MLflow experiment")
    show_progress: bool = Field(False, description="progress bars on the terminal")

    def training(self) -> tiny_shapes_k22_inpaint.InpaintTraining:
        warmup = min(_INPAINT.schedule.warmup_steps, self.steps)
        schedule = replace(_INPAINT.schedule, steps=self.steps, warmup_steps=warmup)
        return replace(_INPAINT, seed=self.seed, images=self.images, schedule=schedule)


def _start_run(params, run_name: str):
    """Threads, deterministic cuBLAS, and the flow's MLflow run (with its parameters)."""
    import torch

    if params.threads:
        torch.set_num_threads(params.threads)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS on GPUs
    logged = {k: v for k, v in params.model_dump().items() if k != "show_progress"}
    return tracking.start_run(params.experiment, run_name, logged, prefect_tags())


@flow(name="bootstrap")
def bootstrap_flow(params: BootstrapParameters) -> dict[str, str]:
    """VAE, its decoder alone, then text encoder + UNet, then the judge; a sample grid;
    publish both folders."""
    from easel.tasks.bootstrap import publish_task, sample_grid_task, train_stage_task

    with _start_run(params, "bootstrap") as run_id:
        work, progress = params.work_dir, params.show_progress
        model_config = params.model_training()
        vae_dir = train_stage_task("vae", model_config, None, work, run_id, progress)
        vae_dir = train_stage_task("refine-decoder", model_config, vae_dir, work, run_id, progress)
        pipeline_dir = train_stage_task(
            "text-to-image", model_config, vae_dir, work, run_id, progress
        )
        judge_dir = train_stage_task("judge", params.judge_training(), None, work, run_id, progress)
        grid = sample_grid_task(
            pipeline_dir, os.path.join(work, "samples.png"), steps=params.sample_steps
        )
        tracking.log_artifact(grid)
        model_out = publish_task(pipeline_dir, os.path.join(params.out, "tiny-shapes"))
        judge_out = publish_task(judge_dir, os.path.join(params.out, "judge"))
    return {"model": model_out, "judge": judge_out, "samples": grid, "mlflow_run_id": run_id}


@flow(name="bootstrap-k22")
def bootstrap_k22_flow(params: BootstrapK22Parameters) -> dict[str, str]:
    """Image encoder, prior and decoder grown from tiny-shapes; a sample grid; publish."""
    from easel.tasks.bootstrap import publish_task, sample_grid_task, train_stage_task

    base_dir = resolve_model_reference(params.base).path
    with _start_run(params, "bootstrap-k22") as run_id:
        work = params.work_dir
        pipeline_dir = train_stage_task(
            "tiny-shapes-k22", params.training(), base_dir, work, run_id, params.show_progress
        )
        grid = sample_grid_task(
            pipeline_dir, os.path.join(work, "samples-k22.png"), steps=params.sample_steps,
            guidance_scale=4.0,
        )  # fmt: skip
        tracking.log_artifact(grid)
        model_out = publish_task(pipeline_dir, os.path.join(params.out, "tiny-shapes-k22"))
    return {"model": model_out, "samples": grid, "mlflow_run_id": run_id}


@flow(name="bootstrap-k22-inpaint")
def bootstrap_k22_inpaint_flow(params: BootstrapK22InpaintParameters) -> dict[str, str]:
    """The inpainting decoder grown from tiny-shapes-k22; publish it beside it."""
    from easel.tasks.bootstrap import publish_task, train_stage_task

    base_dir = resolve_model_reference(params.base).path
    with _start_run(params, "bootstrap-k22-inpaint") as run_id:
        folder = train_stage_task("tiny-shapes-k22-inpaint", params.training(), base_dir,
                                  params.work_dir, run_id, params.show_progress)  # fmt: skip
        out = publish_task(folder, os.path.join(params.out, "tiny-shapes-k22-inpaint"))
    return {"model": out, "mlflow_run_id": run_id}
