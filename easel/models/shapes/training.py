"""Training `tiny-shapes` from nothing: first the VAE, then text encoder and UNet together.

Both stages are LightningModules driven by `recipe.fit` (one Lightning Trainer recipe:
seeded, deterministic, resumable from its last `step=N.ckpt`). The data are rendered on the
fly from the shapes world's training split, so a run needs no files and two runs with the
same config give the same weights on the same device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from easel.data import shapes
from easel.data.shape_languages import prompt_in
from easel.models.shapes import tiny_shapes
from easel.models.shapes.recipe import (
    TrainingSchedule,
    adamw_warmup_cosine,
    fit,
    foreground,
    images_to_tensor,
    shuffled_loader,
)

# caption variants a training image is shown with, and their probabilities: the full
# caption, three partial ones (so prompts that leave an attribute out still work), and the
# empty prompt (so classifier-free guidance has an unconditional model)
CAPTION_VARIANTS = ("full", "no_background", "no_color", "generic_shape", "empty")


@dataclass(frozen=True)
class TinyShapesTraining:
    architecture: tiny_shapes.TinyShapesArchitecture = tiny_shapes.TinyShapesArchitecture()  # noqa: RUF009 (frozen)
    vae: TrainingSchedule = TrainingSchedule(
        steps=600, batch_size=32, learning_rate=3e-3, warmup_steps=50
    )
    vae_images: int = 4000
    # stage 1b: the decoder alone, longer, so images are sharper (the latents do not move)
    decoder: TrainingSchedule = TrainingSchedule(
        steps=1000, batch_size=32, learning_rate=2e-3, warmup_steps=50
    )
    vae_crop: int = 32  # the VAE is fully convolutional: crops teach it at a quarter of the cost
    kl_weight: float = 1e-6
    # shape pixels count 1 + this in the losses of stage 1 and stage 1b (the shape is a small
    # part of the image but carries two of its three attributes). Off by default: a weight of
    # 4 in stage 1 keeps colours better but the UNet learns the richer latents worse
    # (docs/tiny-shapes.md, "Where adherence was lost with 3000 UNet steps")
    vae_foreground_weight: float = 0.0
    decoder_foreground_weight: float = 0.0
    # 6000 steps: at 3000 the UNet was the limit (seen adherence 75-80%, shapes often
    # wrong); 6000 reach 88% with the same VAE (docs/tiny-shapes.md, "Training length")
    diffusion: TrainingSchedule = TrainingSchedule(
        steps=6000, batch_size=64, learning_rate=1.5e-3, warmup_steps=150
    )
    diffusion_images: int = 20000
    # decay of an exponential moving average of the text encoder and UNet weights, which is
    # what gets saved (0: the last weights). Off: with the cosine schedule's decay to zero
    # it measured no gain (0.999: 87.8% seen adherence against 88.5% without)
    diffusion_ema_decay: float = 0.0
    caption_probabilities: tuple[float, ...] = (0.75, 0.05, 0.05, 0.05, 0.10)
    seed: int = 0
    extra_words: tuple[str, ...] = field(default_factory=tuple)


class VaeModule(pl.LightningModule):
    """The autoencoder; with `train_encoder=False` only the decoder learns (stage 1b: the
    latents, and so everything trained on them, stay exactly as they were)."""

    def __init__(
        self,
        architecture: dict,
        schedule: dict,
        kl_weight: float,
        crop: int,
        train_encoder: bool = True,
        l1_weight: float = 0.0,
        foreground_weight: float = 0.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.vae = tiny_shapes.build_vae(tiny_shapes.TinyShapesArchitecture(**architecture))
        if not train_encoder:
            for part in (self.vae.encoder, self.vae.quant_conv):
                part.requires_grad_(False)

    def training_step(self, batch, batch_idx):
        (images,) = batch  # (B, 3, 64, 64) in [-1, 1]
        weights = self.pixel_weights(images)
        crop = self.hparams.crop
        top, left = torch.randint(0, images.shape[-1] - crop + 1, (2,)).tolist()
        images = images[..., top : top + crop, left : left + crop]
        weights = weights[..., top : top + crop, left : left + crop]
        with torch.set_grad_enabled(self.hparams.train_encoder):
            posterior = self.vae.encode(images).latent_dist
        # decode the posterior mean: a near-deterministic autoencoder learns in hundreds of
        # steps, not thousands; the tiny KL term only keeps the latents bounded
        reconstruction = self.vae.decode(posterior.mode()).sample
        error = reconstruction - images
        mse = (weights * error.square()).mean() / weights.mean()
        l1 = (weights * error.abs()).mean() / weights.mean()  # stage 1b: sharper edges
        kl = posterior.kl().mean() / images[0].numel()
        loss = mse + self.hparams.l1_weight * l1 + self.hparams.kl_weight * kl
        self.log_dict({"vae/mse": mse, "vae/loss": loss}, prog_bar=True)
        return loss

    def pixel_weights(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W): 1 on the background, 1 + foreground_weight on the shape. The shape
        is a small part of the image but carries two of its three attributes."""
        if not self.hparams.foreground_weight:
            return torch.ones_like(images[:, :1])
        shape = (foreground(images) + 1) / 2  # 0 on the background .. 1 on the shape
        return 1 + self.hparams.foreground_weight * shape

    def configure_optimizers(self):
        return adamw_warmup_cosine(self, TrainingSchedule(**self.hparams.schedule))


class DiffusionModule(pl.LightningModule):
    """Text encoder and UNet trained together on VAE latents with the epsilon objective."""

    def __init__(
        self,
        architecture: dict,
        schedule: dict,
        words: list[str],
        caption_probabilities: list[float],
    ):
        super().__init__()
        self.save_hyperparameters()
        arch = tiny_shapes.TinyShapesArchitecture(**architecture)
        self.tokenizer = tiny_shapes.build_tokenizer(words, arch.max_length)
        self.text_encoder = tiny_shapes.build_text_encoder(arch, self.tokenizer)
        self.unet = tiny_shapes.build_unet(arch)
        self.noise_scheduler = tiny_shapes.noise_scheduler()
        self.register_buffer(
            "alphas_cumprod", self.noise_scheduler.alphas_cumprod.clone(), persistent=False
        )

    def training_step(self, batch, batch_idx):
        latents, caption_ids = batch  # (B, 4, h, w) scaled latents; (B, variants, max_length)
        probabilities = torch.tensor(self.hparams.caption_probabilities)
        variant = torch.multinomial(probabilities, latents.shape[0], replacement=True).to(
            self.device
        )
        input_ids = caption_ids[torch.arange(latents.shape[0], device=self.device), variant]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(
            0, len(self.alphas_cumprod), (latents.shape[0],), device=self.device
        )
        alpha_bar = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        noisy = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
        text = self.text_encoder(input_ids).last_hidden_state  # (B, max_length, text_width)
        predicted = self.unet(noisy, timesteps, text).sample
        loss = F.mse_loss(predicted, noise)
        self.log("diffusion/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return adamw_warmup_cosine(self, TrainingSchedule(**self.hparams.schedule))


def caption_variants(spec: shapes.ShapeSpec, language: str = "en") -> list[str]:
    """The prompts of CAPTION_VARIANTS for one image, in that order, in `language`."""
    shape, color, background = spec.shape, spec.color, spec.background
    parts = [(shape, color, background), (shape, color, None), (shape, None, background),
             (None, color, background)]  # fmt: skip
    return [prompt_in(language, *part) for part in parts] + [""]


def train_vae(config: TinyShapesTraining, work_dir: str, logger=None, progress: bool = True):
    """Stage 1: the AutoencoderKL, on random crops of training-split images."""
    pl.seed_everything(config.seed, workers=True, verbose=False)
    images = images_to_tensor(
        shapes.render_array(shapes.sample_specs(config.vae_images, config.seed, "train"))
    )
    module = VaeModule(
        asdict(config.architecture),
        asdict(config.vae),
        config.kl_weight,
        config.vae_crop,
        foreground_weight=config.vae_foreground_weight,
    )
    loader = shuffled_loader((images,), config.vae.batch_size, config.seed)
    fit(module, loader, config.vae.steps, work_dir, logger, progress)
    vae = module.vae.eval()
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, images[:512]))
    return vae


def refine_decoder(
    config: TinyShapesTraining, vae, work_dir: str, logger=None, progress: bool = True
):
    """Stage 1b: continue training `vae`'s decoder alone on full-image crops."""
    pl.seed_everything(config.seed + 3, workers=True, verbose=False)
    images = images_to_tensor(
        shapes.render_array(shapes.sample_specs(config.vae_images, config.seed + 3, "train"))
    )
    module = VaeModule(
        asdict(config.architecture),
        asdict(config.decoder),
        config.kl_weight,
        config.vae_crop,
        train_encoder=False,
        l1_weight=1.0,
        foreground_weight=config.decoder_foreground_weight,
    )
    module.vae.load_state_dict(vae.state_dict())
    loader = shuffled_loader((images,), config.decoder.batch_size, config.seed + 3)
    fit(module, loader, config.decoder.steps, work_dir, logger, progress)
    refined = module.vae.eval()
    refined.register_to_config(scaling_factor=vae.config.scaling_factor)
    return refined


@torch.no_grad()
def latent_scaling_factor(vae, images: torch.Tensor) -> float:
    """1 / std of the latents, so the UNet sees unit-variance inputs (SD's 0.18215)."""
    return float(1.0 / vae.encode(images).latent_dist.mode().std())


@torch.no_grad()
def encode(vae, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Scaled posterior means of `images`, (N, latent_channels, h, w)."""
    chunks = [
        vae.encode(images[i : i + batch_size]).latent_dist.mode()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks) * vae.config.scaling_factor


def train_diffusion(
    config: TinyShapesTraining,
    vae,
    work_dir: str,
    logger=None,
    progress: bool = True,
    max_time: str | None = None,
):
    """Stage 2: text encoder and UNet on the frozen VAE's latents; returns the module."""
    pl.seed_everything(config.seed + 1, workers=True, verbose=False)
    specs = shapes.sample_specs(config.diffusion_images, config.seed + 1, "train")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    latents = encode(vae.to(device), images_to_tensor(shapes.render_array(specs)).to(device)).cpu()
    vae.to("cpu")
    words = sorted({*shapes.vocabulary(), *config.extra_words})
    module = DiffusionModule(
        asdict(config.architecture),
        asdict(config.diffusion),
        words,
        list(config.caption_probabilities),
    )
    prompts = [prompt for spec in specs for prompt in caption_variants(spec)]
    caption_ids = tiny_shapes.tokenize(module.tokenizer, prompts).view(
        len(specs), len(CAPTION_VARIANTS), -1
    )
    loader = shuffled_loader((latents, caption_ids), config.diffusion.batch_size, config.seed + 1)
    fit(
        module,
        loader,
        config.diffusion.steps,
        work_dir,
        logger,
        progress,
        max_time,
        ema_decay=config.diffusion_ema_decay,
    )
    return module.to("cpu").eval()
