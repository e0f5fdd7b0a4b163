"""The sample manifest `easel quickstart` sweeps: what a data team would hand over."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFilter

from easel.data import storage
from easel.data.manifest import write_manifest

SAMPLE_ROWS = [
    {"id": "red-circle", "prompt": "a red circle on a blue background", "seed": 1, "num_images": 2},
    # a colour as the negative of a prompt that names another colour drives tiny-shapes'
    # shape toward black (green star, negative "red": 0 of 8 judged green); a shape does not
    {"id": "green-star", "prompt": "a green star on a white background", "seed": 2,
     "negative_prompt": "circle", "scheduler": "euler"},
    {"id": "yellow-square-g3", "prompt": "a yellow square on a black background", "seed": 3,
     "guidance_scale": 3.0},
    {"id": "yellow-square-g7", "prompt": "a yellow square on a black background", "seed": 3,
     "guidance_scale": 7.5},
    {"id": "white-heart", "prompt": "a white heart on a blue background", "seed": 4,
     "negative_prompt": "green", "scheduler": "dpmpp_2m", "num_images": 2},
    {"id": "purple-triangle", "prompt": "a purple triangle on a orange background", "seed": 5},
]  # fmt: skip


EDIT_ROWS = [
    {"id": "edit-img2img", "prompt": "a red star on a blue background", "seed": 6,
     "init_image": "scene.png", "strength": 0.6},
    {"id": "edit-inpaint", "prompt": "a purple heart on a black background", "seed": 7,
     "init_image": "scene.png", "mask_image": "centre-mask.png", "strength": 1.0},
    {"id": "edit-inpaint-soft", "prompt": "a red square on a black background", "seed": 7,
     "init_image": "scene.png", "mask_image": "centre-mask-soft.png", "strength": 1.0},
]  # fmt: skip


KANDINSKY_ROWS = [  # the same world through Kandinsky 2.2's prior and decoder
    {"id": "k22-green-cross", "prompt": "a green cross on a yellow background", "seed": 10,
     "num_images": 2, "model": "tiny-shapes-k22", "guidance_scale": 4.0},
    {"id": "k22-img2img", "prompt": "a red star on a blue background", "seed": 11,
     "init_image": "scene.png", "strength": 0.6, "model": "tiny-shapes-k22",
     "guidance_scale": 4.0},
    {"id": "k22-fusion", "prompt": "a yellow square on a green background", "seed": 12,
     "task": "fusion", "init_image": "scene.png", "strength": 0.5,
     "model": "tiny-shapes-k22", "guidance_scale": 4.0},
    {"id": "k22-russian", "prompt": "желтый квадрат на черном фоне", "seed": 13,
     "model": "tiny-shapes-k22", "guidance_scale": 4.0},  # multilingual prompts
    {"id": "k22-german", "prompt": "ein gelbes Herz auf blauem Hintergrund", "seed": 14,
     "model": "tiny-shapes-k22", "guidance_scale": 4.0},
    {"id": "k22-fusion-many", "seed": 15, "model": "tiny-shapes-k22", "guidance_scale": 4.0,
     "fusion_inputs": [  # weights as written; the prior gets them divided by their sum
         {"text": None, "image": "scene.png", "weight": 2.0},
         {"text": "a red star on a blue background", "image": None, "weight": 1.0},
         {"text": "ein gelbes Herz auf blauem Hintergrund", "image": None, "weight": 1.0}]},
    {"id": "k22-inpaint", "prompt": "a red square on a black background", "seed": 16,
     "init_image": "scene.png", "mask_image": "centre-mask.png",
     "model": "tiny-shapes-k22-inpaint", "guidance_scale": 4.0},  # its inpainting decoder
]  # fmt: skip


# What the judge (easel.models.shapes.judge) must read in every image of each row: (shape,
# colour, background), None where the row does not decide it. Each prompt was picked among
# candidates for being drawn right by its model at the row's seeds (bench/HISTORY.md, "The
# quickstart's contact sheet"); tests/e2e/test_quickstart.py checks every row.
JUDGED_AS: dict[str, tuple[str | None, str | None, str | None]] = {
    "red-circle": ("circle", "red", "blue"),
    "green-star": ("star", "green", "white"),
    "yellow-square-g3": ("square", "yellow", "black"),
    "yellow-square-g7": ("square", "yellow", "black"),
    "white-heart": ("heart", "white", "blue"),
    "purple-triangle": ("triangle", "purple", "orange"),
    "edit-img2img": ("star", "red", "blue"),  # the white circle redrawn as the prompt
    "edit-inpaint": ("heart", "purple", "black"),  # the masked circle replaced, shape too
    "edit-inpaint-soft": ("square", "red", "black"),
    "k22-green-cross": ("cross", "green", "yellow"),
    "k22-img2img": ("star", "red", "blue"),
    "k22-fusion": ("square", "white", None),  # the prompt's shape, the image's colour
    "k22-fusion-many": (None, "white", None),  # the image (half the weight): its colour
    "k22-inpaint": ("square", "red", "black"),  # the masked circle replaced, shape too
    "k22-russian": ("square", "yellow", "black"),
    "k22-german": ("heart", "yellow", "blue"),
    "subject-white": ("star", "blue", "white"),  # the DreamBooth subject, a blue star
    "subject-orange": ("star", "blue", "orange"),
}


def subject_rows(model: str, identifier: str) -> list[dict]:
    """Rows that place the fine-tuned subject in new prompts, on the fine-tuned model."""
    return [
        {"id": "subject-white", "prompt": f"a {identifier} star on a white background",
         "seed": 8, "num_images": 4, "model": model},
        {"id": "subject-orange", "prompt": f"a {identifier} star on a orange background",
         "seed": 9, "num_images": 4, "model": model},
    ]  # fmt: skip


def sample_inputs(size: int = 64) -> dict[str, Image.Image]:
    """A scene (a white circle on black) and hard and soft masks over its centre."""
    scene = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(scene).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), "white")
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle((size // 5, size // 5, 4 * size // 5, 4 * size // 5), 255)
    soft = mask.filter(ImageFilter.GaussianBlur(size / 16))
    return {"scene.png": scene, "centre-mask.png": mask, "centre-mask-soft.png": soft}


def write_sample_manifest(
    uri: str, rows: list[dict] = SAMPLE_ROWS + EDIT_ROWS + KANDINSKY_ROWS
) -> str:
    """The manifest and, beside it, the images its edit rows refer to."""
    folder = uri.rsplit("/", 1)[0]
    for name, image in sample_inputs().items():
        storage.write_png_atomic(storage.join(folder, name), image)
    return write_manifest(uri, rows)
