"""LoRA adapters of a manifest row: the `loras` column and the sweep's default.

A `loras` value is a list of items, each a struct `{path, scale}`: `path` a LoRA
`.safetensors` file (kohya/A1111 or diffusers/PEFT keys; relative paths resolve against the
manifest's folder, like `init_image`) and `scale` its weight (default 1.0), as diffusers'
`set_adapters(names, adapter_weights)` takes it. Several items stack. An empty list means no
adapter; a row without a value takes the sweep's `loras`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from numbers import Real
from typing import Any

from easel.data import storage
from easel.data.limits import MAX_LORA_SCALE

COLUMN = "loras"
DEFAULT_SCALE = 1.0
# columns a user may mean `loras` by: passed through, but with a warning naming `loras`
MISNAMED = ("lora", "lora_scale", "lora_path", "lora_weights", "adapters")


class LoraInputError(ValueError):
    """A `loras` value a row cannot use; the message names the item and the value."""


@dataclass(frozen=True)
class LoraRef:
    """One adapter as planned: where its file is, its weight, and its bytes' sha256 (what
    `request_key` digests: a file changed in place makes new requests)."""

    uri: str
    scale: float
    sha256: str


def read_items(value: Any) -> list[tuple[str, float]]:
    """The (path, scale) pairs of a `loras` value; `LoraInputError` naming the item."""
    if isinstance(value, str | bytes | dict) or not hasattr(value, "__iter__"):
        raise LoraInputError(f"`{COLUMN}` must be a list of {{path, scale}} items but is {value!r}")
    return [_item(index, item) for index, item in enumerate(value)]


def _item(index: int, item: Any) -> tuple[str, float]:
    name = f"`{COLUMN}` item {index}"
    if not isinstance(item, dict):
        raise LoraInputError(f"{name} must be a {{path, scale}} struct but is {item!r}")
    unknown = sorted(set(item) - {"path", "scale"})
    if unknown:
        raise LoraInputError(f"{name} has unknown keys {unknown}; it takes `path` and `scale`")
    path, scale = item.get("path"), item.get("scale")
    if not isinstance(path, str) or not path.strip():
        raise LoraInputError(f"{name}: `path` must be a non-empty string but is {path!r}")
    if scale is None:
        return path, DEFAULT_SCALE
    if isinstance(scale, bool) or not isinstance(scale, Real) or not math.isfinite(scale):
        raise LoraInputError(f"{name}: `scale` must be a finite number but is {scale!r}")
    if abs(scale) > MAX_LORA_SCALE:
        raise LoraInputError(
            f"{name}: `scale` must be in {-MAX_LORA_SCALE:g}..{MAX_LORA_SCALE:g} but is {scale!r}"
        )
    return path, float(scale) + 0.0  # -0.0 as 0.0: equal numbers, one request key


def adapter_ref(uri: str, scale: float) -> LoraRef:
    """The planned adapter at `uri`; `LoraInputError` if it is not a readable file."""
    try:
        fs, path = storage.filesystem(uri)
        version = storage.version_tag(fs.info(path))
    except (OSError, ValueError):
        raise LoraInputError(f"`{COLUMN}` path {uri!r} is not a readable file") from None
    if not path.endswith(".safetensors"):
        raise LoraInputError(
            f"`{COLUMN}` path {uri!r} must be a .safetensors file (pickle files are refused)"
        )
    return LoraRef(uri=uri, scale=scale, sha256=_sha256(uri, version))


@functools.lru_cache(maxsize=256)
def _sha256(uri: str, version: str) -> str:
    """One read per file version, whatever the number of rows naming it."""
    return storage.sha256(uri)


def misnamed_warnings(column_names: list[str]) -> list[str]:
    """A warning for each column named like `loras` but not it (passed through unused)."""
    return [
        f"manifest column `{name}` is not read: LoRA adapters are given in the column "
        f"`{COLUMN}` (a list of {{path, scale}} items) or the sweep key `{COLUMN}`"
        for name in column_names
        if name in MISNAMED
    ]
