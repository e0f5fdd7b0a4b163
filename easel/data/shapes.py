"""The shapes world: one coloured shape on a plain background of another colour.

Everything `tiny-shapes` and the judge learn comes from here. An image is fully described
by a `ShapeSpec`; `render` draws it, `caption` says it in words, `labels` gives the class
indices. A fixed set of shape x colour pairs (`HELD_OUT`) never appears in training, so the
model's composition can be tested on pairs it has only seen apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from easel.data import storage

IMAGE_SIZE = 64
SUPERSAMPLE = 4  # draw at 4x and downsample: smooth edges without an anti-aliasing library

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 165, 65),
    "blue": (40, 80, 225),
    "purple": (140, 50, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOR_NAMES = tuple(COLORS)
# One held-out colour per shape, each colour used at most once: every shape and colour is
# still seen in training, only these pairings are not.
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {
        ("circle", "green"),
        ("square", "purple"),
        ("triangle", "white"),
        ("star", "blue"),
        ("heart", "orange"),
        ("cross", "yellow"),
    }
)
COLOR_JITTER = 12  # per-channel RGB jitter, so a colour name covers a small neighbourhood
MIN_RADIUS, MAX_RADIUS = 12, 22  # half the shape's extent, in pixels at 64x64

Split = Literal["train", "held_out", "all"]


@dataclass(frozen=True)
class ShapeSpec:
    shape: str
    color: str
    background: str
    radius: float
    center: tuple[float, float]
    color_offset: tuple[int, int, int] = (0, 0, 0)
    background_offset: tuple[int, int, int] = (0, 0, 0)


def in_split(shape: str, color: str, split: Split) -> bool:
    held_out = (shape, color) in HELD_OUT
    return split == "all" or (split == "held_out") == held_out


def combinations(split: Split) -> list[tuple[str, str, str]]:
    """Every (shape, colour, background) triple of `split`, in a fixed order."""
    return [
        (shape, color, background)
        for shape in SHAPES
        for color in COLOR_NAMES
        for background in COLOR_NAMES
        if background != color and in_split(shape, color, split)
    ]


def sample_specs(n: int, seed: int, split: Split = "train") -> list[ShapeSpec]:
    """`n` random specs of `split`, the same for the same seed."""
    rng = np.random.default_rng(seed)
    triples = combinations(split)
    specs = []
    for index in rng.integers(0, len(triples), size=n):
        shape, color, background = triples[index]
        specs.append(spec_for(shape, color, background, rng))
    return specs


def spec_for(shape: str, color: str, background: str, rng: np.random.Generator) -> ShapeSpec:
    """A spec of the given attributes with random size, position and colour jitter."""
    radius = float(rng.uniform(MIN_RADIUS, MAX_RADIUS))
    margin = radius + 2
    center = (
        float(rng.uniform(margin, IMAGE_SIZE - margin)),
        float(rng.uniform(margin, IMAGE_SIZE - margin)),
    )
    jitter = lambda: tuple(int(v) for v in rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3))
    return ShapeSpec(shape, color, background, radius, center, jitter(), jitter())


def caption(spec: ShapeSpec) -> str:
    return f"a {spec.color} {spec.shape} on a {spec.background} background"


def prompt_for(shape: str | None, color: str | None, background: str | None) -> str:
    """The caption with any attribute left out (None): 'a star on a blue background'."""
    words = ["a"] + [w for w in (color, shape or "shape") if w]
    if background:
        words += ["on", "a", background, "background"]
    return " ".join(words)


def labels(spec: ShapeSpec) -> tuple[int, int, int]:
    """(shape, colour, background) class indices."""
    return (
        SHAPES.index(spec.shape),
        COLOR_NAMES.index(spec.color),
        COLOR_NAMES.index(spec.background),
    )


def vocabulary() -> list[str]:
    """Every word a caption or partial prompt can use, plus words DreamBooth prompts need."""
    return sorted({"a", "on", "background", "shape", "photo", "of", *SHAPES, *COLOR_NAMES})


def _rgb(name: str, offset: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + o, 0, 255)) for c, o in zip(COLORS[name], offset, strict=True))


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Polygon vertices of `shape` centred at (cx, cy) with half-extent r (y grows down)."""
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [
            (cx + r * math.sin(a), cy - r * math.cos(a))
            for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)
        ]
    if shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.42
            angle = k * math.pi / 5
            points.append((cx + radius * math.sin(angle), cy - radius * math.cos(angle)))
        return points
    if shape == "heart":
        # the classic parametric heart, x in [-16, 16], y in [-17, 12]; scaled to fit r
        t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        scale = r / 16.5
        return [(cx + scale * xi, cy - scale * (yi + 2.5)) for xi, yi in zip(x, y, strict=True)]
    if shape == "cross":
        w = r * 0.36
        return [
            (cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w),
            (cx + r, cy + w), (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r),
            (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w),
        ]  # fmt: skip
    raise ValueError(f"`shape` must be one of {SHAPES} but is {shape!r}")


def render(spec: ShapeSpec) -> Image.Image:
    """The 64x64 RGB image of `spec`."""
    size = IMAGE_SIZE * SUPERSAMPLE
    image = Image.new("RGB", (size, size), _rgb(spec.background, spec.background_offset))
    draw = ImageDraw.Draw(image)
    cx, cy, r = (
        spec.center[0] * SUPERSAMPLE,
        spec.center[1] * SUPERSAMPLE,
        spec.radius * SUPERSAMPLE,
    )
    fill = _rgb(spec.color, spec.color_offset)
    if spec.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_outline(spec.shape, cx, cy, r), fill=fill)
    return image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def render_array(specs: list[ShapeSpec]) -> np.ndarray:
    """(N, 64, 64, 3) uint8 images of `specs`."""
    return np.stack([np.asarray(render(spec)) for spec in specs])


def label_array(specs: list[ShapeSpec]) -> np.ndarray:
    """(N, 3) int64 class indices of `specs`: shape, colour, background."""
    return np.array([labels(spec) for spec in specs], dtype=np.int64)


def write_shape_subject(
    folder: str, count: int = 5, shape: str = "star", color: str = "blue", seed: int = 0,
    caption: str | None = None, background: str | None = None,
) -> str:  # fmt: skip
    """`count` images of one subject from the shapes world (a `color` `shape` on varied
    backgrounds, or all on `background`; the same jittered colour each time), as instance
    data; returns `folder`. With `caption` (a template such as "a sks star on a {background}
    background"), each image gets its caption file (`NN.txt`) naming its background."""
    rng = np.random.default_rng(seed)
    backgrounds = [c for c in COLOR_NAMES if c != color] if background is None else [background]
    subject = spec_for(shape, color, backgrounds[0], rng)
    for i in range(count):
        background = backgrounds[int(rng.integers(len(backgrounds)))]
        pose = spec_for(shape, color, background, rng)
        spec = replace(pose, color_offset=subject.color_offset)  # one subject: one exact colour
        storage.write_png_atomic(storage.join(folder, f"{i:02d}.png"), render(spec))
        if caption is not None:
            text = caption.format(background=background)
            storage.write_text_atomic(storage.join(folder, f"{i:02d}.txt"), text)
    return folder
