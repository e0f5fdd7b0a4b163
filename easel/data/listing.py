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
import bisect
import contextvars
import xml.etree.ElementTree as ET
from datetime import datetime
from urllib.parse import unquote_plus

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
    client = await fs.get_s3(bucket)  # the client that serves the bucket
    quick_timestamps(client)
    quick_pages(client)
    gate = asyncio.Semaphore(CONCURRENT)
    _QUICK.set(True)  # this task's requests (and the tasks it starts) only

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
        keys, sizes, times = page.get(COLUMNS) or _page_columns(page.get("Contents", []))
        held = bisect.bisect_right(keys, last)  # keys come in order (code points: UTF-8's)
        found.append(pa.table([[f"{bucket}/{key}" for key in keys[:held]], sizes[:held],
                               times[:held]], schema=SCHEMA))  # fmt: skip
        if not page.get("IsTruncated") or not keys or keys[-1] >= last:
            return
        after = keys[-1]


def _page_columns(contents: list[dict]) -> tuple[list, list, list]:
    """A page's keys, sizes and modification times (Unix s) from botocore's `Contents`."""
    return ([item["Key"] for item in contents], [item["Size"] for item in contents],
            [item["LastModified"].timestamp() for item in contents])  # fmt: skip


COLUMNS = "EaselColumns"  # a quick page's keys, sizes, times, in place of `Contents`
_QUICK = contextvars.ContextVar("easel_quick_listing", default=False)
_S3 = "{http://s3.amazonaws.com/doc/2006-03-01/}"  # the namespace of S3's responses
_EMPTY_PAGE = b"<ListBucketResult></ListBucketResult>"


def quick_pages(client) -> None:
    """Have botocore `client` hand this module's ListObjectsV2 pages (requests made while
    `_QUICK` is set: by `versions`, no other caller) as three columns under `COLUMNS`
    (keys, sizes, Unix seconds) read by the standard library's XML parser, instead of one
    dict a key: botocore's generic parsing costs its client about 25 ms a page of 1,000
    keys (25 s for a million images), this about 4 ms. Through botocore's documented
    `before-parse` event: the page is read here and botocore parses an empty one. A page
    this does not know (an error, URL-encoded keys, an element it cannot read) is left to
    botocore. Registered once a client."""
    events = client.meta.events
    if getattr(client, "_easel_quick_pages", False):
        return
    events.register("before-parse.s3.ListObjectsV2", _read_page)
    client._easel_quick_pages = True


def _read_page(response_dict, customized_response_dict, **kwargs) -> None:
    if not _QUICK.get() or response_dict.get("status_code") != 200:
        return
    try:
        read = _parsed_page(response_dict["body"])
    except (ET.ParseError, ValueError, TypeError, KeyError):
        return  # botocore parses it (and raises what it finds)
    if read is None:
        return
    customized_response_dict.update(read)
    response_dict["body"] = _EMPTY_PAGE


def _parsed_page(body: bytes) -> dict | None:
    """A ListObjectsV2 page's `IsTruncated`, `KeyCount`, `NextContinuationToken` and its
    `Contents` as `COLUMNS`, keys decoded as botocore decodes them (`unquote_plus`: it asks
    for URL-encoded keys); None for a page of another form."""
    root = ET.fromstring(body)
    encoding = root.findtext(f"{_S3}EncodingType")
    if root.tag != f"{_S3}ListBucketResult" or encoding not in (None, "url"):
        return None
    keys, sizes, times = [], [], []
    for item in root.iter(f"{_S3}Contents"):
        key = item.findtext(f"{_S3}Key")
        if encoding and ("%" in key or "+" in key):
            key = unquote_plus(key)
        keys.append(key)
        sizes.append(int(item.findtext(f"{_S3}Size")))
        times.append(_timestamp(item.findtext(f"{_S3}LastModified")).timestamp())
    read = {"IsTruncated": root.findtext(f"{_S3}IsTruncated") == "true",
            "KeyCount": len(keys), COLUMNS: (keys, sizes, times)}  # fmt: skip
    token = root.findtext(f"{_S3}NextContinuationToken")
    if token is not None:
        read["NextContinuationToken"] = token
    return read


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
