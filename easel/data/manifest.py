"""Sweep manifests (SPEC §5): reading Parquet through fsspec and validating every row.

Two levels of error, as SPEC §3 asks:
- the manifest as a whole (unreadable, not Parquet, no `prompt` column, duplicate ids)
  raises `InvalidInput`: the CLI exits 2 and nothing is generated;
- a bad row becomes a `RowFailure` naming the column and the value; the others still run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import posixpath
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from easel.data import columns, fusion, limits, loras, storage
from easel.data.fusion import FusionInput, FusionInputError
from easel.data.images import ImageInputError, open_image, probe_edit_inputs
from easel.data.limits import PRIOR_NUM_INFERENCE_STEPS
from easel.data.loras import LoraInputError, LoraRef
from easel.errors import InvalidInput

# manifest rows made Python values at a time while validating (the rest stay Arrow)
ROWS_AT_ONCE = 65_536
KNOWN_COLUMNS = (
    "prompt", "id", "negative_prompt", "seed", "num_images", "guidance_scale",
    "num_inference_steps", "width", "height", "scheduler", "model", "task",
    "init_image", "mask_image", "strength", "prior_guidance_scale", "prior_num_inference_steps",
    "fusion_inputs", "loras",
)  # fmt: skip


class RowError(ValueError):
    """One row breaks one rule; the message names the column and the value."""


@dataclass(frozen=True)
class SweepDefaults:
    """What a row gets for the columns it leaves empty (from the flow's config)."""

    model: str
    guidance_scale: float
    num_inference_steps: int
    max_pixels: int
    width: int | None = None  # None: the model's native size, filled in at load time
    height: int | None = None
    scheduler: str | None = None  # None: the model's own scheduler
    strength: float = limits.STRENGTH
    prior_guidance_scale: float | None = None  # None: the model's (`ModelFacts`)
    prior_num_inference_steps: int = PRIOR_NUM_INFERENCE_STEPS
    fusion_weights: limits.FusionWeights = "sum_to_one"  # how fusion weights reach the prior
    loras: tuple[tuple[str, float], ...] = ()  # (URI, scale) for rows without `loras`
    # a named model's own default adapters, for its rows without `loras`: (name, adapters)
    model_loras: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()


@dataclass(frozen=True, slots=True)  # a million of them in a large plan
class RowJob:
    """A validated manifest row: everything needed to generate its images."""

    row_index: int
    id: str
    prompt: str | None  # None only in a row with `fusion_inputs`
    negative_prompt: str | None
    seed: int
    num_images: int
    guidance_scale: float
    num_inference_steps: int
    width: int | None
    height: int | None
    scheduler: str | None
    model: str
    task: str
    init_image: str | None
    mask_image: str | None
    strength: float
    prior_guidance_scale: float | None = None  # Kandinsky rows only; None: the model's
    prior_num_inference_steps: int = PRIOR_NUM_INFERENCE_STEPS
    init_image_sha256: str | None = None  # the bytes the row's images had when validated
    mask_image_sha256: str | None = None
    fusion_inputs: tuple[FusionInput, ...] | None = None  # weights as the prior gets them
    loras: tuple[LoraRef, ...] = ()  # the adapters applied, stacked, in order
    # the sides ("width", "height") an edit row left unset: its `init_image`'s
    sides_from_init: tuple[str, ...] = ()


@dataclass(frozen=True)
class RowFailure:
    row_index: int
    id: str
    error: str


@dataclass(frozen=True)
class Manifest:
    """The raw table (kept for pass-through columns) and where it came from."""

    table: pa.Table
    uri: str
    root: str  # the folder that relative image paths resolve against
    files: list[str] = field(default_factory=list)


# --- reading -------------------------------------------------------------------------


def manifest_files(uri: str) -> tuple[list[str], str]:
    """The Parquet files named by `uri` (a file, a folder or a glob) and their root folder."""
    fs, path = storage.filesystem(uri)
    protocol = uri.split("://", 1)[0] + "://" if "://" in uri else ""
    if any(ch in path for ch in "*?["):
        files = sorted(fs.glob(path))
        root = posixpath.dirname(path.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0])
    elif fs.isdir(path):
        files = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
        root = path
    elif fs.exists(path):
        files, root = [path], posixpath.dirname(path)
    else:
        raise InvalidInput(f"manifest {uri!r} does not exist")
    if not files:
        raise InvalidInput(f"manifest {uri!r} names no Parquet file")
    return [_with_protocol(protocol, f) for f in files], _with_protocol(protocol, root)


def _with_protocol(protocol: str, path: str) -> str:
    if protocol in ("", "file://"):
        return path
    return protocol + path


def read_manifest(uri: str) -> Manifest:
    """Read and concatenate the manifest's files; raise `InvalidInput` if it is unusable.

    Read once per process while its files are unchanged (the CLI checks a manifest before
    its flow plans it: one read)."""
    files, root = manifest_files(uri)
    versions = []
    for file_uri in files:
        fs, path = storage.filesystem(file_uri)
        versions.append(storage.version_tag(fs.info(path)))
    return _read_files(uri, root, tuple(files), tuple(versions))


@functools.lru_cache(maxsize=8)
def _read_files(uri: str, root: str, files: tuple[str, ...], versions: tuple[str, ...]):
    tables = []
    for file_uri in files:
        fs, path = storage.filesystem(file_uri)
        try:
            with fs.open(path, "rb") as f:
                tables.append(pq.read_table(f))
        except (pa.ArrowInvalid, OSError) as error:
            raise InvalidInput(
                f"manifest file {file_uri!r} is not a readable Parquet file: {error}"
            ) from None
    table = _concatenated(tables, files, uri)
    if "prompt" not in table.column_names and fusion.COLUMN not in table.column_names:
        raise InvalidInput(
            f"manifest {uri!r} has no `prompt` column (columns: {', '.join(table.column_names)})"
        )
    return Manifest(table=table, uri=uri, root=root, files=list(files))


def _logical(type_: pa.DataType) -> pa.DataType:
    """The type a column's values have, whatever its physical encoding: dictionaries
    decoded, large and view strings (and binaries) as plain ones."""
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    if pa.types.is_large_string(type_) or pa.types.is_string_view(type_):
        return pa.string()
    if pa.types.is_large_binary(type_) or pa.types.is_binary_view(type_):
        return pa.binary()
    return type_


def _common_type(types: list[pa.DataType]) -> pa.DataType | None:
    """The type all of `types` (no nulls among them) read as; None if they conflict."""
    distinct = list(dict.fromkeys(types))
    if len(distinct) == 1:
        return distinct[0]
    if all(pa.types.is_integer(t) for t in distinct):
        return pa.int64()
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in distinct):
        return pa.float64()
    if all(_is_struct_list(t) for t in distinct):
        return _merged_struct_list(distinct)
    return None


def _is_struct_list(type_: pa.DataType) -> bool:
    is_list = pa.types.is_list(type_) or pa.types.is_large_list(type_)
    return is_list and pa.types.is_struct(type_.value_type)


def _merged_struct_list(types: list[pa.DataType]) -> pa.DataType | None:
    """Lists of structs (`fusion_inputs` items written with different keys or number types)
    as one list of structs holding every key; None if a key's types conflict."""
    keys: dict[str, list[pa.DataType]] = {}
    for type_ in types:
        for item_field in type_.value_type:
            keys.setdefault(item_field.name, []).append(_logical(item_field.type))
    # a key no item of a file sets has type null there: it takes the others' type
    merged = [(name, _common_type([t for t in key_types if not pa.types.is_null(t)] or [pa.null()]))
              for name, key_types in keys.items()]  # fmt: skip
    if any(common is None for _, common in merged):
        return None
    return pa.list_(pa.struct(merged))


def _concatenated(tables: list[pa.Table], files: tuple[str, ...], uri: str) -> pa.Table:
    """The files' tables as one, each column of one type: physical variants (string,
    large_string, dictionary; int32 and int64) agree, and a column that holds no value in a
    file (all null, whatever type the writer gave it, as pandas writes an all-NaN column or
    an empty partition as double) takes the others' type; a true conflict (strings in one
    file, numbers in another) is `InvalidInput` naming the column and the files. Pandas'
    schema metadata, which describes one file, is dropped."""
    names = list(dict.fromkeys(name for table in tables for name in table.column_names))
    schema = []
    for name in names:
        typed = [(file, _logical(table.schema.field(name).type))
                 for file, table in zip(files, tables, strict=True)
                 if name in table.column_names
                 and table.column(name).null_count < table.num_rows]  # fmt: skip
        if not typed:  # no value anywhere: the type its first file gives it
            first = next(table for table in tables if name in table.column_names)
            typed = [(files[0], _logical(first.schema.field(name).type))]
        common = _common_type([t for _, t in typed])
        if common is None:
            shown = "; ".join(f"{t} in {file!r}" for file, t in typed[:4])
            raise InvalidInput(f"manifest {uri!r}: column `{name}` has conflicting types: {shown}")
        schema.append(pa.field(name, common))
    schema = pa.schema(schema)
    unified = []
    for table in tables:
        arrays = [
            columns.cast(table.column(f.name), f.type)
            if f.name in table.column_names
            and table.column(f.name).null_count < table.num_rows
            else pa.nulls(table.num_rows, f.type)  # absent, or no value in this file
            for f in schema
        ]  # fmt: skip
        unified.append(pa.Table.from_arrays(arrays, schema=schema))
    return pa.concat_tables(unified)


def write_manifest(uri: str, rows: list[dict[str, Any]]) -> str:
    """Write `rows` as a manifest (columns: the union of their keys, in order), atomically."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    table = pa.Table.from_pylist([{key: row.get(key) for key in keys} for row in rows])
    storage.write_parquet_atomic(uri, table)
    return uri


# --- validation ----------------------------------------------------------------------


def derived_id(values: dict[str, Any]) -> str:
    """A stable id from the row's content, for rows that give none."""
    content = {k: v for k, v in sorted(values.items()) if k != "id" and v is not None}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()
    return f"row-{digest[:16]}"


def derived_seed(row_id: str) -> int:
    return int(hashlib.sha256(row_id.encode()).hexdigest()[:8], 16)


def uses_default(table: pa.Table, column: str) -> bool:
    """Whether some row of `table` leaves `column` unset (the flow's default applies)."""
    return table.num_rows > 0 and (
        column not in table.column_names or table.column(column).null_count > 0
    )


def check_manifest(uri: str) -> Manifest:
    """Read the manifest and check what invalidates it as a whole (files, schema, `prompt`
    column, duplicate ids), without validating its rows one by one."""
    manifest = read_manifest(uri)
    unique_row_ids(manifest.table, manifest.uri)
    return manifest


def manifest_rows(table: pa.Table) -> Iterator[dict[str, Any]]:
    """Each row of `table` as a dict, `ROWS_AT_ONCE` rows made Python values at a time."""
    for batch in table.to_batches(max_chunksize=ROWS_AT_ONCE):
        yield from batch.to_pylist()


def unique_row_ids(table: pa.Table, uri: str) -> list[str]:
    """Each row's id, given or derived; `InvalidInput` if two rows share one."""
    ids = [_row_id(values) for values in manifest_rows(table)]
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        shown = ", ".join(repr(i) for i in duplicates[:5])
        first = [index for index, i in enumerate(ids) if i == duplicates[0]]
        given = table.column("id")[first[0]].as_py() if "id" in table.column_names else None
        if given is None:  # derived from content: the rows are the same
            raise InvalidInput(
                f"manifest {uri!r}: rows {first[0]} and {first[1]} ask for the same content "
                f"(without an `id`, a row's id is derived from it: {duplicates[0]!r}); give "
                "them ids, or one row `num_images`"
            )
        raise InvalidInput(f"manifest {uri!r}: column `id` has duplicate values: {shown}")
    return ids


def validate_manifest(
    manifest: Manifest, defaults: SweepDefaults, input_roots: list[str] = ()
) -> tuple[list[RowJob], list[RowFailure]]:
    """Validate every row. Duplicate ids invalidate the manifest as a whole."""
    ids = unique_row_ids(manifest.table, manifest.uri)
    roots = [manifest.root, *input_roots]
    jobs, failures = [], []
    rows = manifest_rows(manifest.table)
    for index, (values, row_id) in enumerate(zip(rows, ids, strict=True)):
        try:
            jobs.append(validate_row(index, row_id, values, defaults, manifest.root, roots))
        except RowError as error:
            failures.append(RowFailure(row_index=index, id=row_id, error=str(error)))
        except Exception as error:  # noqa: BLE001 - a rule easel lacks: the row fails alone
            message = f"this row could not be validated: {type(error).__name__}: {error}"
            failures.append(RowFailure(row_index=index, id=row_id, error=message))
    return jobs, failures


def _row_id(values: dict[str, Any]) -> str:
    value = values.get("id")
    return derived_id(values) if value is None else str(value)


def validate_row(
    index: int, row_id: str, values: dict[str, Any], defaults: SweepDefaults, base: str,
    roots: list[str],
) -> RowJob:  # fmt: skip
    """Check one row against every SPEC §5 rule; raise `RowError` at the first broken one."""
    if not limits.ID_PATTERN.fullmatch(row_id):
        raise RowError(f"`id` must match {limits.ID_RULE} but is {row_id!r}")
    if row_id in (".", ".."):
        raise RowError(f"`id` must not be {row_id!r}")
    fusion_inputs = _fusion_inputs(values, defaults.fusion_weights, base, roots)
    prompt = _prompt(values, fusion_inputs)
    negative = _optional_str(values, "negative_prompt")
    num_images = _int(values, "num_images", 1, low=limits.MIN_IMAGES, high=limits.MAX_IMAGES)
    seed = _int(values, "seed", derived_seed(row_id), low=0, high=limits.MAX_SEED - num_images)
    guidance = _guidance(values, "guidance_scale", defaults.guidance_scale)
    steps = _steps(values, "num_inference_steps", defaults.num_inference_steps)
    prior_guidance = _guidance(values, "prior_guidance_scale", defaults.prior_guidance_scale)
    prior_steps = _int(
        values, "prior_num_inference_steps", defaults.prior_num_inference_steps,
        low=limits.MIN_PRIOR_STEPS, high=limits.MAX_STEPS,
    )  # fmt: skip
    width = _size(values, "width", defaults.width)
    height = _size(values, "height", defaults.height)
    if width and height and width * height > defaults.max_pixels:
        raise RowError(
            f"`width` x `height` = {width}x{height} exceeds the pixel budget of "
            f"{defaults.max_pixels} pixels"
        )
    scheduler = _optional_str(values, "scheduler") or defaults.scheduler
    if scheduler is not None and (problem := limits.scheduler_error(scheduler)):
        raise RowError(problem)
    init_image = _image_uri(values, "init_image", base, roots)
    mask_image = _image_uri(values, "mask_image", base, roots)
    task = _task(values, init_image, mask_image, fusion_inputs)
    strength = _float(values, "strength", defaults.strength)
    if not 0 < strength <= 1:
        raise RowError(f"`strength` must be in (0, 1] but is {strength!r}")
    sides_from_init = ()
    if task in limits.EDIT_TASKS:
        own = {side: _size(values, side, None) for side in ("width", "height")}
        sides_from_init = tuple(side for side, value in own.items() if value is None)
        try:
            width, height = probe_edit_inputs(
                init_image, mask_image if task == "inpaint" else None, own["width"], own["height"],
                defaults.max_pixels,
            )  # fmt: skip
        except ImageInputError as error:
            raise RowError(str(error)) from None
    if init_image and task == "fusion":  # the prior's image encoder resizes it: any image
        try:
            open_image(init_image, "init_image")
        except ImageInputError as error:
            raise RowError(str(error)) from None
    model = _optional_str(values, "model") or defaults.model
    digests = {}  # an image edited in place makes new requests
    if init_image:
        digests["init_image_sha256"] = storage.sha256(init_image)
    if task == "inpaint":
        digests["mask_image_sha256"] = storage.sha256(mask_image)
    return RowJob(
        row_index=index, id=row_id, prompt=prompt, negative_prompt=negative, seed=seed,
        num_images=num_images, guidance_scale=guidance, num_inference_steps=steps, width=width,
        height=height, scheduler=scheduler, model=model,
        task=task, init_image=init_image, mask_image=mask_image, strength=strength,
        prior_guidance_scale=prior_guidance, prior_num_inference_steps=prior_steps,
        fusion_inputs=fusion_inputs, loras=_loras(values, model, defaults, base, roots),
        sides_from_init=sides_from_init, **digests,
    )  # fmt: skip


def _optional_str(values: dict[str, Any], column: str) -> str | None:
    value = values.get(column)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowError(f"`{column}` must be a string but is {value!r}")
    return value


def _as_int(value: Any, column: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RowError(f"`{column}` must be an integer but is {value!r}")
    return value


def _int(values: dict[str, Any], column: str, default: int, low: int, high: int) -> int:
    value = values.get(column)
    if value is None:
        return default
    number = _as_int(value, column)
    if not low <= number <= high:
        raise RowError(f"`{column}` must be in {low}..{high} but is {value!r}")
    return number


def _float(values: dict[str, Any], column: str, default: float) -> float:
    value = values.get(column)
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RowError(f"`{column}` must be a number but is {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise RowError(f"`{column}` must be a finite number but is {value!r}")
    return number


def _steps(values: dict[str, Any], column: str, default: int) -> int:
    return _int(values, column, default, low=limits.MIN_STEPS, high=limits.MAX_STEPS)


def _guidance(values: dict[str, Any], column: str, default: float | None) -> float | None:
    guidance = _float(values, column, default)
    if guidance is not None and guidance < 0:
        raise RowError(f"`{column}` must be >= 0 but is {guidance!r}")
    return guidance


def _size(values: dict[str, Any], column: str, default: int | None) -> int | None:
    if values.get(column) is None:
        return default
    size = _as_int(values[column], column)
    if error := limits.side_error(column, size):
        raise RowError(error)
    return size


def _prompt(values: dict[str, Any], fusion_inputs: tuple | None) -> str | None:
    """The row's prompt; a row with `fusion_inputs` has none (its texts are items)."""
    prompt = values.get("prompt")
    if fusion_inputs is None and (not isinstance(prompt, str) or not prompt.strip()):
        raise RowError(f"`prompt` must be a non-empty string but is {prompt!r}")
    if fusion_inputs is not None and prompt not in (None, ""):
        raise RowError(
            f"`prompt` is {prompt!r} but the row has `{fusion.COLUMN}`, whose `text` items are "
            "its prompts: give the prompt as an item with its weight, and leave `prompt` empty"
        )
    return prompt or None


def _fusion_inputs(
    values: dict[str, Any], rule: str, base: str, roots: list[str]
) -> tuple[FusionInput, ...] | None:
    """The row's fusion items, the weights as the prior gets them (`fusion_weights`), each
    image resolved like `init_image` and read now; None without `fusion_inputs`."""
    value = values.get(fusion.COLUMN)
    if value is None:
        return None
    try:
        items = fusion.read_items(value)
        weights = fusion.prior_weights([weight for _, _, weight in items], rule)
        return tuple(
            _fusion_input(index, text, image, weight, base, roots)
            for index, ((text, image, _), weight) in enumerate(zip(items, weights, strict=True))
        )
    except (FusionInputError, ImageInputError) as error:
        raise RowError(str(error)) from None


def _loras(
    values: dict[str, Any], model: str, defaults: SweepDefaults, base: str, roots: list[str]
) -> tuple[LoraRef, ...]:
    """The row's adapters, each path resolved like `init_image` and its file digested; for a
    row without, its named model's `loras`, else the sweep's (their own paths, not checked
    against the roots)."""
    value = values.get(loras.COLUMN)
    try:
        if value is None:
            given = dict(defaults.model_loras).get(model, defaults.loras)
            return tuple(loras.adapter_ref(uri, scale) for uri, scale in given)
        items = enumerate(loras.read_items(value))
        return tuple(
            loras.adapter_ref(
                _resolved_uri(path, f"{loras.COLUMN}` item {i} `path", base, roots), scale
            )
            for i, (path, scale) in items
        )
    except LoraInputError as error:
        raise RowError(str(error)) from None


def _fusion_input(
    index: int, text: str | None, image: str | None, weight: float, base: str, roots: list[str]
) -> FusionInput:
    if image is None:
        return FusionInput(text=text, image=None, weight=weight)
    name = fusion.label(index, "image")
    uri = _resolved_uri(image, name, base, roots)
    open_image(uri, name)  # the prior's image encoder resizes it: any readable image
    return FusionInput(text=None, image=uri, weight=weight, image_sha256=storage.sha256(uri))


def _fusion_task(
    values: dict[str, Any], task: str | None, init_image: str | None, mask_image: str | None
) -> str:
    """A row with `fusion_inputs` is a fusion: no other task, and no image, mask or strength
    outside its items."""
    if task not in (None, "fusion"):
        raise RowError(f"`{fusion.COLUMN}` is set but `task` is {task!r}; it belongs to 'fusion'")
    for column, given in (("init_image", init_image), ("mask_image", mask_image),
                          ("strength", values.get("strength"))):  # fmt: skip
        if given is not None:
            raise RowError(
                f"`{column}` is {values.get(column)!r} but the row has `{fusion.COLUMN}`, which "
                "hold a fusion's images and weights: leave it empty"
            )
    return "fusion"


def _task(
    values: dict[str, Any], init_image: str | None, mask_image: str | None,
    fusion_inputs: tuple | None,
) -> str:  # fmt: skip
    task = _optional_str(values, "task")
    if fusion_inputs is not None:
        return _fusion_task(values, task, init_image, mask_image)
    if task is None and mask_image and not init_image:
        raise RowError("`mask_image` is set but `init_image`, which inpainting needs, is empty")
    if task is None:
        return "inpaint" if mask_image else "img2img" if init_image else "text2img"
    if task not in limits.TASKS:
        raise RowError(f"`task` must be one of {', '.join(limits.TASKS)} but is {task!r}")
    if task in ("img2img", "inpaint") and not init_image:
        raise RowError(f"`task` {task!r} needs `init_image`, which is empty")
    if task == "fusion" and not init_image:
        raise RowError(
            f"`task` 'fusion' needs `init_image` (mixed with `prompt`) or `{fusion.COLUMN}`, "
            "which are empty"
        )
    if task == "inpaint" and not mask_image:
        raise RowError("`task` 'inpaint' needs `mask_image`, which is empty")
    return task


def _image_uri(values: dict[str, Any], column: str, base: str, roots: list[str]) -> str | None:
    """Resolve an image path against the manifest folder; refuse anything outside the roots."""
    value = _optional_str(values, column)
    return _resolved_uri(value, column, base, roots) if value else None


def _resolved_uri(value: str, name: str, base: str, roots: list[str]) -> str:
    """`value` (an image named `name` in messages) resolved against the manifest's folder;
    `RowError` outside it and the input roots."""
    uri = value if "://" in value or value.startswith("/") else storage.join(base, value)
    if not any(storage.is_within(uri, root) for root in roots):
        raise RowError(
            f"`{name}` {value!r} resolves outside the manifest's folder and the input roots"
        )
    return uri
