"""The configurations easel ships for the standard Stable Diffusion single-file checkpoints,
so that a `.safetensors` from civitai or A1111 converts offline with no `config` at all.

Each lies in `easel/configs/single_file/NAME/`, named after the hub model whose component
configs it reproduces (the architecture's parameter counts are checked against the
published ones by the tests): `stable-diffusion-v1-5`, `stable-diffusion-inpainting`,
`stable-diffusion-2-1` (768 px, v-prediction), `stable-diffusion-2-1-base` (512 px,
epsilon) and `stable-diffusion-2-inpainting`. None holds weights or a safety checker (a
single file has none). The CLIP tokenizer's `vocab.json` and `merges.txt` are built from
CLIP's byte-pair merges (`clip-bpe-simple-vocab-16e6.txt.gz`, OpenAI CLIP, MIT licence),
the same 49,408 tokens for SD 1.x and SD 2.x (which pads with `!`), written once into the
model cache with the shipped JSON files.

Which one a checkpoint needs is inferred from its weights by diffusers
(`infer_diffusers_model_type`). SD 2.x 768-v and 512-base have the same weights' shapes:
their LDM `.yaml` beside the file says which (`parameterization: v`), else `config` names
one; the weights alone are refused in one line naming `config`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

from easel.data import storage
from easel.errors import ModelReferenceError

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "configs" / "single_file"
BPE_MERGES = SHIPPED_DIR / "clip-bpe-simple-vocab-16e6.txt.gz"
NAMES = tuple(sorted(p.name for p in SHIPPED_DIR.iterdir() if p.is_dir()))
CLIP_MERGES = 49152 - 256 - 2  # CLIP's vocabulary: 256 bytes, 256 word ends, merges, 2 specials
# diffusers' model types (infer_diffusers_model_type) that one shipped config fits
BY_MODEL_TYPE = {
    "v1": "stable-diffusion-v1-5",
    "inpainting": "stable-diffusion-inpainting",
    "inpainting_v2": "stable-diffusion-2-inpainting",
}
SD2 = {"v": "stable-diffusion-2-1", "eps": "stable-diffusion-2-1-base"}  # by LDM parameterization


def is_shipped(name: str | None) -> bool:
    return name in NAMES


def inferred_name(path: str, spec_path: str, parameterization: str | None) -> str:
    """The shipped config for the checkpoint at `path`, from its weights (and, for SD 2.x,
    its LDM yaml's `parameterization`, None where it has no yaml); `ModelReferenceError`
    naming `config` where they do not tell."""
    model_type = model_type_of(path)
    if model_type == "v2" and parameterization in SD2:
        return SD2[parameterization]
    if model_type in BY_MODEL_TYPE:
        return BY_MODEL_TYPE[model_type]
    if model_type == "v2":
        raise ModelReferenceError(
            f"single-file checkpoint {spec_path!r} is Stable Diffusion 2.x, whose weights do "
            "not say whether it predicts v (768 px) or noise (512 px base): set `config` to "
            f"{SD2['v']!r} or {SD2['eps']!r} (or a diffusers folder), or put its LDM .yaml "
            "beside it"
        )
    raise ModelReferenceError(
        f"single-file checkpoint {spec_path!r} is a {model_type!r} checkpoint, for which "
        f"easel ships no configuration (it ships {', '.join(NAMES)}): give `config`, a "
        "local diffusers folder of the same model type"
    )


def model_type_of(path: str) -> str:
    """diffusers' model type of the single file at `path` (`v1`, `v2`, `inpainting`, ...)."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    return infer_diffusers_model_type(_LazyCheckpoint(path))


class _LazyCheckpoint:
    """A checkpoint's keys, each tensor read from the file only when asked for (the model
    type is told by a few small tensors' shapes, not gigabytes of weights)."""

    def __init__(self, path: str):
        self._file = _open(path)
        self._keys = set(self._file.keys())

    def __contains__(self, key) -> bool:
        return key in self._keys

    def __getitem__(self, key):
        if key not in self._keys:
            raise KeyError(key)
        return self._file.get_tensor(key)


def _open(path: str):
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        return safe_open(path, framework="pt")
    return _PickleCheckpoint(path)  # `.ckpt`: reached only with the trust flag


class _PickleCheckpoint:
    def __init__(self, path: str):
        import torch

        content = torch.load(path, map_location="cpu", weights_only=False)
        self._tensors = content.get("state_dict", content)

    def keys(self):
        return self._tensors.keys()

    def get_tensor(self, key):
        return self._tensors[key]


def shipped_folder(name: str, cache: Path) -> str:
    """The complete diffusers config folder `name` (configs and tokenizer, no weights),
    written once under `cache`; later calls reuse it."""
    target = cache / "configs" / f"{name}-{_shipped_digest(name)}"
    if not (target / "model_index.json").exists():
        with storage.staged_folder(str(target), replace=False) as staging:
            shutil.copytree(SHIPPED_DIR / name, staging, dirs_exist_ok=True)
            write_clip_tokenizer_files(os.path.join(staging, "tokenizer"))
    return str(target)


@functools.cache
def _shipped_digest(name: str) -> str:
    """The digest of the shipped files configuration `name` is built from (once a process:
    they are the package's own)."""
    source = SHIPPED_DIR / name
    key = hashlib.sha256(BPE_MERGES.read_bytes())
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        key.update(f"{file.relative_to(source)}\n".encode() + file.read_bytes())
    return key.hexdigest()[:16]


def write_clip_tokenizer_files(folder: str) -> None:
    """CLIP's `vocab.json` (49,408 tokens) and `merges.txt` in `folder`, from its BPE merges."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    lines = gzip.decompress(BPE_MERGES.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : CLIP_MERGES + 1]
    characters = list(bytes_to_unicode().values())
    tokens = characters + [c + "</w>" for c in characters]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({token: i for i, token in enumerate(tokens)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
