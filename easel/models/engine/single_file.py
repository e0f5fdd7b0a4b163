"""Single-file checkpoints (A1111 / civitai / original LDM layout) as model references."""

from __future__ import annotations

import os

from easel.errors import ModelReferenceError

SUFFIXES = (".safetensors", ".ckpt")


def hint(folder: str) -> str:
    """A hint for a folder without model_index.json that holds single-file checkpoints."""
    files = sorted(f for f in os.listdir(folder) if f.endswith(SUFFIXES))
    return f"; to use a single-file checkpoint, name the file: {files[0]}" if files else ""


def converted_folder(spec, path: str, trust_pickle: bool, cache) -> str:
    raise ModelReferenceError(f"single-file checkpoint {path!r}: not converted yet")
