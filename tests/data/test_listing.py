"""An image folder listed in ranges at once on S3, and the size check it serves (issue 30)."""

from __future__ import annotations

import uuid

import pytest

from easel.data import listing, records, results, storage
from tests.data.test_records import generate, png, sweep_of


def test_ranges_cut_the_keys_into_strides_that_follow_one_another():
    keys = [f"k{i}" for i in range(7)]
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
    found = listing.versions(fs, f"{name}/out/images", wanted, share)
    assert f"{name}/out/images/r05/9.png" not in found
    for path in wanted[:-1]:
        assert found[path][0] == len(files[path]) and found[path][1] > 0
    assert all(path.startswith(f"{name}/out/images/") for path in found)
    assert listing.versions(fs, f"{name}/out/images", [], share) == {}


def test_ranged_listing_of_a_folder_never_written_is_empty(bucket):
    fs, name = bucket
    assert listing.versions(fs, f"{name}/nothing", [f"{name}/nothing/a.png"]) == {}
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
