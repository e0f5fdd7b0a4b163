"""Single-file checkpoints (A1111 / civitai / the original LDM layout: one `.safetensors`
or `.ckpt` holding `model.diffusion_model.*`, `first_stage_model.*` and
`cond_stage_model.*`) as model references, converted once into a diffusers folder.

The weights come from the file, read by diffusers' single-file loader
(`from_single_file`), offline. A single file holds no tokenizer and no component configs;
they come, in this order, from
1. the spec's `config`: a local diffusers folder of the same model type (its configs and
   tokenizer; weights are not needed);
2. an LDM `.yaml` beside the file (A1111's convention, `model.yaml` beside
   `model.safetensors`) for the UNet and VAE (and `parameterization: v`: the scheduler
   predicts `v_prediction`), with the tokenizer and text encoder config of `config`,
   which is then still required.
Without them the conversion is refused in one line naming `config`.

The converted folder lies in the content-addressed model cache under the digest of the
file and of its configuration: a second run loads it, with no second conversion.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from easel.data import storage
from easel.errors import ModelReferenceError
from easel.models.engine.family import pipeline_class
from easel.models.engine.layout import PICKLE_REFUSAL

SUFFIXES = (".safetensors", ".ckpt")
PIPELINES = ("StableDiffusionPipeline", "StableDiffusionInpaintPipeline")  # what it converts


def hint(folder: str) -> str:
    """A hint for a folder without model_index.json that holds single-file checkpoints."""
    files = sorted(f for f in os.listdir(folder) if f.endswith(SUFFIXES))
    return f"; to use a single-file checkpoint, name the file: {files[0]}" if files else ""


def sidecar_yaml(path: str) -> str | None:
    """The LDM config beside the checkpoint (`model.yaml` for `model.safetensors`), if any."""
    yaml = Path(path).with_suffix(".yaml")
    return str(yaml) if yaml.is_file() else None


def config_folder(spec, path: str) -> str:
    """The diffusers folder giving the checkpoint's configs and tokenizer (`ModelSpec.config`);
    `ModelReferenceError` naming `config` where there is none."""
    if spec.config is None:
        found = (
            "its LDM .yaml beside it gives the UNet and VAE only; " if sidecar_yaml(path) else ""
        )
        raise ModelReferenceError(
            f"single-file checkpoint {spec.path!r} holds no tokenizer or text encoder config: "
            f"{found}give `config`, a local diffusers folder of the same model type (its "
            "model_index.json, configs and tokenizer; weights are not needed)"
        )
    config = spec.config.removeprefix("file://")
    if not os.path.isfile(os.path.join(config, "model_index.json")):
        raise ModelReferenceError(
            f"`config` of {spec.path!r} must be a local diffusers folder (with model_index.json) "
            f"but is {spec.config!r}"
        )
    if pipeline_class(config) not in PIPELINES:
        raise ModelReferenceError(
            f"`config` of {spec.path!r} is a {pipeline_class(config)!r}; single-file "
            f"checkpoints convert as {', '.join(PIPELINES)}"
        )
    return os.path.abspath(config)


def converted_folder(spec, path: str, file_digest: str, config_digest, trust_pickle: bool,
                     cache: Path) -> str:  # fmt: skip
    """The diffusers folder converted from the checkpoint at `path` (sha256 `file_digest`)
    under `cache`, converting only where it is not there yet. `config_digest(folder)`: the
    digest of the config folder's files."""
    if path.endswith(".ckpt") and not trust_pickle:
        raise ModelReferenceError(
            f"single-file checkpoint {spec.path!r} is a pickle; {PICKLE_REFUSAL}"
        )
    config, yaml = config_folder(spec, path), sidecar_yaml(path)
    key = hashlib.sha256(f"{file_digest}\n{config_digest(config)}".encode())
    if yaml:
        key.update(Path(yaml).read_bytes())
    target = cache / "converted" / key.hexdigest()[:32]
    if not (target / "model_index.json").exists():
        with storage.staged_folder(str(target), replace=False) as staging:
            convert(path, config, yaml, staging)
    return str(target)


def convert(path: str, config: str, yaml: str | None, folder: str) -> None:
    """Write the diffusers pipeline of the checkpoint at `path` (configs and tokenizer from
    `config`, UNet and VAE architecture from the LDM `yaml` where given) to `folder`."""
    import diffusers
    from diffusers.loaders.single_file_utils import SingleFileComponentError
    from safetensors import SafetensorError

    try:
        pipeline = getattr(diffusers, pipeline_class(config)).from_single_file(
            path, config=config, original_config=yaml, local_files_only=True
        )
    except (SingleFileComponentError, SafetensorError, ValueError, KeyError, RuntimeError) as e:
        said = " ".join(str(e).split())[:300]  # diffusers' reasons run to paragraphs
        raise ModelReferenceError(
            f"single-file checkpoint {path!r} is not a pipeline that `config` {config!r} "
            f"describes: {type(e).__name__}: {said}"
        ) from None
    if yaml and ldm_parameterization(yaml) == "v":  # SD 2.x 768: the yaml, not `config`, says
        pipeline.scheduler.register_to_config(prediction_type="v_prediction")
    pipeline.save_pretrained(folder, safe_serialization=True)


def ldm_parameterization(yaml: str) -> str:
    """What the LDM config's UNet predicts: `model.params.parameterization`, `eps` (noise)
    where unset, `v` for SD 2.x 768."""
    import yaml as pyyaml

    content = pyyaml.safe_load(Path(yaml).read_text()) or {}
    return content.get("model", {}).get("params", {}).get("parameterization", "eps")
