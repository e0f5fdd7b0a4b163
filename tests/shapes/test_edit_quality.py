"""img2img and inpainting on the trained tiny-shapes, checked with the judge (issue 5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from sweep_helpers import pixels, read_results, write_manifest

from easel.data import shapes
from easel.flows.sweep import SweepParameters, sweep_flow
from easel.models.engine.loading import load_model
from easel.models.shapes.evaluation import vae_round_trip
from easel.models.shapes.judge import Judge

# slow: the trained model judged on many images
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
SCENES = [("circle", "red", "blue"), ("square", "yellow", "black"), ("star", "white", "green"),
          ("heart", "red", "white"), ("cross", "blue", "yellow"), ("triangle", "green", "purple"),
          ("square", "orange", "blue"), ("star", "black", "white")]  # fmt: skip
# never the scene's background: a shape in its background's colour is outside the world
NEW_COLOUR = {"red": "green", "yellow": "purple", "white": "orange", "blue": "red",
              "green": "yellow", "orange": "purple", "black": "yellow"}  # fmt: skip


@pytest.fixture(scope="module")
def judge():
    return Judge.load()


def write_scenes(folder) -> list[tuple[str, shapes.ShapeSpec]]:
    rng = np.random.default_rng(0)
    scenes = []
    for i, (shape, colour, ground) in enumerate(SCENES):
        spec = shapes.spec_for(shape, colour, ground, rng)
        shapes.render(spec).save(folder / f"scene-{i}.png")
        scenes.append((f"scene-{i}.png", spec))
    return scenes


def run(tmp_path, name, rows, **params):
    manifest = write_manifest(tmp_path / f"{name}.parquet", rows)
    summary = sweep_flow(SweepParameters(manifest=manifest, out=str(tmp_path / name), **params))
    assert summary.rows_failed == 0
    return {r["id"]: r for r in read_results(tmp_path / name)}


def test_strength_is_monotonic_and_low_strength_keeps_the_subject(tmp_path, judge):
    scenes = write_scenes(tmp_path)
    strengths = (0.2, 0.5, 0.8, 1.0)
    rows = [{"id": f"{i}-{s}", "prompt": shapes.caption(spec), "init_image": file, "strength": s,
             "seed": i} for i, (file, spec) in enumerate(scenes) for s in strengths]  # fmt: skip
    results = run(tmp_path, "strength", rows)

    def distance(strength: float) -> float:
        return float(np.mean([
            np.abs(pixels(results[f"{i}-{strength}"]["image_uri"]) - pixels(tmp_path / file)).mean()
            for i, (file, _) in enumerate(scenes)
        ]))  # fmt: skip

    distances = [distance(s) for s in strengths]
    assert distances == sorted(distances), distances
    # at low strength the judge reads what it reads in the init image after the model's own
    # VAE round trip (what any latent-space edit keeps at best: the VAE confuses orange
    # with yellow and black with green now and then)
    low = [Image.open(results[f"{i}-0.2"]["image_uri"]) for i in range(len(scenes))]
    model = load_model("tiny-shapes", device="cpu", dtype=torch.float32)
    inits = vae_round_trip(model, [Image.open(tmp_path / file) for file, _ in scenes])
    kept = [a == b for a, b in zip(judge.predict(low), judge.predict(inits), strict=True)]
    assert sum(kept) >= 0.75 * len(scenes), kept


@pytest.mark.parametrize(
    ("model", "share"),
    [("tiny-shapes", 0.5), ("tiny-shapes-k22-inpaint", 0.6)],  # Kandinsky: its own decoder
)
def test_inpainting_the_shape_in_another_colour_changes_the_judged_colour(
    tmp_path, judge, model, share
):
    scenes = write_scenes(tmp_path)
    rows = []
    for i, (file, spec) in enumerate(scenes):
        mask = Image.new("L", (shapes.IMAGE_SIZE,) * 2, 0)
        (cx, cy), r = spec.center, spec.radius + 3
        ImageDraw.Draw(mask).rectangle((cx - r, cy - r, cx + r, cy + r), fill=255)
        mask.save(tmp_path / f"mask-{i}.png")
        prompt = f"a {NEW_COLOUR[spec.color]} {spec.shape} on a {spec.background} background"
        rows.append({"id": str(i), "prompt": prompt, "init_image": file,
                     "mask_image": f"mask-{i}.png", "seed": i})  # fmt: skip
        if model == "tiny-shapes":  # from pure noise (Kandinsky's inpainting decoder always is)
            rows[-1]["strength"] = 1.0
    guidance = {"guidance_scale": 4.0} if "k22" in model else {}
    results = run(tmp_path, "inpaint", rows, model=model, **guidance)
    images = [Image.open(results[str(i)]["image_uri"]) for i in range(len(scenes))]
    judged = [p["color"] for p in judge.predict(images)]
    changed = [
        colour == NEW_COLOUR[spec.color] for colour, (_, spec) in zip(judged, scenes, strict=False)
    ]
    assert sum(changed) > share * len(scenes), list(
        zip(judged, [s.color for _, s in scenes], strict=False)
    )
    for i, image in enumerate(images):  # outside the mask, the init image exactly
        outside = pixels(tmp_path / f"mask-{i}.png") == 0
        init = pixels(tmp_path / scenes[i][0])
        assert np.array_equal(pixels(image.filename)[outside], init[outside])
