"""Random-weight LoRA adapters for a Stable Diffusion folder, for tests and benchmarks (test
support), in the two key formats users have:
- `peft`: diffusers/PEFT keys (`unet.…to_q.lora_A.weight`, `text_encoder.…q_proj.lora_B.weight`)
  as `StableDiffusionPipeline.save_lora_weights` writes them;
- `kohya`: kohya/A1111 keys (`lora_unet_…_to_q.lora_down.weight`, `…lora_up.weight`,
  `….alpha`; `lora_te_…` for the text encoder), as sd-scripts writes them.

Both put adapters on the UNet's attention projections and the text encoder's; `magnitude`
scales the random up-projections so the adapter visibly changes images.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
PEFT_FILE = "pytorch_lora_weights.safetensors"  # diffusers' name for a saved adapter


def build_random_lora(
    model_folder: str, path: str, format: Literal["peft", "kohya"] = "peft", seed: int = 0,
    rank: int = 4, magnitude: float = 1.0,
) -> str:  # fmt: skip
    """Write a random LoRA adapter for the SD pipeline at `model_folder` to the file `path`
    (`.safetensors`) in `format`; return `path`."""
    layers = _random_layers(model_folder, seed, rank, magnitude)
    if format == "peft":
        _save_peft(layers, path)
    elif format == "kohya":
        from safetensors.torch import save_file

        save_file(_kohya_keys(layers, rank), path)
    else:
        raise ValueError(f"`format` must be 'peft' or 'kohya' but is {format!r}")
    return path


def _random_layers(model_folder: str, seed: int, rank: int, magnitude: float) -> dict:
    """{"unet": state dict, "text_encoder": state dict}: PEFT's `lora_A`/`lora_B` keys of
    adapters on the folder's networks, `lora_alpha` = rank (scale 1)."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    layers = {}
    for name, network, targets in (
        ("unet", UNet2DConditionModel, UNET_TARGETS),
        ("text_encoder", CLIPTextModel, TEXT_TARGETS),
    ):
        model = network.from_pretrained(model_folder, subfolder=name)
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets,
                            init_lora_weights=False)  # fmt: skip
        inject_adapter_in_model(config, model)
        state = get_peft_model_state_dict(model)
        layers[name] = {key: value * magnitude if "lora_B" in key else value
                        for key, value in state.items()}  # fmt: skip
    return layers


def _save_peft(layers: dict, path: str) -> None:
    from diffusers import StableDiffusionPipeline

    folder, name = os.path.split(os.path.abspath(path))
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=layers["unet"], text_encoder_lora_layers=layers["text_encoder"],
        weight_name=name, safe_serialization=True,
    )  # fmt: skip


def _kohya_keys(layers: dict, rank: int) -> dict:
    """PEFT's keys as kohya's: `lora_unet_<module path with _>.lora_down.weight` (lora_A),
    `.lora_up.weight` (lora_B) and `.alpha` (a scalar; the scale is alpha / rank)."""
    prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
    kohya = {}
    for network, state in layers.items():
        for key, value in state.items():
            module, _, kind = key.rpartition(".lora_")  # "…to_q", "A.weight"
            if network == "text_encoder" and not module.startswith("text_model."):
                module = "text_model." + module  # the name under transformers < 5
            name = prefixes[network] + module.replace(".", "_")
            part = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}[kind]
            kohya[f"{name}.{part}"] = value.contiguous()
            kohya[f"{name}.alpha"] = torch.tensor(float(rank))
    return kohya
