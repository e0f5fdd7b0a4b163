"""Model references (SPEC §4) resolved to a local diffusers-format directory.

- `tiny-shapes` (and the other embedded names): folders shipped inside the package;
- a local directory holding `model_index.json`;
- an fsspec URI of such a directory, copied once into a local content-addressed cache;
- `models:/NAME@ALIAS` or `models:/NAME/VERSION` from the MLflow registry;
- a hub id (`org/name`), only from the local Hugging Face cache or with network.

A decoder folder whose model card (README.md) names its `prior`, as the hub's
`kandinsky-2-2-decoder` does, resolves with that prior: the card's value is itself a
reference (or a folder relative to the decoder's), and the digest covers both.

Local references resolve afresh each time (a folder's digest is memoised by its files'
sizes and times), registry references ask the registry each time (an alias may move);
fsspec URIs are listed, copied and digested once per process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from easel import tracking
from easel.data import storage
from easel.errors import ModelReferenceError
from easel.models.engine.families import prior_class_for
from easel.models.engine.family import card_data, pipeline_class

# The models shipped in the package, by the names references use
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
EMBEDDED_MODELS = {
    "tiny-shapes": WEIGHTS_DIR / "tiny-shapes",
    "tiny-shapes-k22": WEIGHTS_DIR / "tiny-shapes-k22",
    "tiny-shapes-k22-inpaint": WEIGHTS_DIR / "tiny-shapes-k22-inpaint",
}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
DIGESTED_SUFFIXES = (".json", ".safetensors", ".bin", ".ckpt", ".txt", ".model", ".pt")


@dataclass(frozen=True)
class ResolvedModel:
    ref: str  # what the user wrote
    path: str  # local diffusers-format directory
    digest: str  # sha256 over the model's files (names and contents), and its prior's
    prior: ResolvedModel | None = None  # a Kandinsky decoder's connected prior


def cache_dir() -> Path:
    """Where remote models are copied: `$EASEL_CACHE_DIR`, else `~/.cache/easel`."""
    return Path(os.environ.get("EASEL_CACHE_DIR") or Path.home() / ".cache" / "easel")


def resolve_model_reference(ref: str) -> ResolvedModel:
    """Resolve `ref` to a local directory; raise `ModelReferenceError` saying why not."""
    if not isinstance(ref, str) or not ref.strip():
        raise ModelReferenceError(f"model reference must be a non-empty string but is {ref!r}")
    if ref in EMBEDDED_MODELS:
        path = EMBEDDED_MODELS[ref]
        if not (path / "model_index.json").exists():
            raise ModelReferenceError(f"the embedded model {ref!r} is not installed at {path}")
        return _resolved(ref, str(path))
    if ref.startswith("models:/"):
        return _resolved(ref, tracking.download_registered_model(ref, cache_dir() / "registry"))
    if "://" in ref and not ref.startswith("file://"):
        resolved = _resolve_uri(ref)
        if not os.path.exists(os.path.join(resolved.path, "model_index.json")):
            _resolve_uri.cache_clear()  # the cache was emptied under this process
            resolved = _resolve_uri(ref)
        return resolved
    local = ref.removeprefix("file://")
    if os.path.isdir(local):
        if not os.path.exists(os.path.join(local, "model_index.json")):
            raise ModelReferenceError(
                f"model directory {ref!r} has no model_index.json (not in diffusers format)"
            )
        return _resolved(ref, os.path.abspath(local))
    if HUB_ID.fullmatch(ref) and not os.path.exists(local):
        return _resolved(ref, _hub_snapshot(ref))
    raise ModelReferenceError(f"model reference {ref!r} is not a known model, directory or URI")


@functools.lru_cache(maxsize=64)
def _resolve_uri(ref: str) -> ResolvedModel:
    """An fsspec URI: listed, copied into the cache and digested once per process."""
    return _resolved(ref, _copy_to_cache(ref))


def _resolved(ref: str, path: str) -> ResolvedModel:
    prior_ref = connected_prior(path)
    if prior_ref is None:
        return ResolvedModel(ref=ref, path=path, digest=model_digest(path))
    prior = resolve_model_reference(prior_ref)
    expected = prior_class_for(pipeline_class(path))
    if pipeline_class(prior.path) != expected:
        raise ModelReferenceError(
            f"model {ref!r} names {prior_ref!r} as its prior (README.md), but that is a "
            f"{pipeline_class(prior.path)!r}, not a {expected}"
        )
    digest = hashlib.sha256(f"{model_digest(path)}\nprior {prior.digest}".encode()).hexdigest()
    return ResolvedModel(ref=ref, path=path, digest=digest, prior=prior)


def connected_prior(path: str) -> str | None:
    """The prior a decoder folder names in its model card, as a reference (None for a
    folder that holds everything)."""
    if prior_class_for(pipeline_class(path)) is None:
        return None
    value = card_data(path).get("prior")
    value = value[0] if isinstance(value, list) and value else value
    if not isinstance(value, str) or not value:
        return None
    beside = os.path.join(path, value)  # a folder next to the decoder's, as shipped together
    return os.path.abspath(beside) if os.path.isdir(beside) else value


def model_digest(path: str) -> str:
    """sha256 over (relative path, content) of the model's files, memoised by size and mtime."""
    files = sorted(
        p for p in Path(path).rglob("*") if p.is_file() and p.suffix in DIGESTED_SUFFIXES
    )
    stat_key = hashlib.sha256()
    for file in files:
        st = file.stat()
        stat_key.update(f"{file.relative_to(path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    memo = cache_dir() / "digests" / stat_key.hexdigest()
    if memo.exists():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    value = digest.hexdigest()
    memo.parent.mkdir(parents=True, exist_ok=True)
    storage.write_text_atomic(str(memo), value)
    return value


def _copy_to_cache(uri: str) -> str:
    """Copy a remote diffusers directory once; later calls reuse the cached copy."""
    fs, root = storage.filesystem(uri)
    try:
        listing = fs.find(root, detail=True)
    except Exception as error:
        raise ModelReferenceError(f"model reference {uri!r} cannot be listed: {error}") from error
    if not any(name.rstrip("/").endswith("/model_index.json") for name in listing):
        raise ModelReferenceError(f"model reference {uri!r} has no model_index.json")
    identity = json.dumps(
        sorted((name[len(root) :], storage.version_tag(info)) for name, info in listing.items())
    )
    key = hashlib.sha256(f"{uri}\n{identity}".encode()).hexdigest()[:32]
    target = cache_dir() / "models" / key
    if not (target / "model_index.json").exists():
        with storage.staged_folder(str(target), replace=False) as staging:
            for name in listing:
                local = os.path.join(staging, name[len(root) :].lstrip("/"))
                os.makedirs(os.path.dirname(local), exist_ok=True)
                fs.get_file(name, local)
    return str(target)


def _hub_snapshot(ref: str) -> str:
    """A hub id: use the local Hugging Face cache, or download only where there is network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(ref, local_files_only=True)
    except LocalEntryNotFoundError:
        pass
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        raise ModelReferenceError(
            f"model reference {ref!r} is a Hugging Face Hub id, it is not in the local cache, "
            "and HF_HUB_OFFLINE is set: copy the model to a local directory or fsspec URI"
        )
    try:
        return snapshot_download(
            ref, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model", "README.md"]
        )
    except Exception as error:
        raise ModelReferenceError(
            f"model reference {ref!r} looks like a Hugging Face Hub id but could not be fetched "
            f"(no network access to the hub here?): {type(error).__name__}: {error}"
        ) from error
