"""What a diffusers folder's pipeline loads: its components (`model_index.json`), each
component's weight files (a variant such as `.fp16`, safetensors before pickle), and so
the files that make the model, which its digest covers and a remote copy fetches.

A refusal here (a component without its config or weights, a `variant` no network has or
only another variant's files, several variants and none chosen) is one `ModelReferenceError`
naming the folder and the fix, raised while planning, before any weight is read.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from easel.errors import ModelReferenceError

# diffusion_pytorch_model[.fp16][-00001-of-00002].safetensors, model.bin, ...
WEIGHT_FILE = re.compile(
    r"^(?P<stem>[^.]+?)(?:\.(?P<variant>[\w]+))?(?:-\d+-of-\d+)?\.(?P<format>safetensors|bin)$"
)
MODEL_CONFIG = "config.json"  # a component folder with one is a network: it needs weights
# besides weights, the files a component's loader reads (configs, tokenizer vocabularies)
LOADED_SUFFIXES = (".json", ".txt", ".model")
PICKLE_REFUSAL = (
    "pickle checkpoints are refused unless you pass the explicit trust flag (--trust-pickle)"
)
PLAIN = "plain files"  # weights without a variant, as messages name them


@dataclass(frozen=True)
class WeightLayout:
    variant: str | None  # the weight files' variant the pipeline loads (None: plain files)
    pickle_components: tuple[str, ...]  # components whose weights exist only as pickle
    files: tuple[str, ...]  # paths (relative to the folder) the pipeline loads


def components(index: dict) -> list[str]:
    """The component folders `model_index.json` (parsed) names (`null` ones left out)."""
    return sorted(
        name for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and value and value[0]
    )  # fmt: skip


def weight_files(names: list[str]) -> dict[str | None, dict[str, list[str]]]:
    """variant -> format -> file names, of the weight files among `names`."""
    found: dict[str | None, dict[str, list[str]]] = {}
    for name in names:
        if match := WEIGHT_FILE.match(name):
            formats = found.setdefault(match["variant"], {})
            formats.setdefault(match["format"], []).append(name)
    return found


def weight_layout(path: str, variant: str | None = None, ref: str | None = None) -> WeightLayout:
    """The layout of the diffusers folder at `path` (named `ref` in messages) loaded with
    `variant` (None: plain files, else the one variant all of them have)."""
    ref = ref or path
    with open(os.path.join(path, "model_index.json")) as f:
        names = components(json.load(f))
    listing = {}
    for name in names:
        folder = os.path.join(path, name)
        if not os.path.isdir(folder):
            raise ModelReferenceError(
                f"model {ref!r} names component `{name}` in model_index.json but has no "
                f"{name}/ folder"
            )
        listing[name] = sorted(os.listdir(folder))
        if not any(file.endswith(".json") for file in listing[name]):  # its loader's config
            raise ModelReferenceError(
                f"model {ref!r}: component {name}/ holds no config (expected a .json file "
                f"such as {name}/{MODEL_CONFIG} or {name}/scheduler_config.json)"
            )
    weights = {name: weight_files(files) for name, files in listing.items()}
    networks = [name for name in names if MODEL_CONFIG in listing[name]]
    for name in networks:
        if not weights[name]:
            raise ModelReferenceError(
                f"model {ref!r}: component {name}/ holds no weights (expected "
                f"{name}/diffusion_pytorch_model.safetensors, model.safetensors or a variant "
                "such as diffusion_pytorch_model.fp16.safetensors)"
            )
    chosen = _variant(ref, {name: weights[name] for name in networks}, variant)
    files, pickled = ["model_index.json"], []
    for name in names:
        per_variant = weights[name]
        own = per_variant.get(chosen) or per_variant.get(None) or {}
        loaded = own.get("safetensors") or own.get("bin") or []
        if name in networks and "safetensors" not in own:
            pickled.append(name)
        kept = [f for f in listing[name] if f.endswith(LOADED_SUFFIXES) or f in loaded]
        files += [f"{name}/{f}" for f in kept if os.path.isfile(os.path.join(path, name, f))]
    return WeightLayout(chosen, tuple(pickled), tuple(files))


def config_files(path: str) -> tuple[str, ...]:
    """The files of the diffusers folder at `path` that configure its pipeline (model index,
    component configs, tokenizer vocabularies), weights left out."""
    with open(os.path.join(path, "model_index.json")) as f:
        names = components(json.load(f))
    files = ["model_index.json"]
    for name in names:
        folder = os.path.join(path, name)
        if os.path.isdir(folder):
            files += [
                f"{name}/{f}" for f in sorted(os.listdir(folder)) if f.endswith(LOADED_SUFFIXES)
            ]
    return tuple(files)


def _variant(ref: str, weights: dict[str, dict], variant: str | None) -> str | None:
    """The variant every network loads: `variant` where given (some network has its files,
    and each has them or plain ones), else None where every network has plain files, else
    the one variant that all the networks lacking plain files share."""
    if variant is not None:
        lacking = [name for name, found in weights.items() if not ({variant, None} & set(found))]
        if not any(variant in found for found in weights.values()):
            lacking = list(weights)  # plain files alone are not the variant asked for
        if lacking:
            has = sorted({v or PLAIN for name in lacking for v in weights[name]})
            raise ModelReferenceError(
                f"model {ref!r} has no `variant` {variant!r} weights in "
                f"{', '.join(f'{n}/' for n in lacking)} (it has: {', '.join(has)})"
            )
        return variant
    only_variants = {name: set(found) for name, found in weights.items() if None not in found}
    if not only_variants:
        return None
    shared = set.intersection(*only_variants.values())
    if len(shared) == 1:
        return shared.pop()
    present = sorted({v for found in only_variants.values() for v in found})
    raise ModelReferenceError(
        f"model {ref!r} has only variant weights ({', '.join(present)}) in "
        f"{', '.join(f'{n}/' for n in only_variants)}: set `variant` to one of them"
    )


def check_trust(pickle_components: tuple[str, ...], ref: str, trust_pickle: bool) -> None:
    """Refuse pickle-only weights (of `pickle_components`) unless trusted, naming them."""
    if pickle_components and not trust_pickle:
        folders = ", ".join(f"{name}/" for name in pickle_components)
        raise ModelReferenceError(
            f"model {ref!r} has no safetensors weights in {folders} (only pickle .bin); "
            f"{PICKLE_REFUSAL}"
        )
