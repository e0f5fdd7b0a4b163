"""The contact sheet: every finished image of a sweep as thumbnails on one grid (and the
same grid for images in memory: DreamBooth's validation while training)."""

from __future__ import annotations

import functools
import importlib.util
import io
import math
import os

from PIL import Image, ImageDraw, ImageFont

from easel.data import limits, storage

THUMBNAIL = 128
MAX_IMAGES = 256
LABEL_CHARACTERS = 21  # what fits under a thumbnail in Pillow's default font
LINE = 12  # pixels per label line
LABEL_LINES = 7  # at most, per tile: its id, then its prompt wrapped (longer: cut with "…")
# a contact sheet embedded in a Prefect artifact (as base64: 4/3 of this) stays under the
# Prefect server's 1.5 MB limit on an event, which otherwise refuses it with a warning
EMBEDDED_BYTES = 750_000


@functools.cache
def label_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVu Sans (Latin, Greek, Cyrillic: the quickstart's Russian and German prompts) from
    matplotlib's data, which MLflow installs, found without importing matplotlib; Pillow's
    default font (Latin only) where it is missing."""
    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "mpl-data", "fonts", "ttf", "DejaVuSans.ttf")
        if os.path.exists(path):
            return ImageFont.truetype(path, 10)
    return ImageFont.load_default()


def _fit(text: str) -> str:
    """`text` cut to a label line, keeping its start and its end."""
    if len(text) <= LABEL_CHARACTERS:
        return text
    keep = LABEL_CHARACTERS - 1
    return text[: keep - keep // 2] + "…" + text[-(keep // 2) :]


def tile_label(row_id: str, image_index: int, prompt: str | None) -> str:
    """The row id and image index (its start and end kept, so two tiles never share a
    label), then on the next line the whole prompt (`grid` wraps it)."""
    return f"{_fit(f'{row_id}/{image_index}')}\n{prompt or ''}"


def wrap(text: str, width: int = THUMBNAIL - 4, lines: int = LABEL_LINES - 1) -> list[str]:
    """`text` in lines at most `width` pixels wide in the label font, broken between words
    (inside a word wider than a line), at most `lines` of them: the last ends with "…"
    when the text goes on."""
    font, out, current = label_font(), [], ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        while font.getlength(candidate) > width:
            if current:  # the word starts the next line
                out.append(current)
                current, candidate = "", word
                continue
            cut = max(1, next(n for n in range(len(candidate), 0, -1)
                              if font.getlength(candidate[:n]) <= width or n == 1))  # fmt: skip
            out.append(candidate[:cut])
            candidate = candidate[cut:]
        current = candidate
    if current:
        out.append(current)
    if len(out) > lines:
        out = out[:lines]
        out[-1] = out[-1][:-1].rstrip() + "…"
    return out


def contact_sheet(image_uris: list[str], labels: list[str], columns: int = 8) -> Image.Image:
    """A grid of thumbnails of the images at `image_uris` (at most MAX_IMAGES)."""
    thumbs, labels, shown = [], list(labels), image_uris[:MAX_IMAGES]
    fetched = storage.read_many(shown)  # at once: one request's latency, not 256
    for i, uri in enumerate(shown):
        image = _read(fetched[uri])
        if image is None:  # changed since it was written: a grey tile says so
            image = Image.new("RGB", (THUMBNAIL, THUMBNAIL), "grey")
            labels[i] = f"unreadable: {labels[i]}"
        thumbs.append(image)
    return grid(thumbs, labels, columns)


def _read(data: bytes | None) -> Image.Image | None:
    """An image file's bytes as an RGB tile (as `grid` makes it: the sheet holds tiles, not
    256 whole images); None where there are none, they cannot be read, or their header
    declares more than `limits.MAX_INPUT_PIXELS` (never decoded)."""
    if data is None:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > limits.MAX_INPUT_PIXELS:
                return None
            return _tile(image)
    except (OSError, SyntaxError, Image.DecompressionBombError):
        return None


def grid(images: list[Image.Image], labels: list[str], columns: int = 8) -> Image.Image:
    """`images` as THUMBNAIL-pixel tiles, `columns` to a row, each with its label
    underneath: its first line as it is, the rest wrapped (up to LABEL_LINES in all)."""
    images, labels = images[:MAX_IMAGES], labels[:MAX_IMAGES]
    columns = max(1, min(columns, len(images)))
    rows = max(1, math.ceil(len(images) / columns))
    lines = [_label_lines(label) for label in labels]
    cell_h = THUMBNAIL + max([2, *map(len, lines)]) * LINE + 4
    sheet = Image.new("RGB", (columns * THUMBNAIL, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, label) in enumerate(zip(images, lines, strict=False)):
        thumb = _tile(image)
        x, y = (i % columns) * THUMBNAIL, (i // columns) * cell_h
        sheet.paste(thumb, (x, y))
        for line, text in enumerate(label):
            draw.text((x + 2, y + THUMBNAIL + 1 + line * LINE), text, fill="black",
                      font=label_font())  # fmt: skip
    return sheet


def _tile(image: Image.Image) -> Image.Image:
    return image.convert("RGB").resize((THUMBNAIL, THUMBNAIL), Image.Resampling.NEAREST)


def _label_lines(label: str) -> list[str]:
    first, _, rest = label.partition("\n")
    return [first, *wrap(rest)]


def write_contact_sheet(out: str, image_uris: list[str], labels: list[str]) -> str:
    uri = storage.join(out, "contact_sheet.png")
    storage.write_png_atomic(uri, contact_sheet(image_uris, labels), compress_level=1)  # fast
    return uri


def embeddable_png(png: bytes, max_bytes: int = EMBEDDED_BYTES) -> tuple[bytes, int]:
    """The PNG `png`, halved in size until it has at most `max_bytes` bytes; returns it and
    how many times smaller its sides are (1: unchanged)."""
    factor = 1
    while len(png) > max_bytes:
        factor *= 2
        with Image.open(io.BytesIO(png)) as image:
            size = (max(1, image.width // 2), max(1, image.height // 2))
            smaller = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        smaller.save(buffer, format="PNG", optimize=True)
        png = buffer.getvalue()
    return png, factor
