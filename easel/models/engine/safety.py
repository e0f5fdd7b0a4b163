"""A model's own safety checker (SD 1.x ships one: `safety_checker/` and
`feature_extractor/`, named in `model_index.json`), run on every finished image as diffusers'
`run_safety_checker` does: an image it flags is replaced by a black one.

It runs where the model folder names both components, unless the model's spec says
`safety_checker: off`; images of a model without one, or with it off, are not screened
(`nsfw_content_detected` is None for them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from easel.models.engine.family import read_config

COMPONENTS = ("safety_checker", "feature_extractor")  # both named: the model has a checker


@dataclass(frozen=True)
class SafetyChecker:
    checker: object  # diffusers' StableDiffusionSafetyChecker, on the pipeline's device
    feature_extractor: object  # its CLIPImageProcessor

    @torch.inference_mode()
    def screen(self, images: list[Image.Image]) -> tuple[list[Image.Image], list[bool]]:
        """`images` with those the checker flags blacked out (same size), and the flags."""
        parameter = next(self.checker.parameters())
        clip_input = self.feature_extractor(images, return_tensors="pt").pixel_values
        arrays = [np.asarray(image) for image in images]
        screened, flags = self.checker(
            images=arrays, clip_input=clip_input.to(parameter.device, parameter.dtype)
        )
        kept = [Image.fromarray(np.asarray(a).astype(np.uint8)) for a in screened]
        return kept, [bool(flag) for flag in flags]


def has_safety_checker(model_path: str) -> bool:
    """Does the diffusers folder at `model_path` name a safety checker and its feature
    extractor in `model_index.json`?"""
    index = read_config(model_path, "model_index.json")
    return all(isinstance(index.get(name), list) and index[name][0] for name in COMPONENTS)


def load_safety_checker(model_path: str, options: dict, device: str) -> SafetyChecker | None:
    """The folder's safety checker (`options`: `from_pretrained`'s dtype, safetensors and
    variant), on `device`; None for a folder without one."""
    if not has_safety_checker(model_path):
        return None
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
    )
    from transformers import CLIPImageProcessor

    checker = StableDiffusionSafetyChecker.from_pretrained(
        model_path, subfolder="safety_checker", **options
    )
    extractor = CLIPImageProcessor.from_pretrained(model_path, subfolder="feature_extractor")
    return SafetyChecker(checker.to(device).eval(), extractor)
