"""What every suite shares: settings, context and result types, the one function through
which suites generate (the engine's `text_to_image`), metric math and the image grid."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from easel.models.engine.generation import text_to_image
from easel.models.engine.loading import LoadedModel
from easel.models.shapes.judge import Judge

ATTRIBUTES = ("shape", "color", "background")


@dataclass(frozen=True)
class EvalSettings:
    guidance_scale: float = 7.5
    num_inference_steps: int = 20
    # per split (seen, held-out); 192 images: a standard error of about 3 points at 80%
    adherence_images: int = 192
    guidance_scales: tuple[float, ...] = (0.0, 1.0, 3.0, 5.0, 7.5)
    guidance_images: int = 96  # per scale
    negative_images: int = 96  # per arm (without / with the negative prompt)
    negative_attribute: str | None = "red"  # None: the colour drawn most often unasked
    diversity_prompts: int = 8
    diversity_seeds: int = 4
    judge_images: int = 600  # fresh renders for the judge's own accuracy
    seed: int = 0
    batch_size: int = 64
    subject_images: int = 48  # per prompt and model, in the DreamBooth suites
    world_images: int = 512  # real renders whose mean judge feature centres the similarities


@dataclass
class SuiteResult:
    metrics: dict[str, float]  # flat, MLflow-ready: "adherence/seen/all" -> 0.93
    rows: list[dict] = field(default_factory=list)  # for the terminal table
    images: list[Image.Image] = field(default_factory=list)  # a few, for the report's grid


@dataclass(frozen=True)
class Subject:
    """What a DreamBooth model was taught: its instance images and its two prompts."""

    instance_images: list[Image.Image]
    instance_prompt: str  # with the identifier: "a sks circle"
    class_prompt: str  # without it: "a circle"


@dataclass
class EvalContext:
    model: LoadedModel  # the model scored
    judge: Judge
    settings: EvalSettings
    base_model: LoadedModel | None = None  # the model `model` was fine-tuned from
    subject: Subject | None = None


# -- generation ----------------------------------------------------------------------------


def generate_images(
    model: LoadedModel,
    prompts: list[str],
    seeds: list[int],
    guidance_scale: float,
    num_inference_steps: int,
    negative_prompts: list[str] | None = None,
    batch_size: int = 64,
) -> list[Image.Image]:
    """One image per (prompt, seed), each from `torch.Generator().manual_seed(seed)`, at the
    model's native size, through the engine (any family). The only way suites generate."""
    return text_to_image(
        model, prompts, seeds, guidance_scale, num_inference_steps, negative_prompts, batch_size
    )


# -- metric math ---------------------------------------------------------------------------


def adherence(predictions: list[dict], targets: list[dict]) -> dict[str, float]:
    """Fraction of images whose judged attributes match the target, per attribute and for
    all of them at once ("all"). Targets may leave attributes out (None: not scored)."""
    scores: dict[str, list[bool]] = {name: [] for name in (*ATTRIBUTES, "all")}
    for predicted, target in zip(predictions, targets, strict=True):
        matches = [predicted[name] == target[name] for name in ATTRIBUTES if target.get(name)]
        for name in ATTRIBUTES:
            if target.get(name):
                scores[name].append(predicted[name] == target[name])
        scores["all"].append(all(matches))
    return {name: float(np.mean(values)) for name, values in scores.items() if values}


def mean_pairwise_cosine_distance(features: torch.Tensor) -> float:
    """Mean of 1 - cos(a, b) over distinct pairs of rows of (K, D) `features`."""
    normalised = torch.nn.functional.normalize(features.float(), dim=-1)
    similarity = normalised @ normalised.T
    k = len(features)
    off_diagonal = similarity.sum() - similarity.diagonal().sum()
    return float(1 - off_diagonal / (k * (k - 1)))


def mean_pairwise_pixel_distance(images: list[Image.Image]) -> float:
    """Mean absolute pixel difference (0..1) over distinct pairs of images."""
    arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255 for image in images]
    pairs = list(itertools.combinations(arrays, 2))
    return float(np.mean([np.abs(a - b).mean() for a, b in pairs]))


@torch.no_grad()
def vae_round_trip(model: LoadedModel, images: list[Image.Image]) -> list[Image.Image]:
    """`images` encoded and decoded by the model's autoencoder (the family's round trip): what
    any edit in its latent space can keep of them at best."""
    autoencoder = model.family.autoencoder(model.pipeline)
    x = torch.from_numpy(np.stack([np.asarray(i.convert("RGB")) for i in images]))
    x = x.permute(0, 3, 1, 2).to(autoencoder.device, autoencoder.dtype) / 127.5 - 1
    decoded = model.family.round_trip(model.pipeline, x).clamp(-1, 1)
    pixels = ((decoded + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(p) for p in pixels]


def image_grid(images: list[Image.Image], columns: int = 8) -> Image.Image:
    """Images (same size) tiled row by row, `columns` wide."""
    assert images, "image_grid needs at least one image"
    width, height = images[0].size
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    for index, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((index % columns) * width, (index // columns) * height))
    return grid
