"""Model references to what the engine needs: a model's facts (from its configs, no weights)
and its loaded pipeline (once per process, device and dtype).

The family is read from the model's own `model_index.json` (`families.family_of`). Weights
load from safetensors only unless the caller trusts pickle explicitly.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

import torch

from easel import startup
from easel.data.batching import ModelFacts
from easel.errors import ModelReferenceError
from easel.models.engine.families import family_of
from easel.models.engine.family import ModelFamily
from easel.models.engine.performance import EAGER, Performance, apply, cast_at_boundary
from easel.models.engine.references import ResolvedModel, resolve_model_reference
from easel.models.engine.safety import SafetyChecker, has_safety_checker, load_safety_checker
from easel.models.engine.spec import ModelReference, as_spec


@dataclass(frozen=True)
class LoadedModel:
    model: ResolvedModel
    family: ModelFamily
    pipeline: object  # the family's diffusers pipeline, on its device
    facts: ModelFacts  # what it runs: tasks, schedulers, sizes (as planning saw them)
    performance: Performance = EAGER  # how its networks run (compiled, memory format, ...)
    safety: SafetyChecker | None = None  # the model's own checker, unless its spec says off


_BY_CONTENT: dict[tuple, LoadedModel] = {}  # (digest, device, dtype, performance): one load
_BY_REFERENCE: dict[tuple, LoadedModel] = {}
_CHECKERS: dict[tuple, SafetyChecker | None] = {}  # (digest, device, dtype): one load
_LOCK = threading.Lock()


def resolve_family(resolved: ResolvedModel) -> ModelFamily:
    """The family of a resolved model; `ModelReferenceError` for one easel does not run."""
    return family_of(resolved.path, resolved.prior.path if resolved.prior else None)


def model_facts(ref: ModelReference, trust_pickle: bool = False) -> ModelFacts:
    """What planning needs to know of `ref` (digest, family, native size, default scheduler,
    tasks, schedulers, size step), from its configs, without loading its weights.
    `ModelReferenceError` for a model that cannot load (pickle-only weights unless
    `trust_pickle`, a missing variant, an unknown layout), in one line."""
    resolved = resolve_model_reference(ref, trust_pickle)
    return resolve_family(resolved).facts(resolved.path, screened_digest(ref, resolved))


def screened_digest(ref: ModelReference, resolved: ResolvedModel) -> str:
    """The model's identity in request keys: its digest, and for a model whose safety
    checker is turned off (`safety_checker: off`) that too, since its images then differ
    where the checker would flag them (keys of models without a checker, or with it on,
    are unchanged)."""
    if as_spec(ref).safety_checker == "auto" or not has_safety_checker(resolved.path):
        return resolved.digest
    return hashlib.sha256(f"{resolved.digest}\nsafety_checker off".encode()).hexdigest()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    return torch.float16 if device.startswith("cuda") else torch.float32


def load_model(
    ref: ModelReference, device: str | None = None, dtype: torch.dtype | None = None,
    trust_pickle: bool = False, performance: Performance = EAGER,
) -> LoadedModel:  # fmt: skip
    """Resolve and load `ref` once per process and (device, dtype, performance): later calls,
    one per batch, neither list a remote model again nor re-digest its files."""
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    with _LOCK:
        by_ref = (ref, device, dtype, trust_pickle, performance)
        if by_ref not in _BY_REFERENCE:
            resolved = resolve_model_reference(ref, trust_pickle)
            by_content = (resolved.digest, device, dtype, performance)
            if by_content not in _BY_CONTENT:
                _BY_CONTENT[by_content] = _load(resolved, device, dtype, trust_pickle, performance)
            loaded = _BY_CONTENT[by_content]
            safety = None
            if as_spec(ref).safety_checker == "auto":
                safety = _safety_checker(resolved, device, dtype)
            _BY_REFERENCE[by_ref] = LoadedModel(
                resolved, loaded.family, loaded.pipeline, loaded.facts, performance, safety
            )
        return _BY_REFERENCE[by_ref]


def _load(resolved: ResolvedModel, device: str, dtype: torch.dtype, trust_pickle: bool,
          performance: Performance):  # fmt: skip
    family = resolve_family(resolved)
    with startup.importing():
        family.import_pipelines()
    options = _options(resolved, dtype)
    prior = resolved.prior
    try:
        pipeline = family.load(resolved.path, prior and prior.path, options,
                               prior and _options(prior, dtype))  # fmt: skip
        if performance.vae_dtype and getattr(torch, performance.vae_dtype) != dtype:
            _reload_autoencoder(pipeline, family, resolved.path, performance.vae_dtype, options)
    except OSError as error:
        raise ModelReferenceError(f"model {resolved.ref!r} could not be loaded: {error}") from error
    pipeline.set_progress_bar_config(disable=True)
    facts = family.facts(resolved.path, resolved.digest)
    pipeline = pipeline.to(device)
    apply(pipeline, family, performance)
    return LoadedModel(resolved, family, pipeline, facts, performance)


def _safety_checker(resolved: ResolvedModel, device: str, dtype: torch.dtype):
    key = (resolved.digest, device, dtype)
    if key not in _CHECKERS:
        _CHECKERS[key] = load_safety_checker(resolved.path, _options(resolved, dtype), device)
    return _CHECKERS[key]


def _options(resolved: ResolvedModel, dtype: torch.dtype) -> dict:
    """`from_pretrained`'s options for the resolved folder: dtype, its variant, and
    safetensors only unless it has pickle-only weights (which resolving refused untrusted;
    diffusers then still prefers safetensors where a component has them)."""
    return {"dtype": dtype, "use_safetensors": None if resolved.pickle_components else True,
            "variant": resolved.variant}  # fmt: skip


def _reload_autoencoder(pipeline, family: ModelFamily, path: str, dtype: str, options: dict):
    """The autoencoder loaded again from its own weights in `dtype` (not a cast of the
    pipeline's copy), latents cast at its boundary."""
    loaded = family.autoencoder(pipeline)
    autoencoder = type(loaded).from_pretrained(
        path, subfolder=family.autoencoder_folder, **{**options, "dtype": getattr(torch, dtype)}
    )
    cast_at_boundary(autoencoder, options["dtype"])
    pipeline.register_modules(**{family.autoencoder_folder: autoencoder})
