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
from easel.models import kandinsky
from easel.models.loading import LoadedModel
from easel.models.schedulers import fresh_scheduler

SD_TASKS = ("text2img", "img2img", "inpaint")
DEFAULT_SIDE = 512  # diffusers' default when a UNet config gives no sample size


def _config(model_path: str, *names: str) -> dict:
    """The first of `names` (paths under the model folder) that exists, parsed."""
    for name in names:
        path = os.path.join(model_path, name)
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
    raise FileNotFoundError(f"{model_path!r} has none of {', '.join(names)}")


def native_size(model_path: str) -> int:
    """The model's native image side in pixels, read from its configs (no weights loaded)."""
    sample_size = _config(model_path, "unet/config.json")["sample_size"]
    autoencoder = _config(model_path, "vae/config.json", "movq/config.json")
    return (
        int(sample_size) * kandinsky.autoencoder_scale(autoencoder) if sample_size else DEFAULT_SIDE
    )


def family_tasks(family: str, unet_config) -> tuple[str, ...]:
    return kandinsky.supported_tasks(unet_config) if family == "kandinsky22" else SD_TASKS


def prompt_truncation_warning(loaded: LoadedModel, prompt: str) -> str | None:
    """A warning if the tokenizer will cut `prompt` (CLIP's model_max_length; for Kandinsky,
    the prior's)."""
    pipeline = loaded.pipeline
    tokenizer = getattr(pipeline, "tokenizer", None) or getattr(pipeline, "prior_tokenizer", None)
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


def sd_pipeline(loaded: LoadedModel, settings: BatchSettings):
    """The Stable Diffusion pipeline for the task, sharing the loaded modules.

    Inpainting runs through diffusers' inpaint pipeline: 9-channel inpainting UNets get the
    masked image as extra input; ordinary 4-channel UNets blend latents under the mask."""
    import diffusers

    components = dict(loaded.pipeline.components)
    components["scheduler"] = fresh_scheduler(loaded.pipeline.scheduler, settings.scheduler)
    pipeline = getattr(diffusers, PIPELINES[settings.task])(**components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _generate_sd(loaded, settings: BatchSettings, requests, inits, masks) -> list:
    arguments = {
        "prompt": [r.prompt for r in requests],
        "negative_prompt": [r.negative_prompt or "" for r in requests],
        "guidance_scale": settings.guidance_scale,
        "num_inference_steps": settings.num_inference_steps,
        "generator": [torch.Generator(device="cpu").manual_seed(r.seed) for r in requests],
        "output_type": "pil",
    }
    if settings.task != "img2img":
        arguments.update(width=settings.width, height=settings.height)
    if inits:
        arguments.update(image=inits, strength=settings.strength)
    if masks:
        arguments.update(mask_image=[images.generation_mask(m) for m in masks])
    return sd_pipeline(loaded, settings)(**arguments).images


@torch.inference_mode()
def generate(
    loaded: LoadedModel, settings: BatchSettings, requests: list[ImageRequest]
) -> list[Image.Image]:
    """One batch for all `requests`; returns one PIL image per request, in order.

    Inpainted images are composited in pixel space: outside the mask, the init image."""
    if settings.task not in family_tasks(loaded.family, loaded.pipeline.unet.config):
        raise ValueError(f"`task` {settings.task!r} is not supported for a {loaded.family} model")
    size = (settings.width, settings.height)
    inits = masks = None
    if settings.task != "text2img":
        inits = [images.load_init_image(r.init_image, size) for r in requests]
    if settings.task == "inpaint":
        masks = [images.load_mask(r.mask_image, size) for r in requests]
    if loaded.family == "kandinsky22":
        generated = kandinsky.generate(loaded.pipeline, settings, requests, inits, masks)
    else:
        generated = _generate_sd(loaded, settings, requests, inits, masks)
    if masks is None:
        return generated
    return [images.composite(i, g, m) for i, g, m in zip(inits, generated, masks, strict=True)]


def model_facts(ref: str):
    """What planning needs to know of `ref` (digest, family, native size, default scheduler,
    tasks, schedulers, size step), from its configs, without loading its weights."""
    from easel.data.jobs import ModelFacts
    from easel.models.loading import detect_family
    from easel.models.references import resolve_model_reference
    from easel.models.schedulers import scheduler_name_from_config

    resolved = resolve_model_reference(ref)
    family = detect_family(resolved.path)  # refuses pipelines easel does not run
    scheduler = _config(resolved.path, "scheduler/scheduler_config.json")
    index = _config(resolved.path, "model_index.json")
    scheduler["_class_name"] = index.get("scheduler", [None, scheduler["_class_name"]])[1]
    unet = _config(resolved.path, "unet/config.json")
    facts = {
        "digest": resolved.digest, "family": family, "native_size": native_size(resolved.path),
        "default_scheduler": scheduler_name_from_config(scheduler),
        "tasks": family_tasks(family, unet),
    }  # fmt: skip
    if family == "kandinsky22":
        scale = kandinsky.autoencoder_scale(_config(resolved.path, "movq/config.json"))
        facts.update(schedulers=kandinsky.DECODER_SCHEDULERS, size_multiple=scale * scale)
    return ModelFacts(**facts)


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
