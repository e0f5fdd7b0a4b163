"""The registry's pyfunc model, on the engine's side: how a registered diffusers folder
loads and answers `predict` (`easel.tracking.register_model` logs it; MLflow pickles these
two functions by reference).

`predict` takes a `prompt` column (and optionally `seed`, `negative_prompt`) and returns
one base64 PNG per row in `image_png_base64`; `params` may set `num_inference_steps`
(default 25) and `guidance_scale` (default 7.5). Image i uses `seed`, else seed i.
"""

from __future__ import annotations

import base64
import io

from easel.data.limits import GUIDANCE_SCALE
from easel.models.engine.generation import text_to_image
from easel.models.engine.loading import LoadedModel, load_model

PREDICT_STEPS = 25


def load_registered(pipeline_dir: str) -> LoadedModel:
    """The registered folder loaded as any model reference is."""
    return load_model(pipeline_dir)


def predict(loaded: LoadedModel, model_input, params: dict | None = None):
    """One base64 PNG per row of `model_input` (a pandas DataFrame)."""
    import pandas as pd

    params = params or {}
    prompts = [str(p) for p in model_input["prompt"]]
    seeds = list(range(len(prompts)))
    if "seed" in model_input:
        seeds = [int(seed) for seed in model_input["seed"]]
    negatives = list(model_input["negative_prompt"]) if "negative_prompt" in model_input else None
    images = text_to_image(
        loaded, prompts, seeds, float(params.get("guidance_scale", GUIDANCE_SCALE)),
        int(params.get("num_inference_steps", PREDICT_STEPS)), negatives,
    )  # fmt: skip
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode())
    return pd.DataFrame({"image_png_base64": encoded})
