"""The one Lightning harness: every trained model here (DreamBooth, the embedded shapes
models, the judge) runs through `fit`.

Checkpoints are named by their optimizer step, `step=NNNNNNNN.ckpt`, written to a hidden
temporary name and renamed into place (`AtomicCheckpointIO`): a file with that name is
always complete. `fit` resumes from the highest step in its folder (weights, optimizer, LR
schedule, grad scaler, step; the module restores its own RNG streams) and ends by writing
the final state, so a rerun with the same arguments continues exactly or does nothing.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from easel.data import storage
from easel.models.checkpoint_io import AtomicCheckpointIO
from easel.progress import ProgressLine

SNAPSHOT_KEY = "easel_snapshot"  # what a checkpoint records of the run that made it
_CHECKPOINT_NAME = re.compile(r"^step=(\d+)\.ckpt$")


class _NoAdverts(logging.Filter):
    """Lightning's "💡 Tip: ... try installing ..." lines are not about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡")


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NoAdverts())


def checkpoint_name(step: int) -> str:
    return f"step={step:08d}.ckpt"


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


@dataclass(frozen=True)
class CheckpointPolicy:
    """Where checkpoints go (any fsspec URI), every how many optimizer steps, how many stay;
    `snapshot` (plain types) goes into each under `SNAPSHOT_KEY`; `before_save` runs on rank
    0 before each is written (e.g. flushing metrics logged in the background)."""

    folder: str
    every_n_steps: int
    keep_last_n: int = 1
    snapshot: dict | None = None
    before_save: Callable[[], None] | None = None


class StepCheckpoint(pl.callbacks.ModelCheckpoint):
    """Keeps the last N checkpoints named by step, and does not rewrite the resumed one.

    With gradient accumulation the micro-batches after a resume still see the resumed
    `global_step`; ModelCheckpoint remembers the step it last saved only in memory, so we
    tell it here that the resumed step is already on disk.
    """

    def __init__(self, policy: CheckpointPolicy):
        super().__init__(
            dirpath=policy.folder,
            filename="step={step:08d}",
            auto_insert_metric_name=False,
            every_n_train_steps=policy.every_n_steps,
            monitor="step",
            mode="max",
            save_top_k=policy.keep_last_n,
        )
        self.policy = policy

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_global_step_saved = trainer.global_step

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.is_global_zero and self.policy.before_save is not None:
            self.policy.before_save()
        if self.policy.snapshot is not None:
            checkpoint[SNAPSHOT_KEY] = self.policy.snapshot
        super().on_save_checkpoint(trainer, pl_module, checkpoint)


class ProgressLines(pl.Callback):
    """Training progress as plain lines for logs (`easel.progress.ProgressLine`): the
    module's name, steps done, steps/s, time left, the last loss."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.line = ProgressLine(type(pl_module).__name__, trainer.max_steps, "steps")
        self.line.update(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, *args) -> None:
        loss = trainer.progress_bar_metrics.get("train/loss")
        if loss is None and outputs is not None:  # a module that logs no "train/loss"
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        shown = f"loss {float(loss):.4g}" if loss is not None else ""
        self.line.update(trainer.global_step, shown)


def fit(
    module: pl.LightningModule,
    data: pl.LightningDataModule | DataLoader,
    max_steps: int,
    checkpoints: CheckpointPolicy,
    progress: Literal["bar", "lines"] = "lines",
    callbacks: Sequence[pl.Callback] = (),
    **trainer_args: Any,
) -> str:
    """Train `module` on `data` (a DataModule or a loader) to `max_steps` optimizer steps,
    resuming from the last checkpoint in `checkpoints.folder`; return the final checkpoint's
    path (`step=N.ckpt`, N the steps done: fewer when `max_time` stopped it; "" for a
    `fast_dev_run`). `progress`: Lightning's bar (a terminal) or `ProgressLines` (logs).
    `trainer_args` go to `pl.Trainer` (accelerator, precision, logger, ...)."""
    shown = [ProgressLines()] if progress == "lines" else []
    trainer = pl.Trainer(
        max_steps=max_steps,
        callbacks=[*callbacks, *shown, StepCheckpoint(checkpoints)],
        plugins=[AtomicCheckpointIO()],
        default_root_dir=checkpoints.folder,
        **{"logger": False, "enable_model_summary": False, "enable_progress_bar": progress == "bar",
           **trainer_args},
    )
    loaders = {"datamodule": data} if isinstance(data, pl.LightningDataModule) else {
        "train_dataloaders": data}  # fmt: skip
    with warnings.catch_warnings():  # the folder holds the checkpoints a rerun resumes from
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
        trainer.fit(module, **loaders, ckpt_path=last_complete_checkpoint(checkpoints.folder))
    if trainer_args.get("fast_dev_run"):
        return ""
    final = storage.join(checkpoints.folder, checkpoint_name(trainer.global_step))
    trainer.save_checkpoint(final, weights_only=False)  # every rank calls; rank 0 writes
    if trainer.is_global_zero:
        prune_checkpoints(checkpoints.folder, checkpoints.keep_last_n)
    return final
