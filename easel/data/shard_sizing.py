"""`shards: auto`: how many shard runs a sweep splits into, and what a shard run costs.

A shard run pays a fixed cost before (and after) its images: a process started, easel and
torch imported, the model loaded, the manifest planned, the shard of the output held, the
writer's tail and the compaction at its end. Every shard run measures it (its wall seconds
outside pipeline calls) and its seconds per image, and keeps the last measure in
`OUT/.easel/shard_cost.json`. `auto` gives each shard at least the images that keep that
cost under `SHARD_START_SHARE` of its time, uses no more shards than the pool has workers, and
picks a count that divides `records.PARTS` (a shard then reads only its parts of the state).

The count is decided once per output: the first `auto` run records it in
`OUT/.easel/shards.json`, and every later `auto` run into that output uses it, so reruns
split the work the same way and hold the same shards. Removing that file lets the next
run decide again (from the last measured cost).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass

from easel.data import storage
from easel.data.limits import SHARD_START_SHARE
from easel.data.records import PARTS, state_dir

# Before any shard run of the output was measured: a shard's fixed cost on the 2-core
# machine of bench/HISTORY.md (shards across workers), and an H100's seconds per SD1.5
# image at 512², 20 steps (5.27 img/s). A slower device only makes each shard longer.
ASSUMED_FIXED_S = 12.0
ASSUMED_IMAGE_S = 1 / 5.27
COST_FILE = "shard_cost.json"
DECISION_FILE = "shards.json"


@dataclass(frozen=True)
class ShardCost:
    """One shard run's measure: `fixed_s` seconds outside pipeline calls, `image_s`
    seconds of pipeline calls per image, over `images` images."""

    fixed_s: float
    image_s: float
    images: int
    measured_at: float = 0.0  # Unix seconds


ASSUMED_COST = ShardCost(fixed_s=ASSUMED_FIXED_S, image_s=ASSUMED_IMAGE_S, images=0)


@dataclass(frozen=True)
class ShardDecision:
    """An `auto` count and what it was decided from (recorded in `DECISION_FILE`)."""

    shards: int
    pending_images: int
    workers: int
    fixed_s: float
    image_s: float
    decided_at: float  # Unix seconds


def min_images_per_shard(cost: ShardCost) -> int:
    """The fewest images whose generation keeps `cost.fixed_s` within `SHARD_START_SHARE` of a
    shard run's time: fixed / (fixed + n * image_s) <= share."""
    needed = cost.fixed_s * (1 - SHARD_START_SHARE) / SHARD_START_SHARE / max(cost.image_s, 1e-9)
    return max(1, math.ceil(needed - 1e-9))


def shard_count(pending_images: int, workers: int, cost: ShardCost) -> int:
    """The shards for `pending_images` on a pool of `workers`: as many as the workers and
    the fixed cost allow (each shard at least `min_images_per_shard`), rounded down to a
    divisor of `PARTS`; at least 1."""
    if workers < 1:
        raise ValueError(f"`workers` must be at least 1 but is {workers}")
    most = min(workers, pending_images // min_images_per_shard(cost), PARTS)
    return max((n for n in range(1, PARTS + 1) if PARTS % n == 0 and n <= most), default=1)


def measured_cost(out: str) -> ShardCost | None:
    """The last shard run's measure in `out`, or None (none measured yet)."""
    text = _read_json(state_dir(out, COST_FILE))
    return ShardCost(**text) if text else None


def record_cost(out: str, cost: ShardCost) -> None:
    storage.write_text_atomic(state_dir(out, COST_FILE), json.dumps(asdict(cost)))


def recorded_decision(out: str) -> ShardDecision | None:
    text = _read_json(state_dir(out, DECISION_FILE))
    return ShardDecision(**text) if text else None


def decide(out: str, pending_images: int, workers: int) -> tuple[ShardDecision, bool]:
    """The output's recorded `auto` count, or a new one (from the last measured cost, else
    `ASSUMED_COST`), recorded where there is work to split; and whether it is new."""
    recorded = recorded_decision(out)
    if recorded:
        return recorded, False
    cost = measured_cost(out) or ASSUMED_COST
    decision = ShardDecision(
        shards=shard_count(pending_images, workers, cost), pending_images=pending_images,
        workers=workers, fixed_s=cost.fixed_s, image_s=cost.image_s, decided_at=time.time(),
    )  # fmt: skip
    if pending_images:
        storage.write_text_atomic(state_dir(out, DECISION_FILE), json.dumps(asdict(decision)))
    return decision, True


def _read_json(uri: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(uri))
    except FileNotFoundError:
        return None
