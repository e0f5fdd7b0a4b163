"""Single-file checkpoints (A1111 / civitai / the original LDM layout: one `.safetensors`
or `.ckpt` holding `model.diffusion_model.*`, `first_stage_model.*` and
`cond_stage_model.*`) as model references, converted once into a diffusers folder.

The weights come from the file, read by diffusers' single-file loader
(`from_single_file`), offline. A single file holds no tokenizer and no component configs;
they come, in this order, from
1. the spec's `config`: a local diffusers folder of the same model type (its configs and
   tokenizer; weights are not needed), or the name of a configuration easel ships
   (`standard_configs`: SD 1.5, 2.1, 2.1-base and both inpainting models);
2. the shipped configuration the weights call for (diffusers infers the model type);
   SD 2.x's 768-v and 512-base differ in what the UNet predicts, not in the weights, so
   there the LDM `.yaml` beside the file (A1111's convention) must say, else `config`.
An LDM `.yaml` beside the file also gives the UNet and VAE architecture
(`parameterization: v`: the scheduler predicts `v_prediction`).

The converted folder lies in the content-addressed model cache under the digest of the
file and of its configuration: a second run loads it, with no second conversion.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from pathlib import Path

from easel.data import storage
from easel.errors import ModelReferenceError
from easel.models.engine import standard_configs
from easel.models.engine.family import pipeline_class
from easel.models.engine.layout import PICKLE_REFUSAL
from easel.models.kandinsky20.conversion import UNET_FILES

SUFFIXES = (".safetensors", ".ckpt")
PIPELINES = ("StableDiffusionPipeline", "StableDiffusionInpaintPipeline")  # what it converts


def hint(folder: str) -> str:
    """A hint for a folder without model_index.json that holds single-file checkpoints."""
    names = os.listdir(folder)
    if set(UNET_FILES.values()) & set(names):
        return (f"; it looks like Kandinsky 2.0 as the hub ships it: convert it first "
                f"(easel convert kandinsky-2.0 {folder} FOLDER --trust-pickle)")  # fmt: skip
    files = sorted(f for f in names if f.endswith(SUFFIXES))
    return f"; to use a single-file checkpoint, name the file: {files[0]}" if files else ""


def sidecar_yaml(path: str) -> str | None:
    """The LDM config beside the checkpoint (`model.yaml` for `model.safetensors`), if any."""
    yaml = Path(path).with_suffix(".yaml")
    return str(yaml) if yaml.is_file() else None


def config_folder(spec, path: str, cache: Path) -> str:
    """The diffusers folder giving the checkpoint's configs and tokenizer: `ModelSpec.config`
    (a local diffusers folder or the name of a shipped configuration), else the shipped one
    its weights (and LDM yaml) call for; `ModelReferenceError` naming `config` where that
    fails."""
    if spec.config is None or standard_configs.is_shipped(spec.config):
        yaml = sidecar_yaml(path)
        parameterization = ldm_parameterization(yaml) if yaml else None
        name = spec.config or standard_configs.inferred_name(path, spec.path, parameterization)
        return standard_configs.shipped_folder(name, cache)
    config = spec.config.removeprefix("file://")
    if not os.path.isfile(os.path.join(config, "model_index.json")):
        raise ModelReferenceError(
            f"`config` of {spec.path!r} must be a local diffusers folder (with model_index.json) "
            f"or one of the configurations easel ships ({', '.join(standard_configs.NAMES)}) "
            f"but is {spec.config!r}"
        )
    if pipeline_class(config) not in PIPELINES:
        raise ModelReferenceError(
            f"`config` of {spec.path!r} is a {pipeline_class(config)!r}; single-file "
            f"checkpoints convert as {', '.join(PIPELINES)}"
        )
    return os.path.abspath(config)


def refuse_pickle(spec, trust_pickle: bool) -> None:
    """`ModelReferenceError` for a `.ckpt` (a pickle) unless `trust_pickle`, before a byte
    of it is read or downloaded."""
    if spec.path.endswith(".ckpt") and not trust_pickle:
        raise ModelReferenceError(
            f"single-file checkpoint {spec.path!r} is a pickle; {PICKLE_REFUSAL}"
        )


def fetched(spec, trust_pickle: bool, cache: Path) -> str:
    """The single file at the URI `spec.path` (with the LDM `.yaml` beside it, if any) as a
    local file, downloaded once under `cache/files/` keyed by the URI and both files'
    versions; `ModelReferenceError` where it does not exist."""
    refuse_pickle(spec, trust_pickle)
    fs, path = storage.filesystem(spec.path)
    yaml = path.rsplit(".", 1)[0] + ".yaml"
    try:
        versions = [storage.version_tag(fs.info(path))]
    except FileNotFoundError:
        raise ModelReferenceError(f"single-file checkpoint {spec.path!r} does not exist") from None
    has_yaml = fs.exists(yaml)
    if has_yaml:
        versions.append(storage.version_tag(fs.info(yaml)))
    key = hashlib.sha256("\n".join([spec.path, *versions]).encode()).hexdigest()[:32]
    folder = cache / "files" / key
    if not folder.is_dir():
        with storage.staged_folder(str(folder), replace=False) as staging:
            for remote in [path, yaml] if has_yaml else [path]:
                fs.get_file(remote, os.path.join(staging, posixpath.basename(remote)))
    return str(folder / posixpath.basename(path))


def converted_folder(spec, path: str, file_digest: str, config_digest, trust_pickle: bool,
                     cache: Path) -> str:  # fmt: skip
    """The diffusers folder converted from the checkpoint at `path` (sha256 `file_digest`)
    under `cache`, converting only where it is not there yet. `config_digest(folder)`: the
    digest of the config folder's files."""
    refuse_pickle(spec, trust_pickle)
    config, yaml = config_folder(spec, path, cache), sidecar_yaml(path)
    key = hashlib.sha256(f"{file_digest}\n{config_digest(config)}".encode())
    if yaml:
        key.update(Path(yaml).read_bytes())
    target = cache / "converted" / key.hexdigest()[:32]
    if not (target / "model_index.json").exists():
        with storage.staged_folder(str(target), replace=False) as staging:
            convert(path, config, yaml, staging, described=spec.config)
    return str(target)


def convert(path: str, config: str, yaml: str | None, folder: str,
            described: str | None = None) -> None:  # fmt: skip
    """Write the diffusers pipeline of the checkpoint at `path` (configs and tokenizer from
    `config`, UNet and VAE architecture from the LDM `yaml` where given) to `folder`.
    `described`: the spec's `config` as the user wrote it (None: inferred from the file)."""
    import diffusers
    from diffusers.loaders.single_file_utils import SingleFileComponentError
    from safetensors import SafetensorError

    try:
        pipeline = getattr(diffusers, pipeline_class(config)).from_single_file(
            path, config=config, original_config=yaml, local_files_only=True
        )
    except (SingleFileComponentError, SafetensorError, ValueError, KeyError, RuntimeError) as e:
        said = f"{type(e).__name__}: " + " ".join(str(e).split())[:300]  # runs to paragraphs
        if described:
            said = f"is not a pipeline that `config` {described!r} describes: {said}"
        else:
            name = os.path.basename(config).rsplit("-", 1)[0]
            said = (
                f"does not fit {name!r}, the configuration its weights call for ({said}); "
                "give `config`, a diffusers folder of its model type"
            )
        raise ModelReferenceError(f"single-file checkpoint {path!r} {said}") from None
    if yaml and ldm_parameterization(yaml) == "v":  # SD 2.x 768: the yaml, not `config`, says
        pipeline.scheduler.register_to_config(prediction_type="v_prediction")
    pipeline.save_pretrained(folder, safe_serialization=True)


def ldm_parameterization(yaml: str) -> str:
    """What the LDM config's UNet predicts: `model.params.parameterization`, `eps` (noise)
    where unset, `v` for SD 2.x 768."""
    import yaml as pyyaml

    content = pyyaml.safe_load(Path(yaml).read_text()) or {}
    return content.get("model", {}).get("params", {}).get("parameterization", "eps")
