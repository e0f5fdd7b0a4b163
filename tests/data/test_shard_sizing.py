"""`shards: auto`: the count from pending images, workers and a shard's fixed cost; kept
once per output."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from easel.data import shard_sizing
from easel.data.records import PARTS
from easel.data.shard_sizing import ShardCost, decide, min_images_per_shard, shard_count
from easel.flows.sweep_parameters import SweepParameters

COST = ShardCost(fixed_s=10.0, image_s=0.5, images=100)  # 380 images keep 10 s within 5%


def test_a_shard_gets_the_images_that_keep_its_fixed_cost_within_five_percent():
    needed = min_images_per_shard(COST)
    assert needed == 380
    for images in (needed, needed + 1):  # at the least: the fixed cost is <= 5% of the run
        assert COST.fixed_s / (COST.fixed_s + images * COST.image_s) <= 0.05
    assert COST.fixed_s / (COST.fixed_s + (needed - 1) * COST.image_s) > 0.05


@pytest.mark.parametrize(
    "pending, workers, expected",
    [
        (0, 16, 1),  # nothing to split
        (379, 16, 1),  # fewer images than one shard needs
        (380 * 2, 16, 2),
        (380 * 3, 16, 2),  # 3 shards would fit, but 3 does not divide the 64 parts
        (380 * 7, 16, 4),
        (1_000_000, 16, 16),  # bounded by the workers
        (1_000_000, 12, 8),  # the largest divisor of the parts under the workers
        (1_000_000, 1, 1),  # outside a deployment the shards would run one after another
        (10_000_000, 1000, PARTS),
    ],
)
def test_the_count_is_bounded_by_the_images_the_workers_and_divides_the_parts(
    pending, workers, expected
):
    assert shard_count(pending, workers, COST) == expected


def test_a_pool_without_workers_is_refused_naming_the_value():
    with pytest.raises(ValueError, match="`workers` must be at least 1 but is 0"):
        shard_count(100, 0, COST)


def test_the_first_decision_is_kept_for_the_output_and_uses_the_measured_cost(tmp_path):
    out = str(tmp_path / "out")
    first, fresh = decide(out, 1_000_000, 4)  # nothing measured: the assumed cost
    assert (first.shards, first.fixed_s, fresh) == (4, shard_sizing.ASSUMED_FIXED_S, True)
    # a rerun with other pending images and workers splits the same way
    assert decide(out, 10, 64) == (first, False)
    (tmp_path / "out" / ".easel" / shard_sizing.DECISION_FILE).unlink()
    shard_sizing.record_cost(out, ShardCost(fixed_s=100.0, image_s=0.01, images=8))
    assert shard_sizing.measured_cost(out).fixed_s == 100.0
    # 100 s fixed at 0.01 s an image: 190,000 images a shard, so 5 shards' worth -> 4
    decided, _ = decide(out, 190_000 * 5, 64)
    assert (decided.shards, decided.fixed_s) == (4, 100.0)
    recorded = json.loads((tmp_path / "out" / ".easel" / shard_sizing.DECISION_FILE).read_text())
    assert recorded["shards"] == 4 and recorded["pending_images"] == 950_000


def test_nothing_pending_records_no_decision(tmp_path):
    assert decide(str(tmp_path), 0, 8)[0].shards == 1
    assert shard_sizing.recorded_decision(str(tmp_path)) is None


@pytest.mark.parametrize("value, expected", [("auto", "auto"), (4, 4), ("16", 16)])
def test_shards_take_a_number_or_auto(tmp_path, value, expected):
    params = SweepParameters(manifest="m.parquet", out=str(tmp_path), shards=value)
    assert params.shards == expected


@pytest.mark.parametrize("value", [0, 257, "many", True])
def test_other_shards_are_refused_naming_the_range(tmp_path, value):
    with pytest.raises(ValidationError, match=r"shards\n.*must be a whole number 1..256 or 'auto'"):
        SweepParameters(manifest="m.parquet", out=str(tmp_path), shards=value)


def test_a_shard_run_names_its_count(tmp_path):
    with pytest.raises(ValidationError, match="`shard` 0 is set by the parent .* 'auto'"):
        SweepParameters(manifest="m.parquet", out=str(tmp_path), shards="auto", shard=0)
