"""DreamBooth training data: instance and class images, cached once as latents, served as
micro-batches that are pure functions of (seed, micro-batch number, rank).

Because every micro-batch (which images, the noise, the timesteps) is derived
from its number alone, resuming needs nothing but the global step: the loader restarts at
micro-batch `global_step * gradient_accumulation` and produces exactly what an uninterrupted
run would have produced. No sampler state, no generator state.

The frozen encoders belong to the model; the DataModule calls
`trainer.lightning_module.encode_images` / `encode_prompts` once in `setup` and keeps the
results (latents per image, one conditioning tensor per prompt).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from easel.data import storage
from easel.data.images import ImageInputError, open_image, read_rgb
from easel.data.storage import filesystem, read_bytes
from easel.errors import InvalidInput

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_SUFFIX = ".txt"  # `NAME.txt` beside `NAME.png`: that image's prompt (kohya, ai-toolkit)
MIN_INSTANCE_IMAGES, MAX_INSTANCE_IMAGES = 3, 20


def list_images(folder: str) -> list[str]:
    """Image files directly under `folder` (any fsspec URI), sorted; [] if it has none."""
    fs, path = filesystem(folder)
    protocol = folder.split("://")[0] + "://" if "://" in folder else ""
    names = [p for p in fs.ls(path, detail=False) if p.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(protocol + p if protocol and not p.startswith(protocol) else p for p in names)


def check_instance_data(folder: str) -> list[str]:
    """The instance image URIs, or one InvalidInput naming `subject.instance_data` and the
    problem."""
    fs, path = filesystem(folder)
    if not fs.isdir(path):
        raise InvalidInput(
            f"config field `subject.instance_data` must be a folder of images but "
            f"{folder!r} does not exist or is not a folder"
        )
    images = list_images(folder)
    if not MIN_INSTANCE_IMAGES <= len(images) <= MAX_INSTANCE_IMAGES:
        raise InvalidInput(
            f"config field `subject.instance_data` must hold {MIN_INSTANCE_IMAGES} to "
            f"{MAX_INSTANCE_IMAGES} images but {folder!r} holds {len(images)}"
        )
    for uri in images:
        try:
            open_image(uri, "instance_data")
        except ImageInputError as error:
            raise InvalidInput(f"config field `subject.instance_data`: {error}") from None
    return images


def caption_uri(image_uri: str) -> str:
    """Where the caption of an instance image lives: its name with `.txt` for the suffix."""
    return image_uri.rsplit(".", 1)[0] + CAPTION_SUFFIX


def read_captions(uris: list[str], default: str) -> list[str]:
    """Each image's prompt: its caption file's text (whitespace collapsed) where it has one,
    else `default`."""
    captions = []
    for uri in uris:
        path = caption_uri(uri)
        text = " ".join(read_bytes(path).decode().split()) if storage.exists(path) else ""
        captions.append(text or default)
    return captions


def images_digest(uris: list[str], captions: dict[str, str] | None = None) -> str:
    """sha256 over the images' file names and bytes, in order, and the captions that differ
    from the instance prompt (`{image uri: caption}`): what a training used."""
    digest = hashlib.sha256()
    for uri in uris:
        digest.update(uri.rstrip("/").rsplit("/", 1)[-1].encode() + b"\0")
        digest.update(read_bytes(uri))
        if captions and uri in captions:
            digest.update(b"caption\0" + captions[uri].encode() + b"\0")
    return digest.hexdigest()


def load_pixels(uris: list[str], resolution: int, column: str = "instance_data") -> torch.Tensor:
    """Images (upright, intended 8-bit colours: `easel.data.images.read_rgb`) resized
    (shorter side) and centre-cropped to `resolution`, in [-1, 1]; `column` names the config
    field they come from in errors.

    Returns (N, 3, resolution, resolution) float32.
    """
    out = torch.empty(len(uris), 3, resolution, resolution)
    for i, uri in enumerate(uris):
        image = read_rgb(uri, column)
        scale = resolution / min(image.size)
        w, h = (
            max(resolution, round(image.width * scale)),
            max(resolution, round(image.height * scale)),
        )
        image = image.resize((w, h), Image.Resampling.BICUBIC)
        left, top = (w - resolution) // 2, (h - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # (H, W, 3)
        out[i] = torch.from_numpy(array).permute(2, 0, 1)
    return out


def derived_generator(seed: int, stream: str, index: int) -> torch.Generator:
    """A CPU generator whose state depends only on (seed, stream, index)."""
    digest = hashlib.sha256(f"{seed}/{stream}/{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _epoch_order(seed: int, stream: str, count: int, positions: range) -> list[int]:
    """Example indices at `positions` of an endless stream of shuffled epochs over `count`."""
    out, cached = [], {}
    for position in positions:
        epoch = position // count
        if epoch not in cached:
            cached[epoch] = torch.randperm(count, generator=derived_generator(seed, stream, epoch))
        out.append(int(cached[epoch][position % count]))
    return out


@dataclass(frozen=True)
class LatentCache:
    """Per-image latents (posterior means, in the UNet's latent scale) and the conditioning
    of their prompt: one for all images, or one per image (captions)."""

    latents: torch.Tensor  # (N, C, h, w)
    condition: torch.Tensor  # (1 or N, L, D) embeddings, or (1 or N, L) ids (text encoder trains)
    # differential output preservation: the prompts without the identifier, encoded alike
    class_condition: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.latents.shape[0]

    def conditions(self, indices: list[int], condition: torch.Tensor | None = None) -> torch.Tensor:
        """The conditioning (default: `condition`) of the images at `indices`,
        (len(indices), L[, D])."""
        condition = self.condition if condition is None else condition
        if condition.shape[0] == 1:
            return condition.expand(len(indices), *condition.shape[1:])
        return condition[indices]


class MicroBatches(IterableDataset):
    """Micro-batches number `start` .. `stop - 1` of this rank, each a dict of tensors."""

    def __init__(
        self,
        instance: LatentCache,
        prior: LatentCache | None,
        batch_size: int,
        num_train_timesteps: int,
        seed: int,
        start: int,
        stop: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.instance, self.prior, self.batch_size = instance, prior, batch_size
        self.num_train_timesteps, self.seed = num_train_timesteps, seed
        self.start, self.stop, self.rank, self.world_size = start, stop, rank, world_size

    def batch(self, number: int) -> dict[str, torch.Tensor]:
        """Micro-batch `number` of this rank: instance examples first, then class examples."""
        index = number * self.world_size + self.rank  # unique across ranks
        positions = range(index * self.batch_size, (index + 1) * self.batch_size)
        parts = [
            (self.instance, _epoch_order(self.seed, "instance", len(self.instance), positions))
        ]
        if self.prior is not None:
            parts.append((self.prior, _epoch_order(self.seed, "class", len(self.prior), positions)))
        latents = torch.cat([cache.latents[idx] for cache, idx in parts])
        condition = torch.cat([cache.conditions(idx) for cache, idx in parts])
        shape = latents.shape
        extra = {}
        if self.instance.class_condition is not None:  # for the instance examples only
            extra["class_condition"] = self.instance.conditions(
                parts[0][1], self.instance.class_condition
            )
        return extra | {
            "latents": latents,
            "noise": torch.randn(shape, generator=derived_generator(self.seed, "noise", index)),
            "offset": torch.randn(
                shape[:2] + (1, 1), generator=derived_generator(self.seed, "offset", index)
            ),
            "timesteps": torch.randint(
                0,
                self.num_train_timesteps,
                (shape[0],),
                generator=derived_generator(self.seed, "timestep", index),
            ),
            "condition": condition,
            "num_instance": self.batch_size,  # the first examples are instances, the rest class
        }

    def __iter__(self):
        for number in range(self.start, self.stop):
            yield self.batch(number)


class Batches(Protocol):
    """What the DataModule reads of the config's `train` group
    (`easel.models.dreambooth.config.Train`)."""

    resolution: int  # pixels per side
    batch_size: int  # instance images per micro-batch
    max_steps: int  # optimizer steps
    gradient_accumulation: int  # micro-batches per step
    seed: int


class DreamBoothDataModule(pl.LightningDataModule):
    """Instance (and class) images, encoded once in `setup`, served by `MicroBatches`."""

    def __init__(
        self,
        instance_images: list[str],
        instance_prompts: list[str],
        train: Batches,
        class_images: list[str] | None = None,
        class_prompt: str | None = None,
        class_prompts: list[str] | None = None,
    ):
        super().__init__()
        assert len(instance_prompts) in (1, len(instance_images)), "one prompt, or one per image"
        self.instance_images, self.instance_prompts = instance_images, instance_prompts
        self.class_images, self.class_prompt = class_images, class_prompt
        self.class_prompts = class_prompts  # per instance image: differential output
        self.settings = train
        self.instance_cache: LatentCache | None = None
        self.prior_cache: LatentCache | None = None

    def setup(self, stage: str) -> None:
        if self.instance_cache is not None:
            return
        module = self.trainer.lightning_module
        device = self.trainer.strategy.root_device
        self.instance_cache = _encode(
            module, self.instance_images, self.instance_prompts, self.settings.resolution, device,
            "instance_data",
        )  # fmt: skip
        if self.class_prompts:
            self.instance_cache = replace(
                self.instance_cache,
                class_condition=_conditioning(module, self.class_prompts, device),
            )
        if self.class_images:
            self.prior_cache = _encode(
                module, self.class_images, [self.class_prompt], self.settings.resolution, device,
                "class_data",
            )  # fmt: skip
        module.release_frozen_encoders()

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        dataset = MicroBatches(
            self.instance_cache,
            self.prior_cache,
            self.settings.batch_size,
            num_train_timesteps=trainer.lightning_module.num_train_timesteps,
            seed=self.settings.seed,
            start=trainer.global_step * self.settings.gradient_accumulation,  # resume point, exact
            stop=self.settings.max_steps * self.settings.gradient_accumulation,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
        )
        return DataLoader(dataset, batch_size=None, num_workers=0)


def _encode(
    module, uris: list[str], prompts: list[str], resolution: int, device, column: str,
    chunk: int = 4,
) -> LatentCache:  # fmt: skip
    latents = [  # a chunk at a time: bounded memory
        module.encode_images(load_pixels(uris[i : i + chunk], resolution, column), device)
        for i in range(0, len(uris), chunk)
    ]
    return LatentCache(latents=torch.cat(latents), condition=_conditioning(module, prompts, device))


def _conditioning(module, prompts: list[str], device) -> torch.Tensor:
    """(1 or N, ...): one conditioning when all `prompts` are the same, else one each."""
    if len(set(prompts)) == 1:
        prompts = prompts[:1]
    return module.encode_prompts(prompts, device)
