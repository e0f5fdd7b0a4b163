"""The flat DreamBooth keys of earlier releases, and where each went in the grouped config.

A flat config (`max_steps: 400`, `train_text_encoder: true`) still reads for one release:
`group_flat_keys` moves each old key to its group (`train.max_steps`) and its old value
spellings to the new ones (`true` -> "all"). Checkpoints made before the groups record flat
snapshots; `dotted_snapshot` reads them in the same terms as a new one.
"""

from __future__ import annotations

import logging

from easel.errors import InvalidInput

log = logging.getLogger(__name__)

TOP_LEVEL = ("model", "output", "register_as")  # the same key before and after
MOVED = {
    "instance_data": "subject.instance_data",
    "instance_prompt": "subject.instance_prompt",
    "class_prompt": "subject.class_prompt",
    "identifier": "subject.identifier",
    "instance_captions": "subject.captions",
    "prior_preservation": "prior_preservation.enabled",
    "prior_preservation_method": "prior_preservation.method",
    "prior_loss_weight": "prior_preservation.loss_weight",
    "num_class_images": "prior_preservation.num_class_images",
    "class_guidance_scale": "prior_preservation.class_guidance_scale",
    "class_data": "prior_preservation.class_data",
    "class_priors_dir": "prior_preservation.class_priors_dir",
    "method": "train.method",
    "lora_rank": "train.lora_rank",
    "train_text_encoder": "train.text_encoder",
    "text_encoder_learning_rate": "train.text_encoder_learning_rate",
    "resolution": "train.resolution",
    "batch_size": "train.batch_size",
    "gradient_accumulation": "train.gradient_accumulation",
    "learning_rate": "train.learning_rate",
    "lr_scheduler": "train.lr_scheduler",
    "lr_warmup_steps": "train.lr_warmup_steps",
    "max_steps": "train.max_steps",
    "seed": "train.seed",
    "snr_gamma": "train.snr_gamma",
    "offset_noise": "train.offset_noise",
    "precision": "runtime.precision",
    "compile_unet": "runtime.compile_unet",
    "gradient_checkpointing": "runtime.gradient_checkpointing",
    "accelerator": "runtime.accelerator",
    "devices": "runtime.devices",
    "num_nodes": "runtime.num_nodes",
    "strategy": "runtime.strategy",
    "checkpoint_every_n_steps": "checkpoints.every_n_steps",
    "keep_last_n_checkpoints": "checkpoints.keep_last_n",
    "validation_prompts": "validation.prompts",
    "validation_images_per_prompt": "validation.images_per_prompt",
    "validation_every_n_steps": "validation.every_n_steps",
    "validation_inference_steps": "validation.inference_steps",
}
# old value spellings -> the one spelling now (YAML's true/false, Python's True/False)
OLD_VALUES = {
    "train_text_encoder": {True: "all", False: "off"},
    "compile_unet": {True: "full", False: "off"},
}


def is_flat_key(key: str, value: object) -> bool:
    """An old key at the top level (`prior_preservation` is also a group: old when a bool)."""
    return key in MOVED and not (key == "prior_preservation" and isinstance(value, dict))


def new_value(key: str, value: object) -> object:
    spellings = OLD_VALUES.get(key, {})
    return spellings.get(value, value) if isinstance(value, bool) else value


def group_flat_keys(values: dict) -> dict:
    """`values` with every old flat key moved into its group, in the new spelling; logs one
    warning line naming the moved keys. Raises `InvalidInput` when an old key and its new place
    are both given."""
    grouped, moved = regroup(values)
    warn_moved(moved)
    return grouped


def with_overrides(values: dict, overrides: dict) -> tuple[dict, set[str]]:
    """A config (`values`, flat or grouped) in groups with `overrides` applied: {dotted key
    (`train.max_steps`), top-level key or old flat key: value}, a key=None included. Returns
    the config and the dotted keys the overrides set; logs one warning line for every old
    key in either."""
    grouped, moved = regroup(values)
    renamed = {}
    for key, value in overrides.items():
        target = MOVED[key] if is_flat_key(key, value) else key
        if target in renamed:  # `max_steps=5` and `train.max_steps=6`: which one is meant?
            old = key if target != key else next(k for k in overrides if MOVED.get(k) == target)
            raise InvalidInput(f"--set `{old}` is the old name of `{target}`, which is also "
                               "set: keep one")  # fmt: skip
        renamed[target] = new_value(key, value)
    warn_moved(moved + [key for key, value in overrides.items() if is_flat_key(key, value)])
    for key, value in renamed.items():
        *groups, name = key.split(".")
        node = grouped
        for group in groups:
            inner = node.get(group)
            node[group] = inner = dict(inner) if isinstance(inner, dict) else {}
            node = inner
        node[name] = value
    return grouped, set(renamed)


def warn_moved(moved: list[str]) -> None:
    if moved:
        log.warning(
            "DreamBooth config: flat keys are deprecated (read for one more release); moved %s",
            ", ".join(f"{key} -> {MOVED[key]}" for key in moved),
        )


def regroup(values: dict) -> tuple[dict, list[str]]:
    """(`values` with the old flat keys moved into their groups, the old keys moved)."""
    flat = [key for key, value in values.items() if is_flat_key(key, value)]
    grouped = {key: value for key, value in values.items() if key not in flat}
    for key in flat:
        group, name = MOVED[key].split(".")
        inner = grouped.get(group, {})
        if not isinstance(inner, dict):  # a group given as something else: pydantic says so
            continue
        if name in inner:
            raise InvalidInput(
                f"`{key}` {values[key]!r} is the old name of `{MOVED[key]}`, which is also "
                f"given ({inner[name]!r}): keep one"
            )
        grouped[group] = {**inner, name: new_value(key, values[key])}
    return grouped, flat


def dotted(values: dict, prefix: str = "") -> dict:
    """A nested mapping as one level of dotted keys: {"train": {"seed": 0}} -> {"train.seed": 0}."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def nested(values: dict) -> dict:
    """Dotted keys as a nested mapping: {"train.seed": 0} -> {"train": {"seed": 0}}."""
    tree: dict = {}
    for key, value in values.items():
        *groups, name = key.split(".")
        node = tree
        for group in groups:
            node = node.setdefault(group, {})
        node[name] = value
    return tree


def dotted_snapshot(recorded: dict) -> dict:
    """A checkpoint's recorded snapshot in dotted keys: a flat one (before the groups) has
    its old keys and values renamed; keys that name nothing now (old module arguments such
    as `model_dir`) are kept as they are and compare with nothing."""
    return {
        MOVED.get(key, key): new_value(key, value) if key in MOVED else value
        for key, value in dotted(recorded).items()
    }
