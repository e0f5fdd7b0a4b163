"""Reading input images (init images, masks, DreamBooth instance and class images) and
pixel-space compositing.

Every image easel reads goes through `open_image`, which applies its EXIF orientation (a
phone photo stored sideways is read upright), and then `as_rgb` or `as_luminance`, which
give every mode and bit depth Pillow opens its intended 8-bit meaning:
- 16-bit and 32-bit integer greyscale (`I;16*`, `I`) is scaled from 0..65535 to 0..255, so
  a mid-grey 16-bit PNG is mid-grey (Pillow's own `convert` would clip it to white);
- float greyscale (`F`) is read as 0..1 when its values lie within [0, 1], else as 0..255;
- transparency (RGBA, LA, PA, a palette's transparent index) is flattened: an image onto
  white, as editors flatten for export; a mask onto black (unpainted pixels keep);
- palette, 1-bit, CMYK, YCbCr and LAB images are converted by Pillow.

The mask convention, everywhere in easel: the mask's luminance says how much of a pixel is
repainted. White (255) repaints, black (0) keeps, grey repaints in proportion. A mask whose
colour channels are flat and whose meaning lies only in its alpha channel is refused
rather than guessed at.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from easel.data import limits, storage


class ImageInputError(ValueError):
    """An input image or mask a row cannot use; the message names the column and value."""


def open_image(uri: str, column: str) -> Image.Image:
    """The image at `uri` decoded, upright (its EXIF orientation applied), in its own mode.
    `ImageInputError` naming `column` and `uri` where it is missing, unreadable, not an
    image, or declares in its header more than `limits.MAX_INPUT_PIXELS` pixels (checked
    before decoding: a small file cannot take the memory of a huge image)."""
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise ImageInputError(f"`{column}` {uri!r} does not exist") from None
    except OSError as error:
        raise ImageInputError(f"`{column}` {uri!r} cannot be read: {error}") from None
    try:
        image = Image.open(io.BytesIO(data))  # the header only
    except Image.DecompressionBombError:  # Pillow's own limit, above ours
        raise ImageInputError(_too_large(column, uri, None)) from None
    except Exception:  # noqa: BLE001 - PIL raises many kinds for a non-image
        raise ImageInputError(f"`{column}` {uri!r} is not an image easel can read") from None
    if image.width * image.height > limits.MAX_INPUT_PIXELS:
        raise ImageInputError(_too_large(column, uri, image.size))
    try:
        image.load()
        image = ImageOps.exif_transpose(image)  # stored sideways, read as displayed
    except Exception:  # noqa: BLE001 - PIL raises many kinds for a damaged image
        raise ImageInputError(f"`{column}` {uri!r} is not an image easel can read") from None
    if image.mode == "F" and not np.isfinite(np.asarray(image)).all():
        raise ImageInputError(f"`{column}` {uri!r} has non-finite (NaN or inf) pixel values")
    return image


def _too_large(column: str, uri: str, size: tuple[int, int] | None) -> str:
    declared = f"{size[0]}x{size[1]} ({size[0] * size[1]:,} pixels)" if size else "larger"
    return (
        f"`{column}` {uri!r} is {declared}, over the {limits.MAX_INPUT_PIXELS:,} pixels an "
        "input image may have: downscale it"
    )


def read_rgb(uri: str, column: str) -> Image.Image:
    """The image at `uri` upright, as 8-bit RGB with its intended colours."""
    return as_rgb(open_image(uri, column))


DEEP_GREY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # full scale 65535
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def has_alpha(image: Image.Image) -> bool:
    return image.mode in ALPHA_MODES or "transparency" in image.info


def _grey_8bit(image: Image.Image) -> Image.Image:
    """A deep integer or float greyscale image as 8-bit 'L' with its intended meaning."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        scale = 255.0 if values.size and 0.0 <= values.min() and values.max() <= 1.0 else 1.0
    else:
        scale = 255.0 / 65535.0
    return Image.fromarray(np.rint(values * scale).clip(0, 255).astype(np.uint8), "L")


def _flattened(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """An image with transparency composited onto `background`, as RGB."""
    canvas = Image.new("RGBA", image.size, (*background, 255))
    return Image.alpha_composite(canvas, image.convert("RGBA")).convert("RGB")


def as_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB with its intended colours (see the module docstring)."""
    if image.mode in DEEP_GREY_MODES or image.mode == "F":
        return _grey_8bit(image).convert("RGB")
    if has_alpha(image):
        return _flattened(image, (255, 255, 255))
    return image.convert("RGB")


def as_luminance(image: Image.Image) -> Image.Image:
    """`image` as 8-bit greyscale 'L' (a mask: transparent pixels keep, so black)."""
    if image.mode in DEEP_GREY_MODES or image.mode == "F":
        return _grey_8bit(image)
    if has_alpha(image):
        return _flattened(image, (0, 0, 0)).convert("L")
    return image.convert("RGB").convert("L") if image.mode == "LAB" else image.convert("L")


def check_size(size: tuple[int, int], column: str, uri: str, max_pixels: int) -> None:
    width, height = size
    if limits.side_error("width", width) or limits.side_error("height", height):
        raise ImageInputError(
            f"`{column}` {uri!r} is {width}x{height}; sides must be multiples of "
            f"{limits.SIDE_MULTIPLE} in {limits.MIN_SIDE}..{limits.MAX_SIDE} "
            "(set `width` and `height` to resize it)"
        )
    if width * height > max_pixels:
        raise ImageInputError(
            f"`{column}` {uri!r} is {width}x{height}, over the pixel budget of {max_pixels}"
        )


def check_mask_mode(mask: Image.Image, uri: str) -> None:
    """Refuse a mask that only means something through its alpha channel."""
    if not has_alpha(mask):
        return
    rgba = np.asarray(mask.convert("RGBA"))
    colour_flat = int(rgba[..., :3].max()) == int(rgba[..., :3].min())
    alpha_varies = int(rgba[..., 3].max()) != int(rgba[..., 3].min())
    if colour_flat and alpha_varies:
        raise ImageInputError(
            f"`mask_image` {uri!r} carries its mask only in the alpha channel; easel reads masks "
            "from luminance (white repaints, black keeps): save it as a greyscale image"
        )


def probe_edit_inputs(
    init_uri: str, mask_uri: str | None, width: int | None, height: int | None, max_pixels: int
) -> tuple[int, int]:
    """Check a row's init image (and mask); return the size the row will generate at."""
    init = open_image(init_uri, "init_image")
    if width is None or height is None:
        check_size(init.size, "init_image", init_uri, max_pixels)
        width, height = width or init.width, height or init.height
    if mask_uri:
        mask = open_image(mask_uri, "mask_image")
        if mask.size != init.size:
            raise ImageInputError(
                f"`mask_image` {mask_uri!r} is {mask.width}x{mask.height} but `init_image` is "
                f"{init.width}x{init.height}; they must be the same size"
            )
        check_mask_mode(mask, mask_uri)
    return width, height


def load_init_image(uri: str, size: tuple[int, int]) -> Image.Image:
    """The init image as 8-bit RGB, upright, at `size`."""
    image = as_rgb(open_image(uri, "init_image"))
    return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)


def load_mask(uri: str, size: tuple[int, int]) -> Image.Image:
    """The mask as greyscale 'L' (255 repaints), upright, at `size`."""
    mask = open_image(uri, "mask_image")
    check_mask_mode(mask, uri)
    mask = as_luminance(mask)
    return mask if mask.size == size else mask.resize(size, Image.Resampling.BILINEAR)


def generation_mask(mask: Image.Image) -> Image.Image:
    """The region the model repaints: every pixel the soft mask touches at all."""
    return mask.point(lambda value: 255 if value > 0 else 0)


def composite(init: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """Blend in pixel space: out = init·(1−m) + generated·m, m = mask/255.

    Where m = 0 the result equals the init image exactly; grey blends in proportion."""
    m = np.asarray(mask, dtype=np.float32)[..., None] / 255.0  # (H, W, 1)
    base = np.asarray(init.convert("RGB"), dtype=np.float32)
    new = np.asarray(generated.convert("RGB").resize(init.size, Image.Resampling.BICUBIC),
                     dtype=np.float32)  # fmt: skip
    out = np.rint(base * (1.0 - m) + new * m).clip(0, 255).astype(np.uint8)
    return Image.fromarray(out, "RGB")
