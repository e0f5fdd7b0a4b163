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

from fsspec.asyn import sync

PAGE = 1000  # keys one S3 listing request returns at most
CONCURRENT = 64  # listing requests in flight at once


def is_ranged(fs) -> bool:
    """`fs` is an S3 filesystem (s3fs), whose listings this module splits."""
    return hasattr(fs, "_call_s3") and hasattr(fs, "split_path")


def versions(fs, folder: str, wanted: list[str], share: float = 1.0) -> dict[str, tuple]:
    """{path: (size in bytes, modification time in Unix seconds)} of the files below
    `folder` (a protocol-less path of S3 filesystem `fs`) whose keys fall between the
    first and the last of `wanted` (paths as `fs.find` names them): every file of `wanted`
    that exists, and others on the way. `share` (0 < share <= 1): about what part of the
    folder's files `wanted` names (a shard's: 1 / its count), so that each range holds about
    one page of the folder. Raises what the store raises (FileNotFoundError: no bucket)."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    bucket, prefix, _ = fs.split_path(folder)
    prefix = prefix.rstrip("/") + "/"
    keys = sorted({p.split("/", 1)[1] for p in wanted if p.startswith(f"{bucket}/{prefix}")})
    found: dict[str, tuple] = {}
    if keys:
        sync(fs.loop, _list_all, fs, bucket, prefix, ranges(keys, max(1, round(PAGE * share))),
             found)  # fmt: skip
    return found


def ranges(keys: list[str], stride: int) -> list[tuple[str | None, str]]:
    """The sorted `keys` cut into ranges of `stride` keys: (listed after, last), the first
    from the folder's start (None)."""
    return [(keys[i - 1] if i else None, keys[min(i + stride, len(keys)) - 1])
            for i in range(0, len(keys), stride)]  # fmt: skip


async def _list_all(fs, bucket: str, prefix: str, spans: list, found: dict) -> None:
    gate = asyncio.Semaphore(CONCURRENT)

    async def one(after: str | None, last: str) -> None:
        async with gate:
            await _list_range(fs, bucket, prefix, after, last, found)

    await asyncio.gather(*(one(after, last) for after, last in spans))


async def _list_range(fs, bucket, prefix, after: str | None, last: str, found: dict) -> None:
    """Every key below `prefix` after `after` up to `last` into `found`, page by page."""
    while True:
        asked = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": PAGE}
        if after is not None:
            asked["StartAfter"] = after
        page = await fs._call_s3("list_objects_v2", **asked)
        contents = page.get("Contents", [])
        for item in contents:
            if item["Key"] > last:
                return
            found[f"{bucket}/{item['Key']}"] = (item["Size"], item["LastModified"].timestamp())
        if not page.get("IsTruncated") or not contents:
            return
        after = contents[-1]["Key"]
