"""A sharded parent's verdict on the output's images, handed down so that its shards do
not list `images/` again (issue 30: a million images, 16 shards)."""

from __future__ import annotations

import logging
import os
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from easel.data import records, results, storage, verdict
from easel.data.batching import Shard, slot_hash
from easel.data.records import write_record_shard
from tests.data.test_records import generate, png, record, sweep_of

PARENT = "parent-run"


@pytest.fixture(params=["local", "s3"])
def out(request, tmp_path) -> str:
    """An output folder: on local disk, or in a fresh bucket of the local S3 server."""
    if request.param == "local":
        return str(tmp_path / "out")
    request.getfixturevalue("s3_server")
    name = f"verdict-{uuid.uuid4().hex[:12]}"
    storage.filesystem(f"s3://{name}")[0].mkdir(name)
    return f"s3://{name}/out"


def written_earlier(out: str, n: int) -> set:
    """`n` one-image batches whose records were written a minute ago (so that an image
    rewritten now is newer than its record, on any store); returns their slots."""
    made = set()
    for i in range(n):
        storage.write_bytes_atomic(results.image_uri(out, f"r{i}", 0), png(i))
        done = record(out, f"r{i}", f"k{i}", png(i), written_at=time.time() - 60)
        write_record_shard(out, f"b{i}", [done])
        made.add(results.slot(done))
    return made


def unlisted(monkeypatch) -> None:
    """From here on, listing `images/` or reading an image fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"images listed or read: {args}")

    monkeypatch.setattr(storage, "file_versions", refuse)
    monkeypatch.setattr(results, "_digests", refuse)


def of_shard(slots: set, shard: Shard) -> set:
    return {s for s in slots if slot_hash(s) % shard.count == shard.index}


def test_the_verdict_names_exactly_the_stale_records_and_a_shard_trusts_the_others(
    out, monkeypatch
):
    """Image r1 deleted, r2 cut short, r3 rewritten with other bytes of the same size (and
    a later modification time), and r4's (a record without `written_at`, as an older easel
    wrote) deleted: the parent's full pass names exactly those four records; each shard
    planning with the verdict lists nothing and finds the done slots a full shard pass
    finds."""
    slots = written_earlier(out, 12)
    old = record(out, "r4", "k4", png(4), written_at=None)
    old.written_at = None
    write_record_shard(out, "b4-old", [old])  # r4 now has two records: one without a time
    storage.remove(results.image_uri(out, "r1", 0))
    storage.write_bytes_atomic(results.image_uri(out, "r2", 0), png(2)[:-10])
    storage.write_bytes_atomic(results.image_uri(out, "r3", 0), png(200))
    assert len(png(200)) == len(png(3))
    if not out.startswith("s3://"):
        later = time.time()
        os.utime(results.image_uri(out, "r3", 0), (later, later))
    storage.remove(results.image_uri(out, "r4", 0))

    began = time.time()
    done = results.done_slots(out, hand_down=PARENT)
    stale = {("r1", 0, "k1"), ("r2", 0, "k2"), ("r3", 0, "k3"), ("r4", 0, "k4")}
    assert done == slots - stale
    handed = verdict.read_verdict(out, PARENT)
    named = handed.stale.to_pylist()
    assert sorted((r["id"], r["written_at"] is None) for r in named) == [
        ("r1", False), ("r2", False), ("r3", False), ("r4", False), ("r4", True)]  # fmt: skip
    assert handed.stale.column_names == list(verdict.COLUMNS)
    assert began - 1 <= handed.checked_at <= time.time()

    records.compact(out)
    shards = [Shard(i, 2) for i in range(2)]
    full = {shard: results.done_slots(out, shard) for shard in shards}
    unlisted(monkeypatch)
    for shard in shards:
        assert results.done_slots(out, shard, vouched_by=PARENT) == full[shard]
        assert full[shard] == of_shard(slots - stale, shard)


def test_records_written_after_the_verdict_are_trusted(tmp_path, monkeypatch):
    """A crashed earlier attempt of the shard made r1 again after the parent's check, and
    a concurrent run made a new row: both records are newer than the verdict, so trusted;
    the record the verdict names stays refused (its slot is done by the newer record)."""
    out = str(tmp_path / "out")
    slots = sweep_of(out, 6)
    storage.remove(results.image_uri(out, "r1", 0))
    storage.remove(results.image_uri(out, "r2", 0))
    assert results.done_slots(out, hand_down=PARENT) == slots - {("r1", 0, "k1"), ("r2", 0, "k2")}
    time.sleep(0.01)  # the new records' `written_at` differs from the old ones'
    again = results.slot(generate(out, "r1", "k1", png(1), "again"))
    late = results.slot(generate(out, "late", "kl", png(50), "late"))
    unlisted(monkeypatch)
    found = set().union(*(results.done_slots(out, Shard(i, 2), vouched_by=PARENT)
                          for i in range(2)))  # fmt: skip
    assert found == (slots - {("r2", 0, "k2")}) | {again, late}


@pytest.mark.parametrize("damage", ["gone", "garbage", "no time", "other columns"])
def test_a_verdict_gone_or_unreadable_means_full_vouching(tmp_path, caplog, damage):
    """A verdict removed, cut to garbage, or written by something else (no check time, or
    not a record's identities): the shard vouches for every image itself, as without one,
    and says so in one log line."""
    out = str(tmp_path / "out")
    slots = sweep_of(out, 8)
    results.done_slots(out, hand_down=PARENT)
    records.compact(out)  # a shard reads its parts alone
    storage.remove(results.image_uri(out, "r5", 0))  # after the parent's check
    uri = verdict.verdict_uri(out, PARENT)
    if damage == "gone":
        verdict.remove_verdict(out, PARENT)
    elif damage == "garbage":
        storage.write_bytes_atomic(uri, b"not parquet")
    elif damage == "no time":
        pq.write_table(pq.read_table(uri).replace_schema_metadata(None), uri)
    else:
        table = pa.table({"path": ["a"]}).replace_schema_metadata({verdict.CHECKED_AT: b"1"})
        pq.write_table(table, uri)
    for index in range(2):
        shard = Shard(index, 2)
        with caplog.at_level(logging.WARNING, logger="easel.data.verdict"):
            caplog.clear()
            found = results.done_slots(out, shard, vouched_by=PARENT)
        assert found == results.done_slots(out, shard) == of_shard(slots - {("r5", 0, "k5")},
                                                                    shard)  # fmt: skip
        (line,) = [r.getMessage() for r in caplog.records]
        assert uri in line and "vouching for every image here" in line


def test_a_verdict_is_removed_with_the_block_that_handed_it_down(tmp_path):
    """`handed_down` removes the verdict however its block ends; one already gone is no
    error, and no name hands nothing down."""
    out = str(tmp_path / "out")
    sweep_of(out, 2)
    with pytest.raises(RuntimeError, match="shard failed"):
        with verdict.handed_down(out, PARENT):
            results.done_slots(out, hand_down=PARENT)
            assert storage.exists(verdict.verdict_uri(out, PARENT))
            raise RuntimeError("shard failed")
    assert not storage.exists(verdict.verdict_uri(out, PARENT))
    with verdict.handed_down(out, PARENT):
        pass  # never written
    with verdict.handed_down(out, None):
        results.done_slots(out)
    assert storage.list_names(records.state_dir(out, verdict.FOLDER)) == []


def test_a_shard_plans_only_the_rows_its_parent_planned_for_it(tmp_path, caplog, monkeypatch):
    """The parent's plan handed down (`write_rows`): a shard validates only the manifest rows
    holding its pending images and plans exactly what it would from the whole manifest;
    a plan gone, unreadable, or made from another version of the manifest: the whole
    manifest, with one log line naming why."""
    from easel.data import manifest
    from easel.data.manifest import SweepDefaults, write_manifest
    from easel.models.engine.sweep import SweepInputs, plan_sweep

    uri = write_manifest(str(tmp_path / "m.parquet"),
                         [{"id": f"r{i}", "prompt": f"shape {i}", "seed": i, "num_images": 2}
                          for i in range(40)])  # fmt: skip
    out = str(tmp_path / "out")
    defaults = SweepDefaults(model="tiny-shapes", guidance_scale=7.5, num_inference_steps=2,
                             max_pixels=64 * 64)  # fmt: skip
    inputs = SweepInputs(manifest=uri, out=out, defaults=defaults, input_roots=(), batch_size=4,
                         device="cpu", dtype=None, trust_pickle=False)  # fmt: skip
    table, whole = plan_sweep(inputs, check_done=False)
    pending = whole.pending_rows(4)
    assert sum(sum(rows.values()) for rows in pending.values()) == 80
    verdict.write_verdict(out, PARENT, records.RECORD_SCHEMA.empty_table(), time.time())
    verdict.write_rows(out, PARENT, pending, table.versions)
    asked = []
    real = manifest.validate_manifest
    monkeypatch.setattr(manifest, "validate_manifest",
                        lambda *args: asked.append(args[3]) or real(*args))  # fmt: skip
    for index in range(4):
        _, alone = plan_sweep(inputs, Shard(index, 4))
        _, handed = plan_sweep(inputs, Shard(index, 4), vouched_by=PARENT)
        assert handed.batches == alone.batches and handed.batches
        assert asked[-1] == list(pending[index]) and len(asked[-1]) < 40
    damages = {
        "gone": lambda: storage.remove(verdict.rows_uri(out, PARENT)),
        "unreadable": lambda: storage.write_bytes_atomic(verdict.rows_uri(out, PARENT), b"PAR1"),
        "changed": lambda: write_manifest(uri, [{"id": "r0", "prompt": "another"}]),
    }
    for damage, words in (("changed", "manifest changed"), ("unreadable", "unreadable"),
                          ("gone", "is gone")):  # fmt: skip
        damages[damage]()
        with caplog.at_level(logging.WARNING, logger="easel.data.verdict"):
            caplog.clear()
            plan_sweep(inputs, Shard(1, 4), vouched_by=PARENT)
        assert asked[-1] is None, damage  # the whole manifest
        assert [words in r.getMessage() for r in caplog.records] == [True], damage


def test_what_a_killed_parent_left_is_removed_by_the_next_parent(tmp_path):
    """A parent killed -9 never ends its block: its verdict and plan stay. The next parent
    removes those older than `LEFT_AFTER_S` as it begins, and keeps newer ones (a parent
    still running)."""
    out = str(tmp_path / "out")
    for name in ("killed", "running"):
        verdict.write_verdict(out, name, records.RECORD_SCHEMA.empty_table(), time.time())
        verdict.write_rows(out, name, {0: {1: 1}}, ())
    old = time.time() - verdict.LEFT_AFTER_S - 60
    for uri in (verdict.verdict_uri(out, "killed"), verdict.rows_uri(out, "killed")):
        os.utime(uri, (old, old))
    with verdict.handed_down(out, "next"):
        assert sorted(os.listdir(f"{out}/.easel/vouched")) == ["running-rows.parquet",
                                                               "running.parquet"]  # fmt: skip
