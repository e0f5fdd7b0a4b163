"""Reading and writing through fsspec, with atomic writes.

Every file easel produces appears whole or not at all. On a local (POSIX) filesystem we
write to a hidden temporary name in the same folder and `os.replace` it into place; on
object stores (s3, gcs, memory) a single PUT is already atomic, so we upload in one call.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import posixpath
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any, BinaryIO

import fsspec
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from easel.data import listing
from easel.errors import InvalidInput

# in every local folder `staged_folder` publishes: easel wrote it, and may replace it
OWNED_MARKER = ".easel-folder"
# a hidden temporary file untouched this long was left by a writer that died
STALE_TEMPORARY_SECONDS = 15 * 60


def process_name(pid: int) -> str:
    """A process on this machine, as other machines and later processes can tell it apart:
    "host~pid" ("~" is in no host name)."""
    return f"{socket.gethostname()}~{pid}"


WRITER = process_name(os.getpid())  # in every temporary name: which process writes it
# The names `local_atomic_writer` gives its temporaries: ".NAME.host~pid~12 hex digits.tmp"
# (before the writer was named: ".NAME.32 hex digits.tmp"); nothing else is easel's to clean
TEMPORARY_NAME = re.compile(r"\..+\.(?:[^~/]+~\d+~[0-9a-f]{12}|[0-9a-f]{32})\.tmp")


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and the protocol-less path of `uri`. Listings are never cached:
    other processes (a sweep's shards, a second run) write into the same folders, and what
    they recorded must be seen."""
    fs, path = fsspec.core.url_to_fs(uri, use_listings_cache=False)
    return fs, path


def is_local(uri: str) -> bool:
    return isinstance(filesystem(uri)[0], LocalFileSystem)


def absolute(uri: str) -> str:
    """A local path made absolute (from the working folder); any other URI as it is."""
    return os.path.abspath(uri) if "://" not in uri and is_local(uri) else uri


def join(base: str, *parts: str) -> str:
    """Join URI parts with '/', keeping the protocol of `base`."""
    if is_local(base) and "://" not in base:
        return os.path.join(base, *parts)
    return posixpath.join(base.rstrip("/"), *parts)


def version_tag(info: dict) -> str:
    """What changes when a file changes, from its fsspec `info`: size and ETag or modification
    time (and, on a local disk, the inode an atomic rewrite replaces)."""
    version = (
        info.get("ETag") or info.get("mtime") or info.get("LastModified") or info.get("created")
    )
    return f"{info.get('size')}|{version}|{info.get('ino', '')}"


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def check_output_folder(uri: str, field: str) -> None:
    """Refuse an output location no folder can be made at, before any work: a file there,
    or on a local disk a file in place of one of its parents (`InvalidInput` naming `field`
    and `uri`)."""
    fs, path = filesystem(uri)
    if fs.isfile(path):
        raise InvalidInput(f"`{field}` must be a folder but {uri!r} is a file")
    if isinstance(fs, LocalFileSystem):
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise InvalidInput(f"`{field}` {uri!r} cannot be a folder: {parent!r} is a file")


def path_of(uri: str) -> str:
    """`uri` as its filesystem lists it (no protocol; local paths absolute)."""
    return filesystem(uri)[1]


def file_versions(folder: str, wanted=None, share: float = 1.0) -> pa.Table:
    """Files below `folder` (`path`, as `path_of` gives them), with their `size` in bytes
    and their modification time `mtime` (Unix seconds; null where the store gives none)
    (`listing.SCHEMA`): every one, or, given `wanted` (paths as `path_of` gives them: a
    list or an Arrow string array), at least those of `wanted` that exist. One listing, one
    call per 1,000 files on an object store; on S3, given `wanted`, listed in ranges at
    once (`listing.versions`; `share`: about what part of the folder `wanted` names). No
    rows if `folder` does not exist."""
    fs, path = filesystem(folder)
    if wanted is not None and listing.is_ranged(fs):
        return listing.versions(fs, path, wanted, share)
    if not fs.exists(path):
        return listing.SCHEMA.empty_table()
    found = fs.find(path, detail=True)
    return pa.table([list(found), [info["size"] for info in found.values()],
                     [modified_at(info) for info in found.values()]],
                    schema=listing.SCHEMA)  # fmt: skip


def modified_at(info: dict) -> float | None:
    """A file's modification time from its fsspec `info`, in Unix seconds (None: not given)."""
    value = info.get("mtime") or info.get("LastModified")
    if value is None:
        return None
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    return fs.cat_file(path)


class StoreReadFailed(Exception):
    """The store failed while a file opened by `open_for_parsing` was read: its error is
    this one's `__cause__`. Not the file's fault, unlike a parser's error about its bytes."""


class _StoreReads:
    """A file handle whose reads' errors are raised as `StoreReadFailed`."""

    def __init__(self, handle):
        self._handle = handle

    def __getattr__(self, name: str):
        return getattr(self._handle, name)

    def read(self, *args):
        try:
            return self._handle.read(*args)
        except Exception as error:
            raise StoreReadFailed(str(error)) from error


@contextlib.contextmanager
def open_for_parsing(uri: str) -> Iterator[BinaryIO]:
    """`uri` opened for a parser that reads only the parts it needs (a Parquet file's
    footer, then some columns or row groups): an error of the store while it reads is
    raised as `StoreReadFailed`, so that the caller can tell it from the parser's own
    errors about the bytes (pyarrow raises `OSError` for a cut-short file and s3fs for a
    503 alike). Raises `FileNotFoundError` when there is no such file, and the store's
    error when opening fails."""
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as handle:
        yield _StoreReads(handle)


def read_many(uris: list[str]) -> dict[str, bytes | None]:
    """The bytes of each file of `uris` (None: gone or unreadable), fetched concurrently: one
    `cat` of many paths a filesystem (parallel requests on an object store)."""
    by_fs: dict[int, tuple[fsspec.AbstractFileSystem, dict[str, str]]] = {}
    for uri in uris:
        fs, path = filesystem(uri)
        by_fs.setdefault(id(fs), (fs, {}))[1][path] = uri
    found: dict[str, bytes | None] = {}
    for fs, paths in by_fs.values():
        fetched = fs.cat(list(paths), on_error="return")
        for path, uri in paths.items():
            found[uri] = data if isinstance(data := fetched.get(path), bytes) else None
    return found


def sha256(uri: str) -> str:
    """The sha256 of the file's bytes, hex."""
    return hashlib.sha256(read_bytes(uri)).hexdigest()


@contextlib.contextmanager
def local_atomic_writer(path: str, fsync: bool = False) -> Iterator[BinaryIO]:
    """A binary file to stream into; it appears at local `path` whole, renamed from a hidden
    temporary name in the same folder, only if the block ends without an error. Without
    `fsync` the rename is atomic for readers and for crashes of the process; with it, also
    for a power loss (the data reaches the disk before the name does)."""
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{WRITER}~{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_writer(uri: str, fsync: bool = False) -> Iterator[BinaryIO]:
    """A binary file to stream into that appears at `uri` whole, only if the block ends
    without an error: locally renamed from a temporary name in the same folder; on an object
    store streamed to a local temporary file, then uploaded in one PUT."""
    fs, path = filesystem(uri)
    if isinstance(fs, LocalFileSystem):
        with local_atomic_writer(path, fsync=fsync) as f:
            yield f
        return
    with tempfile.NamedTemporaryFile(prefix="easel-upload-") as f:
        yield f
        f.flush()
        parent = posixpath.dirname(path)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        fs.put_file(f.name, path)


def local_path(uri: str, cache: str) -> str:
    """A local path holding the file at `uri`: the path itself for a local file, else a copy
    downloaded once under `cache` (keyed by the URI and the file's version)."""
    fs, path = filesystem(uri)
    if isinstance(fs, LocalFileSystem):
        return path
    key = hashlib.sha256(f"{uri}|{version_tag(fs.info(path))}".encode()).hexdigest()[:32]
    local = os.path.join(cache, f"{key}-{posixpath.basename(path)}")
    if not os.path.exists(local):
        with local_atomic_writer(local) as f:
            f.write(fs.cat_file(path))
    return local


def list_names(folder: str) -> list[str]:
    """The names of the files directly in `folder` ([] if it does not exist)."""
    fs, path = filesystem(folder)
    if not fs.isdir(path):
        return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def remove(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.rm(path)


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write `data` to `uri` so that no reader ever sees a partial file."""
    fs, path = filesystem(uri)
    if isinstance(fs, LocalFileSystem):
        with local_atomic_writer(path) as f:
            f.write(data)
        return
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(path, data)


def write_png_atomic(uri: str, image: Any, compress_level: int = 6) -> bytes:
    """Encode a PIL image as PNG, write it atomically, return the encoded bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    data = buffer.getvalue()
    write_bytes_atomic(uri, data)
    return data


def write_text_atomic(uri: str, text: str) -> None:
    write_bytes_atomic(uri, text.encode("utf-8"))


def write_parquet_atomic(uri: str, table) -> None:
    """Write a pyarrow table as one Parquet file, atomically."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_bytes_atomic(uri, buffer.getvalue())


@contextlib.contextmanager
def staged_folder(target: str, replace: bool = True, last: str | None = None) -> Iterator[str]:
    """A fresh local folder to fill; when the block ends without an error it becomes `target`.

    A local `target` appears by one rename, whole or not at all: with `replace`, an existing
    folder is swapped out by renames (readers see the old or the new one, never a mix);
    without it, a folder that another process published first is kept and ours discarded.
    On an object store, where a folder cannot be renamed, the files are uploaded one by one
    and the file named `last` (a marker that vouches for the rest) is uploaded after them.
    Easel replaces only folders it wrote: a local folder without a `last` marker gets
    `OWNED_MARKER`, and an existing `target` holding files but neither marker is refused
    before any work (`InvalidInput` naming it). Yields the (empty, existing) local staging
    folder."""
    fs, path = filesystem(target)
    local = isinstance(fs, LocalFileSystem)
    if local:
        _check_replaceable(set(os.listdir(path)) if os.path.isdir(path) else set(), target, last)
        parent, name = os.path.split(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        staging = os.path.join(parent, f".{name}.{uuid.uuid4().hex}.staging")
        os.makedirs(staging)
    else:
        before = _remote_names(fs, path)
        _check_replaceable(before, target, last)
        staging = tempfile.mkdtemp(prefix="easel-staging-")
    try:
        yield staging
        if last is None:  # else `last` says easel wrote it
            open(os.path.join(staging, OWNED_MARKER), "w").close()
        if local:
            _rename_into_place(staging, os.path.abspath(path), replace)
        else:
            _upload_folder(fs, staging, path, last or OWNED_MARKER, before, replace)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remote_names(fs, path: str) -> set[str]:
    """The files below the store folder `path`, relative to it ('/'-separated)."""
    root = path.rstrip("/")
    if not fs.exists(root):
        return set()
    return {posixpath.relpath(found, root) for found in fs.find(root)}


def _check_replaceable(names: set[str], target: str, last: str | None) -> None:
    """Refuse to replace the folder `target` (holding `names`) unless easel wrote it (or it
    is empty)."""
    if names and OWNED_MARKER not in names and (last is None or last not in names):
        raise InvalidInput(
            f"{target!r} already exists and easel did not write it (it has no {OWNED_MARKER}): "
            "easel replaces only folders it wrote; move it away or write elsewhere"
        )


def _rename_into_place(staging: str, target: str, replace: bool) -> None:
    if not os.path.exists(target):
        try:
            os.rename(staging, target)
            return
        except OSError:  # another process published it first
            if not replace:
                return
    if not replace:
        return
    retired = f"{staging}.retired"
    os.rename(target, retired)
    os.rename(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


def _upload_folder(fs, staging: str, path: str, marker: str, before: set[str],
                   replace: bool) -> None:  # fmt: skip
    """Publish `staging` as the store folder `path`, which held `before`: its marker first
    removed (a reader sees an unvouched folder, never a mix vouched for), the new files, the
    files of the old folder it lacks removed, the marker last. Without `replace`, a folder
    another process published (its marker there) is kept."""
    if marker in before and not replace:
        return
    root = path.rstrip("/")
    if marker in before:
        fs.rm_file(f"{root}/{marker}")
    names = sorted(
        os.path.relpath(os.path.join(parent, name), staging).replace(os.sep, "/")
        for parent, _, files in os.walk(staging)
        for name in files
    )
    for name in sorted(names, key=lambda n: n == marker):  # the marker last
        if name == marker:
            for stale in sorted(before - set(names)):
                fs.rm_file(f"{root}/{stale}")
        remote = f"{root}/{name}"
        fs.makedirs(posixpath.dirname(remote), exist_ok=True)
        fs.put_file(os.path.join(staging, name), remote)


def inside(folder: str, relative: str) -> str | None:
    """The local path `relative` (a name a store or an archive supplies, '/'-separated)
    names under `folder`, or None where it would leave it (`..`, an absolute path)."""
    root = os.path.abspath(folder)
    joined = os.path.normpath(os.path.join(root, *relative.split("/")))
    return joined if joined.startswith(root + os.sep) else None


def is_within(child: str, root: str) -> bool:
    """Whether `child` resolves inside `root` (both normalised, same filesystem)."""
    fs_c, path_c = filesystem(child)
    fs_r, path_r = filesystem(root)
    if type(fs_c) is not type(fs_r):
        return False
    if isinstance(fs_c, LocalFileSystem):
        path_c, path_r = os.path.realpath(path_c), os.path.realpath(path_r)
        return os.path.commonpath([path_c, path_r]) == path_r
    path_c, path_r = posixpath.normpath(path_c), posixpath.normpath(path_r)
    return path_c == path_r or path_c.startswith(path_r.rstrip("/") + "/")


def remove_stale_temporaries(folder: str) -> int:
    """Delete temporary files left under `folder` by writers that died (kill -9, OOM).

    Only for local folders: object stores never show a partial upload. Only files named as
    easel names its temporaries (`TEMPORARY_NAME`) are candidates: a user's `.notes.tmp`
    stays. Another run may be writing into the same folder: a temporary file is removed only
    when the process named in it is gone from this host, or when it has been untouched for
    `STALE_TEMPORARY_SECONDS`."""
    fs, path = filesystem(folder)
    if not isinstance(fs, LocalFileSystem) or not os.path.isdir(path):
        return 0
    removed = 0
    for parent, _, names in os.walk(path):
        for name in filter(TEMPORARY_NAME.fullmatch, names):
            temporary = os.path.join(parent, name)
            with contextlib.suppress(FileNotFoundError):  # its writer may just have renamed it
                if _writer_gone(name) or _untouched_for(temporary, STALE_TEMPORARY_SECONDS):
                    os.remove(temporary)
                    removed += 1
    return removed


def _writer_gone(name: str) -> bool:
    """The temporary `name` was written by a process of this host that no longer runs (or by
    an old easel, whose names carry no writer)."""
    parts = name[: -len(".tmp")].split("~")
    if len(parts) != 3:
        return True
    prefix, pid = parts[0], parts[1]
    if not prefix.endswith("." + socket.gethostname()) or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _untouched_for(path: str, seconds: float) -> bool:
    return time.time() - os.stat(path).st_mtime > seconds
