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
from dataclasses import dataclass, field

import torch

from easel.data import storage
from easel.errors import InvalidInput, ModelReferenceError
from easel.models.engine.layout import PICKLE_REFUSAL
from easel.models.kandinsky20 import unet_keys

UNET_FILES = {"text2img": "Kandinsky-2-0.pt", "inpaint": "Kandinsky-2-0-inpainting.pt"}
VAE_FILE = "vae.ckpt"
CLIP_FOLDER, T5_FOLDER = "text_encoder1", "text_encoder2"
STEM = ("to_model_dim.", "to_model_dim2.", "proj.", "proj2.", "ln_model1.", "ln_model2.",
        "ln_model3.")  # fmt: skip
HEAD_CHANNELS = 64  # the original's `num_head_channels`
VAE_SCALE = 0.0512  # the original's `image_enc_params.scale`
VAE_TRAINING_KEYS = "loss."  # the autoencoder's training loss, unused at inference
UNUSED_CLIP_KEYS = ("transformer.pooler.", "transformer.embeddings.position_ids")
UNUSED_T5_KEYS = ("decoder.", "lm_head.")  # a whole mT5's other half


@dataclass
class Report:
    """What a conversion read: tensors per part, and keys left out (unused)."""

    tensors: dict[str, int] = field(default_factory=dict)
    left_out: dict[str, list[str]] = field(default_factory=dict)
    absent: dict[str, list[str]] = field(default_factory=dict)  # unused, initialised

    def lines(self) -> list[str]:
        lines = [f"{part}: {count} tensors" for part, count in self.tensors.items()]
        for part, keys in self.left_out.items():
            shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            lines.append(f"{part}: left out {len(keys)} unused keys ({shown})")
        for part, keys in self.absent.items():
            lines.append(f"{part}: lacks {len(keys)} unused keys ({keys[0]}...), initialised")
        return lines


def check_keys(part: str, used: set, present: set, unused: tuple[str, ...], report: Report):
    """Fail naming the keys of `part` that are neither used nor known to be unused."""
    left = sorted(present - used)
    unexpected = [key for key in left if not key.startswith(unused)]
    if unexpected:
        raise ModelReferenceError(
            f"{part}: {len(unexpected)} unexpected keys, e.g. {', '.join(unexpected[:3])}: not "
            "Kandinsky 2.0's layout"
        )
    if left:
        report.left_out[part] = left


def load_pickle(path: str, full: bool = False) -> dict:
    """A torch pickle; `full` for one holding more than tensors (a Lightning checkpoint)."""
    return torch.load(path, map_location="cpu", weights_only=not full)


def convert_unet(path: str, report: Report, head_channels: int = HEAD_CHANNELS):
    """(UNet2DConditionModel, Kandinsky2TextConditioning) from the original's state dict."""
    from diffusers import UNet2DConditionModel

    from easel.models.kandinsky20.conditioning import Kandinsky2TextConditioning

    part = os.path.basename(path)
    weights = load_pickle(path)
    try:
        architecture = unet_keys.Architecture.from_weights(weights)
        odd = [c for c, a in zip(architecture.channels, architecture.attention, strict=True)
               if a and c % head_channels]  # fmt: skip
        if odd:
            raise ModelReferenceError(
                f"{part}: attention over {odd[0]} channels cannot have heads of "
                f"`attention_head_dim` {head_channels} channels (Kandinsky 2.0's is 64)"
            )
        unet = UNet2DConditionModel(**architecture.diffusers_config(head_channels))
        converted, used = unet_keys.to_diffusers(
            weights, unet.state_dict(), architecture, head_channels
        )
    except (KeyError, StopIteration) as error:
        raise ModelReferenceError(f"{part}: no key {error}: not Kandinsky 2.0's UNet") from None
    unet.load_state_dict(converted, strict=True)
    stem_weights = {k: v for k, v in weights.items() if k.startswith(STEM)}
    t5_width = weights["to_model_dim2.weight"].shape[1]
    stem = Kandinsky2TextConditioning(
        clip_width=weights["to_model_dim.weight"].shape[1],
        clip_pooled_width=weights["proj.weight"].shape[1], t5_width=t5_width,
        model_width=architecture.model_width,
        time_embed_width=weights["time_embed.0.weight"].shape[0],
    )  # fmt: skip
    load_strict(stem, stem_weights, part)
    check_keys(part, used | set(stem_weights), set(weights), (), report)
    report.tensors[part] = len(weights)
    return unet, stem


def load_strict(module, weights: dict, part: str) -> None:
    """`load_state_dict(strict=True)`, its failure as one line naming the keys."""
    try:
        result = module.load_state_dict(weights, strict=False, assign=True)
    except RuntimeError as error:  # a tensor of another shape
        detail = str(error).splitlines()[-1].strip()
        raise ModelReferenceError(f"{part}: {detail}: not Kandinsky 2.0's layout") from None
    problems = [f"missing {k}" for k in result.missing_keys]
    problems += [f"unexpected {k}" for k in result.unexpected_keys]
    if problems:
        raise ModelReferenceError(f"{part}: {', '.join(problems[:4])}: not Kandinsky 2.0's layout")


def convert_vae(path: str, report: Report):
    """The LDM autoencoder of the Lightning checkpoint at `path` as diffusers' AutoencoderKL."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    checkpoint = load_pickle(path, full=True)
    weights = checkpoint.get("state_dict", checkpoint)
    vae_weights = {k: v for k, v in weights.items() if not k.startswith(VAE_TRAINING_KEYS)}
    vae = AutoencoderKL(**vae_config(vae_weights))
    converted = convert_ldm_vae_checkpoint(vae_weights, vae.config)
    if len(converted) != len(vae_weights):
        raise ModelReferenceError(
            f"{os.path.basename(path)}: {len(vae_weights)} autoencoder tensors but "
            f"{len(converted)} have a place in an LDM AutoencoderKL: not Kandinsky 2.0's VAE"
        )
    load_strict(vae, converted, os.path.basename(path))
    check_keys(VAE_FILE, set(vae_weights), set(weights), (VAE_TRAINING_KEYS,), report)
    report.tensors[VAE_FILE] = len(vae_weights)
    return vae


def vae_config(weights: dict) -> dict:
    """diffusers' `AutoencoderKL` config for the LDM autoencoder `weights` (its keys
    without prefix): widths and depth read from the tensors, the original's scale."""
    levels = sorted({int(k.split(".")[2]) for k in weights if k.startswith("encoder.down.")})
    return {
        "in_channels": weights["encoder.conv_in.weight"].shape[1],
        "out_channels": weights["decoder.conv_out.weight"].shape[0],
        "latent_channels": weights["post_quant_conv.weight"].shape[0],
        "block_out_channels": [weights[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]
                               for i in levels],
        "layers_per_block": len({k.split(".")[4] for k in weights
                                 if k.startswith("encoder.down.0.block.")}),
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "norm_num_groups": min(32, weights["encoder.conv_in.weight"].shape[0]),
        "sample_size": 512, "scaling_factor": VAE_SCALE,
    }  # fmt: skip


def convert_clip(folder: str, report: Report):
    """Multilingual CLIP (diffusers' `MultilingualCLIP`) and its tokenizer."""
    from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig, MultilingualCLIP
    from transformers import AutoTokenizer

    weights = load_pickle(os.path.join(folder, "pytorch_model.bin"))
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    for name in ("model_type", "architectures", "transformers_version", "_name_or_path"):
        config.pop(name, None)
    projection = weights["LinearTransformation.weight"]
    config.update(transformerDimSize=projection.shape[1], imageDimSize=projection.shape[0])
    encoder = MultilingualCLIP(MCLIPConfig(**config))
    expected = encoder.state_dict()
    used = {k for k in weights if k in expected}
    unused_present = {k: v for k, v in expected.items() if k.startswith(UNUSED_CLIP_KEYS)}
    load_strict(encoder, {**unused_present, **{k: weights[k] for k in used}}, CLIP_FOLDER)
    absent = sorted(set(unused_present) - used)
    if absent:
        report.absent[f"{CLIP_FOLDER}/pytorch_model.bin"] = absent
    check_keys(f"{CLIP_FOLDER}/pytorch_model.bin", used, set(weights), UNUSED_CLIP_KEYS, report)
    report.tensors[CLIP_FOLDER] = len(used)
    return encoder, AutoTokenizer.from_pretrained(folder)


def convert_t5(folder: str, report: Report):
    """mT5's encoder (`MT5EncoderModel`) and its tokenizer."""
    from transformers import AutoTokenizer, MT5EncoderModel

    encoder, info = MT5EncoderModel.from_pretrained(
        folder, use_safetensors=False, output_loading_info=True
    )
    if info["missing_keys"] or info.get("mismatched_keys"):
        keys = [*info["missing_keys"], *[k[0] for k in info.get("mismatched_keys", [])]]
        raise ModelReferenceError(f"{T5_FOLDER}: missing or mismatched {', '.join(keys[:4])}")
    unexpected = set(info["unexpected_keys"])
    check_keys(f"{T5_FOLDER}/pytorch_model.bin", set(), unexpected, UNUSED_T5_KEYS, report)
    report.tensors[T5_FOLDER] = len(encoder.state_dict())
    return encoder, AutoTokenizer.from_pretrained(folder)


def scheduler():
    """The original's diffusion: 1000 linear betas 1e-4 -> 0.02, epsilon prediction; DDIM
    from `alphas_cumprod[0]` at the end, as its sampler does."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
        prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
        timestep_spacing="leading",
    )  # fmt: skip


def hub_files(task: str) -> list[str]:
    """The files of the hub's layout a conversion for `task` reads (text encoder folders
    whole)."""
    return [UNET_FILES[task], VAE_FILE, f"{CLIP_FOLDER}/", f"{T5_FOLDER}/"]


def local_copy(source: str, task: str, into: str) -> str:
    """`source` itself where local, else the files it needs downloaded into `into`."""
    fs, path = storage.filesystem(source)
    if storage.is_local(source):
        missing = [name for name in hub_files(task)
                   if not os.path.exists(os.path.join(path, name))]  # fmt: skip
        if missing:
            raise InvalidInput(f"`source` {source!r} has no {', '.join(missing)}: not the "
                               "hub's Kandinsky_2.0 layout")  # fmt: skip
        return path
    for name in hub_files(task):
        remote = f"{path.rstrip('/')}/{name}"
        if not fs.exists(remote):
            raise InvalidInput(f"`source` {source!r} has no {name}")
        fs.get(remote, os.path.join(into, name), recursive=name.endswith("/"))
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
    if not trust_pickle:
        raise InvalidInput(
            f"Kandinsky 2.0's files in {source!r} ({', '.join(hub_files(task))}) are pickles; "
            f"{PICKLE_REFUSAL}"
        )
    report = Report()
    with (
        storage.staged_folder(destination, last="model_index.json") as staging,
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
