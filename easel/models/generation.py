"""Generating a batch of images through a diffusers pipeline.

Every image has its own `torch.Generator` seeded with its own seed, so an image depends on
its prompt, settings and seed only, never on the batch it happens to share: the same as
calling the diffusers pipeline directly with one seeded generator.
"""

from __future__ import annotations

import json
import os

import torch
from PIL import Image

from easel.data import images
from easel.data.jobs import BatchSettings, ImageRequest
from easel.models.loading import LoadedModel
from easel.models.schedulers import SCHEDULERS, build_scheduler


def native_size(model_path: str) -> int:
    """The model's native image side in pixels, read from its configs (no weights loaded)."""
    for unet_folder in ("unet", "decoder"):
        unet_config = os.path.join(model_path, unet_folder, "config.json")
        if os.path.exists(unet_config):
            break
    vae_folder = "vae" if os.path.exists(os.path.join(model_path, "vae")) else "movq"
    with open(unet_config) as f:
        sample_size = json.load(f)["sample_size"]
    with open(os.path.join(model_path, vae_folder, "config.json")) as f:
        vae_scale = 2 ** (len(json.load(f)["block_out_channels"]) - 1)
    return int(sample_size) * vae_scale


def prompt_truncation_warning(loaded: LoadedModel, prompt: str) -> str | None:
    """A warning if the tokenizer will cut `prompt` (SD: CLIP's model_max_length)."""
    tokenizer = getattr(loaded.pipeline, "tokenizer", None)
    if tokenizer is None:
        return None
    length = len(tokenizer(prompt, truncation=False).input_ids)
    limit = tokenizer.model_max_length
    if length > limit:
        return f"`prompt` has {length} tokens and was truncated to the model's {limit}"
    return None


PIPELINES = {
    "text2img": "StableDiffusionPipeline",
    "img2img": "StableDiffusionImg2ImgPipeline",
    "inpaint": "StableDiffusionInpaintPipeline",
}


def task_pipeline(loaded: LoadedModel, settings: BatchSettings):
    """A pipeline for the task sharing the loaded modules, with the requested scheduler.

    Inpainting runs through diffusers' inpaint pipeline: 9-channel inpainting UNets get the
    masked image as extra input; ordinary 4-channel UNets blend latents under the mask."""
    import diffusers

    if loaded.family != "sd" or settings.task not in PIPELINES:
        raise ValueError(f"`task` {settings.task!r} is not supported for a {loaded.family} model")
    base = loaded.pipeline
    components = dict(base.components)
    if settings.scheduler in SCHEDULERS:
        components["scheduler"] = build_scheduler(settings.scheduler, base.scheduler.config)
    else:  # the model's own scheduler, a fresh copy: schedulers hold per-call state
        components["scheduler"] = type(base.scheduler).from_config(base.scheduler.config)
    pipeline = getattr(diffusers, PIPELINES[settings.task])(**components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@torch.inference_mode()
def generate(
    loaded: LoadedModel, settings: BatchSettings, requests: list[ImageRequest]
) -> list[Image.Image]:
    """One pipeline call for all `requests`; returns one PIL image per request, in order."""
    pipeline = task_pipeline(loaded, settings)
    size = (settings.width, settings.height)
    arguments = {
        "prompt": [r.prompt for r in requests],
        "negative_prompt": [r.negative_prompt or "" for r in requests],
        "guidance_scale": settings.guidance_scale,
        "num_inference_steps": settings.num_inference_steps,
        "generator": [torch.Generator(device="cpu").manual_seed(r.seed) for r in requests],
        "output_type": "pil",
    }
    if settings.task == "text2img":
        return pipeline(**arguments, width=settings.width, height=settings.height).images
    inits = [images.load_init_image(r.init_image, size) for r in requests]
    arguments.update(image=inits, strength=settings.strength)
    if settings.task == "img2img":
        return pipeline(**arguments).images
    masks = [images.load_mask(r.mask_image, size) for r in requests]
    generated = pipeline(
        **arguments, mask_image=[images.generation_mask(m) for m in masks],
        width=settings.width, height=settings.height,
    ).images  # fmt: skip
    return [images.composite(i, g, m) for i, g, m in zip(inits, generated, masks, strict=True)]


def model_facts(ref: str):
    """Digest, native size and default scheduler of `ref`, without loading its weights."""
    from easel.data.jobs import ModelFacts
    from easel.models.loading import detect_family
    from easel.models.references import resolve_model_reference
    from easel.models.schedulers import scheduler_name_from_config

    resolved = resolve_model_reference(ref)
    detect_family(resolved.path)  # refuses pipelines easel does not run
    with open(os.path.join(resolved.path, "scheduler", "scheduler_config.json")) as f:
        config = json.load(f)
    with open(os.path.join(resolved.path, "model_index.json")) as f:  # the class loaded
        config["_class_name"] = json.load(f).get("scheduler", [None, config["_class_name"]])[1]
    scheduler = scheduler_name_from_config(config)
    return ModelFacts(
        digest=resolved.digest, native_size=native_size(resolved.path), default_scheduler=scheduler
    )


def generate_each(
    loaded: LoadedModel, settings: BatchSettings, requests: list[ImageRequest]
) -> list:
    """Images for `requests` in one pipeline call; if that call fails, one call per request so
    that a bad request fails alone. Each entry is a PIL image or the exception it raised."""
    try:
        return list(generate(loaded, settings, requests))
    except Exception as error:  # noqa: BLE001 - recorded, or isolated below
        if len(requests) == 1:
            return [error]
    return [generate_each(loaded, settings, [request])[0] for request in requests]
