"""What every shapes-world recipe shares (tiny-shapes, tiny-shapes-k22, the judge): the
training schedule and its optimizer, the fit loop (`easel.models.lightning.fit`: seeded,
deterministic, resumable from its last `step=N.ckpt`), loaders over in-memory tensors, and
the foreground map that tells a shape from its background."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from easel.models import lightning


@dataclass(frozen=True)
class TrainingSchedule:
    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int = 100


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def warmup_cosine(schedule: TrainingSchedule):
    def factor(step: int) -> float:
        if step < schedule.warmup_steps:
            return (step + 1) / schedule.warmup_steps
        progress = (step - schedule.warmup_steps) / max(1, schedule.steps - schedule.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def adamw_warmup_cosine(module: pl.LightningModule, schedule: TrainingSchedule):
    optimizer = torch.optim.AdamW(module.parameters(), lr=schedule.learning_rate, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(schedule))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


CHECKPOINT_EVERY_N_STEPS = 250


def fit(
    module: pl.LightningModule,
    loader: DataLoader,
    steps: int,
    work_dir: str,
    logger=None,
    progress: bool = True,
    max_time: str | None = None,
    ema_decay: float = 0.0,
):
    """Train `module` for `steps` optimizer steps (or until `max_time`, "DD:HH:MM:SS")
    through the one harness (`easel.models.lightning.fit`), checkpointing to `work_dir` every
    250 steps as `step=N.ckpt`; a rerun with the same `work_dir` resumes exactly from the
    last. `progress`: Lightning's bar, else plain lines. With `ema_decay`, the module ends
    with its weights' exponential moving average (Lightning's WeightAveraging; checkpoints
    hold both)."""
    callbacks = []
    if ema_decay:
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        callbacks.append(pl.callbacks.WeightAveraging(multi_avg_fn=get_ema_multi_avg_fn(ema_decay)))
    lightning.fit(
        module, loader, steps, lightning.CheckpointPolicy(work_dir, CHECKPOINT_EVERY_N_STEPS),
        "bar" if progress else "lines", callbacks,
        max_time=max_time, accelerator="auto", devices=1, precision="32-true",
        logger=logger if logger is not None else False, log_every_n_steps=25,
        gradient_clip_val=1.0, deterministic="warn",
    )  # fmt: skip
    return module


def shuffled_loader(tensors: tuple[torch.Tensor, ...], batch_size: int, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDataset(*tensors),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        generator=generator,
    )


def foreground(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) in [-1, 1]: how far each pixel is from the background colour, taken as
    the median of the 2-pixel border. Hands the CNN the silhouette, so shape is learnt
    as fast as colour."""
    border = torch.cat(
        [
            images[..., :2, :].flatten(2),
            images[..., -2:, :].flatten(2),
            images[..., :, :2].flatten(2),
            images[..., :, -2:].flatten(2),
        ],
        dim=2,
    )
    background = border.median(dim=2).values[..., None, None]  # (B, 3, 1, 1)
    distance = (images - background).norm(dim=1, keepdim=True)  # 0 .. 2*sqrt(3)
    return (distance / 0.5).clamp(0, 1) * 2 - 1
