"""Class-prior image sets, cached by content (SPEC §6).

A set lives in `ROOT/<key>/`, where the key digests everything that decides its pixels:
the model digest, prompt, negative prompt, scheduler, steps, guidance, size and base seed.
Image i is the sweep row `class-<i>` with seed `seed + i`, so a set that grows keeps its
first images, and the sweep engine's records make a repeated request generate nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace

from easel.data.batching import ModelFacts


@dataclass(frozen=True)
class PriorSpec:
    """One class-prior set. `model_digest`, `scheduler`, `width` and `height` may be None
    (the model's own) until `resolved` fills them in; only a resolved spec has a `key`."""

    model_digest: str | None
    class_prompt: str
    negative_prompt: str | None
    scheduler: str | None
    num_inference_steps: int
    guidance_scale: float
    width: int | None
    height: int | None
    seed: int

    def resolved(self, facts: ModelFacts) -> PriorSpec:
        """The spec with the model's digest and defaults filled in."""
        return replace(
            self, model_digest=facts.digest, scheduler=self.scheduler or facts.default_scheduler,
            width=self.width or facts.native_size, height=self.height or facts.native_size,
        )  # fmt: skip

    @property
    def key(self) -> str:
        assert None not in (self.model_digest, self.scheduler, self.width, self.height), self
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
