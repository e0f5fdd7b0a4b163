"""Kandinsky 2.2: prompt → diffusion prior → CLIP image embedding → decoder → MOVQ.

A model is one folder holding prior and decoder, as `KandinskyV22CombinedPipeline`
saves it, or a decoder folder whose model card names its prior (the hub's
`kandinsky-2-2-decoder`); either loads as one combined pipeline. Every image has its own
generator, which first the prior and then the decoder draw from, row by row: exactly the
random draws of one `KandinskyV22CombinedPipeline` call per request, so an image never
depends on the batch it shares. Requests without a
negative prompt share one prior call; the prior doubles its batch for a negative prompt
(prompt rows, then negative rows, drawn from one generator at once), which a list of
generators cannot follow, so those requests, and fusion's, get a prior call each.

`fusion` mixes CLIP embeddings in the prior (`KandinskyV22PriorPipeline.interpolate`, the
row's negative prompt as its `negative_prior_prompt`): the texts and images of the row's
`fusion_inputs` with their weights (`easel.data.fusion`), or the prompt and `init_image`,
the image weighing `strength` and the prompt `1 - strength`. Row guidance and steps drive
the decoder; `prior_guidance_scale` and `prior_num_inference_steps` drive the prior
(diffusers' defaults: 4 and 25), as the combined pipelines' arguments of the same names do.
"""

from __future__ import annotations

import torch

from easel.data.batching import BatchSettings, ImageRequest
from easel.data.fusion import FusionConditions
from easel.errors import ModelReferenceError
from easel.models.engine.family import ModelFamily, autoencoder_scale, read_config
from easel.models.engine.schedulers import fresh_scheduler

DECODERS = {
    "text2img": "KandinskyV22Pipeline",
    "fusion": "KandinskyV22Pipeline",
    "img2img": "KandinskyV22Img2ImgPipeline",
    "inpaint": "KandinskyV22InpaintPipeline",
}
INPAINT_UNET_CHANNELS = 9  # latents + masked-image latents + mask
# The decoder passes its generator to `step` and never calls `scale_model_input`: pndm,
# unipc, lms and heun take no generator, euler and euler_a would denoise unscaled inputs.
DECODER_SCHEDULERS = ("ddpm", "ddim", "dpmpp_2m")


def decoder_scheduler(current, name: str | None):
    """The decoder predicts noise and a learned variance. Only DDPM steps with that
    variance; any other scheduler gets the config without `variance_type`, so the decoder
    splits the variance off itself (DDIM would get both halves, DPM-Solver would read the
    variance as 3 pixel channels, DeepFloyd IF's)."""
    return fresh_scheduler(current, name, drop=() if name == "ddpm" else ("variance_type",))


def decoder_pipeline(combined, task: str, scheduler):
    import diffusers

    cls = getattr(diffusers, DECODERS[task])
    pipeline = cls(unet=combined.unet, scheduler=scheduler, movq=combined.movq)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def image_embeddings(prior, settings: BatchSettings, requests, generators, inits):
    """(embeddings, negative embeddings), (N, D) each, every row from its own generator;
    `inits`: a fusion's `FusionConditions` per request."""
    rows: list = [None] * len(requests)
    shared = [i for i, r in enumerate(requests) if r.negative_prompt is None]
    if shared and settings.task != "fusion":
        output = prior(
            prompt=[requests[i].prompt for i in shared], **prior_arguments(settings),
            generator=[generators[i] for i in shared], output_type="pt",
        )  # fmt: skip
        for k, i in enumerate(shared):
            rows[i] = (output.image_embeds[k : k + 1], output.negative_image_embeds[k : k + 1])
    for i in (i for i, row in enumerate(rows) if row is None):
        init = inits[i] if inits else None
        rows[i] = request_embeddings(prior, requests[i], settings, generators[i], init)
    return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])


def prior_arguments(settings: BatchSettings) -> dict:
    """The prior's guidance and steps where set (else diffusers' defaults)."""
    arguments = {"guidance_scale": settings.prior_guidance_scale,
                 "num_inference_steps": settings.prior_num_inference_steps}  # fmt: skip
    return {name: value for name, value in arguments.items() if value is not None}


def request_embeddings(
    prior, request: ImageRequest, settings: BatchSettings, generator,
    conditions: FusionConditions | None,
) -> tuple:  # fmt: skip
    """(embedding, negative embedding) of one request, drawn from its generator."""
    if settings.task == "fusion":
        output = prior.interpolate(
            conditions.images_and_prompts, conditions.weights, generator=generator,
            negative_prior_prompt=request.negative_prompt, **prior_arguments(settings),
        )  # fmt: skip
    else:
        output = prior(
            prompt=request.prompt, negative_prompt=request.negative_prompt,
            generator=generator, output_type="pt", **prior_arguments(settings),
        )  # fmt: skip
    return output.image_embeds, output.negative_image_embeds


def generate_images(combined, settings: BatchSettings, requests: list[ImageRequest],
                    inits: list | None, masks: list | None) -> list:  # fmt: skip
    """One image per request ((H, W, 3) floats in [0, 1]), in order; `inits`/`masks` as the
    task needs them (a fusion's: its `FusionConditions`)."""
    prior = combined.prior_pipe
    prior.set_progress_bar_config(disable=True)
    generators = [torch.Generator(device="cpu").manual_seed(r.seed) for r in requests]
    embeds, negative_embeds = image_embeddings(prior, settings, requests, generators, inits)
    arguments = {
        "image_embeds": embeds,
        "negative_image_embeds": negative_embeds,
        "guidance_scale": settings.guidance_scale,
        "num_inference_steps": settings.num_inference_steps,
        "width": settings.width, "height": settings.height,
        "generator": generators, "output_type": "np",
    }  # fmt: skip
    scheduler = decoder_scheduler(combined.scheduler, settings.scheduler)
    decoder = decoder_pipeline(combined, settings.task, scheduler)
    if settings.task == "img2img":
        arguments.update(image=inits, strength=settings.strength)
    if settings.task != "inpaint":
        return decoder(**arguments).images
    # diffusers' Kandinsky inpaint blends every image with the first init image and mask,
    # so each inpainting request gets its own decoder call.
    return [
        decoder(**{**arguments, "image_embeds": embeds[i : i + 1], "generator": generators[i],
                   "negative_image_embeds": negative_embeds[i : i + 1], "image": inits[i],
                   "mask_image": masks[i]}).images[0]
        for i in range(len(requests))
    ]  # fmt: skip


class Kandinsky22(ModelFamily):
    name = "Kandinsky 2.2"
    pipeline_classes = (
        "KandinskyV22CombinedPipeline", "KandinskyV22Img2ImgCombinedPipeline",
        "KandinskyV22InpaintCombinedPipeline", *DECODERS.values(),
    )  # fmt: skip
    schedulers = DECODER_SCHEDULERS
    strength_tasks = ("img2img",)  # the inpainting decoder always denoises from pure noise
    autoencoder_folder = "movq"
    decoder_classes = tuple(dict.fromkeys(DECODERS.values()))
    prior_class = "KandinskyV22PriorPipeline"

    def check_folder(self, model_path: str, class_name: str, prior_path: str | None) -> None:
        if class_name in self.decoder_classes and prior_path is None:
            raise ModelReferenceError(
                f"model at {model_path!r} is a {class_name!r}, a Kandinsky 2.2 decoder without "
                "its diffusion prior: name the prior in its README.md (`prior: REF`), as the "
                "hub's kandinsky-2-2-decoder does, or save both with "
                "KandinskyV22CombinedPipeline.save_pretrained"
            )

    def tasks(self, unet_config: dict) -> tuple[str, ...]:
        """The inpainting decoder takes the masked image as extra UNet input channels."""
        if unet_config.get("in_channels") == INPAINT_UNET_CHANNELS:
            return ("inpaint",)
        return ("text2img", "img2img", "fusion")

    def size_multiple(self, model_path: str) -> int:
        """MOVQ downsamples by its scale, and the decoder works in blocks of scale² pixels."""
        scale = autoencoder_scale(read_config(model_path, "movq/config.json"))
        return scale * scale

    def load(self, model_path: str, prior_path: str | None, options: dict):
        from diffusers import (
            KandinskyV22CombinedPipeline,
            KandinskyV22Pipeline,
            KandinskyV22PriorPipeline,
        )

        if prior_path is None:
            return KandinskyV22CombinedPipeline.from_pretrained(model_path, **options)
        prior = KandinskyV22PriorPipeline.from_pretrained(prior_path, **options)
        decoder = KandinskyV22Pipeline.from_pretrained(model_path, **options)
        prior_components = {f"prior_{name}": c for name, c in prior.components.items()}
        return KandinskyV22CombinedPipeline(**prior_components, **decoder.components)

    def generate(self, pipeline, settings, requests, inits, masks):
        return generate_images(pipeline, settings, requests, inits, masks)

    def tokenizer(self, pipeline):
        return pipeline.prior_tokenizer

    def autoencoder(self, pipeline):
        return pipeline.movq

    def round_trip(self, pipeline, pixels):
        """Encoded to MOVQ's unquantized latents (as its pipelines use them) and decoded."""
        movq = pipeline.movq
        return movq.decode(movq.encode(pixels).latents, force_not_quantize=True).sample


FAMILY = Kandinsky22()
