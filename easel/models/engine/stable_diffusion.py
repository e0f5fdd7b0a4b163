"""Stable Diffusion 1.x/2.x: text encoder → UNet over VAE latents, through diffusers'
`StableDiffusionPipeline` (text2img), `StableDiffusionImg2ImgPipeline` and
`StableDiffusionInpaintPipeline`, all three sharing the loaded modules.

Inpainting: 9-channel inpainting UNets get the masked image as extra input; ordinary
4-channel UNets blend latents under the mask (diffusers does both). The mask handed to
diffusers is the region the soft mask touches at all; the engine composites the soft mask
in pixel space afterwards.
"""

from __future__ import annotations

from easel.models.engine.family import ModelFamily, pipeline_arguments
from easel.models.engine.schedulers import fresh_scheduler

PIPELINES = {
    "text2img": "StableDiffusionPipeline",
    "img2img": "StableDiffusionImg2ImgPipeline",
    "inpaint": "StableDiffusionInpaintPipeline",
}


class StableDiffusion(ModelFamily):
    name = "Stable Diffusion"
    pipeline_classes = tuple(PIPELINES.values())

    def load(self, model_path, prior_path, options, prior_options=None):
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline.from_pretrained(
            model_path, **options, safety_checker=None, requires_safety_checker=False
        )

    def task_pipeline(self, pipeline, settings):
        """The pipeline for the batch's task and scheduler, sharing `pipeline`'s modules."""
        import diffusers

        components = dict(pipeline.components)
        components["scheduler"] = fresh_scheduler(pipeline.scheduler, settings.scheduler)
        task_class = getattr(diffusers, PIPELINES[settings.task])
        task_pipeline = task_class(**components, requires_safety_checker=False)
        task_pipeline.set_progress_bar_config(disable=True)
        return task_pipeline

    def generate(self, pipeline, settings, requests, inits, masks):
        arguments = pipeline_arguments(settings, requests, inits, masks)
        if settings.task != "img2img":  # img2img takes the init images' size
            arguments.update(width=settings.width, height=settings.height)
        return list(self.task_pipeline(pipeline, settings)(**arguments).images)

    def tokenizer(self, pipeline):
        return pipeline.tokenizer


FAMILY = StableDiffusion()
