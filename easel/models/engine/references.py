"""Model references (SPEC §4) resolved to a local diffusers-format directory.

- `tiny-shapes` (and the other embedded names): folders shipped inside the package;
- a local directory holding `model_index.json`, with plain or variant weight files
  (`layout`: the variant found by itself where only one variant's files exist);
- a single-file checkpoint (`.safetensors`, `.ckpt` when pickle is trusted), local or at an
  fsspec URI (downloaded once), converted once into the cache as a diffusers folder
  (`single_file`);
- an fsspec URI of such a directory, copied once into a local content-addressed cache;
- `models:/NAME@ALIAS` or `models:/NAME/VERSION` from the MLflow registry;
- a hub id (`org/name`), only from the local Hugging Face cache or with network.

A decoder folder whose model card (README.md) names its `prior`, as the hub's
`kandinsky-2-2-decoder` does, resolves with that prior: the card's value is itself a
reference, a folder relative to the decoder's own location (its folder or URI, never the
working directory), or a hub id found in the local Hugging Face cache or in a sibling folder
of its name; the digest covers both. A `ModelSpec`'s `prior` overrides the card's.

A model's digest covers the files its pipeline loads (`layout.weight_layout`): a stray
checkpoint beside the component folders neither changes it nor is copied from a store.

Local references resolve afresh each time (a folder's digest is memoised by its files'
sizes and times), registry references ask the registry each time (an alias may move);
fsspec URIs are listed, copied and digested once per process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

from easel import tracking
from easel.data import storage
from easel.errors import ModelReferenceError
from easel.models.engine import single_file
from easel.models.engine.families import prior_class_for
from easel.models.engine.family import card_data, pipeline_class
from easel.models.engine.layout import check_trust, components, config_files, weight_layout
from easel.models.engine.spec import ModelReference, ModelSpec, as_spec

# The models shipped in the package, by the names references use
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
EMBEDDED_MODELS = {
    "tiny-shapes": WEIGHTS_DIR / "tiny-shapes",
    "tiny-shapes-k22": WEIGHTS_DIR / "tiny-shapes-k22",
    "tiny-shapes-k22-inpaint": WEIGHTS_DIR / "tiny-shapes-k22-inpaint",
}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
SINGLE_FILE_SUFFIXES = single_file.SUFFIXES


@dataclass(frozen=True)
class ResolvedModel:
    ref: str  # what the user wrote (a spec's `path`)
    path: str  # local diffusers-format directory
    digest: str  # sha256 over the files the pipeline loads (names and contents), and its prior's
    prior: ResolvedModel | None = None  # a Kandinsky decoder's connected prior
    variant: str | None = None  # the weight files' variant it loads (`fp16`), None: plain
    pickle_components: tuple[str, ...] = ()  # its components with pickle weights only


def cache_dir() -> Path:
    """Where remote models are copied: `$EASEL_CACHE_DIR`, else `~/.cache/easel`."""
    return Path(os.environ.get("EASEL_CACHE_DIR") or Path.home() / ".cache" / "easel")


def resolve_model_reference(ref: ModelReference, trust_pickle: bool = False) -> ResolvedModel:
    """Resolve `ref` (a reference string or a `ModelSpec`) to a local diffusers directory;
    raise `ModelReferenceError` saying why not, pickle-only weights included unless
    `trust_pickle`."""
    if not isinstance(ref, ModelSpec) and (not isinstance(ref, str) or not ref.strip()):
        raise ModelReferenceError(f"model reference must be a non-empty string but is {ref!r}")
    spec = as_spec(ref)
    resolved = _resolve(spec, trust_pickle)
    check_trust(resolved.pickle_components, spec.path, trust_pickle)
    return resolved


def _resolve(spec: ModelSpec, trust_pickle: bool) -> ResolvedModel:
    ref = spec.path
    if ref in EMBEDDED_MODELS:
        path = EMBEDDED_MODELS[ref]
        if not (path / "model_index.json").exists():
            raise ModelReferenceError(f"the embedded model {ref!r} is not installed at {path}")
        return _resolved(spec, str(path), str(path), trust_pickle)
    if ref.startswith("models:/"):
        path = tracking.download_registered_model(ref, cache_dir() / "registry")
        return _resolved(spec, path, path, trust_pickle)
    if "://" in ref and not ref.startswith("file://") and ref.endswith(SINGLE_FILE_SUFFIXES):
        local = single_file.fetched(spec, trust_pickle, cache_dir())
        return _single_file(spec, local, trust_pickle)
    if "://" in ref and not ref.startswith("file://"):
        resolved = _resolve_uri(spec, trust_pickle)
        if not os.path.exists(os.path.join(resolved.path, "model_index.json")):
            _resolve_uri.cache_clear()  # the cache was emptied under this process
            resolved = _resolve_uri(spec, trust_pickle)
        return resolved
    local = ref.removeprefix("file://")
    if os.path.isfile(local) and local.endswith(SINGLE_FILE_SUFFIXES):
        return _single_file(spec, local, trust_pickle)
    if os.path.isdir(local):
        if not os.path.exists(os.path.join(local, "model_index.json")):
            raise ModelReferenceError(
                f"model directory {ref!r} has no model_index.json (not in diffusers format)"
                + single_file.hint(local)
            )
        path = os.path.abspath(local)
        return _resolved(spec, path, path, trust_pickle)
    if HUB_ID.fullmatch(ref) and not os.path.exists(local):
        path = _hub_snapshot(ref)
        return _resolved(spec, path, path, trust_pickle)
    raise ModelReferenceError(f"model reference {ref!r} is not a known model, directory or URI")


def _single_file(spec: ModelSpec, local: str, trust_pickle: bool) -> ResolvedModel:
    """The single-file checkpoint at the local path `local`, converted once."""
    file_digest = model_digest(os.path.dirname(local), (os.path.basename(local),))
    folder = single_file.converted_folder(
        spec, local, file_digest, _folder_digest, trust_pickle, cache_dir()
    )
    return _resolved(spec, folder, os.path.dirname(os.path.abspath(local)), trust_pickle)


@functools.lru_cache(maxsize=64)
def _resolve_uri(spec: ModelSpec, trust_pickle: bool) -> ResolvedModel:
    """An fsspec URI: listed, copied into the cache and digested once per process."""
    return _resolved(spec, _copy_to_cache(spec.path), spec.path.rstrip("/"), trust_pickle)


def _resolved(spec: ModelSpec, path: str, location: str, trust_pickle: bool) -> ResolvedModel:
    """The folder at `path` (copied from `location`, where relative priors are found)."""
    layout = weight_layout(path, spec.variant, spec.path)
    own = model_digest(path, layout.files)
    prior_ref = spec.prior or connected_prior(path, location, spec.path)
    found = {"variant": layout.variant, "pickle_components": layout.pickle_components}
    if prior_ref is None:
        return ResolvedModel(ref=spec.path, path=path, digest=own, **found)
    prior = resolve_model_reference(prior_ref, trust_pickle)
    expected = prior_class_for(pipeline_class(path))
    if expected is None:
        raise ModelReferenceError(
            f"model {spec.path!r} is a {pipeline_class(path)!r}, which takes no diffusion prior: "
            "remove its `prior`"
        )
    if pipeline_class(prior.path) != expected:
        named = "its `prior`" if spec.prior else f"{prior_ref!r} as its prior (README.md)"
        raise ModelReferenceError(
            f"model {spec.path!r} names {named}, but that is a "
            f"{pipeline_class(prior.path)!r}, not a {expected}"
        )
    digest = hashlib.sha256(f"{own}\nprior {prior.digest}".encode()).hexdigest()
    return ResolvedModel(ref=spec.path, path=path, digest=digest, prior=prior, **found)


def connected_prior(path: str, location: str, ref: str) -> str | None:
    """The prior a decoder folder names in its model card, as a reference (None for a
    folder that holds everything): the card's value found beside the decoder's own
    `location` (its folder or URI, never the working directory), a hub id in the local
    Hugging Face cache or in a sibling folder of its name."""
    if prior_class_for(pipeline_class(path)) is None:
        return None
    value = card_data(path).get("prior")
    value = value[0] if isinstance(value, list) and value else value
    if not isinstance(value, str) or not value:
        return None
    if value in EMBEDDED_MODELS or value.startswith("models:/") or "://" in value:
        return value
    if os.path.isabs(value):
        return value
    card = f"the model card of {ref!r} (README.md)"
    beside = _beside(location, value)
    if _is_model_folder(beside):
        return beside
    if not HUB_ID.fullmatch(value):
        raise ModelReferenceError(
            f"{card} names the prior {value!r}, but {beside} holds no model_index.json: set "
            "`prior:` in that card to the prior's folder (relative to the decoder's) or URI"
        )
    sibling = _beside(location, "../" + value.rsplit("/", 1)[-1])
    cached = _hub_cached(value)
    if cached or _is_model_folder(sibling):
        return cached or sibling
    if os.environ.get("HF_HUB_OFFLINE") not in ("1", "true", "True"):
        return value  # fetched from the hub like any hub id
    raise ModelReferenceError(
        f"{card} names the prior {value!r}, a Hugging Face Hub id that is neither in the local "
        f"Hugging Face cache nor a folder beside the decoder ({sibling}): copy the prior there, "
        "or set `prior:` in that card to the prior's folder or URI"
    )


def _beside(location: str, relative: str) -> str:
    """`relative` joined to the folder or URI `location`, `..` resolved."""
    protocol, sep, path = location.removeprefix("file://").rpartition("://")
    joined = posixpath.normpath(posixpath.join(path, relative))
    return f"{protocol}{sep}{joined}" if sep else os.path.normpath(joined)


def _is_model_folder(location: str) -> bool:
    try:
        return storage.exists(storage.join(location, "model_index.json"))
    except Exception:  # an unreachable store: not a folder this model can use
        return False


def model_digest(path: str, files: tuple[str, ...]) -> str:
    """sha256 over (relative path, content) of `files` of the folder at `path` (the files
    its pipeline loads), memoised by their sizes and times."""
    stat_key = hashlib.sha256(path.encode() + b"\0")
    for name in files:
        st = os.stat(os.path.join(path, name))
        stat_key.update(f"{name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    memo = cache_dir() / "digests" / stat_key.hexdigest()
    if memo.exists():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0")
        with open(os.path.join(path, name), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    value = digest.hexdigest()
    memo.parent.mkdir(parents=True, exist_ok=True)
    storage.write_text_atomic(str(memo), value)
    return value


def _folder_digest(path: str) -> str:
    """The digest of the files configuring the diffusers folder at `path` (no weights)."""
    return model_digest(path, config_files(path))


def _copy_to_cache(uri: str) -> str:
    """Copy the files of a remote diffusers directory that a pipeline can load (its
    model_index.json, model card and component folders) once; later calls reuse the copy,
    keyed by the URI and each file's version (an object store's ETag: its content)."""
    fs, files = _remote_files(uri)
    identity = json.dumps(sorted((f"/{member}", tag) for member, (_, tag) in files.items()))
    key = hashlib.sha256(f"{uri}\n{identity}".encode()).hexdigest()[:32]
    target = cache_dir() / "models" / key
    if not (target / "model_index.json").exists():
        with storage.staged_folder(str(target), replace=False) as staging:
            for member, (name, _) in files.items():
                local = storage.inside(staging, member)
                os.makedirs(os.path.dirname(local), exist_ok=True)
                fs.get_file(name, local)
    return str(target)


def _remote_files(uri: str) -> tuple[object, dict[str, tuple[str, str]]]:
    """The filesystem of `uri` and the files a pipeline loads from it: {path relative to the
    model's folder: (the store's name, its version tag)}. A key that would leave the folder
    (`unet/../../x`) is refused, `ModelReferenceError` naming it, before anything is copied."""
    fs, root = storage.filesystem(uri)
    root = root.rstrip("/")
    try:
        listing = fs.find(root, detail=True)
        index = json.loads(fs.cat_file(f"{root}/model_index.json"))
    except FileNotFoundError:
        raise ModelReferenceError(f"model reference {uri!r} has no model_index.json") from None
    except Exception as error:
        raise ModelReferenceError(f"model reference {uri!r} cannot be listed: {error}") from error
    wanted, folders = {"model_index.json", "README.md"}, set(components(index))
    files = {}
    for name, info in listing.items():
        member = name[len(root) :].lstrip("/")
        if member not in wanted and member.split("/", 1)[0] not in folders:
            continue
        if storage.inside(str(cache_dir()), member) is None:
            raise ModelReferenceError(
                f"model reference {uri!r} holds the key {member!r}, which leaves the model's "
                "folder: refused (nothing is copied outside the cache)"
            )
        files[member] = (name, storage.version_tag(info))
    return fs, files


def _hub_cached(ref: str) -> str | None:
    """The local Hugging Face cache's snapshot of hub id `ref`, or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(ref, local_files_only=True)
    except LocalEntryNotFoundError:
        return None


def _hub_snapshot(ref: str) -> str:
    """A hub id: use the local Hugging Face cache, or download only where there is network."""
    from huggingface_hub import snapshot_download

    if cached := _hub_cached(ref):
        return cached
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
