"""The judge: a small CNN that reads shape, shape colour and background colour from a
shapes-world image, and gives a feature vector per image (the role DINO/CLIP features
play in DreamBooth metrics).

Trained on freshly rendered images of every combination (held-out pairs included: the
judge is the examiner, not the examined), softened at random (down/upsampling, blur,
colour shift, noise) so that soft generated images are read the way a person would read
them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from easel.data import shapes, storage
from easel.models.shapes.recipe import (
    TrainingSchedule,
    adamw_warmup_cosine,
    fit,
    foreground,
    images_to_tensor,
    shuffled_loader,
)

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "weights" / "judge"
HEADS = {"shape": shapes.SHAPES, "color": shapes.COLOR_NAMES, "background": shapes.COLOR_NAMES}


@dataclass(frozen=True)
class JudgeTraining:
    channels: tuple[int, ...] = (16, 32, 64)
    feature_dim: int = 64
    images: int = 8000
    steps: int = 600
    batch_size: int = 64
    learning_rate: float = 3e-3
    seed: int = 0


class JudgeNet(nn.Module):
    """Conv stages (each halves the side), global average pool, one linear head per attribute.
    BatchNorm, not GroupNorm: a per-image norm over few channels would erase the absolute
    colour levels the judge must read."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64), feature_dim: int = 64):
        super().__init__()
        layers, previous = [], 4  # RGB + the foreground channel
        for width in channels:
            layers += [
                nn.Conv2d(previous, width, 3, padding=1),
                nn.BatchNorm2d(width),
                nn.SiLU(),
                nn.Conv2d(width, width, 3, padding=1, stride=2),
                nn.BatchNorm2d(width),
                nn.SiLU(),
            ]
            previous = width
        self.body = nn.Sequential(*layers)
        self.project = nn.Linear(2 * previous, feature_dim)  # average and max pooled
        self.heads = nn.ModuleDict(
            {name: nn.Linear(feature_dim, len(classes)) for name, classes in HEADS.items()}
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 64, 64) in [-1, 1] -> (B, feature_dim)."""
        h = self.body(torch.cat([x, foreground(x)], dim=1))  # (B, C, 8, 8)
        return F.silu(self.project(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(x)
        return {name: head(features) for name, head in self.heads.items()}


def augment(images: torch.Tensor) -> torch.Tensor:
    """Per image, random softening the way decoded latents are soft: down- and upsampling
    by 1, 2 or 4, a 3x3 blur mix, a small colour shift and noise."""
    b = images.shape[0]
    rand = lambda *shape: torch.rand(b, *shape, device=images.device)  # noqa: E731
    factor = torch.randint(0, 3, (b, 1, 1, 1), device=images.device)  # 0: none, 1: x2, 2: x4
    for level, size in ((1, 32), (2, 16)):
        soft = F.interpolate(
            F.adaptive_avg_pool2d(images, size), size=images.shape[-2:], mode="bilinear"
        )
        images = torch.where(factor == level, soft, images)
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    images = images + rand(1, 1, 1) * (blurred - images)
    images = images + (rand(3, 1, 1) - 0.5) * 0.16  # colour shift, about +-10/255 per channel
    return (images + torch.randn_like(images) * 0.08 * rand(1, 1, 1)).clamp(-1, 1)


class JudgeModule(pl.LightningModule):
    def __init__(self, config: dict):
        super().__init__()
        self.save_hyperparameters()
        self.net = JudgeNet(tuple(config["channels"]), config["feature_dim"])

    def training_step(self, batch, batch_idx):
        images, targets = batch  # (B, 3, 64, 64), (B, 3)
        logits = self.net(augment(images))
        losses = {
            name: F.cross_entropy(logits[name], targets[:, i]) for i, name in enumerate(HEADS)
        }
        loss = sum(losses.values())
        self.log_dict(
            {f"judge/{name}_loss": value for name, value in losses.items()} | {"judge/loss": loss}
        )
        return loss

    def configure_optimizers(self):
        config = self.hparams.config
        return adamw_warmup_cosine(
            self, TrainingSchedule(config["steps"], config["batch_size"], config["learning_rate"])
        )


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images (any size, resized to 64x64) -> (N, 3, 64, 64) in [-1, 1]."""
    size = (shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)
    arrays = [
        np.asarray(image.convert("RGB").resize(size, Image.Resampling.BILINEAR)) for image in images
    ]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class Judge:
    """The trained judge, on CPU, in eval mode."""

    def __init__(self, net: JudgeNet):
        self.net = net.eval()

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> Judge:
        """The judge saved at `path` (default: the committed weights)."""
        folder = Path(path) if path is not None else DEFAULT_PATH
        config = json.loads((folder / "config.json").read_text())
        net = JudgeNet(tuple(config["channels"]), config["feature_dim"])
        net.load_state_dict(load_file(str(folder / "model.safetensors")))
        return cls(net)

    def save(self, path: str | os.PathLike) -> None:
        """Weights (safetensors) then config.json, each written atomically; the config is
        written last, so a folder with a config holds complete weights."""
        folder = str(path)
        tmp = os.path.join(folder, ".model.safetensors.tmp")
        os.makedirs(folder, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, tmp)
        os.replace(tmp, os.path.join(folder, "model.safetensors"))
        config = {
            "channels": [m.out_channels for m in self.net.body if isinstance(m, nn.Conv2d)][::2],
            "feature_dim": self.net.project.out_features,
            "heads": {k: list(v) for k, v in HEADS.items()},
        }
        storage.write_text_atomic(
            os.path.join(folder, "config.json"), json.dumps(config, indent=2) + "\n"
        )

    @torch.no_grad()
    def logits(self, images: list[Image.Image], batch_size: int = 256) -> dict[str, torch.Tensor]:
        x = to_tensor(images)
        chunks = [self.net(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        return {name: torch.cat([c[name] for c in chunks]) for name in HEADS}

    def probabilities(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """Per attribute, (N, classes) softmax probabilities."""
        return {name: logits.softmax(-1) for name, logits in self.logits(images).items()}

    def predict(self, images: list[Image.Image]) -> list[dict[str, str]]:
        """For each image {"shape": ..., "color": ..., "background": ...}."""
        indices = {name: logits.argmax(-1).tolist() for name, logits in self.logits(images).items()}
        return [{name: HEADS[name][indices[name][i]] for name in HEADS} for i in range(len(images))]

    @torch.no_grad()
    def features(self, images: list[Image.Image], batch_size: int = 256) -> torch.Tensor:
        """(N, feature_dim) feature vectors (not normalised)."""
        x = to_tensor(images)
        return torch.cat(
            [self.net.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        )


def train_judge(config: JudgeTraining, work_dir: str, logger=None, progress: bool = True) -> Judge:
    pl.seed_everything(config.seed + 2, workers=True, verbose=False)
    specs = shapes.sample_specs(config.images, config.seed + 2, "all")
    images = images_to_tensor(shapes.render_array(specs))
    targets = torch.from_numpy(shapes.label_array(specs))
    module = JudgeModule(asdict(config))
    fit(
        module,
        shuffled_loader((images, targets), config.batch_size, config.seed + 2),
        config.steps,
        work_dir,
        logger,
        progress,
    )
    return Judge(module.net.to("cpu"))


def accuracy(judge: Judge, num_images: int, seed: int, transform=None) -> dict[str, float]:
    """Per-attribute accuracy on `num_images` freshly rendered images of every combination
    (passed through `transform`, a function of a list of images, when given)."""
    specs = shapes.sample_specs(num_images, seed, "all")
    images = [shapes.render(spec) for spec in specs]
    predictions = judge.predict(transform(images) if transform else images)
    return {
        name: float(
            np.mean(
                [p[name] == getattr(spec, name) for p, spec in zip(predictions, specs, strict=True)]
            )
        )
        for name in HEADS
    }
