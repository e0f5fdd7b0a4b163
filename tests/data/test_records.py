"""A sweep's record state: damaged files set aside, images vouched for by their bytes,
compaction that a kill at any step cannot spoil (issues 30, 31)."""

from __future__ import annotations

import copy
import decimal
import errno
import hashlib
import io
import json
import logging
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from easel.data import fusion, records, results, storage
from easel.data.records import ImageRecord, read_state, records_dir, write_record_shard


def png(value: int) -> bytes:
    """An uncompressed 16x16 grey PNG: every value gives the same byte size."""
    buffer = io.BytesIO()
    Image.new("L", (16, 16), value).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


def record(out, row_id: str, key: str, data: bytes, written_at=None, run="run-1") -> ImageRecord:
    return ImageRecord(
        id=row_id, request_key=key, image_index=0, status="ok", error=None, warning=None,
        image_uri=results.image_uri(str(out), row_id, 0), seed=1, model_ref="m",
        model_digest="d", scheduler="ddim", duration_s=0.1, mlflow_run_id="r",
        flow_run_id=run, image_bytes=len(data), image_sha256=hashlib.sha256(data).hexdigest(),
        written_at=time.time() if written_at is None else written_at,
    )  # fmt: skip


def generate(out, row_id: str, key: str, data: bytes, batch: str, run="run-1") -> ImageRecord:
    """What a batch of one image writes: its PNG, then its record shard."""
    storage.write_bytes_atomic(results.image_uri(str(out), row_id, 0), data)
    made = record(out, row_id, key, data, run=run)
    write_record_shard(str(out), batch, [made])
    return made


def record_files(out) -> dict[str, list[str]]:
    """The visible record files under `out`, by folder relative to `records/` ("." itself)."""
    root, found = records_dir(str(out)), {}
    for folder, _, names in os.walk(root):
        visible = sorted(n for n in names if not n.startswith("."))
        if visible:
            found[os.path.relpath(folder, root)] = visible
    return found


def sweep_of(out, n: int, run="run-1") -> set:
    """`n` one-image batches; returns their slots."""
    return {results.slot(generate(out, f"r{i}", f"k{i}", png(i), f"b{i}", run)) for i in range(n)}


@pytest.mark.parametrize("damage", [b"", b"PAR1 cut short"], ids=["empty", "half-written"])
def test_an_unreadable_record_shard_is_quarantined_and_its_images_redone(tmp_path, caplog, damage):
    out = tmp_path / "out"
    slots = sweep_of(out, 3)
    broken = os.path.join(records_dir(str(out)), "b1.parquet")
    with open(broken, "wb") as f:
        f.write(damage)
    with caplog.at_level(logging.WARNING, logger="easel.data.records"):
        done = results.done_slots(str(out))
    assert done == slots - {("r1", 0, "k1")}  # its image is generated again
    moved = out / ".easel" / "quarantine" / "b1.parquet"
    assert moved.read_bytes() == damage and not os.path.exists(broken)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert broken in warning and str(moved) in warning
    caplog.clear()
    assert results.done_slots(str(out)) == done and not caplog.records  # warned once


@pytest.mark.parametrize("damage", [b"", b"PAR1 half a file"], ids=["empty", "half-written"])
def test_an_unreadable_results_file_is_rebuilt(tmp_path, caplog, damage):
    out = str(tmp_path)
    (tmp_path / "results.parquet").write_bytes(damage)
    with caplog.at_level(logging.WARNING, logger="easel.data.results"):
        results.write_results(out, pa.table({"id": ["a"], "status": ["ok"]}))
    assert pq.read_table(tmp_path / "results.parquet").to_pylist() == [{"id": "a", "status": "ok"}]
    assert "results.parquet is unreadable" in caplog.text


def test_a_seed_edited_a_b_a_with_equal_sizes_is_generated_again(tmp_path):
    """Row C's seed goes A -> B -> A; both PNGs have the same size. The record of A no
    longer vouches for the file, which holds B: the third run generates A again."""
    out = tmp_path / "out"
    a, b = png(10), png(200)
    assert len(a) == len(b) and a != b
    first = generate(out, "C", "key-A", a, "batch-A")
    generate(out, "C", "key-B", b, "batch-B")
    image = first.image_uri
    os.utime(image, (first.written_at + 5, first.written_at + 5))  # written after A's record
    assert ("C", 0, "key-A") not in results.done_slots(str(out))
    assert ("C", 0, "key-B") in results.done_slots(str(out))
    vouched = results.vouching_records(str(out))
    assert {r.image_sha256 for r in vouched} == {hashlib.sha256(b).hexdigest()}


def test_of_two_records_of_one_slot_the_one_matching_the_file_wins(tmp_path):
    out = tmp_path / "out"
    kept = generate(out, "C", "key", png(1), "first")
    later = record(out, "C", "key", png(2), written_at=kept.written_at + 10)  # file never had it
    write_record_shard(str(out), "second", [later])
    os.utime(kept.image_uri, (kept.written_at + 1, kept.written_at + 1))
    (vouched,) = results.vouching_records(str(out))
    assert vouched.image_sha256 == kept.image_sha256 == storage.sha256(kept.image_uri)


def test_an_image_untouched_since_its_record_is_not_read(tmp_path, monkeypatch):
    out = tmp_path / "out"
    sweep_of(out, 4)
    asked = []
    monkeypatch.setattr(results, "_digests", lambda folder, paths: asked.extend(paths) or {})
    assert len(results.done_slots(str(out))) == 4 and asked == []


class Killed(Exception):
    pass


STEPS = ["before", "writing", "written", "one removed", "all removed"]


@pytest.mark.parametrize("step", STEPS)
def test_compaction_killed_at_every_step_loses_nothing_and_counts_nothing_twice(
    tmp_path, monkeypatch, step
):
    out = tmp_path / "out"
    slots = sweep_of(out, 5)
    before = {results.slot(r): r for r in records.read_records(str(out))}
    _kill_compaction(monkeypatch, str(out), step)
    files = os.listdir(records_dir(str(out)))
    assert len([f for f in files if not f.startswith(".")]) >= 1
    state = read_state(str(out))
    assert state.table.num_rows == 5  # a row held twice is one record
    assert {results.slot(r): r for r in state.records()} == before
    assert results.done_slots(str(out)) == slots  # nothing generated again
    records.compact(str(out))  # the next run's compaction completes it
    assert "." not in record_files(out)
    assert {results.slot(r): r for r in records.read_records(str(out))} == before


def _kill_compaction(monkeypatch, out: str, step: str) -> None:
    """Run `records.compact`, killed at `step` (an exception where the process would die)."""
    if step == "before":
        return
    real_write, real_rm, removed = storage.write_parquet_atomic, None, []

    def write(uri, table):
        if step == "writing":  # a temporary file, never renamed into place
            os.makedirs(os.path.dirname(uri), exist_ok=True)
            with open(os.path.join(os.path.dirname(uri), ".partial.parquet.x~1~y.tmp"), "wb") as f:
                f.write(b"PAR1")
            raise Killed
        real_write(uri, table)
        if step == "written":
            raise Killed

    state = read_state(out)
    real_rm = state.fs.rm

    def rm(paths, *args, **kwargs):
        for path in paths if isinstance(paths, list) else [paths]:  # one by one: killable
            if step == "one removed" and removed:
                raise Killed
            real_rm(path, *args, **kwargs)
            removed.append(path)

    monkeypatch.setattr(storage, "write_parquet_atomic", write)
    monkeypatch.setattr(state.fs, "rm", rm)
    try:
        records.compact(out, state)
    except Killed:
        pass
    monkeypatch.undo()


def test_shards_of_the_previous_layout_and_compacted_files_read_together(tmp_path):
    """A shard an older easel wrote (no flow_run_id, sizes, times, LoRAs) next to a
    compacted file: both read, compacted together, and still vouch."""
    out = tmp_path / "out"
    slots = sweep_of(out, 2)
    records.compact(str(out))
    data = png(77)
    storage.write_bytes_atomic(results.image_uri(str(out), "old", 0), data)
    newer = ("flow_run_id", "image_bytes", "written_at", "loras", "nsfw_content_detected")
    old_schema = pa.schema([f for f in records.RECORD_SCHEMA if f.name not in newer])
    row = {"id": "old", "request_key": "ko", "image_index": 0, "status": "ok",
           "image_uri": results.image_uri(str(out), "old", 0), "image_sha256": None}  # fmt: skip
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema),
                   os.path.join(records_dir(str(out)), "older-easel.parquet"))  # fmt: skip
    assert results.done_slots(str(out)) == slots | {("old", 0, "ko")}
    records.compact(str(out))
    assert "." not in record_files(out)
    assert results.done_slots(str(out)) == slots | {("old", 0, "ko")}


def test_a_planning_pass_compacts_many_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "COMPACT_AT", 3)
    out = tmp_path / "out"
    slots = sweep_of(out, 4)
    assert results.done_slots(str(out)) == slots
    files = record_files(out)
    assert "." not in files and sum(map(len, files.values())) == len(files) <= 4
    assert all(f.startswith(records.COMPACTED_PREFIX) for fs in files.values() for f in fs)
    assert results.done_slots(str(out)) == slots


def test_a_reader_racing_a_compaction_finds_the_rows_in_the_new_file(tmp_path, monkeypatch):
    """Another run compacts between this reader's listing and its reads: the shards it
    listed are gone, their rows in a file it had not listed; it reads that one."""
    out = tmp_path / "out"
    slots = sweep_of(out, 3)
    fs = storage.filesystem(str(out))[0]
    real_cat, raced = fs.cat, []

    def cat(paths, **kwargs):
        if not raced:
            raced.append("started")
            raced.append(records.compact(str(out)))
        return real_cat(paths, **kwargs)

    monkeypatch.setattr(type(fs), "cat", lambda self, paths, **kw: cat(paths, **kw))
    state = read_state(str(out))
    assert raced[1] and {results.slot(r) for r in state.records()} == slots


def test_on_an_object_store_damage_is_quarantined_and_files_compacted(s3_server):
    """The same on S3 (a local server): concurrent reads, a zero-length shard set aside,
    compaction, and an A -> B -> A edit caught by the records' disagreeing digests (S3's
    modification times are whole seconds)."""
    fs = storage.filesystem("s3://records-test")[0]
    fs.mkdir("records-test")
    out = "s3://records-test/out"
    slots = sweep_of(out, 3)
    storage.write_bytes_atomic(storage.join(records_dir(out), "b2.parquet"), b"")
    assert results.done_slots(out) == slots - {("r2", 0, "k2")}
    assert fs.exists("records-test/out/.easel/quarantine/b2.parquet")
    a, b = png(10), png(200)
    generate(out, "C", "key-A", a, "batch-A")
    generate(out, "C", "key-B", b, "batch-B")
    written = records.compact(out)
    assert written and all(w.startswith("s3://records-test/out/.easel/records/part-")
                           for w in written)  # fmt: skip
    assert not [f for f in fs.ls("records-test/out/.easel/records") if f.endswith(".parquet")]
    done = results.done_slots(out)
    assert ("C", 0, "key-B") in done and ("C", 0, "key-A") not in done


def test_the_parent_counts_a_shard_s_images_from_its_writers_tallies(tmp_path):
    """Two writers of one flow run (a task and its retry) and one of another run: the
    parent's poll sums the runs it asks for, without reading a record."""
    from easel.orchestration.shards import images_recorded

    out = str(tmp_path)
    for run, made in (("run-1", 3), ("run-1", 2), ("run-2", 4)):
        tally = records.Tally(run)
        tally.add([record(out, f"{run}-{i}", "k", png(i), run=run) for i in range(made)])
        tally.write(out)
    assert images_recorded(out, {"run-1"}) == 5
    assert images_recorded(out, {"run-1", "run-2"}) == 9
    assert images_recorded(out, {"run-3"}) == 0 and images_recorded(str(tmp_path / "x"), {"a"}) == 0


def test_a_shard_reads_only_its_parts_of_the_compacted_records(tmp_path):
    """Compacted records are spread over parts by slot: shard i of 4 reads the parts that
    hold its slots (and the small files not yet compacted), and finds all of its own."""
    from easel.data.batching import Shard, slot_hash

    out = tmp_path / "out"
    slots = sweep_of(out, 24)
    records.compact(str(out))
    late = results.slot(generate(out, "late", "kl", png(99), "late"))  # not compacted yet
    for index in range(4):
        shard = Shard(index, 4)
        mine = {s for s in slots if slot_hash(s) % 4 == index}
        state = read_state(str(out), shard)
        assert {results.slot(r) for r in state.records()} == mine | {late}
        assert results.done_slots(str(out), shard) == mine | {late}
        assert len([f for f in state.files if records.PART_PREFIX in f]) <= records.PARTS // 4


def test_a_store_that_fails_a_read_quarantines_nothing(tmp_path, monkeypatch):
    """A read the store fails (a timeout, a refused request) says nothing of the file: it
    is raised, and the file stays where it is."""
    out = tmp_path / "out"
    sweep_of(out, 2)
    fs = storage.filesystem(str(out))[0]
    monkeypatch.setattr(type(fs), "cat", lambda self, paths, **kw: dict.fromkeys(
        paths, ConnectionError("the store timed out")))  # fmt: skip
    with pytest.raises(ConnectionError, match="timed out"):
        read_state(str(out))
    assert not (out / ".easel" / "quarantine").exists()
    assert len(record_files(out)["."]) == 2


def test_a_part_of_many_files_is_merged_by_a_planning_pass(tmp_path, monkeypatch):
    """Each end-of-run compaction adds a file to the parts its rows fall in; a planning pass
    that finds a part of `MERGE_AT` files merges it."""
    monkeypatch.setattr(records, "PARTS", 1)
    monkeypatch.setattr(records, "MERGE_AT", 3)
    out = tmp_path / "out"
    slots = set()
    for round_ in range(3):
        slots |= {results.slot(generate(out, f"x{round_}", "k", png(round_), f"b{round_}"))}
        records.compact(str(out))  # a run's end: the small files alone
    assert len(record_files(out)["part-0"]) == 3
    assert results.done_slots(str(out)) == slots
    assert len(record_files(out)["part-0"]) == 1
    assert results.done_slots(str(out)) == slots


def test_an_output_read_where_another_host_mounts_it_agrees_on_what_is_done(tmp_path):
    """Records name their images by the writer's path; the same folder mounted elsewhere
    (another host, moved) finds them where they lie in it, and results name them there."""
    first = tmp_path / "host-a" / "out"
    slots = sweep_of(first, 3)
    second = tmp_path / "host-b-mount"
    os.rename(first, second)
    assert results.done_slots(str(second)) == slots
    uris = {r.image_uri for r in results.vouching_records(str(second))}
    assert uris == {results.image_uri(str(second), f"r{i}", 0) for i in range(3)}


def test_a_compaction_the_store_fails_at_a_run_s_end_fails_no_work(tmp_path, monkeypatch, caplog):
    out = tmp_path / "out"
    slots = sweep_of(out, 2)

    def refused(uri, table):
        raise PermissionError(f"{uri}: write refused")

    monkeypatch.setattr(storage, "write_parquet_atomic", refused)
    with caplog.at_level(logging.WARNING, logger="easel.data.records"):
        records.compact_after_run(str(out))
    assert "not compacted" in caplog.text and "write refused" in caplog.text
    assert results.done_slots(str(out)) == slots and len(record_files(out)["."]) == 2


def test_results_from_the_planned_request_keys_equal_those_computed_again(tmp_path):
    """`results.final_records` takes each job's request keys from the plan of the whole
    sweep (a shard's plan keeps none): the same rows, row for row, as computing them again:
    an ok image, a failed one, one never generated, a record of an older content, a row
    that failed validation."""
    import dataclasses

    from easel.data.batching import Shard, build_plan
    from easel.data.manifest import SweepDefaults, read_manifest, validate_manifest
    from easel.models.engine.loading import model_facts

    table = pa.table({"id": ["a", "b", "c"], "prompt": ["a red circle", "a blue star", "x"],
                      "num_images": [2, 1, 1], "width": [64, 64, 65]})  # fmt: skip
    pq.write_table(table, tmp_path / "m.parquet")
    defaults = SweepDefaults(model="tiny-shapes", guidance_scale=7.5, num_inference_steps=2,
                             max_pixels=512 * 512)  # fmt: skip
    jobs, failures = validate_manifest(read_manifest(str(tmp_path / "m.parquet")), defaults)
    plan = build_plan(jobs, failures, model_facts, batch_size=8, done=set())
    flat = plan.request_keys
    assert len(flat) == 3  # a's two images, b's one; c failed
    keys = [flat[0:2], flat[2:3]]
    out = str(tmp_path / "out")
    made = [record(out, "a", keys[0][0], png(1)), record(out, "a", "older", png(2)),
            dataclasses.replace(record(out, "b", keys[1][0], png(3)), status="failed")]
    recorded = pa.Table.from_pylist([dataclasses.asdict(r) for r in made],
                                    schema=records.RECORD_SCHEMA)  # fmt: skip
    kept = results.final_records(plan, recorded)
    again = results.final_records(dataclasses.replace(plan, request_keys=[]), recorded)
    assert kept.equals(again)
    assert kept.column("status").to_pylist() == ["ok", "failed", "failed", "failed"]
    assert kept.column("request_key").to_pylist()[0] == keys[0][0]
    assert build_plan(jobs, failures, model_facts, 8, set(), Shard(0, 2)).request_keys == []


def test_duplicates_are_dropped_part_by_part_and_a_lone_part_file_is_never_hashed(
    tmp_path, monkeypatch
):
    """A compacted output (one file a part) is read without hashing a row; a part held
    twice (a merge killed after its write) and a small file repeating a compacted row are
    deduplicated within their part: every slot once."""
    import shutil

    out = tmp_path / "out"
    slots = sweep_of(out, 12)
    records.compact(str(out))
    hashed, unique = [], records.unique_rows
    monkeypatch.setattr(records, "unique_rows", lambda t: hashed.append(t.num_rows) or unique(t))
    state = read_state(str(out))
    assert hashed == [] and state.table.num_rows == 12
    part_file = next(f for f in state.files if records.PART_PREFIX in f)
    shutil.copy(part_file, part_file.replace(records.COMPACTED_PREFIX, "compacted-copy-"))
    (again,) = [r for r in state.records() if r.id == "r3"]
    write_record_shard(str(out), "b3-again", [again])
    state = read_state(str(out))
    assert state.table.num_rows == 12 and {results.slot(r) for r in state.records()} == slots
    assert 1 <= len(hashed) <= 2


def test_an_older_layouts_small_files_are_deduplicated_together_in_a_few_calls(
    tmp_path, monkeypatch
):
    """Record files as an older easel leaves them (one a batch, no parts), two of them
    holding the same records (a batch written twice) and one also compacted: every slot
    once; the small files' rows hashed together, so the calls do not grow with the files."""
    import shutil

    out = tmp_path / "out"
    slots = sweep_of(out, 40)
    folder = records_dir(str(out))
    shutil.copy(os.path.join(folder, "b3.parquet"), os.path.join(folder, "b3-again.parquet"))
    hashed, unique = [], records.unique_rows
    monkeypatch.setattr(records, "unique_rows", lambda t: hashed.append(t.num_rows) or unique(t))
    state = read_state(str(out))
    assert state.table.num_rows == 40 and {results.slot(r) for r in state.records()} == slots
    assert hashed == [41]  # every small file's rows at once, the copy's row dropped
    records.compact(str(out), state)
    compacted = [os.path.join(root, name) for root, _, names in os.walk(folder)
                 for name in names if name.endswith(".parquet")]  # fmt: skip
    shutil.copy(compacted[0], os.path.join(folder, "b-late.parquet"))  # a part's rows again
    hashed.clear()
    state = read_state(str(out))
    assert state.table.num_rows == 40 and {results.slot(r) for r in state.records()} == slots
    assert len(hashed) <= 2  # the late file's rows, and the one part they repeat


def previous_final_records(plan, recorded: pa.Table) -> list[dict]:
    """What `results.final_records` keeps, one dict a record, each image's key computed
    again: the reference it is compared with."""
    import dataclasses

    from easel.data.batching import planned_images

    def rank(row):  # ok first, then the later (no time: last); stable
        return (row["status"] != "ok", row["written_at"] is None, -(row["written_at"] or 0))

    best: dict = {}
    for row in sorted((r for r in recorded.to_pylist() if r["request_key"]), key=rank):
        best.setdefault((row["id"], row["image_index"], row["request_key"]), row)
    kept = [{**dataclasses.asdict(results.failed_row(f.id, f.error)), "_row": f.row_index}
            for f in plan.failures]  # fmt: skip
    for job in plan.jobs:
        found = [best.get(image.slot) for image in planned_images(job, plan.facts[job.model])]
        for row in found if any(found) else found[:1]:
            missing = dataclasses.asdict(results.failed_row(job.id, results.NOT_GENERATED))
            kept.append({**(row or missing), "_row": job.row_index})
    return sorted(kept, key=lambda r: (r["_row"], r["image_index"] is None, r["image_index"] or 0))


def test_final_records_from_the_planned_keys_equal_the_per_image_algorithm_row_for_row(tmp_path):
    """Rows of 1 to 3 images; per slot: no record, a failed try then an ok image, two ok
    records (the later wins), a record without a time, a record of an older content, a
    failed try alone; rows that failed validation; records of a row not in the manifest."""
    import dataclasses

    from easel.data.batching import build_plan
    from easel.data.manifest import SweepDefaults, read_manifest, validate_manifest
    from easel.models.engine.loading import model_facts

    count = 12
    pq.write_table(pa.table({"id": [f"row{i}" for i in range(count)],
                             "prompt": [f"a red circle {i}" for i in range(count)],
                             "num_images": [1 + i % 3 for i in range(count)],
                             "width": [65 if i % 5 == 4 else 64 for i in range(count)]}),
                   tmp_path / "m.parquet")  # fmt: skip
    defaults = SweepDefaults(model="tiny-shapes", guidance_scale=7.5, num_inference_steps=2,
                             max_pixels=512 * 512)  # fmt: skip
    jobs, failures = validate_manifest(read_manifest(str(tmp_path / "m.parquet")), defaults)
    plan = build_plan(jobs, failures, model_facts, batch_size=8, done=set())
    out, made, keys = str(tmp_path / "out"), [], iter(plan.request_keys)
    for n, job in enumerate(plan.jobs):
        for k in range(job.num_images):
            key, case = next(keys), (n + k) % 6
            base = dataclasses.replace(record(out, job.id, key, png(n), 100.0 + n), image_index=k)
            if case == 1:
                made += [dataclasses.replace(base, status="failed", written_at=300.0), base]
            elif case == 2:
                made += [base, dataclasses.replace(base, written_at=200.0, image_sha256="later")]
            elif case == 3:
                made += [dataclasses.replace(base, written_at=None)]
            elif case == 4:
                made += [dataclasses.replace(base, request_key="older")]
            elif case == 5:
                made += [dataclasses.replace(base, status="failed", error="boom")]
    made.append(record(out, "not-in-the-manifest", "k", png(1)))
    recorded = pa.Table.from_pylist([dataclasses.asdict(r) for r in made],
                                    schema=records.RECORD_SCHEMA)  # fmt: skip
    assert plan.failures and len(plan.request_keys) > len(plan.jobs)
    kept = results.final_records(plan, recorded)
    assert kept.to_pylist() == previous_final_records(plan, recorded)
    assert set(kept.column("status").to_pylist()) == {"ok", "failed"}


def swept_with_another_manifest(tmp_path):
    """An output holding the results of another manifest (a pass-through column typed
    otherwise, a column this one lacks) and the records of a 12-row manifest (rows of 1 to 3
    images; an id left null; a seed beyond int64 and a width the model refuses: failed at
    validation): per image ok, failed, or never tried. Returns (out, manifest table, plan)."""
    count = 12
    other = pa.table({"id": ["other-1", "row3"], "note": ["text", "x"], "extra": [1.5, None]})
    out, manifest, plan = swept(tmp_path, other, [pa.table({
        "id": [None if i == 7 else f"row{i}" for i in range(count)],
        "prompt": [f"a red circle {i}" for i in range(count)],
        "num_images": [1 + i % 3 for i in range(count)],
        "width": [65 if i == 4 else 64 for i in range(count)],
        "seed": pa.array([2**64 - 1 if i == 9 else i for i in range(count)], pa.uint64()),
        "note": list(range(count)),
    })])  # fmt: skip
    assert len(plan.failures) == 2 and len(plan.request_keys) > 2 * len(plan.jobs) - 4
    return out, manifest.table, plan


def swept(tmp_path, other: pa.Table, parts: list[pa.Table]):
    """An output holding `other` as the results of another manifest, and the records of the
    manifest written as `parts` (a Parquet file each): per image ok, failed, or never tried.
    Returns (out, the manifest as read, plan)."""
    import dataclasses

    from easel.data.batching import build_plan
    from easel.data.manifest import SweepDefaults, read_manifest, validate_manifest
    from easel.models.engine.loading import model_facts

    out = str(tmp_path / "out")
    results.write_results(out, other)
    folder = tmp_path / "manifest"  # image paths are relative to it
    folder.mkdir()
    for n, part in enumerate(parts):
        pq.write_table(part, folder / f"m-{n}.parquet")
    defaults = SweepDefaults(model="tiny-shapes", guidance_scale=7.5, num_inference_steps=2,
                             max_pixels=512 * 512)  # fmt: skip
    manifest = read_manifest(str(folder))
    jobs, failures = validate_manifest(manifest, defaults)
    plan = build_plan(jobs, failures, model_facts, batch_size=8, done=set())
    made, keys = [], iter(plan.request_keys)
    for n, job in enumerate(plan.jobs):
        for k in range(job.num_images):
            key, case = next(keys), (n + k) % 3
            base = dataclasses.replace(record(out, job.id, key, png(n)), image_index=k,
                                       image_uri=results.image_uri(out, job.id, k))  # fmt: skip
            if case == 0:
                storage.write_bytes_atomic(base.image_uri, png(n))
                made.append(base)
            elif case == 1:
                made.append(dataclasses.replace(base, status="failed", error="boom"))
    write_record_shard(out, "batch", made)
    return out, manifest, plan


def results_written_whole(out, manifest: pa.Table, plan) -> pa.Table:
    """`results.parquet` as it was written before it was streamed: this manifest's table
    assembled whole, the other manifests' rows concatenated to it, written in one piece."""
    final = results.final_records(plan, results.vouched(out))
    rows = final.column("_row")
    table = results.assemble_results(manifest, rows, final.drop_columns(["_row"]))
    before = pq.read_table(results.results_uri(out))
    others = before.filter(pa.compute.invert(pa.compute.is_in(before.column("id"),
                                                              table.column("id"))))  # fmt: skip
    table, others = results._agreeing(table, others)
    whole = pa.concat_tables([table, others], promote_options="permissive")
    written = io.BytesIO()
    pq.write_table(results.with_pandas_metadata(whole), written)
    return pq.read_table(written)


@pytest.mark.parametrize("row_group", [3, results.RESULTS_ROW_GROUP])
def test_results_streamed_in_row_groups_equal_the_table_written_whole(tmp_path, row_group):
    """Row for row, column for column, types and pandas metadata: the streamed file is
    the one the whole-table write made; the other manifest's row (and its own column)
    kept, its clashing column as text, the row both manifests name taken from this one."""
    out, manifest, plan = swept_with_another_manifest(tmp_path)
    expected = results_written_whole(out, manifest, plan)
    summary = results.publish_results(out, manifest, plan, 0, row_group=row_group)
    written = pq.read_table(summary.results_uri)
    assert written.equals(expected, check_metadata=True)
    assert set(written.column("status").to_pylist()) == {"ok", "failed", None}  # None: other-1
    assert written.column("id").to_pylist()[-1] == "other-1"
    assert written.column("note").type == pa.string() and "extra" in written.column_names
    assert results.publish_results(out, manifest, plan, 0, row_group=row_group) == summary


def test_results_are_written_in_row_groups_of_at_most_the_limit(tmp_path):
    """Each row group holds at most `row_group` rows: memory holds one, not the table."""
    out, manifest, plan = swept_with_another_manifest(tmp_path)
    summary = results.publish_results(out, manifest, plan, 0, row_group=4)
    file = pq.ParquetFile(summary.results_uri)
    sizes = [file.metadata.row_group(i).num_rows for i in range(file.num_row_groups)]
    assert file.num_row_groups > 2 and max(sizes) <= 4 and sum(sizes) == file.metadata.num_rows
    results.publish_results(out, manifest, plan, 0)  # the limit: one group of this manifest's
    assert pq.ParquetFile(summary.results_uri).num_row_groups == 2  # and one of the other's


FUSION_ITEM = pa.struct([("text", pa.null()), ("image", pa.string()), ("weight", pa.float64())])


def typed_manifest_parts(count: int = 9) -> list[pa.Table]:
    """A manifest in two files whose pass-through columns have the types a user's manifest
    may hold: dictionary-encoded and large strings, a timestamp with its zone, a decimal,
    nested lists, and two fusion rows, whose items all lack a text (`text: null`): more
    items than rows in a row group."""
    fused, items = (3, 4), [("red.png", 1.0), ("blue.png", 0.5), ("red.png", 0.25)]
    table = pa.table({
        "id": [f"row{i}" for i in range(count)],
        "prompt": [None if i in fused else f"a blue square {i}" for i in range(count)],
        "num_images": [1 + i % 2 for i in range(count)],
        "tag": pa.array([("night", "day")[i % 2] for i in range(count)]).dictionary_encode(),
        "caption": pa.array([f"caption {i}" * (i + 1) for i in range(count)], pa.large_string()),
        "taken_at": pa.array([1_700_000_000_000_000 + i for i in range(count)],
                             pa.timestamp("us", tz="Europe/Paris")),
        "price": pa.array([decimal.Decimal(f"{i}.{i:02d}") for i in range(count)],
                          pa.decimal128(7, 2)),
        "grid": pa.array([[[i, i + 1], []] if i % 3 else None for i in range(count)],
                         pa.list_(pa.list_(pa.int32()))),
        fusion.COLUMN: pa.array([
            [{"text": None, "image": image, "weight": weight} for image, weight in items]
            if i in fused else None for i in range(count)], pa.list_(FUSION_ITEM)),
    })  # fmt: skip
    return [table.slice(0, 5), table.slice(5)]


@pytest.mark.parametrize("physical", [False, True])
@pytest.mark.parametrize("clash", [False, True])
def test_results_of_every_column_type_streamed_in_row_groups_equal_the_table_written_whole(
    tmp_path, physical, clash
):
    """Row for row and type for type, in row groups of 2 rows (more than one of each part of
    the manifest), the streamed file is the one the whole-table write made: the manifest as
    read, and (`physical`) as its files hold it, dictionary and large strings kept, in two
    chunks. The output held another manifest's row; with `clash` a fusion row (items with a
    text): the fusion column both name is then as the whole-table write agreed it (JSON
    text), else it keeps its type (`text: null`); its price and tag take this one's types."""
    other = pa.table({"id": ["other-1"], "price": [2.5], "tag": ["dusk"]})
    if clash:
        other = other.append_column(fusion.COLUMN, [[[{"text": "a cat", "weight": 1.0}]]])
    parts = typed_manifest_parts()
    out, manifest, plan = swept(tmp_path, other, parts)
    table = pa.concat_tables(parts) if physical else manifest.table
    assert table.column(fusion.COLUMN).type == pa.list_(FUSION_ITEM)
    expected = results_written_whole(out, table, plan)
    summary = results.publish_results(out, table, plan, 0, row_group=2)
    file = pq.ParquetFile(summary.results_uri)
    assert file.num_row_groups > len(parts) + 1
    written = file.read()  # a dictionary column in chunks (row groups): compared by value
    assert written.schema.equals(expected.schema, check_metadata=True)
    assert written.to_pylist() == expected.to_pylist()
    assert written.num_rows == expected.num_rows > table.num_rows
    kept = written.to_pylist()[-1]  # the other manifest's row, in this one's types
    assert (kept["id"], kept["tag"], kept["price"]) == ("other-1", "dusk", decimal.Decimal("2.5"))
    items = written.filter(pa.compute.equal(written.column("id"), "row4"))[fusion.COLUMN][0]
    items = json.loads(items.as_py()) if clash else items.as_py()
    assert [(item["text"], item["image"]) for item in items] == [
        (None, "red.png"), (None, "blue.png"), (None, "red.png")]  # fmt: skip


def test_another_manifest_s_rows_keep_their_values_when_a_column_changes_type():
    """An earlier manifest's rows in `results.parquet` are cast to a newer manifest's type
    only where nothing is lost; else both become text: "007" stays "007" (not 7), a struct
    keeps every field, a zoned time keeps its zone; an int32 is widened as it is."""
    from easel.data.results import _agreeing

    zoned = pa.array([0], pa.timestamp("s", tz="Europe/Paris"))
    older = pa.table({"code": ["007"], "price": ["1.50"], "meta": [{"x": 1, "secret": "s"}],
                      "at": zoned, "n": pa.array([3], pa.int32())})  # fmt: skip
    newer = pa.table({"code": [8], "price": [2.5], "meta": [{"x": 2}],
                      "at": pa.array([0], pa.timestamp("s")), "n": pa.array([4], pa.int64())})
    table, others = _agreeing(newer, older)
    assert others.column("n").type == pa.int64() and others.column("n").to_pylist() == [3]
    for name in ("code", "price", "meta", "at"):
        assert table.schema.field(name).type == others.schema.field(name).type == pa.string()
    assert others.column("code").to_pylist() == ["007"]
    assert others.column("price").to_pylist() == ["1.50"]
    assert "secret" in others.column("meta")[0].as_py()
    assert others.column("at")[0].as_py().endswith("+0100")  # the zone kept


def test_another_manifests_rows_are_read_only_from_the_row_groups_holding_them(
    tmp_path, monkeypatch
):
    """The results already there are opened, not read whole: their `id` column first, then
    only the row groups holding another manifest's rows, whose rows are kept in order."""
    out, manifest, plan = swept_with_another_manifest(tmp_path)
    ids = ["row0", "row1", "other-a", "row2", "row5", "row6", "other-b"]
    earlier = pa.table({"id": ids, "note": [f"n{i}" for i in range(7)],
                        "extra": [float(i) for i in range(7)]})  # fmt: skip
    pq.write_table(earlier, results.results_uri(out), row_group_size=2)
    groups, read_group = [], pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group",
                        lambda self, i, *a, **k: groups.append(i) or read_group(self, i, *a, **k))
    whole, read = [], pq.ParquetFile.read  # the results read whole: their `columns` unnamed

    def spied(self, *args, **kwargs):
        if "note" in self.schema_arrow.names:  # the results file, not a record file
            whole.append(kwargs.get("columns"))
        return read(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read", spied)
    summary = results.publish_results(out, manifest, plan, 0)
    assert groups == [1, 3]  # other-a's and other-b's; rows 0-6 are this manifest's
    assert ["id"] in whole and None not in whole
    written = pq.read_table(summary.results_uri)
    kept = written.filter(pa.compute.starts_with(written.column("id"), "other-"))
    assert kept.column("id").to_pylist() == ["other-a", "other-b"]
    assert kept.column("note").to_pylist() == ["n2", "n6"] and kept["extra"].to_pylist() == [2, 6]
    assert written.num_rows == results.final_records(plan, results.vouched(out)).num_rows + 2


def test_results_after_the_plan_is_released_are_those_of_the_whole_plan(tmp_path):
    """`release_batches` frees the jobs and keeps what the results need as columns: the
    same results.parquet and summary as the plan whole; the jobs and keys are gone."""
    out, manifest, plan = swept_with_another_manifest(tmp_path)
    whole = copy.deepcopy(plan)
    expected = results_written_whole(out, manifest, whole)
    total = plan.total_images
    plan.release_batches()
    assert plan.jobs == [] and plan.request_keys == [] and plan.batches == []
    assert plan.total_images == total == plan.requested().num_rows
    summary = results.publish_results(out, manifest, plan, 0)
    assert pq.read_table(summary.results_uri).equals(expected, check_metadata=True)
    assert results.publish_results(out, manifest, whole, 0) == summary


class FailingReads:
    """A file handle whose reads fail as s3fs raises a 503 (SlowDown) after its retries."""

    def __init__(self, handle):
        self.handle = handle

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()

    def read(self, *args):
        raise OSError(errno.EBUSY, "SlowDown")


@pytest.mark.parametrize("fails", ["open", "read"])
def test_a_store_error_on_the_old_results_is_raised_and_loses_none_of_their_rows(
    tmp_path, monkeypatch, fails
):
    """The store failing to open or read the results already there is not a damaged file:
    the error is raised and the file, with the other manifest's rows, stays as it was."""
    out, manifest, plan = swept_with_another_manifest(tmp_path)
    uri = results.results_uri(out)
    before = open(uri, "rb").read()
    fs, _ = storage.filesystem(uri)
    opened = type(fs).open

    def failing(self, path, *args, **kwargs):
        if not path.endswith("results.parquet"):
            return opened(self, path, *args, **kwargs)
        if fails == "open":
            raise PermissionError(errno.EACCES, "AccessDenied")
        return FailingReads(opened(self, path, *args, **kwargs))

    monkeypatch.setattr(type(fs), "open", failing)
    expected = PermissionError if fails == "open" else OSError
    with pytest.raises(expected) as raised:
        results.publish_results(out, manifest, plan, 0)
    assert raised.value.errno in (errno.EACCES, errno.EBUSY)
    assert open(uri, "rb").read() == before


def test_an_empty_manifest_writes_no_row_of_its_own_and_keeps_the_others(tmp_path):
    """No image requested (a manifest of no rows): an empty summary, the earlier manifests'
    rows kept, and a fresh output's results an empty table (no crash on empty columns)."""
    from easel.data.batching import build_plan
    from easel.models.engine.loading import model_facts

    out, manifest, plan = swept_with_another_manifest(tmp_path)
    earlier = pq.read_table(results.publish_results(out, manifest, plan, 0).results_uri)
    nothing = build_plan([], [], model_facts, batch_size=8, done=set())
    for folder in (out, str(tmp_path / "fresh")):
        summary = results.publish_results(folder, manifest.slice(0, 0), nothing, 0)
        assert (summary.rows, summary.images_ok, summary.images_failed) == (0, 0, 0)
        assert summary.rows_failed == summary.images_nsfw == 0 and not summary.failures
        written = pq.read_table(summary.results_uri)
        assert written.num_rows == (earlier.num_rows if folder == out else 0)
