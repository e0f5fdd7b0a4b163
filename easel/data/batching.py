"""From validated rows to batches of images: the unit of work of a sweep.

A row asks for `num_images` images; image k uses seed + k. Images whose settings agree
(model, task, scheduler, guidance, steps, size, strength, LoRA adapters and their scales;
for Kandinsky 2.2 also the prior's guidance and steps) share a batch. Each image has
a `request_key`, a digest of everything that determines its pixels: a rerun skips an
image whose key is already recorded, and regenerates one whose row has changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from functools import cache, lru_cache
from operator import attrgetter

import numpy as np
import pyarrow as pa

from easel.data import limits
from easel.data.fusion import FusionInput
from easel.data.loras import LoraRef
from easel.data.manifest import RowFailure, RowJob


@dataclass(frozen=True)
class BatchSettings:
    """What every image in one pipeline call shares."""

    task: str
    scheduler: str | None  # resolved name; None only before resolution
    guidance_scale: float
    num_inference_steps: int
    width: int
    height: int
    strength: float = limits.STRENGTH
    prior_guidance_scale: float | None = None  # Kandinsky's prior; None for other families
    prior_num_inference_steps: int | None = None
    loras: tuple[LoraRef, ...] | None = None  # the adapters, stacked; None: none


@dataclass(frozen=True, slots=True)  # a million of them in a large plan
class ImageRequest:
    prompt: str | None  # None only in a fusion of `fusion_inputs`
    negative_prompt: str | None
    seed: int
    init_image: str | None = None
    mask_image: str | None = None
    # sha256 of the image files' bytes: an image edited in place is a new request
    init_image_sha256: str | None = None
    mask_image_sha256: str | None = None
    fusion_inputs: tuple[FusionInput, ...] | None = None  # texts and images (with sha256)


@dataclass(frozen=True, slots=True)  # a million of them in a large plan
class PlannedImage:
    row_id: str
    image_index: int
    request: ImageRequest
    request_key: str

    @property
    def slot(self) -> tuple[str, int, str]:
        """This image of this row with this content: what a record vouches for. Two rows may
        ask for the same content (same request key); each has its own slot and file."""
        return (self.row_id, self.image_index, self.request_key)


@dataclass(frozen=True)
class PlannedBatch:
    model: str
    settings: BatchSettings
    images: tuple[PlannedImage, ...]

    @property
    def key(self) -> str:
        """The name of its record shard: a digest of its images' slots (row id, image index,
        request key), so two batches of one content for other rows (two model names of
        the same files) never write over each other's records."""
        joined = "\n".join("|".join(map(str, image.slot)) for image in self.images)
        return hashlib.sha256(joined.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class ModelFacts:
    """What planning needs to know about a model without loading its weights (the engine's
    model family reads them from the model folder)."""

    digest: str
    native_size: int
    default_scheduler: str
    family: str = "Stable Diffusion"  # the family's name, for messages
    tasks: tuple[str, ...] = ("text2img", "img2img", "inpaint")
    schedulers: tuple[str, ...] = limits.SCHEDULER_NAMES  # those the family can step
    size_multiple: int = limits.SIDE_MULTIPLE  # image sides the model generates exactly
    has_prior: bool = False  # Kandinsky's diffusion prior: its rows carry the prior settings
    # the prior's guidance for rows that set none: the model card's recommendation, else
    # diffusers' default (None without a prior)
    prior_guidance_scale: float | None = None
    strength_tasks: tuple[str, ...] = limits.EDIT_TASKS  # where strength x steps is denoised
    takes_loras: bool = True  # whether the family applies LoRA adapters (`loras`)
    # scheduler -> (fewest inference steps it runs from this model's config, the rule why)
    minimum_steps: dict[str, tuple[int, str]] = field(default_factory=dict)


def unsupported(
    job: RowJob, facts: ModelFacts, settings: BatchSettings | None = None
) -> str | None:
    """Why the row's model cannot run it (`settings`: its `row_settings`, where the caller
    has them), naming the column and value; None if it can."""
    model = f"{facts.family} model {job.model!r}"
    settings = settings or row_settings(job, facts)
    return settings_problem(settings, facts, model, job.sides_from_init)


def settings_problem(
    settings: BatchSettings, facts: ModelFacts, model: str, sides_from_init: tuple[str, ...] = ()
) -> str | None:
    """Why the model (`facts`, named `model` in messages) cannot run `settings`, naming the
    columns and values (`sides_from_init`: the sides an edit row took from its `init_image`,
    which a message about them says); None if it can. Planning asks it of every row, the
    engine of every batch it is handed."""
    if settings.task not in facts.tasks:
        runs = ", ".join(facts.tasks)
        return f"`task` {settings.task!r} is not supported by {model}, which runs {runs}"
    if settings.loras and not facts.takes_loras:
        shown = ", ".join(adapter.uri for adapter in settings.loras)
        return f"`loras` [{shown}] are given but {model} takes no LoRA adapters"
    own = settings.scheduler == facts.default_scheduler  # whatever it is, the model's own runs
    if settings.scheduler not in facts.schedulers and not own:
        return (
            f"`scheduler` {settings.scheduler!r} does not work with {model}; "
            f"use one of {', '.join(facts.schedulers)}"
        )
    fewest, rule = facts.minimum_steps.get(settings.scheduler, (1, ""))
    if settings.num_inference_steps < fewest:
        return (
            f"`scheduler` {settings.scheduler!r} needs `num_inference_steps` >= {fewest} on "
            f"{model} ({rule}) but `num_inference_steps` is {settings.num_inference_steps}"
        )
    if settings.task in facts.strength_tasks and denoising_steps(settings) < 1:
        return (
            f"`strength` {settings.strength:g} x `num_inference_steps` "
            f"{settings.num_inference_steps} = {settings.strength * settings.num_inference_steps!r}"
            " leaves no denoising step (diffusers runs int(strength x steps) of them): raise "
            "either so that their product is at least 1"
        )
    for column in ("width", "height"):
        side = getattr(settings, column)
        if side % facts.size_multiple:
            hint = ""
            if column in sides_from_init:
                hint = f" (`init_image`'s {column}: an edit row without `{column}` takes it)"
            return (
                f"`{column}` must be a multiple of {facts.size_multiple} for {model} "
                f"but is {side}{hint}"
            )
    return None


def denoising_steps(settings: BatchSettings) -> int:
    """How many steps an edit runs: diffusers' `int(num_inference_steps * strength)`."""
    return int(settings.num_inference_steps * settings.strength)


# the fields of a row's job that `row_settings` reads (with its model's facts): two jobs of
# one model equal in these have equal settings
SETTINGS_FIELDS = ("model", "task", "fusion_inputs", "strength", "prior_guidance_scale",
                   "prior_num_inference_steps", "scheduler", "guidance_scale",
                   "num_inference_steps", "width", "height", "loras")  # fmt: skip
settings_inputs = attrgetter(*SETTINGS_FIELDS)


def row_settings(job: RowJob, facts: ModelFacts) -> BatchSettings:
    # unused by text2img and by a fusion of `fusion_inputs` (its items carry the weights)
    strength = job.strength if job.task != "text2img" and job.fusion_inputs is None else 1.0
    prior = {}  # a family without a prior ignores the prior columns
    if facts.has_prior:
        guidance = job.prior_guidance_scale
        guidance = facts.prior_guidance_scale if guidance is None else guidance
        prior = {"prior_guidance_scale": guidance,
                 "prior_num_inference_steps": job.prior_num_inference_steps}  # fmt: skip
    return BatchSettings(
        task=job.task, scheduler=job.scheduler or facts.default_scheduler,
        guidance_scale=job.guidance_scale, num_inference_steps=job.num_inference_steps,
        width=job.width or facts.native_size, height=job.height or facts.native_size,
        strength=strength, loras=job.loras or None, **prior,
    )  # fmt: skip


# absent: keys as before
ADDED_REQUEST_FIELDS = ("init_image_sha256", "mask_image_sha256", "fusion_inputs")


def request_key(model_digest: str, settings: BatchSettings, request: ImageRequest) -> str:
    """A digest of everything that determines the image's pixels. Settings a family does not
    have (None), and fields added since keys were first written when unset, leave it as it
    was, so a text-to-image row keeps its key across versions."""
    asked = {name: value for name, value in _as_dict(request).items()
             if value is not None or name not in ADDED_REQUEST_FIELDS}  # fmt: skip
    content = {**_settings_content(model_digest, settings), **asked}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


@lru_cache(maxsize=4096)
def _settings_content(model_digest: str, settings: BatchSettings) -> dict:
    """The part of `request_key`'s content every image of `settings` shares (read only)."""
    present = {name: value for name, value in _as_dict(settings).items() if value is not None}
    if settings.loras:  # each adapter's content and weight, not where its file lies
        present["loras"] = [{"sha256": a.sha256, "scale": a.scale} for a in settings.loras]
    return {"model": model_digest, **present}


_FLAT = (str, int, float, bool, type(None))


def _as_dict(instance) -> dict:
    """A dataclass instance's fields as `asdict` gives them: read directly where every value
    is flat (a str, number or None; `asdict` deep-copies each value, most of a million-row
    plan's time), else through `asdict`."""
    values = {name: getattr(instance, name) for name in _field_names(type(instance))}
    for value in values.values():
        if not isinstance(value, _FLAT):
            return asdict(instance)
    return values


@cache
def _field_names(kind: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(kind))


def planned_images(
    job: RowJob, facts: ModelFacts, settings: BatchSettings | None = None
) -> list[PlannedImage]:
    """The images of `job` with their request keys (`settings`: its `row_settings`, where
    the caller has them)."""
    settings = settings or row_settings(job, facts)
    keys = row_request_keys(facts.digest, settings, job)
    return [PlannedImage(job.id, k, image_request(job, k), key) for k, key in enumerate(keys)]


def image_request(job: RowJob, k: int) -> ImageRequest:
    """What image `k` of `job` asks for: the row's inputs with seed + k."""
    return ImageRequest(
        prompt=job.prompt, negative_prompt=job.negative_prompt, seed=job.seed + k,
        init_image=job.init_image, mask_image=job.mask_image,
        init_image_sha256=job.init_image_sha256, mask_image_sha256=job.mask_image_sha256,
        fusion_inputs=job.fusion_inputs,
    )  # fmt: skip


def row_request_keys(model_digest: str, settings: BatchSettings, job: RowJob) -> list[str]:
    """`request_key` of each image of `job` (seeds seed, seed + 1, ...), at about the cost of
    hashing: the JSON `request_key` digests is written once for the row around its seed,
    from a template of its settings (`_key_template`), and only the seed changes between
    images. A row with `fusion_inputs` (nested values) takes `request_key` image by image.
    The keys are `request_key`'s, character for character."""
    if job.fusion_inputs is not None:
        return [request_key(model_digest, settings, image_request(job, k))
                for k in range(job.num_images)]  # fmt: skip
    added = tuple(name for name in _ADDED_FLAT if getattr(job, name) is not None)
    before, before_values, after, after_values = _key_template(model_digest, settings, added)
    head = before % tuple(map(_encoded, before_values(job)))
    tail = after % tuple(map(_encoded, after_values(job)))
    sha256 = hashlib.sha256
    return [sha256(f"{head}{seed}{tail}".encode()).hexdigest()
            for seed in range(job.seed, job.seed + job.num_images)]  # fmt: skip


_ADDED_FLAT = ("init_image_sha256", "mask_image_sha256")  # of ADDED_REQUEST_FIELDS: texts
_ENCODE_STR = json.encoder.encode_basestring_ascii  # json.dumps' own (ensure_ascii), in C


def _encoded(value: str | None) -> str:
    return "null" if value is None else _ENCODE_STR(value)


@lru_cache(maxsize=4096)
def _key_template(
    model_digest: str, settings: BatchSettings, added: tuple[str, ...]
) -> tuple[str, Callable, str, Callable]:
    """`request_key`'s JSON for `settings` and a request without `fusion_inputs` (`added`:
    the fields of `_ADDED_FLAT` it sets) as two %-formats, before and after the seed, each
    with the function giving a job's values of the request fields that fill it (a request
    field's name is also a `RowJob` field's)."""
    constant = _settings_content(model_digest, settings)
    asked = [f.name for f in fields(ImageRequest)
             if f.name not in ADDED_REQUEST_FIELDS or f.name in added]  # fmt: skip
    parts: list[list[str]] = [[], []]  # before the seed, after it
    holes: list[list[str]] = [[], []]
    side = 0
    for i, name in enumerate(sorted([*constant, *asked])):
        parts[side].append(((", " if i else "{") + json.dumps(name) + ": ").replace("%", "%%"))
        if name == "seed":
            side = 1
        elif name in constant:
            parts[side].append(json.dumps(constant[name], sort_keys=True).replace("%", "%%"))
        else:
            parts[side].append("%s")
            holes[side].append(name)
    parts[1].append("}")
    return "".join(parts[0]), _getter(holes[0]), "".join(parts[1]), _getter(holes[1])


def _getter(names: list[str]) -> Callable[[RowJob], tuple]:
    """A function giving a job's values of `names`, as a tuple."""
    if len(names) == 1:
        return lambda job: (getattr(job, names[0]),)
    return attrgetter(*names) if names else lambda job: ()


def shard_of(image: PlannedImage, shards: int) -> int:
    """Which of `shards` shards does `image` (0-based)? Decided by its slot's content (row
    id, image index, request key), never by its position: the same on every rerun."""
    return slot_hash(image.slot) % shards


def slot_digest(slot: tuple) -> bytes:
    """The sha256 of a slot's (row id, image index, request key) text, "id|k|key"."""
    return hashlib.sha256("|".join(map(str, slot)).encode()).digest()


def slot_hash(slot: tuple | bytes) -> int:
    """A slot's (row id, image index, request key; or its `slot_digest`) digest as an
    unsigned 64-bit integer."""
    digest = slot if isinstance(slot, bytes) else slot_digest(slot)
    return int.from_bytes(digest[:8], "big")


class SlotSet:
    """A set of slots (row id, image index, request key) held as the first `DIGEST_BYTES`
    of their `slot_digest`: about 90 bytes a slot, where a set of tuples of strings takes
    about 300 (a million done images: 90 MB, not 300). Answers `slot in slots`, and
    `digest in slots` for a slot's digest already made (`slot_digest`)."""

    DIGEST_BYTES = 16  # two slots alike by chance: about 1 in 10**20 for a billion slots

    def __init__(self, slots=()):
        self._digests = {slot_digest(slot)[: self.DIGEST_BYTES] for slot in slots}

    def add_columns(self, ids, image_indices, request_keys) -> None:
        """Add the slots of three equal-length sequences of Python values."""
        size = self.DIGEST_BYTES
        self._digests.update(slot_digest(slot)[:size]
                             for slot in zip(ids, image_indices, request_keys, strict=True))

    def __contains__(self, slot) -> bool:
        digest = slot if isinstance(slot, bytes) else slot_digest(slot)
        return digest[: self.DIGEST_BYTES] in self._digests

    def __len__(self) -> int:
        return len(self._digests)


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (`Shard(0, 1)`: all the work)."""

    index: int
    count: int

    def holds(self, slot: tuple[str, int, str] | bytes) -> bool:
        """Whether an image's slot (row id, image index, request key; or its
        `slot_digest`) is this shard's."""
        return self.count == 1 or slot_hash(slot) % self.count == self.index


ALL = Shard(0, 1)


def plan_batches(
    jobs: list[RowJob], facts: dict[str, ModelFacts], batch_size: int,
    done: SlotSet | set[tuple[str, int, str]], shard: Shard = ALL, keys: list | None = None,
    settings_of: list[BatchSettings] | None = None,
) -> list[PlannedBatch]:  # fmt: skip
    """Batches of at most `batch_size` images of `shard` whose slot is not done, grouped by
    shared settings (`settings_of`: each job's `row_settings`, where the caller has them);
    `keys` (when given) gets every image's request key, job after job."""
    assert batch_size >= 1
    pending: dict[tuple[str, BatchSettings], list[PlannedImage]] = {}
    done = done if isinstance(done, SlotSet) else SlotSet(done)
    if settings_of is None:
        settings_of = [row_settings(job, facts[job.model]) for job in jobs]
    for job, settings in zip(jobs, settings_of, strict=True):
        group = pending.setdefault((job.model, settings), [])
        row_keys = row_request_keys(facts[job.model].digest, settings, job)
        if keys is not None:
            keys.extend(row_keys)
        for k, key in enumerate(row_keys):  # an object only for an image this plan does
            digest = slot_digest((job.id, k, key))
            if shard.holds(digest) and digest not in done:
                group.append(PlannedImage(job.id, k, image_request(job, k), key))
    batches = []  # groups in the order of their model and settings, images in the manifest's
    for model, settings in sorted(pending, key=lambda key: (key[0], repr(key[1]))):
        images = pending[model, settings]
        for start in range(0, len(images), batch_size):
            batches.append(PlannedBatch(model, settings, tuple(images[start : start + batch_size])))
    return batches


@dataclass
class SweepPlan:
    """Everything a sweep will do, decided before any image is generated."""

    jobs: list[RowJob]
    failures: list[RowFailure]  # rows that fail before generation
    facts: dict[str, ModelFacts]
    batches: list[PlannedBatch]
    # every image's request key as planned, job after job in `jobs`' order ([]: not kept,
    # as for a shard's plan): one string an image, no object of its own
    request_keys: list[str] = field(default_factory=list)
    _requested: pa.Table | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def total_images(self) -> int:
        if self._requested is not None:
            return self._requested.num_rows
        return sum(job.num_images for job in self.jobs)

    @property
    def pending_images(self) -> int:
        return sum(len(batch.images) for batch in self.batches)

    def requested(self) -> pa.Table:
        """Every image the jobs request, job after job, image after image, as columns
        (`REQUESTED`): its manifest row (`_row`), `id`, `image_index` and `request_key`
        (as planned, else computed). What the results are matched with; kept when the
        jobs are released (`release_batches`)."""
        if self._requested is None:
            keys = self.request_keys or [
                image.request_key
                for job in self.jobs for image in planned_images(job, self.facts[job.model])
            ]  # fmt: skip
            self._requested = requested_images(self.jobs, keys)
        return self._requested

    def release_batches(self) -> int:
        """Forget the batches and the jobs once generated or handed to shards: their
        objects (most of a large plan's memory, about 700 MB a million images) are freed
        even where this plan stays referenced (Prefect keeps a task's result for its flow
        run); what the results need stays: the failures, and the requested images as
        columns (`requested`, about 90 MB a million). Returns the pending images it held."""
        pending = self.pending_images
        self.requested()
        self.batches.clear()
        self.jobs, self.request_keys = [], []
        return pending

    def pending_rows(self, shards: int) -> dict[int, dict[int, int]]:
        """The pending images of each of `shards` shards that has any, by shard index: for
        each manifest row holding some, their count, by row index (in order)."""
        row_of = {job.id: job.row_index for job in self.jobs}
        found: dict[int, dict[int, int]] = {}
        for image in (image for batch in self.batches for image in batch.images):
            rows = found.setdefault(shard_of(image, shards), {})
            row = row_of[image.row_id]
            rows[row] = rows.get(row, 0) + 1
        return {index: dict(sorted(found[index].items())) for index in sorted(found)}


REQUESTED = pa.schema([("_row", pa.int64()), ("id", pa.string()), ("image_index", pa.int64()),
                       ("request_key", pa.string())])  # fmt: skip


def requested_images(jobs: list[RowJob], keys: list[str]) -> pa.Table:
    """`SweepPlan.requested` of `jobs`, whose images' request keys are `keys`, job after
    job: one Python object a job read, none an image."""
    counts = np.fromiter((job.num_images for job in jobs), np.int64, len(jobs))
    job_of = np.repeat(np.arange(len(jobs)), counts)
    first = np.cumsum(counts) - counts  # each job's first image's position
    rows = np.fromiter((job.row_index for job in jobs), np.int64, len(jobs))
    ids = pa.array([job.id for job in jobs], pa.string())
    return pa.table([rows[job_of], ids.take(job_of), np.arange(len(job_of)) - first[job_of],
                     pa.array(keys, pa.string())], schema=REQUESTED)  # fmt: skip


def build_plan(
    jobs: list[RowJob], failures: list[RowFailure], facts_for, batch_size: int,
    done: SlotSet | set[tuple[str, int, str]], shard: Shard = ALL,
) -> SweepPlan:  # fmt: skip
    """Resolve each distinct model once (`facts_for(ref)`, which raises `ValueError` with a
    user message for a bad reference); rows on a bad model fail alone."""
    facts, bad_models = {}, {}
    for ref in sorted({job.model for job in jobs}):
        try:
            facts[ref] = facts_for(ref)
        except ValueError as error:
            bad_models[ref] = f"`model` {ref!r}: {error}"
    failures = failures + [
        RowFailure(row_index=job.row_index, id=job.id, error=bad_models[job.model])
        for job in jobs if job.model in bad_models
    ]  # fmt: skip
    runnable, settings_of = [], []
    checked: dict[tuple, tuple[BatchSettings, str | None]] = {}  # once a distinct setting
    for job in (job for job in jobs if job.model in facts):
        known = (settings_inputs(job), job.sides_from_init)
        found = checked.get(known)
        if found is None:
            settings = row_settings(job, facts[job.model])
            found = checked[known] = (settings, unsupported(job, facts[job.model], settings))
        settings, error = found  # one object for equal settings
        if error:
            failures.append(RowFailure(row_index=job.row_index, id=job.id, error=error))
        else:
            runnable.append(job)
            settings_of.append(settings)
    keys: list[str] = []  # kept for the whole sweep's results alone (`SweepPlan.requested`)
    batches = plan_batches(runnable, facts, batch_size, done, shard,
                           keys if shard == ALL else None, settings_of)  # fmt: skip
    return SweepPlan(jobs=runnable, failures=failures, facts=facts, batches=batches,
                     request_keys=keys)  # fmt: skip


def chunk_batches(batches: list[PlannedBatch], max_images: int) -> list[list[PlannedBatch]]:
    """Consecutive batches grouped into chunks of about `max_images` images (one task each)."""
    chunks: list[list[PlannedBatch]] = []
    count = max_images
    for batch in batches:
        if count + len(batch.images) > max_images:
            chunks.append([])
            count = 0
        chunks[-1].append(batch)
        count += len(batch.images)
    return chunks
