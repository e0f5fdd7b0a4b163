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

from typing import ClassVar

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


def decoder_pipeline(combined, class_name: str, scheduler):
    """The decoder pipeline `class_name` over the combined pipeline's decoder modules."""
    import diffusers

    modules = {name: module for name, module in combined.components.items()
               if not name.startswith("prior_")}  # fmt: skip
    pipeline = getattr(diffusers, class_name)(**{**modules, "scheduler": scheduler})
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


class Kandinsky22(ModelFamily):
    name = "Kandinsky 2.2"
    pipeline_classes = (
        "KandinskyV22CombinedPipeline", "KandinskyV22Img2ImgCombinedPipeline",
        "KandinskyV22InpaintCombinedPipeline", *DECODERS.values(),
    )  # fmt: skip
    schedulers = DECODER_SCHEDULERS
    strength_tasks = ("img2img",)  # the inpainting decoder always denoises from pure noise
    autoencoder_folder = "movq"
    takes_loras = False  # diffusers' Kandinsky pipelines have no LoRA loader
    decoder_classes = tuple(dict.fromkeys(DECODERS.values()))
    prior_class = "KandinskyV22PriorPipeline"
    decoders: ClassVar[dict[str, str]] = DECODERS  # the decoder pipeline of each task
    combined_class: ClassVar[str] = "KandinskyV22CombinedPipeline"
    hub_decoder: ClassVar[str] = "kandinsky-2-2-decoder"  # a hub folder whose card names its prior
    # diffusers' Kandinsky 2.2 inpaint blends every image with the first init image and
    # mask, so each inpainting request gets its own decoder call
    inpaints_in_batches: ClassVar[bool] = False

    def check_folder(self, model_path: str, class_name: str, prior_path: str | None) -> None:
        if class_name in self.decoder_classes and prior_path is None:
            raise ModelReferenceError(
                f"model at {model_path!r} is a {class_name!r}, a {self.name} decoder without "
                "its diffusion prior: name the prior in its README.md (`prior: REF`), as the "
                f"hub's {self.hub_decoder} does, or save both with "
                f"{self.combined_class}.save_pretrained"
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

    def load(self, model_path, prior_path, options, prior_options=None):
        import diffusers

        combined = getattr(diffusers, self.combined_class)
        if prior_path is None:
            return combined.from_pretrained(model_path, **options)
        prior_class = getattr(diffusers, self.prior_class)
        prior = prior_class.from_pretrained(prior_path, **(prior_options or options))
        decoder = getattr(diffusers, self.decoders["text2img"]).from_pretrained(
            model_path, **options
        )
        prior_components = {f"prior_{name}": c for name, c in prior.components.items()}
        return combined(**prior_components, **decoder.components)

    def decoder_texts(self, settings: BatchSettings, requests: list[ImageRequest]) -> dict:
        """What the decoder reads of the requests' texts besides the image embeddings (the
        Kandinsky 2.2 decoder: nothing)."""
        return {}

    def generate(self, pipeline, settings, requests, inits, masks):
        """The prior's embeddings for every request, then the decoder's images."""
        prior = pipeline.prior_pipe
        prior.set_progress_bar_config(disable=True)
        generators = [torch.Generator(device="cpu").manual_seed(r.seed) for r in requests]
        embeds, negative_embeds = image_embeddings(prior, settings, requests, generators, inits)
        scheduler = decoder_scheduler(pipeline.scheduler, settings.scheduler)
        decoder = decoder_pipeline(pipeline, self.decoders[settings.task], scheduler)

        def decode(rows: list[int]) -> list:
            arguments = {
                "image_embeds": embeds[rows], "negative_image_embeds": negative_embeds[rows],
                "guidance_scale": settings.guidance_scale,
                "num_inference_steps": settings.num_inference_steps,
                "width": settings.width, "height": settings.height,
                "generator": [generators[i] for i in rows], "output_type": "np",
                **self.decoder_texts(settings, [requests[i] for i in rows]),
            }  # fmt: skip
            if settings.task == "img2img":
                arguments.update(image=[inits[i] for i in rows], strength=settings.strength)
            if settings.task == "inpaint":
                arguments.update(image=[inits[i] for i in rows],
                                 mask_image=[masks[i] for i in rows])  # fmt: skip
            return list(decoder(**arguments).images)

        if settings.task == "inpaint" and not self.inpaints_in_batches:
            return [image for i in range(len(requests)) for image in decode([i])]
        return decode(list(range(len(requests))))

    def tokenizer(self, pipeline):
        return pipeline.prior_tokenizer

    def autoencoder(self, pipeline):
        return pipeline.movq

    def round_trip(self, pipeline, pixels):
        """Encoded to MOVQ's unquantized latents (as its pipelines use them) and decoded."""
        movq = pipeline.movq
        return movq.decode(movq.encode(pixels).latents, force_not_quantize=True).sample


FAMILY = Kandinsky22()
