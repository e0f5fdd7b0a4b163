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
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from easel.data import fusion, limits, loras, storage
from easel.data.fusion import FusionInput, FusionInputError
from easel.data.images import ImageInputError, open_image, probe_edit_inputs
from easel.data.limits import PRIOR_NUM_INFERENCE_STEPS
from easel.data.loras import LoraInputError, LoraRef
from easel.data.manifest_files import Manifest, read_manifest, write_manifest  # noqa: F401
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
    ids = _row_ids(table)
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
    manifest: Manifest, defaults: SweepDefaults, input_roots: list[str] = (),
    rows: list[int] | None = None, ids: list[str] | None = None,
) -> tuple[list[RowJob], list[RowFailure]]:  # fmt: skip
    """Validate every row (`rows`: only these, by index, ascending: a shard's, whose parent
    checked the manifest as a whole; `ids`: every row's, as `unique_row_ids` gave them),
    `ROWS_AT_ONCE` rows at a time. Duplicate ids invalidate the manifest as a whole. A row
    that sets only the plain columns (`plain_jobs`) is validated column by column, each
    distinct value once; any other row, and a plain one a rule refuses, alone
    (`validate_row`), which names the first rule it breaks."""
    table = manifest.table
    if rows is None:
        ids, indices = ids or unique_row_ids(table, manifest.uri), range(table.num_rows)
    else:
        table = table.take(pa.array(rows, pa.int64()))
        ids, indices = _row_ids(table), rows
    roots = [manifest.root, *input_roots]
    jobs, failures, start = [], [], 0
    for batch in table.to_batches(max_chunksize=ROWS_AT_ONCE):
        end = start + batch.num_rows
        made = plain_jobs(batch, indices[start:end], ids[start:end], defaults)
        values = None  # the batch's rows as dicts, made only for rows validated alone
        for offset, job in enumerate(made):
            if job is not None:
                jobs.append(job)
                continue
            values = values or batch.to_pylist()
            index, row_id = indices[start + offset], ids[start + offset]
            try:
                jobs.append(validate_row(index, row_id, values[offset], defaults,
                                         manifest.root, roots))  # fmt: skip
            except RowError as error:
                failures.append(RowFailure(row_index=index, id=row_id, error=str(error)))
            except Exception as error:  # noqa: BLE001 - a rule easel lacks: the row fails alone
                message = f"this row could not be validated: {type(error).__name__}: {error}"
                failures.append(RowFailure(row_index=index, id=row_id, error=message))
        start = end
    failures.sort(key=lambda failure: failure.row_index)
    return jobs, failures


# what a plain row may set besides the columns of `column_rules` (and columns easel does
# not know, passed through): a row that sets any other (images, fusion items, adapters, a
# task but text-to-image) is validated alone
PLAIN_COLUMNS = ("id", "prompt", "seed", "task")
_REFUSED = object()  # a value a column's rule refuses


def plain_jobs(
    batch: pa.RecordBatch, indices, ids: list[str], defaults: SweepDefaults
) -> list[RowJob | None]:
    """The job of each row of `batch` (whose indices in the manifest are `indices` and ids
    `ids`, row for row) that sets only plain columns (`PLAIN_COLUMNS`, `column_rules`' and
    unknown ones) and passes every rule; None for any other row (`validate_manifest`
    validates it alone: the same rules, which then name the first it breaks). Each
    column's rule runs once a distinct value; a plain row's job is `validate_row`'s, field
    for field."""
    rules = column_rules(defaults)
    known = (*PLAIN_COLUMNS, *rules)
    others = [n for n in KNOWN_COLUMNS if n not in known and n in batch.schema.names]
    plain = np.ones(batch.num_rows, dtype=bool)
    for name in others:
        plain &= batch.column(name).is_null().to_numpy(zero_copy_only=False)
    if not plain.any():
        return [None] * batch.num_rows
    ruled = [_ruled(batch, name, rule) for name, rule in rules.items()]
    seeds = _ruled(batch, "seed", _seed_value)
    prompts, tasks = _values(batch, "prompt"), _values(batch, "task")
    loras_of = functools.lru_cache(maxsize=None)(
        lambda model: _loras({}, model, defaults, "", [])  # a row without `loras`: the defaults
    )  # fmt: skip
    jobs: list[RowJob | None] = [None] * batch.num_rows
    for offset in np.flatnonzero(plain).tolist():
        values = [column[offset] for column in ruled]
        if _REFUSED in values or seeds[offset] is _REFUSED or tasks[offset] not in TEXT2IMG:
            continue
        try:
            jobs[offset] = _plain_job(indices[offset], ids[offset], prompts[offset],
                                      seeds[offset], values, defaults.max_pixels,
                                      loras_of)  # fmt: skip
        except RowError:  # validated alone, which names the rule
            continue
    return jobs


TEXT2IMG = (None, "text2img")  # a plain row's `task`


def _plain_job(
    index: int, row_id: str, prompt, seed, values: list, max_pixels: int, loras_of
) -> RowJob:
    """A plain row's job (`values`: its columns' ruled values, in `column_rules`' order),
    by the rules of the row as a whole `validate_row` applies; `RowError` where one
    refuses it."""
    negative, num_images, guidance, steps, prior_guidance, prior_steps, width, height, \
        scheduler, strength, model = values  # fmt: skip
    _check_id(row_id)
    prompt = _prompt({"prompt": prompt}, None)
    high = limits.MAX_SEED - num_images
    seed = derived_seed(row_id) if seed is None else _int({"seed": seed}, "seed", 0, 0, high)
    _check_pixels(width, height, max_pixels)
    return RowJob(
        row_index=index, id=row_id, prompt=prompt, negative_prompt=negative, seed=seed,
        num_images=num_images, guidance_scale=guidance, num_inference_steps=steps, width=width,
        height=height, scheduler=scheduler, model=model, task="text2img", init_image=None,
        mask_image=None, strength=strength, prior_guidance_scale=prior_guidance,
        prior_num_inference_steps=prior_steps, loras=loras_of(model),
    )  # fmt: skip


def _seed_value(values: dict[str, Any]) -> int | None:
    """A row's `seed` as an integer (None: unset); its range depends on `num_images`."""
    return _as_int(values["seed"], "seed") if values else None


def _values(batch: pa.RecordBatch, name: str) -> list:
    """A column's Python values (all None where the batch lacks it)."""
    if name in batch.schema.names:
        return batch.column(name).to_pylist()
    return [None] * batch.num_rows


def _ruled(batch: pa.RecordBatch, name: str, rule) -> list:
    """What `rule` makes of each row's value of column `name` (`_REFUSED` where it raises),
    the rule applied once a distinct value."""
    made: dict[Any, Any] = {}

    def apply(value):
        try:
            return rule({} if value is None else {name: value})
        except Exception:  # noqa: BLE001 - refused here: the row is validated alone
            return _REFUSED

    if name not in batch.schema.names:
        return [apply(None)] * batch.num_rows
    out = []
    for value in _values(batch, name):
        try:
            out.append(made[value])
        except KeyError:
            out.append(made.setdefault(value, apply(value)))
        except TypeError:  # an unhashable value (a list): not plain
            out.append(_REFUSED)
    return out


def _row_ids(table: pa.Table) -> list[str]:
    """Each row's id: its `id`, else derived from its content (`derived_id`), the rows
    without one made Python values alone."""
    if "id" not in table.column_names:
        return [derived_id(values) for values in manifest_rows(table)]
    ids = [value if value is None or isinstance(value, str) else str(value)
           for value in table.column("id").to_pylist()]  # fmt: skip
    unset = [index for index, value in enumerate(ids) if value is None]
    for start in range(0, len(unset), ROWS_AT_ONCE):
        chosen = unset[start : start + ROWS_AT_ONCE]
        for index, values in zip(chosen, table.take(chosen).to_pylist(), strict=True):
            ids[index] = derived_id(values)
    return ids


def validate_row(
    index: int, row_id: str, values: dict[str, Any], defaults: SweepDefaults, base: str,
    roots: list[str],
) -> RowJob:  # fmt: skip
    """Check one row against every SPEC §5 rule; raise `RowError` at the first broken one."""
    _check_id(row_id)
    rules = column_rules(defaults)
    fusion_inputs = _fusion_inputs(values, defaults.fusion_weights, base, roots)
    prompt = _prompt(values, fusion_inputs)
    negative = rules["negative_prompt"](values)
    num_images = rules["num_images"](values)
    seed = _int(values, "seed", derived_seed(row_id), low=0, high=limits.MAX_SEED - num_images)
    guidance = rules["guidance_scale"](values)
    steps = rules["num_inference_steps"](values)
    prior_guidance = rules["prior_guidance_scale"](values)
    prior_steps = rules["prior_num_inference_steps"](values)
    width, height = rules["width"](values), rules["height"](values)
    _check_pixels(width, height, defaults.max_pixels)
    scheduler = rules["scheduler"](values)
    init_image = _image_uri(values, "init_image", base, roots)
    mask_image = _image_uri(values, "mask_image", base, roots)
    task = _task(values, init_image, mask_image, fusion_inputs)
    strength = rules["strength"](values)
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
    model = rules["model"](values)
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


@functools.lru_cache(maxsize=16)
def column_rules(defaults: SweepDefaults) -> dict[str, Callable[[dict[str, Any]], Any]]:
    """The rule of each column whose value `validate_row` checks alone (`plain_jobs` too,
    once a distinct value): the row's values (a dict; the column absent or None: the
    default) to the value the row gets; `RowError` naming the column and the value."""
    d = defaults
    return {
        "negative_prompt": lambda v: _optional_str(v, "negative_prompt"),
        "num_images": lambda v: _int(v, "num_images", 1, low=limits.MIN_IMAGES,
                                     high=limits.MAX_IMAGES),  # fmt: skip
        "guidance_scale": lambda v: _guidance(v, "guidance_scale", d.guidance_scale),
        "num_inference_steps": lambda v: _steps(v, "num_inference_steps", d.num_inference_steps),
        "prior_guidance_scale": lambda v: _guidance(v, "prior_guidance_scale",
                                                    d.prior_guidance_scale),  # fmt: skip
        "prior_num_inference_steps": lambda v: _int(
            v, "prior_num_inference_steps", d.prior_num_inference_steps,
            low=limits.MIN_PRIOR_STEPS, high=limits.MAX_STEPS,
        ),  # fmt: skip
        "width": lambda v: _size(v, "width", d.width),
        "height": lambda v: _size(v, "height", d.height),
        "scheduler": lambda v: _scheduler(v, d.scheduler),
        "strength": lambda v: _strength(v, d.strength),
        "model": lambda v: _optional_str(v, "model") or d.model,
    }


def _check_id(row_id: str) -> None:
    if not limits.ID_PATTERN.fullmatch(row_id):
        raise RowError(f"`id` must match {limits.ID_RULE} but is {row_id!r}")
    if row_id in (".", ".."):
        raise RowError(f"`id` must not be {row_id!r}")


def _check_pixels(width: int | None, height: int | None, max_pixels: int) -> None:
    if width and height and width * height > max_pixels:
        raise RowError(
            f"`width` x `height` = {width}x{height} exceeds the pixel budget of "
            f"{max_pixels} pixels"
        )


def _scheduler(values: dict[str, Any], default: str | None) -> str | None:
    scheduler = _optional_str(values, "scheduler") or default
    if scheduler is not None and (problem := limits.scheduler_error(scheduler)):
        raise RowError(problem)
    return scheduler


def _strength(values: dict[str, Any], default: float) -> float:
    strength = _float(values, "strength", default)
    if not 0 < strength <= 1:
        raise RowError(f"`strength` must be in (0, 1] but is {strength!r}")
    return strength


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
    return number + 0.0  # -0.0 as 0.0: equal numbers, one request key


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
