"""Kandinsky 2.0 as the hub ships it (ai-forever/Kandinsky_2.0) converted to a diffusers
folder of safetensors that easel loads as a model reference (`Kandinsky2Pipeline`).

The hub's layout, all of it pickles:
- `Kandinsky-2-0.pt` (or `Kandinsky-2-0-inpainting.pt`): the UNet and the conditioning stem
  in one state dict (`Text2ImUNet`);
- `vae.ckpt`: a Lightning checkpoint of the LDM `AutoencoderKL`, its `state_dict` also
  holding the training loss's networks (`loss.*`: discriminator, LPIPS), not converted;
- `text_encoder1/`: multilingual CLIP (XLM-RoBERTa-large + a 1024 -> 640 projection),
  `pytorch_model.bin` and its tokenizer; `text_encoder2/`: mT5-small's encoder and tokenizer.

Every key of every part is accounted for: one the converted model has no place for, or one
it needs and the file lacks, fails naming it (the original loads with `strict=False`, which
hides both). Only keys known to be unused are left out, and the report names them.
"""

from __future__ import annotations

import json
import os
import tempfile

from easel.data import storage
from easel.errors import InvalidInput
from easel.models.engine.layout import PICKLE_REFUSAL
from easel.models.kandinsky20.accounting import Report
from easel.models.kandinsky20.parts import (
    CLIP_FOLDER,
    HEAD_CHANNELS,
    T5_FOLDER,
    VAE_FILE,
    convert_clip,
    convert_t5,
    convert_unet,
    convert_vae,
    scheduler,
)

UNET_FILES = {"text2img": "Kandinsky-2-0.pt", "inpaint": "Kandinsky-2-0-inpainting.pt"}
MARKER = "easel_conversion.json"  # written last: the folder is whole, and easel's to replace


def hub_files(task: str) -> list[str]:
    """The weight files of the hub's layout a conversion for `task` reads (all pickles)."""
    return [UNET_FILES[task], VAE_FILE, f"{CLIP_FOLDER}/pytorch_model.bin",
            f"{T5_FOLDER}/pytorch_model.bin"]  # fmt: skip


def required_files(task: str) -> list[tuple[str, ...]]:
    """Every file a conversion for `task` needs; where a tuple names several, one of them."""
    return [(name,) for name in hub_files(task)] + [
        (f"{CLIP_FOLDER}/config.json",),
        (f"{CLIP_FOLDER}/tokenizer.json", f"{CLIP_FOLDER}/sentencepiece.bpe.model"),
        (f"{T5_FOLDER}/config.json",), (f"{T5_FOLDER}/spiece.model",),
    ]  # fmt: skip


def check_layout(source: str, task: str) -> None:
    """`InvalidInput` naming the files of the hub's layout `source` lacks (no byte read)."""
    fs, path = storage.filesystem(source)
    root = path.rstrip("/")
    missing = [" or ".join(names) for names in required_files(task)
               if not any(fs.exists(f"{root}/{name}") for name in names)]  # fmt: skip
    if missing:
        raise InvalidInput(
            f"`source` {source!r} has no {', '.join(missing)}: not the hub's Kandinsky_2.0 "
            "layout (Kandinsky-2-0.pt, vae.ckpt, text_encoder1/, text_encoder2/)"
        )


def local_copy(source: str, task: str, into: str) -> str:
    """`source` itself where local, else the files it needs downloaded into `into` (the
    text encoders' folders whole)."""
    fs, path = storage.filesystem(source)
    if storage.is_local(source):
        return path
    for name in (UNET_FILES[task], VAE_FILE, f"{CLIP_FOLDER}/", f"{T5_FOLDER}/"):
        fs.get(f"{path.rstrip('/')}/{name}", os.path.join(into, name),
               recursive=name.endswith("/"))  # fmt: skip
    return into


def convert(source: str, destination: str, task: str = "text2img", trust_pickle: bool = False,
            head_channels: int = HEAD_CHANNELS) -> Report:  # fmt: skip
    """Write the diffusers folder of the hub layout at `source` (a folder or fsspec URI) to
    `destination` (published whole, `storage.staged_folder`). `task`: "text2img" (its UNet
    also runs img2img) or "inpaint" (the inpainting UNet). Refuses before reading a byte
    unless `trust_pickle`: every weight file of the layout is a pickle."""
    from easel.models.kandinsky20.pipeline import Kandinsky2Pipeline

    if task not in UNET_FILES:
        raise InvalidInput(f"`task` must be one of {', '.join(UNET_FILES)} but is {task!r}")
    if head_channels < 1:
        raise InvalidInput(f"`attention_head_dim` must be 1 or more but is {head_channels}")
    check_layout(source, task)
    if not trust_pickle:
        raise InvalidInput(
            f"Kandinsky 2.0's files in {source!r} ({', '.join(hub_files(task))}) are pickles; "
            f"{PICKLE_REFUSAL}"
        )
    report = Report()
    with (
        storage.staged_folder(destination, last=MARKER) as staging,
        tempfile.TemporaryDirectory(prefix="easel-kandinsky20-") as downloads,
    ):
        folder = local_copy(source, task, downloads)
        unet, stem = convert_unet(os.path.join(folder, UNET_FILES[task]), report, head_channels)
        vae = convert_vae(os.path.join(folder, VAE_FILE), report)
        clip, clip_tokenizer = convert_clip(os.path.join(folder, CLIP_FOLDER), report)
        t5, t5_tokenizer = convert_t5(os.path.join(folder, T5_FOLDER), report)
        pipeline = Kandinsky2Pipeline(
            tokenizer=clip_tokenizer, text_encoder=clip, tokenizer_2=t5_tokenizer,
            text_encoder_2=t5, text_conditioning=stem, unet=unet, scheduler=scheduler(),
            vae=vae,
        )  # fmt: skip
        pipeline.save_pretrained(staging, safe_serialization=True)
        write_model_card(staging, source, task, report)
        with open(os.path.join(staging, MARKER), "w") as f:
            json.dump({"source": source, "task": task, "report": report.lines()}, f, indent=1)
    return report


def write_model_card(folder: str, source: str, task: str, report: Report) -> None:
    """The converted folder's README.md: where it came from and what easel checked."""
    lines = "\n".join(f"- {line}" for line in report.lines())
    text = f"""---
library_name: diffusers
pipeline_tag: {"image-to-image" if task == "inpaint" else "text-to-image"}
---
# Kandinsky 2.0 ({task}), converted by easel

Converted from `{source}` (the layout of the hub's ai-forever/Kandinsky_2.0) by
`easel convert kandinsky-2.0`. Every key of every file was accounted for:

{lines}

easel runs this folder as a model reference (`--model` or a manifest's `model`). Its tests
check the conversion and the sampling against the original code on tiny random weights;
the real Kandinsky 2.0 weights were never run by them. See easel's docs/kandinsky.md.
"""
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write(text)
