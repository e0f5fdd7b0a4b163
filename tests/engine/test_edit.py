"""img2img and inpainting rows (issue 5): strength, masks, compositing, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter
from sweep_helpers import STEPS, pixels, read_results, write_manifest

from easel.data.images import composite
from easel.flows.sweep import SweepParameters, sweep_flow

pytestmark = pytest.mark.usefixtures("prefect_server")
SIZE = 64


def scene(path, colour="red", ground="blue"):
    image = Image.new("RGB", (SIZE, SIZE), ground)
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=colour)
    image.save(path)
    return path.name


def square_mask(path, soft=False, mode="L"):
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rectangle((12, 12, 52, 52), fill=255)
    if soft:
        mask = mask.filter(ImageFilter.GaussianBlur(4))
    if mode == "RGBA":  # the meaning only in alpha: white everywhere, alpha = mask
        rgba = Image.new("RGBA", (SIZE, SIZE), (255, 255, 255, 0))
        rgba.putalpha(mask)
        mask = rgba
    mask.save(path)
    return path.name


def sweep(tmp_path, rows, name="out"):
    manifest = write_manifest(tmp_path / f"{name}.parquet", rows)
    params = SweepParameters(manifest=manifest, out=str(tmp_path / name), num_inference_steps=STEPS)
    summary = sweep_flow(params)
    return summary, {(r["id"], r["image_index"]): r for r in read_results(tmp_path / name)}


def test_inpaint_keeps_mask_zero_pixels_exactly_and_blends_soft_edges(tmp_path):
    init = scene(tmp_path / "init.png")
    hard = square_mask(tmp_path / "hard.png")
    soft = square_mask(tmp_path / "soft.png", soft=True)
    rows = [{"id": name, "prompt": "a yellow square on a black background", "init_image": init,
             "mask_image": mask, "strength": 1.0, "seed": 5} for name, mask in
            (("hard", hard), ("soft", soft))]  # fmt: skip
    summary, results = sweep(tmp_path, rows)
    assert summary.rows_failed == 0 and all(r["status"] == "ok" for r in results.values())
    base = pixels(tmp_path / init)
    for name in ("hard", "soft"):
        out = pixels(results[(name, 0)]["image_uri"])
        keep = pixels(tmp_path / f"{name}.png")[..., 0] == 0
        assert keep.any() and np.array_equal(out[keep], base[keep])  # bit-identical
        assert not np.array_equal(out[~keep], base[~keep])  # the masked part was repainted
    # the jump across the mask border: a soft mask leaves a gentler seam than a hard one
    assert seam(results[("soft", 0)]["image_uri"]) < seam(results[("hard", 0)]["image_uri"])


def seam(path) -> float:
    """Mean absolute step between neighbouring pixels along the hard mask's left edge."""
    image = pixels(path).astype(np.float32)
    rows = slice(16, 48)
    return float(np.abs(image[rows, 12] - image[rows, 11]).mean())


def test_composite_blends_grey_in_proportion():
    init = Image.new("RGB", (8, 8), (0, 0, 0))
    generated = Image.new("RGB", (8, 8), (200, 100, 50))
    mask = Image.new("L", (8, 8), 0)
    mask.putpixel((1, 1), 255)
    mask.putpixel((2, 2), 128)
    out = np.asarray(composite(init, generated, mask))
    assert tuple(out[0, 0]) == (0, 0, 0) and tuple(out[1, 1]) == (200, 100, 50)
    assert tuple(out[2, 2]) == (100, 50, 25)


def test_bad_edit_inputs_fail_their_row_alone(tmp_path):
    init = scene(tmp_path / "init.png")
    mask = square_mask(tmp_path / "mask.png")
    (tmp_path / "not-an-image.png").write_text("hello")
    Image.new("L", (32, 32), 255).save(tmp_path / "small-mask.png")
    alpha = square_mask(tmp_path / "alpha.png", mode="RGBA")
    Image.new("RGB", (60, 60)).save(tmp_path / "odd.png")
    Image.new("1", (9000, 9000)).save(tmp_path / "huge.png")  # KBs on disk, 81 MP declared
    outside = tmp_path.parent / "outside.png"
    Image.new("RGB", (64, 64)).save(outside)
    prompt = "a red circle"
    rows = [
        {"id": "good", "prompt": prompt, "init_image": init, "mask_image": mask},
        {"id": "missing", "prompt": prompt, "init_image": "nope.png"},
        {"id": "not-image", "prompt": prompt, "init_image": "not-an-image.png"},
        {"id": "mask-size", "prompt": prompt, "init_image": init, "mask_image": "small-mask.png"},
        {"id": "alpha-mask", "prompt": prompt, "init_image": init, "mask_image": alpha},
        {"id": "strength-0", "prompt": prompt, "init_image": init, "strength": 0.0},
        {"id": "strength-1.5", "prompt": prompt, "init_image": init, "strength": 1.5},
        {"id": "outside", "prompt": prompt, "init_image": str(outside)},
        {"id": "odd-size", "prompt": prompt, "init_image": "odd.png"},
        {"id": "resized", "prompt": prompt, "init_image": "odd.png", "width": 64, "height": 64},
        {"id": "huge", "prompt": prompt, "init_image": "huge.png", "width": 64, "height": 64},
    ]
    summary, results = sweep(tmp_path, rows)
    errors = {key[0]: r["error"] for key, r in results.items() if r["status"] == "failed"}
    expected = {
        "missing": ["`init_image`", "nope.png", "does not exist"],
        "not-image": ["`init_image`", "not-an-image.png", "not an image"],
        "mask-size": ["`mask_image`", "32x32", "64x64"],
        "alpha-mask": ["`mask_image`", "alpha"],
        "strength-0": ["`strength`", "0.0"],
        "strength-1.5": ["`strength`", "1.5"],
        "outside": ["`init_image`", "outside"],
        "odd-size": ["`init_image`", "60x60", "multiples of 8"],
        "huge": ["`init_image`", "huge.png", "9000x9000", "downscale it"],
    }
    assert set(errors) == set(expected)
    for row_id, words in expected.items():
        for word in words:
            assert word in errors[row_id], (row_id, errors[row_id])
    assert results[("good", 0)]["status"] == "ok" and results[("resized", 0)]["status"] == "ok"
    assert summary.rows_failed == len(expected)


def test_a_request_failing_at_generation_fails_alone(tmp_path):
    from easel.data.batching import BatchSettings, ImageRequest
    from easel.models.engine.generation import generate_each
    from easel.models.engine.loading import load_model

    init = str(tmp_path / scene(tmp_path / "init.png"))
    settings = BatchSettings(
        task="img2img", scheduler="ddim", guidance_scale=5.0, num_inference_steps=STEPS,
        width=SIZE, height=SIZE, strength=0.5,
    )  # fmt: skip
    requests = [ImageRequest("a red circle", None, 1, init_image=init),
                ImageRequest("a red circle", None, 2, init_image=str(tmp_path / "gone.png")),
                ImageRequest("a red circle", None, 3, init_image=init)]  # fmt: skip
    outputs = generate_each(load_model("tiny-shapes", device="cpu"), settings, requests)
    assert isinstance(outputs[0].image, Image.Image) and isinstance(outputs[2].image, Image.Image)
    assert outputs[0].nsfw_content_detected is None  # tiny-shapes has no safety checker
    assert isinstance(outputs[1], Exception) and "gone.png" in str(outputs[1])
