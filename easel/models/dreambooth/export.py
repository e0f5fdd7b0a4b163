"""Exporting a DreamBooth checkpoint: a diffusers pipeline directory (safetensors), and
with `train.method: lora` the adapter alone.

`full`: the base pipeline with the trained UNet (and text encoder). `lora`: the same, with the
adapter fused in so `StableDiffusionPipeline.from_pretrained` loads it as is; and the adapter
in its own folder (`LORA_FILE`, diffusers' format, loadable with `load_lora_weights` or as a
sweep's `loras` on the base model) beside `base_model.json` naming the base it applies to.

Each folder is assembled under a temporary name and renamed into place
(`storage.staged_folder`); its marker (`easel_export.json` in the pipeline, `base_model.json`
in the adapter's folder) names the checkpoint it came from and is written last, so a rerun
skips what a finished export of the same checkpoint already wrote.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from easel.data import storage
from easel.models.checkpoint_io import load_checkpoint_file

EXPORT_MARKER = "easel_export.json"
LORA_MARKER = "base_model.json"
LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' name for a saved adapter


@dataclass(frozen=True)
class Exported:
    pipeline: str  # the diffusers directory
    lora: str | None  # the adapter file (method lora), else None


def _marker(folder: str, name: str) -> dict | None:
    uri = storage.join(folder, name)
    return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None


def exported_from(pipeline_dir: str) -> str | None:
    """The checkpoint a finished export came from, or None if there is none."""
    marker = _marker(pipeline_dir, EXPORT_MARKER)
    return marker["checkpoint"] if marker else None


def _identity(checkpoint_path: str) -> str:
    """How the markers name a checkpoint: an absolute path, or the URI."""
    return os.path.abspath(checkpoint_path) if "://" not in checkpoint_path else checkpoint_path


def _adapter_done(lora_dir: str, identity: str) -> bool:
    marker = _marker(lora_dir, LORA_MARKER)
    return bool(marker) and marker.get("checkpoint") == identity


def export(
    checkpoint_path: str, model_dir: str, base_reference: str, pipeline_dir: str, lora_dir: str,
    variant: str | None = None,
) -> Exported:
    """Write the pipeline trained in `checkpoint_path` to `pipeline_dir` and, when it trained
    a LoRA adapter, the adapter to `lora_dir` (`lora_dir/LORA_FILE`). `model_dir`: the base
    model's local diffusers folder (its untrained components are copied; `variant`: its weight
    files', e.g. fp16; the export is float32 plain files); `base_reference`: how the markers
    name the base. Idempotent: what already came from this checkpoint is kept."""
    identity = _identity(checkpoint_path)
    pipeline_marker = _marker(pipeline_dir, EXPORT_MARKER)
    pipeline_done = bool(pipeline_marker) and pipeline_marker["checkpoint"] == identity
    if pipeline_done and pipeline_marker["method"] != "lora":
        return Exported(pipeline_dir, None)
    lora_file = storage.join(lora_dir, LORA_FILE)
    if pipeline_done and _adapter_done(lora_dir, identity):
        return Exported(pipeline_dir, lora_file)
    module = _trained_module(checkpoint_path, model_dir, variant)
    base = (model_dir, variant, base_reference)
    if module.settings.method != "lora":
        _write_pipeline(module, base, pipeline_dir, identity)
        return Exported(pipeline_dir, None)
    if not _adapter_done(lora_dir, identity):
        with storage.staged_folder(lora_dir, last=LORA_MARKER) as staging:
            _save_adapter(module, staging, base_reference, identity)
    if not pipeline_done:
        _write_pipeline(module, base, pipeline_dir, identity)
    return Exported(pipeline_dir, lora_file)


def _trained_module(checkpoint_path: str, model_dir: str, variant: str | None):
    from easel.models.dreambooth.module import DreamBoothModule

    checkpoint = load_checkpoint_file(checkpoint_path, weights_only=True)
    module = DreamBoothModule.from_hyperparameters(
        checkpoint["hyper_parameters"], model_dir, variant
    )
    module.load_state_dict(checkpoint["state_dict"], strict=module.settings.method == "full")
    return module


def _write_pipeline(module, base: tuple, pipeline_dir: str, identity: str) -> None:
    """The base pipeline (`base`: its folder, weight variant and reference) with `module`'s
    trained networks (a LoRA merged)."""
    import torch
    from diffusers import StableDiffusionPipeline

    model_dir, variant, base_reference = base
    pipeline = StableDiffusionPipeline.from_pretrained(
        model_dir, use_safetensors=True, variant=variant, dtype=torch.float32,
        safety_checker=None, requires_safety_checker=False,
    )  # fmt: skip
    with storage.staged_folder(pipeline_dir, last=EXPORT_MARKER) as staging:
        for name, network in module.trained_networks().items():
            merged = module.settings.method == "lora"
            state = merged_state_dict(network) if merged else network.state_dict()
            getattr(pipeline, name).load_state_dict(state)
        pipeline.save_pretrained(staging, safe_serialization=True)
        marker = {"checkpoint": identity, "base_model": base_reference,
                  "method": module.settings.method}  # fmt: skip
        with open(os.path.join(staging, EXPORT_MARKER), "w") as f:
            json.dump(marker, f, indent=2)


def adapter_state_dict(network) -> dict:
    """The LoRA weights of `network`, keyed as peft saves them (no adapter name)."""
    return {
        key.replace(".default", ""): value
        for key, value in network.state_dict().items()
        if "lora_" in key
    }


def merged_state_dict(network) -> dict:
    """`network`'s weights with its LoRA merged in, keyed like the plain network."""
    from peft.tuners.lora import LoraLayer

    for layer in network.modules():
        if isinstance(layer, LoraLayer):
            layer.merge()
    return {
        key.replace(".base_layer", ""): value
        for key, value in network.state_dict().items()
        if "lora_" not in key
    }


def _save_adapter(module, folder: str, base_reference: str, identity: str) -> None:
    """`module`'s adapter in diffusers' LoRA format (`folder/LORA_FILE`) and its marker."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    networks = module.trained_networks()
    layers = {
        f"{name}_lora_layers": convert_state_dict_to_diffusers(adapter_state_dict(network))
        for name, network in networks.items()
    }
    StableDiffusionPipeline.save_lora_weights(
        folder, **layers, weight_name=LORA_FILE, safe_serialization=True
    )
    marker = {"base_model": base_reference, "checkpoint": identity,
              "rank": module.settings.lora_rank, "networks": sorted(networks)}  # fmt: skip
    with open(os.path.join(folder, LORA_MARKER), "w") as f:
        json.dump(marker, f, indent=2)
