"""Loading diffusers pipelines by reference, once per process.

The family is read from the model's own `model_index.json` (`_class_name`), never from its
name. Weights load from safetensors only unless the caller trusts pickle explicitly.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from easel.errors import ModelReferenceError
from easel.models.references import (
    KANDINSKY_DECODERS,
    ResolvedModel,
    connected_prior,
    pipeline_class,
    resolve_model_reference,
)

FAMILIES = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionImg2ImgPipeline": "sd",
    "StableDiffusionInpaintPipeline": "sd",
    "KandinskyV22CombinedPipeline": "kandinsky22",
    "KandinskyV22Img2ImgCombinedPipeline": "kandinsky22",
    "KandinskyV22InpaintCombinedPipeline": "kandinsky22",
}


@dataclass
class LoadedModel:
    model: ResolvedModel
    family: str
    pipeline: object  # a diffusers DiffusionPipeline


_CACHE: dict[tuple, LoadedModel] = {}  # by content digest
_BY_REFERENCE: dict[tuple, LoadedModel] = {}
_LOCK = threading.Lock()


def detect_family(path: str) -> str:
    """'sd' or 'kandinsky22', from `model_index.json`."""
    class_name = pipeline_class(path)
    if class_name in KANDINSKY_DECODERS:
        if connected_prior(path) is None:
            raise ModelReferenceError(
                f"model at {path!r} is a {class_name!r}, a Kandinsky 2.2 decoder without its "
                "diffusion prior: name the prior in its README.md (`prior: REF`), as the hub's "
                "kandinsky-2-2-decoder does, or save both with "
                "KandinskyV22CombinedPipeline.save_pretrained"
            )
        return "kandinsky22"
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
    """Resolve and load `ref` once per process and (device, dtype): later calls, one per
    batch, neither list a remote model again nor re-digest its files."""
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    with _LOCK:
        by_ref = (ref, device, dtype, trust_pickle)
        if by_ref not in _BY_REFERENCE:
            resolved = resolve_model_reference(ref)
            by_content = (resolved.digest, device, dtype)  # two references, one model
            if by_content not in _CACHE:
                _CACHE[by_content] = _load(resolved, device, dtype, trust_pickle)
            loaded = _CACHE[by_content]
            _BY_REFERENCE[by_ref] = LoadedModel(resolved, loaded.family, loaded.pipeline)
        return _BY_REFERENCE[by_ref]


def _load(resolved: ResolvedModel, device: str, dtype: torch.dtype, trust_pickle: bool):
    from diffusers import KandinskyV22CombinedPipeline, StableDiffusionPipeline

    family = detect_family(resolved.path)
    cls = StableDiffusionPipeline if family == "sd" else KandinskyV22CombinedPipeline
    options = {"torch_dtype": dtype, "use_safetensors": None if trust_pickle else True}
    if family == "sd":
        options.update(safety_checker=None, requires_safety_checker=False)
    try:
        if resolved.prior is None:
            pipeline = cls.from_pretrained(resolved.path, **options)
        else:
            pipeline = _decoder_with_prior(resolved, options)
    except OSError as error:
        if not trust_pickle and "safetensors" in str(error).lower():
            raise ModelReferenceError(
                f"model {resolved.ref!r} has no safetensors weights; pickle checkpoints are "
                "refused unless you pass the explicit trust flag (--trust-pickle)"
            ) from error
        raise ModelReferenceError(f"model {resolved.ref!r} could not be loaded: {error}") from error
    pipeline.set_progress_bar_config(disable=True)
    return LoadedModel(model=resolved, family=family, pipeline=pipeline.to(device))


def _decoder_with_prior(resolved: ResolvedModel, options: dict):
    """A combined Kandinsky 2.2 pipeline from a decoder folder and its resolved prior."""
    from diffusers import (
        KandinskyV22CombinedPipeline,
        KandinskyV22Pipeline,
        KandinskyV22PriorPipeline,
    )

    prior = KandinskyV22PriorPipeline.from_pretrained(resolved.prior.path, **options)
    decoder = KandinskyV22Pipeline.from_pretrained(resolved.path, **options)
    prior_components = {f"prior_{name}": c for name, c in prior.components.items()}
    return KandinskyV22CombinedPipeline(**prior_components, **decoder.components)
