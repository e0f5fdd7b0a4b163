"""Atomic writes and the clean-up of what a killed writer left behind."""

from __future__ import annotations

import os

import fsspec

from easel.data import storage


def test_atomic_write_leaves_only_the_final_file(tmp_path):
    target = tmp_path / "a" / "b.bin"
    storage.write_bytes_atomic(str(target), b"x" * 1000)
    assert target.read_bytes() == b"x" * 1000
    assert os.listdir(target.parent) == ["b.bin"]


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    (tmp_path / "images" / "a").mkdir(parents=True)
    (tmp_path / "images" / "a" / "0.png").write_bytes(b"done")
    (tmp_path / "images" / "a" / ".1.png.3f2a.tmp").write_bytes(b"half")
    assert storage.remove_stale_temporaries(str(tmp_path)) == 1
    assert os.listdir(tmp_path / "images" / "a") == ["0.png"]


def test_object_store_writes_are_single_puts():
    storage.write_bytes_atomic("memory://bucket/x/y.bin", b"abc")
    assert fsspec.filesystem("memory").cat_file("/bucket/x/y.bin") == b"abc"
    assert storage.remove_stale_temporaries("memory://bucket") == 0
