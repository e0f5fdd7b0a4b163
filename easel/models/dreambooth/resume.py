"""Rerunning DreamBooth after its config was edited: which changes a resume honours exactly.

Every checkpoint carries the training snapshot it was made with (`easel_snapshot`: the
config, the base model's digest and the instance images' digest). A rerun compares its own
snapshot with the last checkpoint's:
- changes that do not touch the trained weights are applied (`HONOURED`: checkpoint cadence
  and retention, validation, registration, the class-prior cache folder, gradient
  checkpointing); so is `train.max_steps` when the learning-rate schedule does not depend on it,
  and a `model` or `instance_data` reference that names the same content;
- any other change cannot be honoured exactly (the weights would be neither the old run's
  nor what the new config gives from scratch) and is refused before any work, as is a
  `max_steps` below the last checkpoint's step.
Checkpoints made before snapshots existed are compared on their module hyperparameters;
snapshots made before the config's groups (flat keys) are read in the groups' dotted keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from easel.errors import InvalidInput
from easel.models.checkpoint_io import load_checkpoint_file
from easel.models.dreambooth.config import DreamBoothConfig
from easel.models.dreambooth.flat_keys import dotted, dotted_snapshot
from easel.models.lightning import SNAPSHOT_KEY

HONOURED = frozenset({
    "checkpoints.every_n_steps", "checkpoints.keep_last_n", "validation.prompts",
    "validation.images_per_prompt", "validation.inference_steps", "validation.every_n_steps",
    "register_as", "prior_preservation.class_priors_dir", "runtime.gradient_checkpointing",
})  # fmt: skip
CONTENT = {"model": "model_digest", "subject.instance_data": "instance_data_digest"}  # same content
MAX_STEPS, LR_SCHEDULER = "train.max_steps", "train.lr_scheduler"
SCHEDULES_WITHOUT_LENGTH = ("constant", "constant_with_warmup")  # max_steps may move
NOT_COMPARED = ("output",)  # where the checkpoints are: the same by definition


@dataclass(frozen=True)
class Change:
    key: str
    old: object
    new: object
    same_content: bool = True  # `model`, `instance_data`: False when the content differs

    def __str__(self) -> str:
        if self.old == self.new:
            return f"`{self.key}` {self.new!r} (its content changed)"
        content = "" if self.same_content else " (other content)"
        return f"`{self.key}` {self.old!r} -> {self.new!r}{content}"


def snapshot(config: DreamBoothConfig, model_digest: str, instance_data_digest: str) -> dict:
    """What a checkpoint records of the run that made it, in dotted keys (`train.seed`; plain
    types: loadable with `weights_only`)."""
    values = config.model_dump(mode="json")
    values["model"] = str(config.model)  # a spec's path: `model_digest` is its content
    return {**dotted(values), "model_digest": model_digest,
            "instance_data_digest": instance_data_digest}  # fmt: skip


def checkpoint_snapshot(path: str) -> tuple[int, dict]:
    """(global step, snapshot in dotted keys) of a checkpoint; its hyperparameters where it
    has none."""
    checkpoint = load_checkpoint_file(path, weights_only=True)
    recorded = checkpoint.get(SNAPSHOT_KEY) or dict(checkpoint.get("hyper_parameters", {}))
    return int(checkpoint["global_step"]), dotted_snapshot(recorded)


def check_resume(new: dict, checkpoint: str | None) -> list[Change]:
    """The changes from `checkpoint`'s snapshot to `new` that a resume honours; raises
    `InvalidInput` naming every change it cannot (nothing to compare: no changes)."""
    if checkpoint is None:
        return []
    step, old = checkpoint_snapshot(checkpoint)
    folder = checkpoint.rsplit("/", 1)[0]
    fresh = f"start fresh by deleting {folder} or setting another `output`"
    if new[MAX_STEPS] < step:
        raise InvalidInput(
            f"`{MAX_STEPS}` {new[MAX_STEPS]} is below the step of the last checkpoint, {step} "
            f"({checkpoint}): raise `{MAX_STEPS}` to at least {step}, or {fresh}"
        )
    changes = [change for key in sorted(old) if (change := _change(key, old, new))]
    refused = [c for c in changes if not _honoured(c, new)]
    if refused:
        shown = [
            f"{c} (a {new.get(LR_SCHEDULER)} schedule's shape depends on it)"
            if c.key == MAX_STEPS else str(c)
            for c in refused
        ]  # fmt: skip
        raise InvalidInput(
            f"the checkpoint at step {step} ({checkpoint}) was made with another config, and "
            f"a resume cannot honour these changes exactly: {'; '.join(shown)}. "
            f"Undo them, or {fresh}"
        )
    return changes


def _change(key: str, old: dict, new: dict) -> Change | None:
    if key not in new or key in NOT_COMPARED or key in CONTENT.values():
        return None
    same_content = True
    if key in CONTENT and CONTENT[key] in old:  # compared by content, not by name
        same_content = old[CONTENT[key]] == new[CONTENT[key]]
    if old[key] == new[key] and same_content:
        return None
    return Change(key, old[key], new[key], same_content)


def _honoured(change: Change, new: dict) -> bool:
    if change.key in HONOURED:
        return True
    if change.key in CONTENT:  # another reference to the same content
        return change.same_content
    if change.key == MAX_STEPS:
        return new.get(LR_SCHEDULER, "constant") in SCHEDULES_WITHOUT_LENGTH
    return False
