"""Kandinsky 2.0: a prompt read by two text encoders (multilingual CLIP and mT5) → UNet over
the latents of an LDM VAE; no diffusion prior. diffusers has no pipeline for it: easel's
own `Kandinsky2Pipeline` (`easel.models.kandinsky20`) runs a folder that
`easel convert kandinsky-2.0` wrote from the hub's files.

- text2img and img2img: the text-to-image UNet (img2img's `strength` as diffusers', the
  fraction of the schedule denoised); inpaint: the inpainting UNet (9 input channels), the
  mask grown by one latent pixel as the original grows it; from pure noise at `strength` 1
  (the original's only way), else from the init image noised, as Stable Diffusion's.
- Every scheduler: the pipeline splits the learned variance off the UNet's output and
  scales the model input, so any epsilon scheduler steps it; DDIM (the default) on the
  original's own step spacing.
- Prompts in any language reach the UNet through both encoders, 77 tokens each.
"""

from __future__ import annotations

from easel.models.engine.family import (
    ModelFamily,
    autoencoder_scale,
    pipeline_arguments,
    read_config,
)
from easel.models.engine.schedulers import fresh_scheduler

PIPELINE_CLASS = "Kandinsky2Pipeline"
TOKENS = 77  # each encoder's tokens


class Kandinsky20(ModelFamily):
    name = "Kandinsky 2.0"
    pipeline_classes = (PIPELINE_CLASS,)
    strength_tasks = ("img2img", "inpaint")
    takes_loras = False  # no LoRA format exists for it

    def tasks(self, unet_config: dict) -> tuple[str, ...]:
        from easel.models.kandinsky20.pipeline import INPAINT_UNET_CHANNELS

        if unet_config.get("in_channels") == INPAINT_UNET_CHANNELS:
            return ("inpaint",)
        return ("text2img", "img2img")

    def size_multiple(self, model_path: str) -> int:
        """The VAE's scale times the UNet's: its latents halve at each level below the top."""
        unet = read_config(model_path, "unet/config.json")
        vae = autoencoder_scale(read_config(model_path, "vae/config.json"))
        return vae * 2 ** (len(unet["block_out_channels"]) - 1)

    def import_pipelines(self) -> None:
        import easel.models.kandinsky20.pipeline  # noqa: F401 - diffusers and transformers

    def load(self, model_path, prior_path, options, prior_options=None):
        from easel.models.kandinsky20.pipeline import Kandinsky2Pipeline

        return Kandinsky2Pipeline.from_pretrained(model_path, **options)

    def generate(self, pipeline, settings, requests, inits, masks):
        arguments = pipeline_arguments(settings, requests, inits, masks)
        arguments.update(width=settings.width, height=settings.height)
        scheduler = fresh_scheduler(pipeline.scheduler, settings.scheduler)
        components = {**pipeline.components, "scheduler": scheduler}
        task_pipeline = type(pipeline)(**components)
        task_pipeline.set_progress_bar_config(disable=True)
        return list(task_pipeline(**arguments).images)

    def tokenizer(self, pipeline):
        return pipeline.tokenizer

    def context_length(self, pipeline) -> int:
        return 2 * TOKENS  # both encoders' tokens, side by side

    def prompt_limits(self, pipeline, column: str, task: str) -> list[tuple]:
        return [("the multilingual CLIP text encoder", pipeline.tokenizer, TOKENS),
                ("the mT5 text encoder", pipeline.tokenizer_2, TOKENS)]  # fmt: skip


FAMILY = Kandinsky20()
