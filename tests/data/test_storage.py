"""Atomic writes and the clean-up of what a killed writer left behind."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import fsspec
import pytest

from easel.data import storage
from easel.errors import InvalidInput


def test_atomic_write_leaves_only_the_final_file(tmp_path):
    target = tmp_path / "a" / "b.bin"
    storage.write_bytes_atomic(str(target), b"x" * 1000)
    assert target.read_bytes() == b"x" * 1000
    assert os.listdir(target.parent) == ["b.bin"]


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    """Only easel's own temporaries go: a user's hidden `.tmp` files in the output stay."""
    (tmp_path / "images" / "a").mkdir(parents=True)
    (tmp_path / "images" / "a" / "0.png").write_bytes(b"done")
    (tmp_path / "images" / "a" / f".1.png.{'3f2a' * 8}.tmp").write_bytes(b"half")  # older easel
    theirs = [".notes.tmp", ".1.png.3f2a.tmp", ".draft.host~1~x.tmp", ".2.png.h~1~abc.tmp"]
    for name in theirs:
        (tmp_path / name).write_bytes(b"a user's")
        old = time.time() - storage.STALE_TEMPORARY_SECONDS - 1
        os.utime(tmp_path / name, (old, old))
    assert storage.remove_stale_temporaries(str(tmp_path)) == 1
    assert os.listdir(tmp_path / "images" / "a") == ["0.png"]
    assert sorted(theirs + ["images"]) == sorted(os.listdir(tmp_path))


def test_a_live_writers_temporary_is_left_alone_until_it_goes_stale(tmp_path):
    """Two runs may write into one output: one run's cleanup never takes the other's file."""
    host = socket.gethostname()
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = tmp_path / f".0.png.{host}~{os.getpid()}~ab12ab12ab12.tmp"  # this process: alive
    elsewhere = tmp_path / ".1.png.other-host~1~cd34cd34cd34.tmp"  # another machine's writer
    gone = tmp_path / f".2.png.{host}~{dead.pid}~ef56ef56ef56.tmp"
    for path in (live, elsewhere, gone):
        path.write_bytes(b"half")
    assert storage.remove_stale_temporaries(str(tmp_path)) == 1
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, elsewhere.name])
    old = time.time() - storage.STALE_TEMPORARY_SECONDS - 1
    os.utime(elsewhere, (old, old))  # untouched that long: its writer died
    assert storage.remove_stale_temporaries(str(tmp_path)) == 1
    assert os.listdir(tmp_path) == [live.name]
    with storage.local_atomic_writer(str(tmp_path / "3.png")) as f:
        (name,) = [n for n in os.listdir(tmp_path) if n.startswith(".3.png.")]
        assert f"{host}~{os.getpid()}~" in name  # the writer is named in its temporary
        f.write(b"x")


def test_object_store_writes_are_single_puts():
    storage.write_bytes_atomic("memory://bucket/x/y.bin", b"abc")
    assert fsspec.filesystem("memory").cat_file("/bucket/x/y.bin") == b"abc"
    assert storage.remove_stale_temporaries("memory://bucket") == 0


def _fill(folder: str, text: str) -> None:
    os.makedirs(os.path.join(folder, "sub"), exist_ok=True)
    for name in ("a.txt", os.path.join("sub", "b.txt"), "marker.json"):
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)


def test_a_staged_folder_appears_whole_and_replaces_the_old_one(tmp_path):
    target = tmp_path / "out" / "model"
    with storage.staged_folder(str(target)) as staging:
        assert os.path.isdir(staging) and not target.exists()  # nothing visible while filling
        _fill(staging, "one")
    assert (target / "sub" / "b.txt").read_text() == "one"
    with storage.staged_folder(str(target)) as staging:
        _fill(staging, "two")
    assert (target / "a.txt").read_text() == "two"
    assert sorted(os.listdir(tmp_path / "out")) == ["model"]  # no staging or retired folder


def test_a_folder_easel_did_not_write_is_never_replaced(tmp_path):
    """An output pointed at a user's folder: refused before any work, nothing deleted."""
    target = tmp_path / "theirs"
    _fill(str(target), "the user's")
    with pytest.raises(InvalidInput) as error, storage.staged_folder(str(target)):
        raise AssertionError("refused before the staging folder is filled")
    assert repr(str(target)) in str(error.value) and storage.OWNED_MARKER in str(error.value)
    assert (target / "a.txt").read_text() == "the user's"
    assert sorted(os.listdir(tmp_path)) == ["theirs"]  # no staging folder left
    with storage.staged_folder(str(target), last="marker.json") as staging:
        _fill(staging, "two")  # its marker says an older easel wrote it
    assert (target / "a.txt").read_text() == "two"
    (tmp_path / "empty").mkdir()
    with storage.staged_folder(str(tmp_path / "empty")) as staging:
        _fill(staging, "three")
    assert (tmp_path / "empty" / "a.txt").read_text() == "three"
    assert (tmp_path / "empty" / storage.OWNED_MARKER).exists()  # replaced on the next run


def test_a_failed_staging_leaves_the_old_folder_and_no_debris(tmp_path):
    target = tmp_path / "model"
    with storage.staged_folder(str(target)) as staging:
        _fill(staging, "one")
    try:
        with storage.staged_folder(str(target)) as staging:
            _fill(staging, "half")
            raise RuntimeError("killed")
    except RuntimeError:
        pass
    assert (target / "a.txt").read_text() == "one"
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_without_replace_the_first_published_folder_wins(tmp_path):
    target = tmp_path / "cache" / "key"
    with storage.staged_folder(str(target), replace=False) as first:
        with storage.staged_folder(str(target), replace=False) as second:
            _fill(second, "second")
        _fill(first, "first")  # another process finished first: this copy is dropped
    assert (target / "a.txt").read_text() == "second"
    assert sorted(os.listdir(tmp_path / "cache")) == ["key"]


def test_a_staged_folder_on_an_object_store_uploads_its_marker_last(monkeypatch):
    fs = fsspec.filesystem("memory")
    order = []
    put_file = type(fs).put_file
    monkeypatch.setattr(
        type(fs), "put_file", lambda self, lpath, rpath, **kw: (order.append(rpath),
                                                                 put_file(self, lpath, rpath, **kw))
    )  # fmt: skip
    with storage.staged_folder("memory://bucket/staged/model", last="marker.json") as staging:
        _fill(staging, "one")
    assert order[-1].endswith("/model/marker.json") and len(order) == 3
    assert fs.cat_file("/bucket/staged/model/sub/b.txt") == b"one"


def test_a_staged_folder_on_an_object_store_replaces_only_its_own_folder_whole():
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/theirs/data.txt", b"precious")
    with pytest.raises(InvalidInput, match=r"memory://bucket/theirs' already exists and easel"):
        with storage.staged_folder("memory://bucket/theirs", last="marker.json"):
            pass
    assert fs.cat_file("/bucket/theirs/data.txt") == b"precious"
    fs.pipe("/bucket/ours/old-only.txt", b"stale")
    fs.pipe("/bucket/ours/marker.json", b"{}")
    with storage.staged_folder("memory://bucket/ours", last="marker.json") as staging:
        _fill(staging, "new")
    assert not fs.exists("/bucket/ours/old-only.txt")  # the old folder's own file is gone
    assert fs.cat_file("/bucket/ours/sub/b.txt") == b"new" and fs.exists("/bucket/ours/marker.json")
    with storage.staged_folder("memory://bucket/plain") as staging:  # no marker of its own
        _fill(staging, "one")
    assert fs.exists(f"/bucket/plain/{storage.OWNED_MARKER}")
    fs.rm("/bucket", recursive=True)


def test_contact_sheet_labels_name_row_index_and_prompt_without_ambiguity():
    from easel.data.contact_sheet import LABEL_CHARACTERS, tile_label

    long_id = "nightly-batch-2026-11-29-row-000123"
    first, second = (tile_label(long_id, k, "a red circle on a blue background") for k in (0, 1))
    assert first != second  # two images of one row: the index survives the cut
    head, prompt = first.split("\n")
    assert len(head) <= LABEL_CHARACTERS and head.startswith("nightly") and head.endswith("/0")
    assert prompt == "a red circle on a blue background"  # whole: the grid wraps it
    assert tile_label("a", 3, None) == "a/3\n"


def test_contact_sheet_captions_wrap_the_whole_prompt_within_the_tile():
    from easel.data.contact_sheet import LABEL_LINES, THUMBNAIL, grid, label_font, wrap

    prompt = "a red circle on a blue background, seen from far above at dusk"
    lines = wrap(prompt)
    assert " ".join(lines) == prompt and len(lines) > 1  # every word, in order
    assert all(label_font().getlength(line) <= THUMBNAIL - 4 for line in lines)
    endless = wrap(" ".join(["background"] * 50))
    assert len(endless) == LABEL_LINES - 1 and endless[-1].endswith("…")
    assert wrap("x" * 200)[0].startswith("xxx")  # a word wider than a tile is broken
    from PIL import Image

    tile = Image.new("RGB", (8, 8), "white")
    short, long = (grid([tile], [f"r/0\n{text}"]) for text in ("a red circle", prompt))
    assert long.height > short.height  # room for every line


def test_contact_sheet_labels_draw_cyrillic_glyphs_not_boxes():
    """The quickstart's Russian prompt: a Latin-only font draws every letter as the same box."""
    import numpy as np
    from PIL import Image

    from easel.data.contact_sheet import grid

    tile = Image.new("RGB", (8, 8), "white")
    drawn = [np.asarray(grid([tile], [f"r/0\n{text}"]))[128:] for text in ("красный", "зелёный")]
    assert (drawn[0] != drawn[1]).any()  # different words, different pixels
    assert (drawn[0] < 128).any()  # something was drawn


def test_a_contact_sheet_is_made_small_enough_for_a_prefect_artifact():
    """Prefect's server refuses (with a warning) an event over 1.5 MB: the sheet embedded in
    the sweep's summary is halved until its PNG is at most EMBEDDED_BYTES (base64: 4/3)."""
    import io

    import numpy as np
    from PIL import Image

    from easel.data.contact_sheet import EMBEDDED_BYTES, embeddable_png

    noise = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    assert len(buffer.getvalue()) > EMBEDDED_BYTES
    png, factor = embeddable_png(buffer.getvalue())
    assert len(png) <= EMBEDDED_BYTES and factor >= 2
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (1024 // factor, 1024 // factor)
    assert embeddable_png(png) == (png, 1)  # small enough: unchanged


def test_a_contact_sheet_tile_of_a_file_declaring_too_many_pixels_is_grey(tmp_path):
    """An image replaced since it was written by one declaring 81 MP is never decoded."""
    from PIL import Image

    from easel.data.contact_sheet import THUMBNAIL, contact_sheet

    Image.new("1", (9000, 9000)).save(tmp_path / "huge.png")
    Image.new("RGB", (32, 32), "red").save(tmp_path / "fine.png")
    labels = ["huge/0\\n", "fine/0\\n"]
    sheet = contact_sheet([str(tmp_path / "huge.png"), str(tmp_path / "fine.png")], labels, 2)
    assert sheet.getpixel((THUMBNAIL // 2, THUMBNAIL // 2)) == (128, 128, 128)  # grey
    assert sheet.getpixel((THUMBNAIL + THUMBNAIL // 2, THUMBNAIL // 2)) == (255, 0, 0)


def test_a_contact_sheet_fetches_its_images_at_once_and_greys_a_missing_one(tmp_path, monkeypatch):
    """One concurrent fetch of every tile's file (not one request after another); a file
    gone since it was recorded is a grey tile, the others drawn in their place."""
    from PIL import Image

    from easel.data import contact_sheet as sheets

    Image.new("RGB", (32, 32), "red").save(tmp_path / "a.png")
    Image.new("RGB", (32, 32), "blue").save(tmp_path / "c.png")
    fetches, read_many = [], storage.read_many
    monkeypatch.setattr(storage, "read_many", lambda uris: fetches.append(uris) or read_many(uris))
    uris = [str(tmp_path / name) for name in ("a.png", "gone.png", "c.png")]
    sheet = sheets.contact_sheet(uris, ["a/0", "gone/0", "c/0"], 3)
    assert fetches == [uris]
    middle = sheets.THUMBNAIL // 2
    assert sheet.getpixel((middle, middle)) == (255, 0, 0)
    assert sheet.getpixel((sheets.THUMBNAIL + middle, middle)) == (128, 128, 128)
    assert sheet.getpixel((2 * sheets.THUMBNAIL + middle, middle)) == (0, 0, 255)


def test_read_many_gives_each_file_s_bytes_and_none_for_a_missing_one(tmp_path):
    (tmp_path / "a").write_bytes(b"A")
    uris = [str(tmp_path / "a"), str(tmp_path / "b"), "memory://read-many/c"]
    storage.write_bytes_atomic("memory://read-many/c", b"C")
    assert storage.read_many(uris) == {uris[0]: b"A", uris[1]: None, uris[2]: b"C"}
    assert storage.read_many([]) == {}
