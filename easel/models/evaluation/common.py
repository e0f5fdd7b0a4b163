"""What every suite shares: settings, context and result types, the one function that
calls the pipeline, metric math and the image grid."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from easel.models.judge import Judge

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
    pipeline: object  # a diffusers StableDiffusionPipeline
    judge: Judge
    settings: EvalSettings
    base_pipeline: object | None = None  # the model `pipeline` was fine-tuned from
    subject: Subject | None = None


# -- generation ----------------------------------------------------------------------------


def generate_images(
    pipeline,
    prompts: list[str],
    seeds: list[int],
    guidance_scale: float,
    num_inference_steps: int,
    negative_prompts: list[str] | None = None,
    batch_size: int = 64,
) -> list[Image.Image]:
    """One image per (prompt, seed), each from `torch.Generator().manual_seed(seed)`, so an
    image does not depend on its batch. The only place evaluation calls the pipeline; a
    Kandinsky 2.2 pipeline goes through the sweep engine's prior + decoder path."""
    assert len(prompts) == len(seeds), (len(prompts), len(seeds))
    images: list[Image.Image] = []
    for start in range(0, len(prompts), batch_size):
        stop = start + batch_size
        negatives = negative_prompts[start:stop] if negative_prompts is not None else None
        if hasattr(pipeline, "prior_pipe"):
            chunk = (prompts[start:stop], seeds[start:stop])
            images.extend(_kandinsky_images(pipeline, *chunk, guidance_scale,
                                            num_inference_steps, negatives))  # fmt: skip
            continue
        output = pipeline(
            prompt=prompts[start:stop],
            negative_prompt=negatives,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            generator=[torch.Generator().manual_seed(seed) for seed in seeds[start:stop]],
            output_type="pil",
        )
        images.extend(output.images)
    return images


def _kandinsky_images(pipeline, prompts, seeds, guidance_scale, steps, negatives):
    from easel.data.jobs import BatchSettings, ImageRequest
    from easel.models import kandinsky

    side = pipeline.unet.config.sample_size * kandinsky.autoencoder_scale(pipeline.movq.config)
    settings = BatchSettings(task="text2img", scheduler=None, guidance_scale=guidance_scale,
                             num_inference_steps=steps, width=side, height=side)  # fmt: skip
    requests = [
        ImageRequest(prompt=p, negative_prompt=negatives[i] if negatives else None, seed=s)
        for i, (p, s) in enumerate(zip(prompts, seeds, strict=True))
    ]
    return kandinsky.generate(pipeline, settings, requests, None, None)


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
def vae_round_trip(vae, images: list[Image.Image]) -> list[Image.Image]:
    """`images` encoded (posterior mean; Kandinsky's MOVQ: its unquantized latents, as its
    pipelines use them) and decoded by `vae`: what any edit in its latent space can keep of
    them at best."""
    x = torch.from_numpy(np.stack([np.asarray(i.convert("RGB")) for i in images]))
    x = x.permute(0, 3, 1, 2).to(vae.device, vae.dtype) / 127.5 - 1
    if hasattr(vae, "quantize"):
        decoded = vae.decode(vae.encode(x).latents, force_not_quantize=True).sample
    else:
        decoded = vae.decode(vae.encode(x).latent_dist.mode()).sample
    decoded = decoded.clamp(-1, 1)
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
