"""Class-prior image sets, cached by content (SPEC §6).

A set lives in `ROOT/<key>/`, where the key digests everything that decides its pixels:
the model digest, prompt, negative prompt, scheduler, steps, guidance, size and base seed.
Image i is the sweep row `class-<i>` with seed `seed + i`, so a set that grows keeps its
first images, and the sweep engine's records make a repeated request generate nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PriorSpec:
    """One class-prior set, every field resolved (no model defaults left open)."""

    model_digest: str
    class_prompt: str
    negative_prompt: str | None
    scheduler: str
    num_inference_steps: int
    guidance_scale: float
    width: int
    height: int
    seed: int

    @property
    def key(self) -> str:
        content = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(content.encode()).hexdigest()[:24]


def prior_rows(spec: PriorSpec, num_images: int) -> list[dict]:
    """Sweep manifest rows for images 0..num_images-1 of the set."""
    return [
        {"id": f"class-{i:05d}", "prompt": spec.class_prompt,
         "negative_prompt": spec.negative_prompt, "seed": spec.seed + i,
         "scheduler": spec.scheduler, "num_inference_steps": spec.num_inference_steps,
         "guidance_scale": spec.guidance_scale, "width": spec.width, "height": spec.height}
        for i in range(num_images)
    ]  # fmt: skip
