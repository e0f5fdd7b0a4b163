"""Exporting a DreamBooth checkpoint as a diffusers pipeline directory (safetensors).

`full`: the base pipeline with the trained UNet (and text encoder). `lora`: the same, with the
adapter fused in so `StableDiffusionPipeline.from_pretrained` loads it as is, plus the adapter
itself under `lora/` (`pytorch_lora_weights.safetensors`, loadable with `load_lora_weights`)
and `lora/base_model.json` naming the base model it applies to.

The directory is assembled under a temporary name and renamed into place
(`storage.staged_folder`); its marker `easel_export.json` (which checkpoint it came from)
is written inside before the rename.
"""

from __future__ import annotations

import json
import os

from easel.data import storage
from easel.models.checkpoint_io import load_checkpoint_file

EXPORT_MARKER = "easel_export.json"


def exported_from(pipeline_dir: str) -> str | None:
    """The checkpoint a finished export came from, or None if there is none."""
    marker = storage.join(pipeline_dir, EXPORT_MARKER)
    if not storage.exists(marker):
        return None
    return json.loads(storage.read_bytes(marker))["checkpoint"]


def _identity(checkpoint_path: str) -> str:
    """How the marker names a checkpoint: an absolute path, or the URI."""
    return os.path.abspath(checkpoint_path) if "://" not in checkpoint_path else checkpoint_path


def export_pipeline(
    checkpoint_path: str, model_dir: str, base_reference: str, pipeline_dir: str
) -> str:
    """Write the pipeline trained in `checkpoint_path` to `pipeline_dir`; return it."""
    if exported_from(pipeline_dir) == _identity(checkpoint_path):
        return pipeline_dir
    from diffusers import StableDiffusionPipeline

    from easel.models.dreambooth.module import DreamBoothModule

    checkpoint = load_checkpoint_file(checkpoint_path, weights_only=True)
    module = DreamBoothModule.from_hyperparameters(checkpoint["hyper_parameters"], model_dir)
    module.load_state_dict(checkpoint["state_dict"], strict=module.settings.method == "full")
    pipeline = StableDiffusionPipeline.from_pretrained(
        model_dir, use_safetensors=True, safety_checker=None, requires_safety_checker=False
    )
    with storage.staged_folder(pipeline_dir, last=EXPORT_MARKER) as staging:
        if module.settings.method == "lora":
            _fuse_lora(pipeline, module, staging, base_reference)
        else:
            for name, network in module.trained_networks().items():
                getattr(pipeline, name).load_state_dict(network.state_dict())
        pipeline.save_pretrained(staging, safe_serialization=True)
        marker = {
            "checkpoint": _identity(checkpoint_path),
            "base_model": base_reference,
            "method": module.settings.method,
        }
        with open(os.path.join(staging, EXPORT_MARKER), "w") as f:
            json.dump(marker, f, indent=2)
    return pipeline_dir


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


def _fuse_lora(pipeline, module, staging: str, base_reference: str) -> None:
    """Save the adapter under `staging/lora` (diffusers' LoRA format), then merge it into
    `pipeline`'s networks."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    networks = module.trained_networks()
    layers = {
        f"{name}_lora_layers": convert_state_dict_to_diffusers(adapter_state_dict(network))
        for name, network in networks.items()
    }
    lora_dir = os.path.join(staging, "lora")
    StableDiffusionPipeline.save_lora_weights(lora_dir, **layers, safe_serialization=True)
    with open(os.path.join(lora_dir, "base_model.json"), "w") as f:
        json.dump(
            {
                "base_model": base_reference,
                "rank": module.settings.lora_rank,
                "networks": sorted(networks),
            },
            f,
            indent=2,
        )
    for name, network in networks.items():
        getattr(pipeline, name).load_state_dict(merged_state_dict(network))
