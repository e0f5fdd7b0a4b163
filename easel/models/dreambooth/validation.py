"""Validation while training: at step 0 (the base weights) and every `every_n_steps`
optimizer steps, the validation prompts × fixed seeds sampled from the weights being
trained, as one grid image (a row per prompt, a column per seed), handed to
`log_grid(image, step)`.

The images go through the engine's one generation path (`engine.generation.generate`) with
the base model's pipeline whose UNet (and text encoder, when it trains) is the module's own.
Every image has its own seeded generator and the networks run in inference mode, so
sampling draws from no random stream the training uses and changes no weight: a run with
validation trains to the same weights as one without (and resumes to them).
"""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch
from PIL import Image

from easel.data import contact_sheet, limits
from easel.data.batching import BatchSettings, ImageRequest


class ValidationGrid(pl.Callback):
    """Logs a grid of `prompts` × `seeds` every `every_n_steps` steps (rank 0 only)."""

    def __init__(
        self, model_dir: str, prompts: list[str], seeds: list[int], num_inference_steps: int,
        resolution: int, every_n_steps: int, log_grid: Callable[[Image.Image, int], None],
    ):  # fmt: skip
        self.model_dir, self.prompts, self.seeds = model_dir, prompts, seeds
        self.num_inference_steps, self.resolution = num_inference_steps, resolution
        self.every_n_steps, self.log_grid = every_n_steps, log_grid
        self.logged_step = -1

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step == 0:  # a fresh run: the base weights, to compare against
            self._log(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # optimizer steps: micro-batches share one
        if step and step % self.every_n_steps == 0:
            self._log(trainer, pl_module)

    def _log(self, trainer, pl_module) -> None:
        if trainer.global_step != self.logged_step and trainer.is_global_zero:
            self.logged_step = trainer.global_step
            self.log_grid(self.sample(pl_module), trainer.global_step)

    def sample(self, module) -> Image.Image:
        """The grid of the module's current weights."""
        requests = [ImageRequest(prompt=p, negative_prompt=None, seed=s)
                    for p in self.prompts for s in self.seeds]  # fmt: skip
        pictures = sample_images(module, self.model_dir, requests, self.num_inference_steps,
                                 self.resolution)  # fmt: skip
        labels = [f"seed {r.seed}\n{r.prompt}" for r in requests]
        return contact_sheet.grid(pictures, labels, columns=len(self.seeds))


def sample_images(
    module, model_dir: str, requests: list[ImageRequest], num_inference_steps: int,
    resolution: int,
) -> list[Image.Image]:  # fmt: skip
    """`requests` generated (text2img, the model's default scheduler and guidance) by the
    base model at `model_dir` with the module's trained networks, at `resolution` pixels."""
    from easel.models.engine.generation import generate
    from easel.models.engine.loading import LoadedModel, load_model

    base = load_model(model_dir, device=str(module.device), dtype=torch.float32)
    trained = {"unet": module.unet}
    if module.hparams.train_text_encoder:
        trained["text_encoder"] = module.text_encoder
    pipeline = base.family.with_components(base.pipeline, **trained)
    loaded = LoadedModel(base.model, base.family, pipeline, base.facts)
    settings = BatchSettings(
        task="text2img", scheduler=None, guidance_scale=limits.GUIDANCE_SCALE,
        num_inference_steps=num_inference_steps, width=resolution, height=resolution,
    )  # fmt: skip
    modes = {name: network.training for name, network in trained.items()}
    try:
        for network in trained.values():
            network.eval()
        return generate(loaded, settings, requests)
    finally:
        for name, network in trained.items():
            network.train(modes[name])
