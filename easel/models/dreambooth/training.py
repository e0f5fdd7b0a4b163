"""Running DreamBooth training through the one Lightning harness (`easel.models.lightning`):
checkpoints that appear whole (`step=NNNNNNNN.ckpt`), and exact resume. Calling `train`
again with the same arguments resumes from the last checkpoint (weights, optimizer, LR
schedule, grad scaler, step, RNG streams; the data position follows from the step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl

from easel.data import storage
from easel.data.dreambooth import DreamBoothDataModule, read_captions
from easel.models.dreambooth.config import DreamBoothConfig, without_word
from easel.models.dreambooth.module import MAX_GRAD_NORM, DreamBoothModule
from easel.models.dreambooth.throughput import Throughput
from easel.models.lightning import (  # noqa: F401  where DreamBooth's callers find them
    CheckpointPolicy,
    ProgressLines,
    checkpoint_name,
    fit,
    last_complete_checkpoint,
)


class StepMetrics(pl.Callback):
    """Each optimizer step's losses (means over its micro-batches), handed to the loggers at
    step `global_step - 1` as soon as the step ends: before the checkpoint of that step is
    written (Lightning's own logging comes after it, and a kill in between lost the point
    for good, since the resume starts after it)."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == self.step:  # mid-accumulation
            return
        self.step = trainer.global_step
        metrics = pl_module.pop_step_metrics()
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step - 1)


def build_module(
    config: DreamBoothConfig, model_dir: str, variant: str | None = None
) -> DreamBoothModule:
    return DreamBoothModule(model_dir, config.train, config.prior_preservation, config.runtime,
                            config.subject.identifier, variant)  # fmt: skip


def build_datamodule(
    config: DreamBoothConfig, instance_images: list[str], class_images: list[str] | None
) -> DreamBoothDataModule:
    subject, prior = config.subject, config.prior_preservation
    prompts = [subject.instance_prompt]
    if subject.captions:
        prompts = read_captions(instance_images, subject.instance_prompt)
    class_prompts = None  # differential output preservation: the prompts without identifier
    if prior.differential_output:
        class_prompts = [without_word(p, subject.identifier) for p in prompts]
    return DreamBoothDataModule(
        instance_images,
        prompts,
        config.train,
        class_images=class_images if prior.class_images_used else None,
        class_prompt=subject.class_prompt,
        class_prompts=class_prompts,
    )


def train(
    config: DreamBoothConfig,
    model_dir: str,
    instance_images: list[str],
    class_images: list[str] | None,
    checkpoint_dir: str,
    logger: Any = False,
    callbacks: Sequence[pl.Callback] = (),
    before_checkpoint: Callable[[], None] | None = None,
    snapshot: dict | None = None,
    progress: str = "lines",
    variant: str | None = None,
    **trainer_overrides: Any,
) -> str:
    """Train (or resume) to `train.max_steps` the model in the local diffusers folder
    `model_dir` (its weight files' `variant`, e.g. fp16: `ResolvedModel.variant`); return
    the path of the final checkpoint.
    `before_checkpoint` runs before each checkpoint is written (e.g. flushing metrics);
    `snapshot` (`resume.snapshot`) goes into every checkpoint; `progress`: "bar" or "lines"."""
    final = storage.join(checkpoint_dir, checkpoint_name(config.train.max_steps))
    if storage.exists(final):
        return final
    pl.seed_everything(config.train.seed, workers=True, verbose=False)  # LoRA init draws from it
    policy = CheckpointPolicy(
        checkpoint_dir, config.checkpoints.every_n_steps, config.checkpoints.keep_last_n,
        snapshot, before_checkpoint,
    )  # fmt: skip
    runtime = config.runtime
    return fit(
        build_module(config, model_dir, variant),
        build_datamodule(config, instance_images, class_images),
        config.train.max_steps,
        policy,
        progress,
        callbacks=[StepMetrics(), Throughput(), *callbacks],
        accelerator=runtime.accelerator,
        devices=runtime.devices,
        num_nodes=runtime.num_nodes,
        strategy=runtime.strategy,
        precision=runtime.precision,
        accumulate_grad_batches=config.train.gradient_accumulation,
        gradient_clip_val=MAX_GRAD_NORM,
        use_distributed_sampler=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        logger=logger,
        **trainer_overrides,
    )
