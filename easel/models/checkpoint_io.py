"""How every easel Lightning run writes and reads its checkpoints (`AtomicCheckpointIO`)."""

from __future__ import annotations

import os
import pickle
import re
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from easel.data import storage
from easel.errors import UntrustedCheckpoint
from easel.models.engine.references import cache_dir


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints streamed to a temporary name, fsynced, renamed into place, and read back
    memory-mapped: a file with a checkpoint's name is always whole, and neither saving nor
    resuming holds a second copy of the training state in host memory.

    Lightning's own writer serialises the whole checkpoint into memory before writing, and
    its reader loads the whole file before the model and optimizer copy it in: each needs
    the checkpoint's size again (SD1.5 full fine-tuning with AdamW: about 10 GB), measured
    in bench/checkpoint_io.py.

    On an object store (`s3://...`) a checkpoint is streamed to a local temporary file and
    uploaded in one PUT (it appears whole); resuming downloads it once into the cache
    (`$EASEL_CACHE_DIR/checkpoints`) and reads that copy memory-mapped.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with storage.atomic_writer(os.fspath(path), fsync=True) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        """On the CPU, tensors read from the file as they are copied where they belong."""
        return load_checkpoint_file(os.fspath(path), map_location, weights_only)


def load_checkpoint_file(uri: str, map_location=None, weights_only=None) -> dict[str, Any]:
    """A checkpoint on any fsspec filesystem, read memory-mapped from a local file. Raises
    `UntrustedCheckpoint` for one holding more than tensors and plain types (torch's
    weights-only reader refuses it; easel never loads it otherwise)."""
    local = storage.local_path(uri, str(cache_dir() / "checkpoints"))
    try:
        return torch.load(local, map_location=map_location or "cpu",
                          weights_only=weights_only, mmap=True)  # fmt: skip
    except pickle.UnpicklingError as error:
        if weights_only is False:
            raise
        found = re.search(r"(?i)unsupported global:? (?:GLOBAL )?([\w.]+)", str(error))
        raise UntrustedCheckpoint(
            f"checkpoint {uri} holds objects other than tensors and plain types"
            f"{f' ({found[1]})' if found else ''}: refused as unsafe to load; delete it, "
            "or resume from a checkpoint easel wrote"
        ) from None
