"""Images from the wild (issue 14): EXIF orientation and every mode and bit depth Pillow
opens, read with their intended 8-bit meaning on every path that reads images: init images
and masks of a sweep, DreamBooth instance and class images, `easel eval`'s subject."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from sweep_helpers import pixels, read_results, write_manifest

from easel.data import images
from easel.data.dreambooth import load_pixels
from easel.flows.sweep import SweepParameters, sweep_flow

SIDE = 16
EXIF_ORIENTATION = 0x0112


def grey_array(value, dtype, shape=(SIDE, SIDE)) -> np.ndarray:
    return np.full(shape, value, dtype=dtype)


def left_opaque(rgba: Image.Image) -> Image.Image:
    alpha = Image.new("L", rgba.size, 0)
    ImageDraw.Draw(alpha).rectangle((0, 0, SIDE // 2 - 1, SIDE - 1), 255)
    rgba.putalpha(alpha)
    return rgba


def palette_with_transparency() -> Image.Image:
    image = Image.new("P", (SIDE, SIDE), 1)
    image.putpalette([0, 0, 0, 128, 128, 128])
    ImageDraw.Draw(image).rectangle((SIDE // 2, 0, SIDE - 1, SIDE - 1), 0)
    image.info["transparency"] = 0  # the right half: index 0, transparent
    return image


# name -> (the image, the format it is saved in, intended RGB left/right halves, intended
# mask luminance left/right halves; None: refused as a mask)
MODES = {
    "1": (Image.new("1", (SIDE, SIDE), 1), "PNG", (255, 255), (255, 255)),
    "L": (Image.new("L", (SIDE, SIDE), 128), "PNG", (128, 128), (128, 128)),
    "LA opaque": (Image.new("LA", (SIDE, SIDE), (128, 255)), "PNG", (128, 128), (128, 128)),
    "P": (Image.new("RGB", (SIDE, SIDE), (128,) * 3).convert("P", palette=Image.Palette.ADAPTIVE),
          "PNG", (128, 128), (128, 128)),
    "P transparency": (palette_with_transparency(), "PNG", (128, 255), (128, 0)),
    "PA": (Image.new("LA", (SIDE, SIDE), (128, 255)).convert("PA"), "TIFF", (128, 128),
           (128, 128)),
    "RGB": (Image.new("RGB", (SIDE, SIDE), (128,) * 3), "PNG", (128, 128), (128, 128)),
    "RGBA opaque": (Image.new("RGBA", (SIDE, SIDE), (128, 128, 128, 255)), "PNG", (128, 128),
                    (128, 128)),
    "RGBA meaningful alpha": (left_opaque(Image.new("RGBA", (SIDE, SIDE), (128,) * 4)), "PNG",
                              (128, 255), None),
    "CMYK": (Image.new("CMYK", (SIDE, SIDE), (0, 0, 0, 127)), "TIFF", (128, 128), (128, 128)),
    "CMYK JPEG": (Image.new("CMYK", (SIDE, SIDE), (0, 0, 0, 127)), "JPEG", (128, 128),
                  (128, 128)),
    "YCbCr": (Image.new("YCbCr", (SIDE, SIDE), (128, 128, 128)), "TIFF", (128, 128), (128, 128)),
    "LAB": (Image.new("LAB", (SIDE, SIDE), (137, 128, 128)), "TIFF", (128, 128), (128, 128)),
    "I;16": (Image.fromarray(grey_array(32896, np.uint16)), "PNG", (128, 128), (128, 128)),
    "I;16 faint": (Image.fromarray(grey_array(6554, np.uint16)), "PNG", (26, 26), (26, 26)),
    "I;16B": (Image.frombytes("I;16B", (SIDE, SIDE), grey_array(32896, ">u2").tobytes()),
              "TIFF", (128, 128), (128, 128)),
    "I": (Image.fromarray(grey_array(32896, np.int32)), "TIFF", (128, 128), (128, 128)),
    "F 0..1": (Image.fromarray(grey_array(0.502, np.float32)), "TIFF", (128, 128), (128, 128)),
    "F 0..255": (Image.fromarray(grey_array(128.0, np.float32)), "TIFF", (128, 128),
                 (128, 128)),
}  # fmt: skip


def saved(tmp_path, name: str) -> str:
    image, file_format, _, _ = MODES[name]
    path = tmp_path / f"{name.replace(' ', '_').replace(';', '')}.{file_format.lower()}"
    image.save(path, format=file_format)
    return str(path)


def halves(array: np.ndarray) -> tuple[int, int]:
    """The median value of the left and the right half (any channel layout)."""
    return int(np.median(array[:, : SIDE // 2])), int(np.median(array[:, SIDE // 2 :]))


def assert_near(found, wanted, name, path):
    assert all(abs(f - w) <= 2 for f, w in zip(found, wanted, strict=True)), (name, path, found)


@pytest.mark.parametrize("name", MODES)
def test_every_mode_reads_with_its_intended_meaning_on_every_path(tmp_path, name):
    uri = saved(tmp_path, name)
    _, _, rgb, luminance = MODES[name]
    opened = images.open_image(uri, "init_image")
    assert opened.mode.split(";")[0] in {name.split()[0].split(";")[0], "RGB", "L", "I"}, opened
    paths = {
        "init_image": np.asarray(images.load_init_image(uri, (SIDE, SIDE))),
        "eval subject": np.asarray(images.read_rgb(uri, "instance_data")),
        "instance_data": ((load_pixels([uri], SIDE)[0].permute(1, 2, 0) + 1) * 127.5).numpy(),
        "class_data": ((load_pixels([uri], SIDE, "class_data")[0].permute(1, 2, 0) + 1)
                       * 127.5).numpy(),
    }  # fmt: skip
    for path, array in paths.items():
        assert array.shape == (SIDE, SIDE, 3), (name, path)
        assert_near(halves(np.rint(array)), rgb, name, path)
    if luminance is None:
        with pytest.raises(images.ImageInputError, match="alpha channel"):
            images.load_mask(uri, (SIDE, SIDE))
    else:
        assert_near(halves(np.asarray(images.load_mask(uri, (SIDE, SIDE)))), luminance, name,
                    "mask_image")  # fmt: skip


def rotated_jpeg(path, exif_orientation: int = 6) -> Image.Image:
    """A JPEG stored 128x64 whose EXIF says: rotate 90° clockwise to display (64x128).
    Displayed, its top half is red and its bottom half blue; returns the upright image."""
    upright = Image.new("RGB", (64, 128), "blue")
    ImageDraw.Draw(upright).rectangle((0, 0, 63, 63), "red")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what orientation 6 undoes
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = exif_orientation
    stored.save(path, format="JPEG", quality=95, exif=exif)
    return upright


def test_exif_orientation_is_applied_wherever_an_image_is_read(tmp_path):
    upright = rotated_jpeg(tmp_path / "phone.jpg")
    with Image.open(tmp_path / "phone.jpg") as raw:
        assert raw.size == (128, 64)  # stored sideways
    uri = str(tmp_path / "phone.jpg")
    init = np.asarray(images.load_init_image(uri, (64, 128)), dtype=int)
    assert np.abs(np.median(init[:64], axis=(0, 1)) - (255, 0, 0)).max() <= 4  # red on top
    assert np.abs(np.median(init[64:], axis=(0, 1)) - (0, 0, 255)).max() <= 4
    assert images.probe_edit_inputs(uri, None, None, None, 2048 * 2048) == (64, 128)
    upright.save(tmp_path / "upright.png")
    for column in ("instance_data", "class_data"):
        from_jpeg = load_pixels([uri], 64, column)
        from_png = load_pixels([str(tmp_path / "upright.png")], 64, column)
        assert (from_jpeg - from_png).abs().mean() < 4 / 127.5  # JPEG's loss, not a rotation


@pytest.mark.usefixtures("prefect_server")
def test_a_phone_photo_and_a_mask_drawn_on_it_upright_inpaint_upright(tmp_path):
    rotated_jpeg(tmp_path / "phone.jpg")
    mask = Image.new("L", (64, 128), 0)  # drawn on the picture as displayed
    ImageDraw.Draw(mask).rectangle((16, 80, 48, 112), 255)  # in the blue bottom half
    mask.save(tmp_path / "mask.png")
    faint = Image.fromarray(grey_array(6554, np.uint16, (128, 64)))  # 10%: a faint 16-bit mask
    faint.save(tmp_path / "faint.png")
    masks = (("drawn", "mask.png"), ("faint", "faint.png"))
    rows = [{"id": m, "prompt": "a yellow circle", "init_image": "phone.jpg", "mask_image": f,
             "strength": 1.0, "seed": 3} for m, f in masks]  # fmt: skip
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    out = tmp_path / "out"
    sweep_flow(SweepParameters(manifest=manifest, out=str(out), num_inference_steps=3))
    results = {r["id"]: r for r in read_results(out)}
    assert all(r["status"] == "ok" for r in results.values()), results
    drawn = pixels(results["drawn"]["image_uri"])
    assert drawn.shape == (128, 64, 3)  # upright: 64 wide, 128 high
    assert drawn[:64, :, 0].mean() > 200 and drawn[:64, :, 2].mean() < 60  # the red top kept
    outside = np.asarray(mask) == 0
    init = np.asarray(images.load_init_image(str(tmp_path / "phone.jpg"), (64, 128)), dtype=int)
    assert np.array_equal(drawn[outside], init[outside])  # mask-0 pixels bit-identical
    # a 10% mask repaints 10%: every pixel within 10% of the way to the generated image
    blended = pixels(results["faint"]["image_uri"]).astype(int)
    assert np.abs(blended - init).max() <= 0.1 * 255 + 1


def test_an_image_declaring_too_many_pixels_is_refused_from_its_header(tmp_path, monkeypatch):
    """A PNG of a few KB may declare 81 million pixels: refused before any is decoded."""
    from PIL import ImageFile

    from easel.data import limits

    huge, largest = str(tmp_path / "huge.png"), str(tmp_path / "largest.png")
    Image.new("1", (9000, 9000)).save(huge)
    Image.new("1", (8192, limits.MAX_INPUT_PIXELS // 8192)).save(largest)
    decoded = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: decoded.append(im) or load(im))
    with pytest.raises(images.ImageInputError) as error:
        images.open_image(huge, "mask_image")
    message = str(error.value)
    assert message.startswith(f"`mask_image` {huge!r} is 9000x9000 (81,000,000 pixels)")
    assert f"{limits.MAX_INPUT_PIXELS:,}" in message and decoded == []
    assert images.open_image(largest, "mask_image").size == (8192, 8192) and decoded
