"""Generating images: the one path every image easel makes takes (sweeps, class priors,
evaluation, sample grids, the registry's pyfunc), whatever the model's family.

Every image has its own `torch.Generator` seeded with its own seed, so an image depends on
its prompt, settings and seed only, never on the batch it happens to share: the same as
calling the family's diffusers pipeline directly with one seeded generator. Where the model's
safety checker runs (`safety`), an image it flags is black, as diffusers returns it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import numpy as np
import torch
from diffusers.utils import numpy_to_pil
from PIL import Image

from easel.data import fusion, images
from easel.data.batching import BatchSettings, ImageRequest, settings_problem
from easel.data.fusion import FusionConditions
from easel.models.engine import loras
from easel.models.engine.loading import LoadedModel
from easel.models.engine.performance import attention


class Screened(NamedTuple):
    """A finished image and what the model's safety checker said of it."""

    image: Image.Image  # black where the checker flagged it
    nsfw_content_detected: bool | None  # None: no checker ran (none, or `safety_checker: off`)


def generate(
    loaded: LoadedModel, settings: BatchSettings, requests: list[ImageRequest]
) -> list[Image.Image]:
    """One batch for all `requests` (one pipeline call where the family allows); one PIL
    image per request, in order, black where the safety checker flagged it. Raises
    `ValueError` naming the column for a batch the model cannot run."""
    return [screened.image for screened in generate_screened(loaded, settings, requests)]


@torch.inference_mode()
def generate_screened(
    loaded: LoadedModel, settings: BatchSettings, requests: list[ImageRequest]
) -> list[Screened]:
    """`generate`, with each image's safety checker verdict."""
    # 1. Check inputs
    check_inputs(loaded, settings)
    # 2. Prepare: the batch's LoRA adapters; edit images and masks at the batch's size; a
    # fusion's weighted conditions
    if loaded.facts.takes_loras:
        loras.activate(loaded.pipeline, settings.loras)
    size = (settings.width, settings.height)
    inits = masks = None
    if settings.task == "fusion":
        inits = [fusion_conditions(r, settings.strength, size) for r in requests]
    elif settings.task != "text2img":
        inits = [images.load_init_image(r.init_image, size) for r in requests]
    if settings.task == "inpaint":
        masks = [images.load_mask(r.mask_image, size) for r in requests]
    # 3. Generate, each image from its own seeded generator
    with attention(loaded.performance):
        arrays = loaded.family.generate(loaded.pipeline, settings, requests, inits, masks)
    # 4. Postprocess: whole, finite images as 8-bit (diffusers' own rounding); inpainted
    # ones composited in pixel space (outside the mask, the init image exactly)
    if len(arrays) != len(requests):
        raise ValueError(f"the pipeline returned {len(arrays)} images for {len(requests)}")
    if not all(np.isfinite(array).all() for array in arrays):
        raise ValueError(
            f"generation produced non-finite pixels (NaN or inf) at `guidance_scale` "
            f"{settings.guidance_scale!r}: an extreme guidance (or a float16 overflow) does this"
        )
    generated = [numpy_to_pil(np.asarray(array)[None])[0] for array in arrays]
    if masks is not None:
        generated = [images.composite(i, g, m) for i, g, m in zip(inits, generated, masks,
                                                                   strict=True)]  # fmt: skip
    # 5. Screen: the model's safety checker on the finished images
    if loaded.safety is None:
        return [Screened(image, None) for image in generated]
    return [Screened(*pair) for pair in zip(*loaded.safety.screen(generated), strict=True)]


def fusion_conditions(
    request: ImageRequest, strength: float, size: tuple[int, int]
) -> FusionConditions:
    """What the prior mixes for a fusion request: its `fusion_inputs` items, images read
    upright as RGB at their own size (the prior's image processor resizes them); or its
    prompt weighing 1 - `strength` and its init image, at `size`, weighing `strength`."""
    if request.fusion_inputs is None:
        init = images.load_init_image(request.init_image, size)
        return FusionConditions([request.prompt, init], [1.0 - strength, strength])
    conditions = [
        item.text if item.image is None else images.read_rgb(item.image, fusion.label(i, "image"))
        for i, item in enumerate(request.fusion_inputs)
    ]
    return FusionConditions(conditions, [item.weight for item in request.fusion_inputs])


def check_inputs(loaded: LoadedModel, settings: BatchSettings) -> None:
    """Refuse settings the loaded model cannot run, naming the column and the value (the
    rules planning applies to every row: `batching.settings_problem`)."""
    facts = loaded.facts
    resolved = replace(settings, scheduler=settings.scheduler or facts.default_scheduler)
    problem = settings_problem(resolved, facts, f"{facts.family} model {loaded.model.ref!r}")
    if problem:
        raise ValueError(problem)


def generate_each(
    loaded: LoadedModel, settings: BatchSettings, requests: list[ImageRequest]
) -> list:
    """Images for `requests` in one pipeline call; if that call fails, one call per request so
    that a bad request fails alone. Each entry is a `Screened` image or the exception it
    raised."""
    try:
        return generate_screened(loaded, settings, requests)
    except Exception as error:  # noqa: BLE001 - recorded, or isolated below
        if len(requests) == 1:
            return [error]
    return [generate_each(loaded, settings, [request])[0] for request in requests]


def text_to_image(
    loaded: LoadedModel, prompts: list[str], seeds: list[int], guidance_scale: float,
    num_inference_steps: int, negative_prompts: list[str | None] | None = None,
    batch_size: int = 64,
) -> list[Image.Image]:  # fmt: skip
    """One image per (prompt, seed) at the model's native size with its own scheduler, in
    batches of `batch_size` (an image does not depend on its batch)."""
    assert len(prompts) == len(seeds), (len(prompts), len(seeds))
    side = loaded.family.native_size(loaded.model.path)
    settings = BatchSettings(
        task="text2img", scheduler=None, guidance_scale=guidance_scale,
        num_inference_steps=num_inference_steps, width=side, height=side,
        prior_guidance_scale=loaded.facts.prior_guidance_scale,
    )  # fmt: skip
    negatives = negative_prompts or [None] * len(prompts)
    requests = [
        ImageRequest(prompt=prompt, negative_prompt=negative, seed=seed)
        for prompt, seed, negative in zip(prompts, seeds, negatives, strict=True)
    ]
    return [
        image
        for start in range(0, len(requests), batch_size)
        for image in generate(loaded, settings, requests[start : start + batch_size])
    ]


def prompt_truncation_warning(
    loaded: LoadedModel, request: ImageRequest, task: str
) -> str | None:
    """A warning if a text encoder of the family (CLIP's; Kandinsky's prior's, and 2.1's
    multilingual one) will cut the request's prompt, negative prompt or a fusion's text to
    the tokens it keeps."""
    texts = [("prompt", request.prompt), ("negative_prompt", request.negative_prompt)]
    texts += [(fusion.label(i, "text"), item.text)
              for i, item in enumerate(request.fusion_inputs or ())]  # fmt: skip
    warnings = []
    for column, text in texts:
        for encoder, tokenizer, limit in loaded.family.prompt_limits(loaded.pipeline, column, task):
            length = len(tokenizer(text, truncation=False).input_ids) if text else 0
            if length > limit:
                by = f" by {encoder}" if encoder else ""
                warnings.append(
                    f"`{column}` has {length} tokens and was truncated{by} to the model's {limit}"
                )
    return "; ".join(warnings) or None
