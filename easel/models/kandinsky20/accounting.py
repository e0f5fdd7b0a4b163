"""Accounting for every key of a checkpoint being converted: what each file held, what
was used, what was left out as unused; and reading the files so that any failure names
the file (`ModelReferenceError`, exit code 2)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from easel.errors import ModelReferenceError


@dataclass
class Report:
    """What a conversion read: tensors per part, and keys left out (unused)."""

    tensors: dict[str, int] = field(default_factory=dict)
    left_out: dict[str, list[str]] = field(default_factory=dict)
    absent: dict[str, list[str]] = field(default_factory=dict)  # unused, initialised

    def lines(self) -> list[str]:
        lines = [f"{part}: {count} tensors" for part, count in self.tensors.items()]
        for part, keys in self.left_out.items():
            shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            lines.append(f"{part}: left out {len(keys)} unused keys ({shown})")
        for part, keys in self.absent.items():
            lines.append(f"{part}: lacks {len(keys)} unused keys ({keys[0]}...), initialised")
        return lines


def check_keys(part: str, used: set, present: set, unused: tuple[str, ...], report: Report):
    """Fail naming the keys of `part` that are neither used nor known to be unused."""
    left = sorted(present - used)
    unexpected = [key for key in left if not key.startswith(unused)]
    if unexpected:
        raise ModelReferenceError(
            f"{part}: {len(unexpected)} unexpected keys, e.g. {', '.join(unexpected[:3])}: not "
            "Kandinsky 2.0's layout"
        )
    if left:
        report.left_out[part] = left


def load_pickle(path: str, full: bool = False) -> dict:
    """The state dict in the torch pickle at `path` (unwrapped from a checkpoint's
    `state_dict`); `full` for one holding more than tensors (a Lightning checkpoint).
    `ModelReferenceError` naming the file where it cannot be read."""
    part = os.path.join(*path.split(os.sep)[-2:]) if os.sep in path else path
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=not full)
    except Exception as error:  # noqa: BLE001 - truncated, corrupt, not a torch file
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelReferenceError(
            f"{part} cannot be read as a torch checkpoint: {detail}"
        ) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(torch.is_tensor(v) for v in loaded.values()):
        raise ModelReferenceError(f"{part} holds no state dict of tensors")
    return loaded


def load_strict(module, weights: dict, part: str) -> None:
    """`load_state_dict(strict=True)`, its failure as one line naming the keys."""
    try:
        result = module.load_state_dict(weights, strict=False, assign=True)
    except RuntimeError as error:  # a tensor of another shape
        detail = str(error).splitlines()[-1].strip()
        raise ModelReferenceError(f"{part}: {detail}: not Kandinsky 2.0's layout") from None
    problems = [f"missing {k}" for k in result.missing_keys]
    problems += [f"unexpected {k}" for k in result.unexpected_keys]
    if problems:
        raise ModelReferenceError(f"{part}: {', '.join(problems[:4])}: not Kandinsky 2.0's layout")


def read_json(path: str, part: str) -> dict:
    """A JSON file of the layout; `ModelReferenceError` naming it where it is not one."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise ModelReferenceError(f"{part}/{os.path.basename(path)}: {error}") from None
