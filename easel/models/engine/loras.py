"""LoRA adapters on a loaded pipeline, through diffusers' LoRA loaders.

Each distinct adapter file is loaded once per loaded pipeline (`load_lora_weights`, on the
UNet and the text encoder, kohya/A1111 or diffusers/PEFT keys), named by its content digest;
each batch then switches to its own set with `set_adapters(names, weights)`, or turns
adapters off (`disable_lora`) for a batch without any. Batches are grouped by adapter set,
so a set is switched to once per batch, never per row.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from easel.data import storage
from easel.data.loras import LoraRef

log = logging.getLogger(__name__)

LOADS: Counter[str] = Counter()  # adapter loads in this process, by file sha256
_LOCK = threading.Lock()


def adapter_name(adapter: LoraRef) -> str:
    """The adapter's name on a pipeline: its content, so two paths to one file load once."""
    return f"lora_{adapter.sha256[:16]}"


def activate(pipeline, adapters: tuple[LoraRef, ...] | None) -> None:
    """Make `adapters` (stacked, each with its scale) the pipeline's active LoRA set, loading
    those it does not hold yet; with none, turn every adapter off."""
    with _LOCK:
        held = _held(pipeline)
        if not adapters:
            if held:
                pipeline.disable_lora()
            return
        for adapter in adapters:
            if adapter_name(adapter) not in held:
                _load(pipeline, adapter)
                held.add(adapter_name(adapter))
        pipeline.enable_lora()
        pipeline.set_adapters([adapter_name(a) for a in adapters], [a.scale for a in adapters])


def _held(pipeline) -> set[str]:
    return {name for names in pipeline.get_list_adapters().values() for name in names}


def _load(pipeline, adapter: LoraRef) -> None:
    from safetensors.torch import load

    state = load(storage.read_bytes(adapter.uri))
    try:
        pipeline.load_lora_weights(state, adapter_name=adapter_name(adapter))
    except (ValueError, KeyError) as error:
        raise ValueError(
            f"`loras` path {adapter.uri!r} could not be applied to the model: {error}"
        ) from None
    LOADS[adapter.sha256] += 1
    log.info("loaded LoRA adapter %s (%s)", adapter.uri, adapter_name(adapter))
