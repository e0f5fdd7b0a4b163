"""Helpers shared by the sweep tests: manifests, images, the `easel` command."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

STEPS = 3  # denoising steps in tests: enough to exercise the schedulers, fast on CPU


def write_manifest(path, rows, schema=None) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    rows = [{key: row.get(key) for key in columns} for row in rows]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return str(path)


def write_scenes(folder, size: int, scenes: dict[str, tuple[str, str]]) -> dict[str, str]:
    """Init images (`name: (shape colour, ground colour)`, a disc over the middle half) and
    `mask` (white over the middle half) as PNG files of `size` pixels in `folder`."""
    from PIL import ImageDraw

    quarter, paths = size // 4, {}
    box = (quarter, quarter, size - quarter, size - quarter)
    for name, (colour, ground) in scenes.items():
        image = Image.new("RGB", (size, size), ground)
        ImageDraw.Draw(image).ellipse(box, fill=colour)
        paths[name] = str(folder / f"{name}.png")
        image.save(paths[name])
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle((quarter, quarter, size - quarter - 1, size - quarter - 1),
                                   fill=255)  # fmt: skip
    paths["mask"] = str(folder / "mask.png")
    mask.save(paths["mask"])
    return paths


def generated(model: str, requests, **settings) -> list[np.ndarray]:
    """easel's images for `requests` in one batch (`settings`: a `BatchSettings`'s fields;
    the model's own scheduler unless given), as uint8 pixels, on the model in float32."""
    import torch

    from easel.data.batching import BatchSettings
    from easel.models.engine.generation import generate
    from easel.models.engine.loading import load_model

    values = BatchSettings(**{"scheduler": None, **settings})
    images = generate(load_model(model, dtype=torch.float32), values, requests)
    return [np.asarray(image) for image in images]


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def max_pixel_difference(a, b) -> int:
    return (
        int(np.abs(pixels(a) - pixels(b)).max())
        if not isinstance(a, np.ndarray)
        else int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
    )


def read_results(out) -> list[dict]:
    return pq.read_table(os.path.join(out, "results.parquet")).to_pylist()


def easel(*args, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    """Run the `easel` command in a subprocess (same interpreter, same environment)."""
    return subprocess.run(
        [sys.executable, "-m", "easel.cli", *args], capture_output=True, text=True,
        timeout=timeout, **kwargs,
    )  # fmt: skip


def fusion_by_diffusers(model, conditions, weights, seed, size, steps, **prior_arguments):
    """The image a user gets from diffusers alone for a Kandinsky 2.2 fusion: the prior's
    `interpolate` of `conditions` (prompts, PIL images) with `weights`, then the decoder, one
    generator seeded with `seed` throughout; uint8 pixels."""
    import torch
    from diffusers import KandinskyV22CombinedPipeline, KandinskyV22Pipeline

    combined = KandinskyV22CombinedPipeline.from_pretrained(model)
    generator = torch.Generator().manual_seed(seed)
    embeddings = combined.prior_pipe.interpolate(
        conditions, weights, generator=generator, **prior_arguments
    )
    decoder = KandinskyV22Pipeline(unet=combined.unet, scheduler=combined.scheduler,
                                   movq=combined.movq)  # fmt: skip
    image = decoder(
        image_embeds=embeddings.image_embeds,
        negative_image_embeds=embeddings.negative_image_embeds, guidance_scale=4.0,
        num_inference_steps=steps, height=size, width=size, generator=generator,
        output_type="np",
    ).images[0]  # fmt: skip
    return (image * 255).round().astype(np.uint8)


def flow_run_logs(flow_run_id, until: str, seconds: float = 30.0) -> dict[str, int]:
    """A flow run's log messages (with their levels) once `until` is in one of them (logs
    reach the API in batches); after `seconds`, those there are."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline, logs = time.monotonic() + seconds, []
    run_logs = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(run_logs)
        if any(until in log.message for log in logs):
            break
        time.sleep(0.5)
    return {log.message: log.level for log in logs}
