"""A model family: everything the engine knows of one kind of diffusers pipeline.

One module per family (`stable_diffusion.py`, `kandinsky22.py`, `kandinsky21.py`) defines
a subclass and its one instance `FAMILY`; `families.py` lists them. A family says which
`model_index.json` classes it runs, which tasks and schedulers, what a model folder tells
before any weight is loaded (`facts`), how the pipeline loads, and how a batch of images is
generated. The engine never branches on a family's name: adding one (SDXL, say) is one
module and one entry in `families.FAMILIES`.
"""

from __future__ import annotations

import json
import os
from typing import ClassVar

from PIL import Image

from easel.data import images
from easel.data.batching import BatchSettings, ImageRequest, ModelFacts
from easel.data.fusion import FusionConditions
from easel.data.limits import PRIOR_GUIDANCE_SCALE, SCHEDULER_NAMES, SIDE_MULTIPLE
from easel.errors import ModelReferenceError
from easel.models.engine.schedulers import minimum_steps, scheduler_name_from_config

DEFAULT_SIDE = 512  # diffusers' default when a UNet config gives no sample size


def read_config(model_path: str, *names: str) -> dict:
    """The first of `names` (paths under the model folder) that exists, parsed. Raises
    `ModelReferenceError` naming the folder and the files when none does (a diffusers folder
    missing a component's config)."""
    for name in names:
        path = os.path.join(model_path, name)
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
    raise ModelReferenceError(
        f"model folder {model_path!r} has no {' or '.join(names)}: not a complete diffusers "
        "pipeline folder (save it with `pipeline.save_pretrained`)"
    )


def pipeline_class(model_path: str) -> str | None:
    """The `_class_name` of the diffusers pipeline folder at `model_path`."""
    return read_config(model_path, "model_index.json").get("_class_name")


def card_data(model_path: str) -> dict:
    """The metadata (YAML front matter) of the model card `README.md` in the folder at
    `model_path`; empty without one."""
    card = os.path.join(model_path, "README.md")
    if not os.path.isfile(card):
        return {}
    from huggingface_hub import ModelCard

    return ModelCard.load(card).data.to_dict()


def autoencoder_scale(config: dict) -> int:
    """Pixels per latent along a side, for a VAE or a MOVQ: 2 ** (levels - 1)."""
    return 2 ** (len(config["block_out_channels"]) - 1)


def pipeline_arguments(settings: BatchSettings, requests: list[ImageRequest], inits,
                       masks) -> dict:  # fmt: skip
    """A text-guided pipeline's call arguments for a batch, as diffusers names them: the
    prompts, negative prompts ("" for none), guidance, steps, a seeded generator per
    request, numpy output; the init images with `strength` and the masks (the region they
    touch at all) where the task has them. The sides are the family's to add."""
    import torch

    arguments = {
        "prompt": [r.prompt for r in requests],
        "negative_prompt": [r.negative_prompt or "" for r in requests],
        "guidance_scale": settings.guidance_scale,
        "num_inference_steps": settings.num_inference_steps,
        "generator": [torch.Generator(device="cpu").manual_seed(r.seed) for r in requests],
        "output_type": "np",
    }
    if inits:
        arguments.update(image=inits, strength=settings.strength)
    if masks:
        arguments.update(mask_image=[images.generation_mask(m) for m in masks])
    return arguments


class ModelFamily:
    """The base of every family; subclasses set the class attributes and implement
    `load`, `generate` and `tokenizer` (and `autoencoder`, `round_trip` for one not a KL
    VAE named `autoencoder_folder`)."""

    name: ClassVar[str]  # for messages: "Stable Diffusion"
    pipeline_classes: ClassVar[tuple[str, ...]]  # `_class_name`s of the folders it runs
    schedulers: ClassVar[tuple[str, ...]] = SCHEDULER_NAMES  # those its pipelines can step
    # tasks in which `strength` sets where denoising starts (diffusers' int(strength x steps))
    strength_tasks: ClassVar[tuple[str, ...]] = ("img2img", "inpaint")
    autoencoder_folder: ClassVar[str] = "vae"
    takes_loras: ClassVar[bool] = True  # LoRA adapters through diffusers' `load_lora_weights`
    # A folder of one of these classes holds no prior; its model card (README.md) names one
    # (`prior: REF`), a folder of class `prior_class`, resolved with it.
    decoder_classes: ClassVar[tuple[str, ...]] = ()
    prior_class: ClassVar[str | None] = None

    @property
    def has_prior(self) -> bool:
        return self.prior_class is not None

    def check_folder(self, model_path: str, class_name: str, prior_path: str | None) -> None:
        """Refuse a folder this family cannot run whole (`ModelReferenceError`)."""

    def tasks(self, unet_config: dict) -> tuple[str, ...]:
        """The tasks a model with this UNet runs."""
        return ("text2img", "img2img", "inpaint")

    def size_multiple(self, model_path: str) -> int:
        """Image sides (pixels) the model generates exactly."""
        return SIDE_MULTIPLE

    def native_size(self, model_path: str) -> int:
        """The model's native image side in pixels, from its configs (no weights loaded)."""
        sample_size = read_config(model_path, "unet/config.json")["sample_size"]
        autoencoder = read_config(model_path, f"{self.autoencoder_folder}/config.json")
        return int(sample_size) * autoencoder_scale(autoencoder) if sample_size else DEFAULT_SIDE

    def facts(self, model_path: str, digest: str) -> ModelFacts:
        """What planning needs to know of the model, read from its folder."""
        scheduler = read_config(model_path, "scheduler/scheduler_config.json")
        index = read_config(model_path, "model_index.json")
        scheduler["_class_name"] = index.get("scheduler", [None, scheduler["_class_name"]])[1]
        minimum = {name: minimum_steps(name, scheduler) for name in self.schedulers}
        return ModelFacts(
            digest=digest, native_size=self.native_size(model_path),
            default_scheduler=scheduler_name_from_config(scheduler), family=self.name,
            tasks=self.tasks(read_config(model_path, "unet/config.json")),
            schedulers=self.schedulers, size_multiple=self.size_multiple(model_path),
            has_prior=self.has_prior, strength_tasks=self.strength_tasks,
            takes_loras=self.takes_loras,
            prior_guidance_scale=self.prior_guidance_scale(model_path),
            minimum_steps={name: rule for name, rule in minimum.items() if rule[0] > 1},
        )  # fmt: skip

    def prior_guidance_scale(self, model_path: str) -> float | None:
        """The prior's guidance for rows that set none: the model card's
        `prior_guidance_scale`, else diffusers' default; None without a prior."""
        if not self.has_prior:
            return None
        value = card_data(model_path).get("prior_guidance_scale", PRIOR_GUIDANCE_SCALE)
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ModelReferenceError(
                f"model card of {model_path!r}: `prior_guidance_scale` must be a number >= 0 "
                f"but is {value!r}"
            )
        return float(value)

    def import_pipelines(self) -> None:
        """Import the diffusers pipelines this family runs (their first import takes
        seconds; `load` then only reads weights)."""
        import diffusers

        for name in self.pipeline_classes:
            getattr(diffusers, name)

    def load(self, model_path: str, prior_path: str | None, options: dict,
             prior_options: dict | None = None):  # fmt: skip
        """The diffusers pipeline (`options`: `from_pretrained`'s dtype, safetensors and
        variant; `prior_options` the same for the prior's folder)."""
        raise NotImplementedError

    def generate(
        self, pipeline, settings: BatchSettings, requests: list[ImageRequest],
        inits: list[Image.Image] | list[FusionConditions] | None,
        masks: list[Image.Image] | None,
    ) -> list:  # fmt: skip
        """One image per request, in order, each from its own seeded generator, as the
        pipeline's `output_type="np"` gives it: (H, W, 3) floats in [0, 1]. `inits` and
        `masks` (greyscale, 255 repaints) are at the batch's size where the task needs them;
        a fusion's `inits` are its `FusionConditions` (weighted prompts and images)."""
        raise NotImplementedError

    def denoiser(self, pipeline):
        """The network every denoising step runs (the UNet; Kandinsky: the decoder's)."""
        return pipeline.unet

    def tokenizer(self, pipeline):
        """The tokenizer prompts go through first."""
        raise NotImplementedError

    def context_length(self, pipeline) -> int:
        """Text tokens the denoiser attends to per image (its FLOPs depend on them)."""
        return getattr(self.tokenizer(pipeline), "model_max_length", 77)

    def prompt_limits(self, pipeline, column: str, task: str) -> list[tuple]:
        """(encoder, tokenizer, tokens kept) for each text encoder that the text of `column`
        (`prompt`, `negative_prompt`, a fusion item's text) goes through in `task`; the
        encoder (a str) is named where the model has more than one, else None."""
        tokenizer = self.tokenizer(pipeline)
        return [(None, tokenizer, tokenizer.model_max_length)]

    def autoencoder(self, pipeline):
        """The network between pixels and latents (a VAE, a MOVQ): the pipeline's module
        named `autoencoder_folder`."""
        return getattr(pipeline, self.autoencoder_folder)

    def round_trip(self, pipeline, pixels):
        """(N, 3, H, W) pixels in [-1, 1] encoded and decoded by the autoencoder: what any
        edit in its latent space can keep of them at best (a KL VAE: its posterior mean)."""
        vae = self.autoencoder(pipeline)
        return vae.decode(vae.encode(pixels).latent_dist.mode()).sample
