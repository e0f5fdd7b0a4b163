"""A tiny SD 1.x folder with its safety checker, laid out as SD 1.5 ships it:
`safety_checker/` (a random-weight `StableDiffusionSafetyChecker`), `feature_extractor/`
(`preprocessor_config.json`) and `requires_safety_checker: true` in `model_index.json`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPConfig, CLIPImageProcessor

SIDE = 32  # what the checker's CLIP vision tower sees


def build_safety_checker(flag_everything: bool) -> StableDiffusionSafetyChecker:
    """A tiny random checker whose concept thresholds flag every image (cosine similarity
    is above -2 always) or none (never above 2)."""
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "vocab_size": 100},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": SIDE, "patch_size": 8},
        projection_dim=8,
    )  # fmt: skip
    checker = StableDiffusionSafetyChecker(config).eval()
    with torch.no_grad():
        checker.concept_embeds.normal_()
        checker.special_care_embeds.normal_()
        checker.concept_embeds_weights.fill_(-2.0 if flag_everything else 2.0)
        checker.special_care_embeds_weights.fill_(2.0)  # no "special care" adjustment
    return checker


def with_safety_checker(model: str, folder: Path, flag_everything: bool = True) -> str:
    """A copy at `folder` of the diffusers SD folder `model` with a tiny safety checker."""
    shutil.copytree(model, folder)
    build_safety_checker(flag_everything).save_pretrained(
        folder / "safety_checker", safe_serialization=True
    )
    CLIPImageProcessor(
        size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE}
    ).save_pretrained(folder / "feature_extractor")
    index = json.loads((folder / "model_index.json").read_text())
    index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
                 feature_extractor=["transformers", "CLIPImageProcessor"],
                 requires_safety_checker=True)  # fmt: skip
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return str(folder)
