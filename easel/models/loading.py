"""Loading diffusers pipelines by reference, once per process.

The family is read from the model's own `model_index.json` (`_class_name`), never from its
name. Weights load from safetensors only unless the caller trusts pickle explicitly.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass

import torch

from easel.errors import ModelReferenceError
from easel.models.references import ResolvedModel, resolve_model_reference

FAMILIES = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionImg2ImgPipeline": "sd",
    "StableDiffusionInpaintPipeline": "sd",
    "KandinskyV22Pipeline": "kandinsky22",
    "KandinskyV22CombinedPipeline": "kandinsky22",
    "KandinskyV22Img2ImgCombinedPipeline": "kandinsky22",
    "KandinskyV22InpaintCombinedPipeline": "kandinsky22",
}


@dataclass
class LoadedModel:
    model: ResolvedModel
    family: str
    pipeline: object  # a diffusers DiffusionPipeline


_CACHE: dict[tuple, LoadedModel] = {}
_LOCK = threading.Lock()


def detect_family(path: str) -> str:
    """'sd' or 'kandinsky22', from `model_index.json`."""
    index_file = os.path.join(path, "model_index.json")
    with open(index_file) as f:
        class_name = json.load(f).get("_class_name")
    if class_name not in FAMILIES:
        raise ModelReferenceError(
            f"model at {path!r} is a {class_name!r}; easel runs {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[class_name]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    return torch.float16 if device.startswith("cuda") else torch.float32


def load_model(
    ref: str, device: str | None = None, dtype: torch.dtype | None = None,
    trust_pickle: bool = False,
) -> LoadedModel:  # fmt: skip
    """Resolve and load `ref`; the same (model, device, dtype) is loaded once per process."""
    resolved = resolve_model_reference(ref)
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    key = (resolved.digest, device, dtype)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load(resolved, device, dtype, trust_pickle)
        loaded = _CACHE[key]
    return LoadedModel(model=resolved, family=loaded.family, pipeline=loaded.pipeline)


def _load(resolved: ResolvedModel, device: str, dtype: torch.dtype, trust_pickle: bool):
    from diffusers import AutoPipelineForText2Image, StableDiffusionPipeline

    family = detect_family(resolved.path)
    cls = StableDiffusionPipeline if family == "sd" else AutoPipelineForText2Image
    options = {"torch_dtype": dtype, "use_safetensors": None if trust_pickle else True}
    if family == "sd":
        options.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipeline = cls.from_pretrained(resolved.path, **options)
    except OSError as error:
        if not trust_pickle and "safetensors" in str(error).lower():
            raise ModelReferenceError(
                f"model {resolved.ref!r} has no safetensors weights; pickle checkpoints are "
                "refused unless you pass the explicit trust flag (--trust-pickle)"
            ) from error
        raise ModelReferenceError(f"model {resolved.ref!r} could not be loaded: {error}") from error
    pipeline.set_progress_bar_config(disable=True)
    return LoadedModel(model=resolved, family=family, pipeline=pipeline.to(device))


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()
