"""The contact sheet: every finished image of a sweep as thumbnails on one grid."""

from __future__ import annotations

import io
import math

from PIL import Image, ImageDraw

from easel.data import storage

THUMBNAIL = 128
MAX_IMAGES = 256


def contact_sheet(image_uris: list[str], labels: list[str], columns: int = 8) -> Image.Image:
    """A grid of thumbnails (at most MAX_IMAGES), each labelled underneath."""
    uris, labels = image_uris[:MAX_IMAGES], labels[:MAX_IMAGES]
    columns = max(1, min(columns, len(uris)))
    rows = max(1, math.ceil(len(uris) / columns))
    cell_h = THUMBNAIL + 14
    sheet = Image.new("RGB", (columns * THUMBNAIL, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (uri, label) in enumerate(zip(uris, labels, strict=False)):
        with Image.open(io.BytesIO(storage.read_bytes(uri))) as image:
            thumb = image.convert("RGB").resize((THUMBNAIL, THUMBNAIL), Image.Resampling.NEAREST)
        x, y = (i % columns) * THUMBNAIL, (i // columns) * cell_h
        sheet.paste(thumb, (x, y))
        draw.text((x + 2, y + THUMBNAIL + 1), label[:20], fill="black")
    return sheet


def write_contact_sheet(out: str, image_uris: list[str], labels: list[str]) -> str:
    uri = storage.join(out, "contact_sheet.png")
    storage.write_png_atomic(uri, contact_sheet(image_uris, labels), compress_level=1)  # fast
    return uri
