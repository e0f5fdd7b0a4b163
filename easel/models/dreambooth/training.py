"""Running DreamBooth training with Lightning: checkpoints that appear whole, and resume.

A checkpoint is written to a hidden temporary name in the checkpoint folder and renamed
into place (`AtomicCheckpointIO`), so a file named `step=NNNNNNNN.ckpt` is always complete;
`last_complete_checkpoint` picks the highest such step and never a temporary file.
Calling `train` again with the same arguments resumes from it (weights, optimizer, LR
schedule, grad scaler, step, RNG streams; the data position follows from the step).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl

from easel.data import storage
from easel.data.dreambooth import DreamBoothDataModule, read_captions
from easel.models.checkpoint_io import AtomicCheckpointIO
from easel.models.dreambooth.config import DreamBoothConfig, without_word
from easel.models.dreambooth.module import MAX_GRAD_NORM, DreamBoothModule
from easel.models.dreambooth.resume import SNAPSHOT_KEY
from easel.models.dreambooth.throughput import Throughput
from easel.progress import ProgressLine

_CHECKPOINT_NAME = re.compile(r"^step=(\d+)\.ckpt$")


class _NoAdverts(logging.Filter):
    """Lightning's "💡 Tip: ... try installing ..." lines are not about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡")


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NoAdverts())


def checkpoint_name(step: int) -> str:
    return f"step={step:08d}.ckpt"


class StepCheckpoint(pl.callbacks.ModelCheckpoint):
    """Keeps the last N checkpoints named by step, and does not rewrite the resumed one.

    With gradient accumulation the micro-batches after a resume still see the resumed
    `global_step`; ModelCheckpoint remembers the step it last saved only in memory, so we
    tell it here that the resumed step is already on disk. Each checkpoint carries the
    training `snapshot` it was made with (`resume.SNAPSHOT_KEY`). `before_save` runs on rank
    0 before a checkpoint is written: metrics logged in the background must reach the
    tracking server before the checkpoint that covers them exists.
    """

    def __init__(self, dirpath: str, every_n_steps: int, keep_last_n: int,
                 snapshot: dict | None = None,
                 before_save: Callable[[], None] | None = None):  # fmt: skip
        super().__init__(
            dirpath=dirpath,
            filename="step={step:08d}",
            auto_insert_metric_name=False,
            every_n_train_steps=every_n_steps,
            monitor="step",
            mode="max",
            save_top_k=keep_last_n,
        )
        self.snapshot, self.before_save = snapshot, before_save

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_global_step_saved = trainer.global_step

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.is_global_zero and self.before_save is not None:
            self.before_save()
        if self.snapshot is not None:
            checkpoint[SNAPSHOT_KEY] = self.snapshot
        super().on_save_checkpoint(trainer, pl_module, checkpoint)


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


class ProgressLines(pl.Callback):
    """Training progress as plain lines for logs (`easel.progress.ProgressLine`): steps done,
    steps/s, time left, the last loss."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.line = ProgressLine("training", trainer.max_steps, "steps")
        self.line.update(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        loss = trainer.progress_bar_metrics.get("train/loss")
        self.line.update(trainer.global_step, f"loss {loss:.4g}" if loss is not None else "")


def _steps(folder: str) -> list[tuple[int, str]]:
    """(step, name) of the checkpoints in `folder` (any fsspec URI), lowest step first."""
    names = storage.list_names(folder)
    return sorted((int(m.group(1)), name) for name in names if (m := _CHECKPOINT_NAME.match(name)))


def last_complete_checkpoint(folder: str) -> str | None:
    """The checkpoint with the highest step in `folder`, or None."""
    steps = _steps(folder)
    return storage.join(folder, steps[-1][1]) if steps else None


def prune_checkpoints(folder: str, keep: int) -> None:
    """Delete all but the `keep` highest-step checkpoints in `folder`."""
    for _, name in _steps(folder)[:-keep]:
        storage.remove(storage.join(folder, name))


def build_module(config: DreamBoothConfig, model_dir: str) -> DreamBoothModule:
    return DreamBoothModule(
        model_dir,
        method=config.method,
        lora_rank=config.lora_rank,
        train_text_encoder=config.train_text_encoder,
        identifier=config.identifier,
        learning_rate=config.learning_rate,
        text_encoder_learning_rate=config.text_encoder_learning_rate,
        lr_scheduler=config.lr_scheduler,
        lr_warmup_steps=config.lr_warmup_steps,
        max_steps=config.max_steps,
        prior_loss_weight=config.prior_loss_weight,
        differential_output=config.differential_output,
        snr_gamma=config.snr_gamma,
        offset_noise=config.offset_noise,
        compile_unet=config.compile_unet,
        gradient_checkpointing=config.gradient_checkpointing,
    )


def build_datamodule(
    config: DreamBoothConfig, instance_images: list[str], class_images: list[str] | None
) -> DreamBoothDataModule:
    prompts = [config.instance_prompt]
    if config.instance_captions:
        prompts = read_captions(instance_images, config.instance_prompt)
    class_prompts = None  # differential output preservation: the prompts without identifier
    if config.differential_output:
        class_prompts = [without_word(p, config.identifier) for p in prompts]
    return DreamBoothDataModule(
        instance_images,
        prompts,
        class_prompts=class_prompts,
        resolution=config.resolution,
        batch_size=config.batch_size,
        max_steps=config.max_steps,
        gradient_accumulation=config.gradient_accumulation,
        seed=config.seed,
        class_images=class_images if config.class_images_used else None,
        class_prompt=config.class_prompt,
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
    **trainer_overrides: Any,
) -> str:
    """Train (or resume) to `config.max_steps`; return the path of the final checkpoint.
    `before_checkpoint` runs before each checkpoint is written (e.g. flushing metrics);
    `snapshot` (`resume.snapshot`) goes into every checkpoint."""
    final = storage.join(checkpoint_dir, checkpoint_name(config.max_steps))
    if storage.exists(final):
        return final
    pl.seed_everything(config.seed, workers=True, verbose=False)  # LoRA init draws from it
    module = build_module(config, model_dir)
    datamodule = build_datamodule(config, instance_images, class_images)
    every_n_steps = StepCheckpoint(
        checkpoint_dir, config.checkpoint_every_n_steps, config.keep_last_n_checkpoints,
        snapshot, before_checkpoint,
    )  # fmt: skip
    trainer = pl.Trainer(
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=config.precision,
        max_steps=config.max_steps,
        accumulate_grad_batches=config.gradient_accumulation,
        gradient_clip_val=MAX_GRAD_NORM,
        use_distributed_sampler=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        logger=logger,
        callbacks=[StepMetrics(), Throughput(), *callbacks, every_n_steps],
        plugins=[AtomicCheckpointIO()],
        default_root_dir=checkpoint_dir,
        enable_model_summary=False,
        **trainer_overrides,
    )
    with warnings.catch_warnings():  # the folder holds the checkpoints a rerun resumes from
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
        trainer.fit(module, datamodule=datamodule,
                    ckpt_path=last_complete_checkpoint(checkpoint_dir))  # fmt: skip
    if trainer_overrides.get("fast_dev_run"):
        return ""
    trainer.save_checkpoint(final, weights_only=False)  # rank 0 writes; atomic (AtomicCheckpointIO)
    if trainer.is_global_zero:
        prune_checkpoints(checkpoint_dir, config.keep_last_n_checkpoints)
    return final
