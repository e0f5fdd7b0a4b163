"""`tiny-shapes-k22-inpaint`: Kandinsky 2.2's inpainting decoder for `tiny-shapes-k22`.

Kandinsky 2.2 inpaints with a second decoder (`KandinskyV22InpaintPipeline`) whose UNet
takes 9 input channels: the noisy latents, the latents of the image with the region to
repaint zeroed, and the mask at latent resolution (1 keep, 0 repaint; the pipeline takes
a pixel mask whose white repaints, downsamples it and widens the repainted region by a
latent pixel). As Stable Diffusion's inpainting model was grown from Stable Diffusion, it
starts as `tiny-shapes-k22`'s text-to-image decoder with zero weights on the 5 new input
channels (so it begins as that decoder), then learns on training images with a region
masked: around the shape most of the time (the edit users ask for: the shape in another
colour or form), a random box otherwise; conditioned on the whole image's embedding,
dropped to the zero-image one as often as the decoder's was.

It ships whole, beside `tiny-shapes-k22`: `tiny-shapes-k22`'s prior (text and image
encoders, prior) with the inpainting decoder, as `KandinskyV22InpaintCombinedPipeline`
saves them.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from easel.data import shapes
from easel.models.shapes import tiny_shapes_k22
from easel.models.shapes.recipe import TrainingSchedule, fit, images_to_tensor, shuffled_loader


@dataclass(frozen=True)
class InpaintTraining:
    schedule: TrainingSchedule = TrainingSchedule(
        steps=1500, batch_size=64, learning_rate=3e-4, warmup_steps=50
    )
    images: int = 20000
    seed: int = 0  # tiny-shapes-k22's: its image embeddings' projection
    shape_mask_probability: float = 0.75  # a box around the shape; else a random box
    unconditional_probability: float = 0.1


@torch.no_grad()
def compact_movq(movq):
    """The same MOVQ with `latent_channels` equal to its embedding's: diffusers' Kandinsky
    2.2 inpainting pipeline draws its noise with `latent_channels` channels. tiny-shapes-k22's
    encoder puts out the VAE's 2L channels and `quant_conv` keeps the mean's L: fused here
    into the encoder's last convolution (a 1x1 convolution after a 3x3 one is a 3x3 one);
    on the way back the L channels that were always zero are dropped. Same latents, same
    pixels (to float rounding)."""
    from diffusers import VQModel

    latent = movq.config.vq_embed_dim
    compact = VQModel.from_config({**movq.config, "latent_channels": latent})
    state = movq.state_dict()
    keep = state["quant_conv.weight"][:, :, 0, 0]  # (L, 2L)
    conv_out = state["encoder.conv_out.weight"]  # (2L, C, 3, 3)
    state["encoder.conv_out.weight"] = torch.einsum("lk,kchw->lchw", keep, conv_out)
    state["encoder.conv_out.bias"] = keep @ state["encoder.conv_out.bias"] + state[
        "quant_conv.bias"]  # fmt: skip
    state["quant_conv.weight"] = torch.eye(latent)[:, :, None, None]
    state["quant_conv.bias"] = torch.zeros(latent)
    state["post_quant_conv.weight"] = state["post_quant_conv.weight"][:latent]
    state["post_quant_conv.bias"] = state["post_quant_conv.bias"][:latent]
    state["decoder.conv_in.weight"] = state["decoder.conv_in.weight"][:, :latent]
    compact.load_state_dict(state)
    return compact.eval()


def inpaint_unet_from(decoder):
    """The decoder UNet with 9 input channels, the 5 new ones starting at zero weight."""
    from diffusers import UNet2DConditionModel

    latent = decoder.config.in_channels
    unet = UNet2DConditionModel.from_config({**decoder.config, "in_channels": 2 * latent + 1})
    state = decoder.state_dict()
    weight = state["conv_in.weight"]  # (C, latent, 3, 3) -> (C, 2 latent + 1, 3, 3)
    extra = weight.new_zeros(weight.shape[0], latent + 1, *weight.shape[2:])
    state["conv_in.weight"] = torch.cat([weight, extra], dim=1)
    unet.load_state_dict(state)
    return unet


def pixel_masks(specs: list, probability: float, seed: int) -> np.ndarray:
    """(N, 64, 64) float masks, 1 where to repaint: a box around the shape (with a margin)
    with `probability`, else a random box of a quarter to three quarters of a side."""
    rng = np.random.default_rng(seed)
    side = shapes.IMAGE_SIZE
    masks = np.zeros((len(specs), side, side), dtype=np.float32)
    for i, spec in enumerate(specs):
        if rng.random() < probability:
            r = spec.radius * rng.uniform(1.1, 1.5)
            (cx, cy), (w, h) = spec.center, (r, r)
        else:
            w, h = rng.uniform(side / 8, 3 * side / 8, size=2)
            cx, cy = rng.uniform(w, side - w), rng.uniform(h, side - h)
        x0, x1 = int(max(0, cx - w)), int(min(side, np.ceil(cx + w)))
        y0, y1 = int(max(0, cy - h)), int(min(side, np.ceil(cy + h)))
        masks[i, y0:y1, x0:x1] = 1.0
    return masks


def latent_keep_masks(masks: np.ndarray, latent_side: tuple[int, int]) -> torch.Tensor:
    """(N, 1, h, w): what `KandinskyV22InpaintPipeline` makes of pixel masks: kept (1)
    where not repainted, downsampled (nearest), the repainted region widened by one."""
    from diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2_inpainting import prepare_mask

    keep = 1.0 - torch.from_numpy(masks)[:, None]
    keep = F.interpolate(keep, latent_side, mode="nearest")
    return prepare_mask(keep)


class InpaintDecoderModule(tiny_shapes_k22.DecoderModule):
    """The decoder's training, with the masked image's latents and the mask as input."""

    def unet_input(self, noisy: torch.Tensor, batch) -> torch.Tensor:
        latents, _, keep = batch  # (B, 4, h, w), (B, D), (B, 1, h, w)
        return torch.cat([noisy, latents * keep, keep], dim=1)


def train(k22_path: str, config: InpaintTraining, work_dir: str, logger=None,
          progress: bool = True):  # fmt: skip
    """The inpainting decoder grown from the `tiny-shapes-k22` pipeline at `k22_path`
    (checkpoints under `work_dir`, a rerun resumes); returns the assembled
    `KandinskyV22InpaintCombinedPipeline` (its prior: the base's)."""
    from diffusers import KandinskyV22CombinedPipeline, KandinskyV22InpaintCombinedPipeline

    k22 = KandinskyV22CombinedPipeline.from_pretrained(k22_path, use_safetensors=True)
    specs = shapes.sample_specs(config.images, config.seed + 8, "train")
    pixels = images_to_tensor(shapes.render_array(specs))  # (N, 3, 64, 64) in [-1, 1]
    embeds = tiny_shapes_k22.caption_embeddings(
        k22.prior_text_encoder, k22.prior_tokenizer, specs, config.seed
    )  # (N, D): the space the decoder was trained in
    with torch.no_grad():
        latents = torch.cat([k22.movq.encode(pixels[i : i + 512]).latents
                             for i in range(0, len(pixels), 512)])  # fmt: skip
        zero = tiny_shapes_k22.zero_image_embedding(k22.prior_image_encoder)
    masks = pixel_masks(specs, config.shape_mask_probability, config.seed + 9)
    keep = latent_keep_masks(masks, tuple(latents.shape[-2:]))

    pl.seed_everything(config.seed + 10, workers=True, verbose=False)
    unet = inpaint_unet_from(k22.unet)
    module = InpaintDecoderModule(asdict(config.schedule), dict(unet.config),
                                  config.unconditional_probability, zero)  # fmt: skip
    module.unet.load_state_dict(unet.state_dict())
    loader = shuffled_loader((latents, embeds, keep), config.schedule.batch_size, config.seed + 10)
    fit(module, loader, config.schedule.steps, os.path.join(work_dir, "inpaint-decoder"),
        logger, progress)  # fmt: skip
    prior = {name: module for name, module in k22.components.items() if name.startswith("prior_")}
    return KandinskyV22InpaintCombinedPipeline(
        **prior, unet=module.unet.eval(), scheduler=k22.scheduler, movq=compact_movq(k22.movq)
    )
