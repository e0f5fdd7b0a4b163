"""An image folder listed in ranges at once on S3, and the size check it serves (issue 30)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
import uuid

import pyarrow as pa
import pytest

from easel.data import listing, records, results, storage
from tests.data.test_records import generate, png, record, sweep_of


def test_ranges_cut_the_keys_into_strides_that_follow_one_another():
    keys = pa.array([f"k{i}" for i in range(7)])
    assert listing.ranges(keys, 3) == [(None, "k2"), ("k2", "k5"), ("k5", "k6")]
    assert listing.ranges(keys[:1], 1000) == [(None, "k0")]


@pytest.fixture
def bucket(s3_server):
    """A fresh bucket of the local S3 server."""
    name = f"listing-{uuid.uuid4().hex[:12]}"
    fs = storage.filesystem(f"s3://{name}")[0]
    fs.mkdir(name)
    return fs, name


@pytest.mark.parametrize("share", [1.0, 0.25])
def test_ranged_listing_finds_every_file_asked_about_and_nothing_missing(
    bucket, monkeypatch, share
):
    """Pages of 3 keys, files not asked about between those asked about (a range pages
    on past them): every file asked about is found with its size, a missing one is not,
    and nothing outside the folder is."""
    fs, name = bucket
    monkeypatch.setattr(listing, "PAGE", 3)
    files = {f"{name}/out/images/r{i:02d}/0.png": b"x" * (i + 1) for i in range(40)}
    files[f"{name}/out/images-other/r00/0.png"] = b"other"
    files[f"{name}/out/imagesX"] = b"next to the folder"
    fs.pipe(files)
    wanted = [p for i, p in enumerate(sorted(files)) if i % 3 == 0 and "/images/" in p]
    wanted.append(f"{name}/out/images/r05/9.png")  # never written
    table = listing.versions(fs, f"{name}/out/images", wanted, share)
    found = {row["path"]: row for row in table.to_pylist()}
    assert len(found) == table.num_rows and table.schema == listing.SCHEMA
    assert f"{name}/out/images/r05/9.png" not in found
    for path in wanted[:-1]:
        assert found[path]["size"] == len(files[path]) and found[path]["mtime"] > 0
    assert all(path.startswith(f"{name}/out/images/") for path in found)
    assert listing.versions(fs, f"{name}/out/images", [], share).num_rows == 0


def test_ranged_listing_of_a_folder_never_written_is_empty(bucket):
    fs, name = bucket
    assert listing.versions(fs, f"{name}/nothing", [f"{name}/nothing/a.png"]).num_rows == 0
    with pytest.raises(ValueError, match="share must be in"):
        listing.versions(fs, f"{name}/nothing", [], 0)


def test_on_s3_a_truncated_or_missing_image_is_refused_by_the_listing(bucket, monkeypatch):
    """The size check done by the ranged listing (no read of any image: the records were
    written after their images): an image cut short and one removed are done again, the
    others vouched for, the whole output's planning and a shard's alike."""
    from easel.data.batching import Shard, slot_hash

    fs, name = bucket
    monkeypatch.setattr(listing, "PAGE", 2)
    out = f"s3://{name}/out"
    slots = sweep_of(out, 12)
    fs.pipe(f"{name}/out/images/r3/0.png", png(3)[:-10])
    fs.rm(f"{name}/out/images/r7/0.png")
    reads, ranged, versions = [], [], listing.versions
    monkeypatch.setattr(results, "_digests", lambda folder, paths: reads.extend(paths) or {})
    monkeypatch.setattr(listing, "versions", lambda *a: ranged.append(a[3]) or versions(*a))
    expected = slots - {("r3", 0, "k3"), ("r7", 0, "k7")}
    assert results.done_slots(out) == expected and not reads
    records.compact(out)
    for index in range(2):
        mine = {s for s in expected if slot_hash(s) % 2 == index}
        assert results.done_slots(out, Shard(index, 2)) == mine
    assert ranged == [1.0, 0.5, 0.5]


def test_on_s3_an_image_replaced_after_its_record_is_read_and_refused(bucket):
    """An image of the same size written after its record: the listing cannot vouch for
    it, its bytes are read and their digest refuses it."""
    fs, name = bucket
    out = f"s3://{name}/out"
    generate(out, "A", "kA", png(1), "bA")
    made = generate(out, "B", "kB", png(2), "bB")
    state = records.read_state(out)
    table = state.table.set_column(state.table.column_names.index("written_at"), "written_at",
                                   [[made.written_at - 5] * 2])  # fmt: skip
    fs.pipe(f"{name}/out/images/B/0.png", png(3))  # same size, other bytes
    state = records.State(state.fs, table, state.read)
    kept = results.vouched(out, state)
    assert kept.column("id").to_pylist() == ["A"]


def previous_vouched(out: str, state: records.State) -> list[dict]:
    """The per-record algorithm `results.vouched` replaced (one Python object per record,
    a dict of the listing), for comparison: its rows, in order."""
    folder = storage.join(out, "images")
    listed = storage.file_versions(folder).to_pylist()
    versions = {row["path"]: (row["size"], row["mtime"]) for row in listed}
    rows, base = state.table.to_pylist(), folder.rstrip("/")
    keep, by_path = [row["status"] != "ok" for row in rows], {}
    for i, row in enumerate(rows):
        if not keep[i]:
            row["image_uri"] = f"{base}/{row['id']}/{row['image_index']}.png"
            by_path.setdefault(storage.path_of(row["image_uri"]), []).append(i)

    def verdict(row, version):
        if version is None or row["image_bytes"] not in (None, version[0]):
            return False
        if row["image_sha256"] is None:
            return True
        written, modified = row["written_at"], version[1]
        return True if None not in (written, modified) and modified <= written else None

    for path, indices in by_path.items():
        verdicts = {i: verdict(rows[i], versions.get(path)) for i in indices}
        alive = [i for i in indices if verdicts[i] is not False]
        if None in verdicts.values() or len({rows[i]["image_sha256"] for i in alive}) > 1:
            data = open(path, "rb").read() if os.path.exists(path) else None
            digest = None if data is None else hashlib.sha256(data).hexdigest()
            alive = [i for i in alive if rows[i]["image_sha256"] == digest]
        for i in alive:
            keep[i] = True
    return [row for row, kept in zip(rows, keep, strict=True) if kept]


@pytest.mark.parametrize("twice", [True, False], ids=["a-file-named-twice", "each-once"])
def test_vouching_in_columns_keeps_the_rows_the_per_record_algorithm_kept(tmp_path, twice):
    """Every case the listing and the digests decide, row for row against the previous
    algorithm: intact, cut short, gone, replaced (same size, later), rewritten with its own
    bytes, records without a digest, a size or a time, two records disagreeing on one file
    (or every file named once), a failed record, a record written where another host
    mounts the output."""
    out, now = str(tmp_path / "out"), time.time()
    made = []

    def image(row_id, data, modified=None, **changes):
        storage.write_bytes_atomic(results.image_uri(out, row_id, 0), data)
        if modified is not None:
            os.utime(results.image_uri(out, row_id, 0), (modified, modified))
        made.append(dataclasses.replace(record(out, row_id, f"k{row_id}", data, now), **changes))

    image("intact", png(1), now - 10)
    image("short", png(2), now - 10)
    storage.write_bytes_atomic(results.image_uri(out, "short", 0), png(2)[:-5])
    image("gone", png(3), now - 10)
    os.remove(results.image_uri(out, "gone", 0))
    image("replaced", png(4), now + 10)
    storage.write_bytes_atomic(results.image_uri(out, "replaced", 0), png(5))
    os.utime(results.image_uri(out, "replaced", 0), (now + 10, now + 10))
    image("rewritten", png(6), now + 10)
    image("no-digest", png(7), now + 10, image_sha256=None)
    image("no-size", png(8), now - 10, image_bytes=None)
    image("no-time", png(9), now - 10, written_at=None)
    image("twice", png(10), now - 10)
    if twice:
        made.append(record(out, "twice", "kother", png(11), now))
    image("elsewhere", png(12), now - 10, image_uri="/mnt/other/images/elsewhere/0.png")
    made.append(dataclasses.replace(results.failed_row("failed", "boom"), written_at=now))
    records.write_record_shard(out, "all", made)
    state = records.read_state(out)
    kept = results.vouched(out, state).to_pylist()
    assert kept == previous_vouched(out, state)
    assert {row["id"] for row in kept} == {"intact", "rewritten", "no-digest", "no-size",
                                           "no-time", "twice", "elsewhere", "failed"}
    (elsewhere,) = [row for row in kept if row["id"] == "elsewhere"]
    assert elsewhere["image_uri"] == results.image_uri(out, "elsewhere", 0)


def test_a_range_holding_less_than_a_page_costs_one_request(bucket, monkeypatch):
    """45 files asked about, pages of 10: ranges of 9 (`FILL`), five requests in all, none
    spent past a range's last key."""
    fs, name = bucket
    monkeypatch.setattr(listing, "PAGE", 10)
    files = {f"{name}/f/{i:03d}.png": b"x" for i in range(45)}
    fs.pipe(files)
    calls, call = [], fs._call_s3

    async def counted(method, **asked):
        calls.append(asked.get("StartAfter"))
        return await call(method, **asked)

    monkeypatch.setattr(fs, "_call_s3", counted)
    assert listing.versions(fs, f"{name}/f", list(files)).num_rows == 45
    assert len(calls) == 5 and set(calls) == {None, *(f"f/{i:03d}.png" for i in (8, 17, 26, 35))}


@pytest.mark.parametrize("value", ["2026-12-06T07:40:12.000Z", "2026-12-06T07:40:12Z",
                                   "2026-12-06T07:40:12.5+02:00", "2026-12-06T07:40:12",
                                   "Sun, 06 Dec 2026 07:40:12 GMT", "1700000000"])  # fmt: skip
def test_quick_timestamps_are_the_instants_botocore_parses(value):
    from botocore.parsers import DEFAULT_TIMESTAMP_PARSER

    assert listing._timestamp(value) == DEFAULT_TIMESTAMP_PARSER(value)


def test_after_a_listing_the_store_s_modification_times_read_as_before(bucket):
    fs, name = bucket
    fs.pipe(f"{name}/t/a.png", b"x")
    before = fs.info(f"{name}/t/a.png")["LastModified"]
    (row,) = listing.versions(fs, f"{name}/t", [f"{name}/t/a.png"]).to_pylist()
    fs.invalidate_cache()
    after = fs.info(f"{name}/t/a.png")["LastModified"]
    assert after == before and row["mtime"] == before.timestamp()


def test_quick_pages_are_the_pages_botocore_parses_and_only_for_this_listing(
    bucket, monkeypatch
):
    """A page read by `quick_pages` holds what botocore's parsing gives, key for key (XML
    escapes, non-ASCII, spaces, plus signs), size for size, instant for instant, over
    several pages; the same client's other listings (s3fs's `find`) still get botocore's
    `Contents`; a page the quick reader cannot read is left to botocore."""
    fs, name = bucket
    monkeypatch.setattr(listing, "PAGE", 4)
    odd = ["a&b", "<lt>", 'q"uote', "sp ace", "plus+sign", "é猫", "apos'", "x" * 200]
    files = {f"{name}/out/images/{key}/{i}.png": b"z" * (i + 3)
             for i, key in enumerate(odd + [f"r{n}" for n in range(9)])}  # fmt: skip
    fs.pipe(files)
    folder, wanted = f"{name}/out/images", sorted(files)
    read, real = [], listing._parsed_page
    monkeypatch.setattr(listing, "_parsed_page", lambda body: read.append(real(body)) or read[-1])
    quick = listing.versions(fs, folder, wanted)
    assert len(read) >= 4 and all(page is not None for page in read)  # every page read here
    with monkeypatch.context() as patched:
        patched.setattr(listing, "_parsed_page", lambda body: None)  # botocore's parsing
        parsed = listing.versions(fs, folder, wanted)
    assert _sorted_rows(quick) == _sorted_rows(parsed)
    assert {row["path"] for row in quick.to_pylist()} == set(files)
    assert sorted(fs.find(folder)) == sorted(files)  # the client's other listings
    fs.invalidate_cache()
    assert {p: fs.info(p)["size"] for p in files} == {p: len(d) for p, d in files.items()}
    monkeypatch.setattr(listing, "_parsed_page", _unreadable)
    assert _sorted_rows(listing.versions(fs, folder, wanted)) == _sorted_rows(parsed)


def _unreadable(body: bytes):
    import xml.etree.ElementTree as ET

    raise ET.ParseError("not a page this reader knows")


def _sorted_rows(table) -> list:
    return sorted((r["path"], r["size"], r["mtime"]) for r in table.to_pylist())
