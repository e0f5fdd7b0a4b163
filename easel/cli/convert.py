"""`easel convert FORMAT SOURCE DESTINATION`: a model as its authors ship it, written as a
diffusers folder of safetensors that easel loads as a model reference."""

from __future__ import annotations

import argparse

from easel.data import storage


def run_convert_command(args: argparse.Namespace) -> int:
    from easel.models.kandinsky20.conversion import convert

    storage.check_output_folder(args.destination, "destination")
    task = "inpaint" if args.inpainting else "text2img"
    report = convert(
        args.source,
        args.destination,
        task,
        trust_pickle=args.trust_pickle,
        head_channels=args.attention_head_dim,
    )
    for line in report.lines():
        print(f"  {line}")
    print(f"converted:  {args.destination}  (Kandinsky 2.0, {task})")
    return 0
