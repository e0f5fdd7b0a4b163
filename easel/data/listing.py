"""A folder of many files listed concurrently on S3 (issue 30: sweeps of a million images).

An S3 listing returns at most `PAGE` keys a request, and each page names where the next
starts: a million images listed one page after another is 1,000 requests in a row. Where
the files asked about are known (the images a sweep's records name), the key space is cut
at them into ranges of about a page of the folder each, and every range is listed at once
from its own start (`StartAfter`), paging on by itself where it holds more than a page.
The ranges cover every key from the first file asked about to the last, so a file of
them that the listing does not return is not there.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
from fsspec.asyn import sync

PAGE = 1000  # keys one S3 listing request returns at most
CONCURRENT = 64  # listing requests in flight at once
# what part of a page a range is cut to hold: files not asked about (or a shard's share
# running above its mean) rarely push a range past one request
FILL = 0.9
# a listing's columns: the path as `fs.find` names it, bytes, Unix seconds
SCHEMA = pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime", pa.float64())])


def is_ranged(fs) -> bool:
    """`fs` is an S3 filesystem (s3fs), whose listings this module splits."""
    return hasattr(fs, "_call_s3") and hasattr(fs, "split_path")


def versions(fs, folder: str, wanted, share: float = 1.0) -> pa.Table:
    """The files below `folder` (a protocol-less path of S3 filesystem `fs`) whose keys fall
    between the first and the last of `wanted` (paths as `fs.find` names them; a list or an
    Arrow string array): every file of `wanted` that exists, and others on the way; a table
    of `SCHEMA` (path, size in bytes, modification time in Unix seconds), built a page at a
    time. `share` (0 < share <= 1): about what part of the folder's files `wanted` names (a
    shard's: 1 / its count), so that each range holds about `FILL` of a page of the folder:
    one request. Raises what the store raises (FileNotFoundError: no bucket)."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    bucket, prefix, _ = fs.split_path(folder)
    prefix = prefix.rstrip("/") + "/"
    paths = pa.array(wanted, pa.string()) if not isinstance(wanted, pa.Array) else wanted
    paths = paths.filter(pc.fill_null(pc.starts_with(paths, f"{bucket}/{prefix}"), False))
    keys = pc.unique(pc.utf8_slice_codeunits(paths, len(bucket) + 1))
    keys = keys.take(pc.array_sort_indices(keys))  # S3's order: UTF-8 bytes
    found: list[pa.Table] = []
    if len(keys):
        stride = max(1, int(PAGE * FILL * share))
        sync(fs.loop, _list_all, fs, bucket, prefix, ranges(keys, stride), found)
    return pa.concat_tables(found) if found else SCHEMA.empty_table()


def ranges(keys: pa.Array, stride: int) -> list[tuple[str | None, str]]:
    """The sorted `keys` cut into ranges of `stride` keys: (listed after, last), the first
    from the folder's start (None); only the bounds become Python strings."""
    return [(keys[i - 1].as_py() if i else None, keys[min(i + stride, len(keys)) - 1].as_py())
            for i in range(0, len(keys), stride)]  # fmt: skip


async def _list_all(fs, bucket: str, prefix: str, spans: list, found: list) -> None:
    await fs.set_session()
    quick_timestamps(await fs.get_s3(bucket))  # the client that serves the bucket
    gate = asyncio.Semaphore(CONCURRENT)

    async def one(after: str | None, last: str) -> None:
        async with gate:
            await _list_range(fs, bucket, prefix, after, last, found)

    await asyncio.gather(*(one(after, last) for after, last in spans))


async def _list_range(fs, bucket, prefix, after: str | None, last: str, found: list) -> None:
    """Every key below `prefix` after `after` up to `last` into `found`, a table a page."""
    while True:
        asked = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": PAGE}
        if after is not None:
            asked["StartAfter"] = after
        page = await fs._call_s3("list_objects_v2", **asked)
        contents = page.get("Contents", [])
        found.append(_columns(bucket, [item for item in contents if item["Key"] <= last]))
        if not page.get("IsTruncated") or not contents or contents[-1]["Key"] >= last:
            return
        after = contents[-1]["Key"]


def _columns(bucket: str, items: list[dict]) -> pa.Table:
    return pa.table([[f"{bucket}/{item['Key']}" for item in items],
                     [item["Size"] for item in items],
                     [item["LastModified"].timestamp() for item in items]],
                    schema=SCHEMA)  # fmt: skip


def quick_timestamps(client) -> None:
    """Have botocore `client`'s responses parse their ISO 8601 timestamps (S3's
    `LastModified`: "2026-12-06T07:40:12.000Z") with the standard library, the same
    instants: botocore's default parser (dateutil's) is two thirds of the client's CPU for
    a page of 1,000 keys (about 40 of 60 ms: 40 s for a million images). Any other form
    goes to botocore's parser. A client whose internals differ is left as it is."""
    factory = getattr(getattr(client, "_endpoint", None), "_response_parser_factory", None)
    if factory is not None and hasattr(factory, "set_parser_defaults"):
        factory.set_parser_defaults(timestamp_parser=_timestamp)


def _timestamp(value: str) -> datetime:
    from botocore.parsers import DEFAULT_TIMESTAMP_PARSER

    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return DEFAULT_TIMESTAMP_PARSER(value)
    return parsed if parsed.tzinfo else DEFAULT_TIMESTAMP_PARSER(value)
