"""A large sweep's bookkeeping on an object store: planning, progress and results, today's
code against this one, on the state of a finished sweep (issue 30).

    python -m bench.bench_scale                              # 16,384 images, 20 ms a request
    python -m bench.bench_scale --images 524288 --compacted --baseline ''   # at scale
    python -m bench.bench_scale --baseline d2612de           # "today": easel at that commit

A local S3 server (moto, in its own process) serves two ports over one store: a direct one
to fabricate the state, and one that waits `--latency-ms` before answering each request, so
that sequential and concurrent reads differ as on a real store. The state: a manifest of
`--images` rows (tiny-shapes, one image each), every image as a small PNG, one record shard
per batch of `--batch` (as an older easel leaves a finished sweep; `--compacted`: their rows
in one file per part, as this easel's shard runs leave them, which today's code cannot
read), a tally per shard run. Each figure
is measured in its own process (its peak memory is that process's), through the slow port:

1. today's code (`--baseline`, extracted with `git archive`): a rerun's planning
   (`done_slots`), the parent's first progress poll (every record read), `results.parquet`
   written (`publish_results`);
2. this code on the same state: a rerun's planning (the manifest validated and planned,
   every image vouched for; the first compacts the record shards it finds), the next
   rerun's planning (each, as a sharded parent's, writing its verdict on the images:
   `easel/data/verdict.py`; then, untimed, the plan a fresh sweep's parent hands its
   shards, every image pending), one of `--shards` shards' planning as a shard run does it
   (its own rows of the manifest, trusting the verdict: a planning step must run first),
   the same shard's planning in full (`shard_planning_full`: the whole manifest, every
   image listed: a shard handed nothing), the parent's progress poll, `results.parquet`
   written;
3. the manifest's validation and planning alone (no output read), for scale.
`--smoke`: 256 images, 5 ms.

The state is put straight into the server's store (no request per object), and the server
lists as a real store does, in a page's time: moto's own listing sorts the whole bucket and
serializes every page generically (0.1-0.4 s of the server's CPU a page at 16,384 to 65,536
keys), so the server process lists from a sorted index of the keys and writes
ListObjectsV2 pages as plain text. A million images hold about 8 GB in moto. `--hold` leaves
the server running after the run, its state as the run left it (compacted), and prints
`HELD <pid> <direct> <delayed>`; `--endpoints DIRECT,DELAYED` measures against such a held
server instead of fabricating (its `--images`, `--batch`, `--shards` are read from it); kill
the pid when done. `--only a,b` runs only those steps; `--profile DIR` writes each step's
cProfile statistics to `DIR/<step>.prof`.
"""

from __future__ import annotations

import cProfile
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from bench import harness

BUCKET = "easel-scale"
OUT = f"s3://{BUCKET}/out"
MANIFEST = f"s3://{BUCKET}/manifest.parquet"
PARAMETERS = f"{BUCKET}/fabricated.json"  # what the state was fabricated with
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
UPLOAD_CHUNK = 2000  # objects handed to the store at once while fabricating


def serve(latency_ms: float, fabricated: list[int]) -> None:
    """In the server process: one moto store behind a direct port and a delayed one, holding
    the state `fabricate(*fabricated)` makes (none: `fabricated` empty); prints "PORTS direct
    delayed", then serves until killed."""
    import logging
    import threading

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    _index_listings()
    app = DomainDispatcherApplication(create_backend_app)

    def delayed(environ, start_response):
        time.sleep(latency_ms / 1000)
        return app(environ, start_response)

    servers = [make_server("127.0.0.1", 0, a, threaded=True) for a in (app, delayed)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    if fabricated:
        _use_endpoint(f"http://127.0.0.1:{servers[0].server_port}")
        fabricate(*fabricated[:3], put=_store_put(), compacted=bool(fabricated[3]))
    print("PORTS", *(s.server_port for s in servers), flush=True)
    threading.Event().wait()


def _index_listings() -> None:
    """Make moto list a page as a real store does, in the page's time: moto copies and sorts
    the whole bucket for every page (a listing of a million keys would cost minutes of the
    server's CPU, not the store's), so its `list_objects_v2` is replaced here by one over a
    sorted index of the key names, rebuilt after a change to any bucket's keys."""
    import bisect

    from moto.s3 import utils
    from moto.s3.models import FakeKey, S3Backend

    store, changes, index = utils._VersionedKeyStore, [0], {}

    def counted(method):
        def changed(self, *args):
            changes[0] += 1
            return method(self, *args)

        return changed

    for name in ("__setitem__", "pop", "setlist"):
        setattr(store, name, counted(getattr(store, name)))

    def names(bucket) -> list[str]:
        if index.get(bucket.name, (None,))[0] != changes[0]:
            index[bucket.name] = (changes[0], sorted(dict.keys(bucket.keys)))
        return index[bucket.name][1]

    def list_v2(self, bucket, prefix, delimiter, continuation_token, start_after, max_keys):
        keys, prefix = names(bucket), prefix or ""
        after = self._pagination_tokens.get(continuation_token, start_after)
        if after and delimiter and after.endswith(delimiter):  # after a folder: past it
            after += chr(0x10FFFF)
        after = max(after or "", prefix)
        i = bisect.bisect_right(keys, after) if after > prefix else bisect.bisect_left(keys, after)
        found = []
        while i < len(keys) and keys[i].startswith(prefix) and len(found) <= max_keys:
            rest = keys[i][len(prefix) :]
            if delimiter and delimiter in rest:
                folder = prefix + rest.split(delimiter)[0] + delimiter
                found.append(folder)
                i = bisect.bisect_left(keys, folder + chr(0x10FFFF))
                continue
            key = bucket.keys.get(keys[i])
            if isinstance(key, FakeKey):
                found.append(key)
            i += 1
        return self._truncate_result(found, max_keys)

    S3Backend.list_objects_v2 = list_v2
    _quick_listing_pages()


def _quick_listing_pages() -> None:
    """Have moto write a ListObjectsV2 page as plain text: its generic serializer spends
    about 125 ms of the server's CPU on a page of 1,000 keys, which a real store does not
    charge its client (the added latency stands for the store's time)."""
    from xml.sax.saxutils import escape

    from moto.s3.responses import S3Response

    serialized = S3Response.serialized

    def quick(self, action_result):
        if self.data.get("Action") != "ListObjectsV2":
            return serialized(self, action_result)
        result = action_result.result
        parts = ['<?xml version="1.0" encoding="UTF-8"?>'
                 '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">']  # fmt: skip
        for name in ("Name", "Prefix", "MaxKeys", "KeyCount", "Delimiter", "EncodingType",
                     "NextContinuationToken", "StartAfter"):  # fmt: skip
            if name in result:
                parts.append(f"<{name}>{escape(str(result[name]))}</{name}>")
        parts.append(f"<IsTruncated>{str(bool(result['IsTruncated'])).lower()}</IsTruncated>")
        parts += [f"<Contents><Key>{escape(c['Key'])}</Key><LastModified>{c['LastModified']}"
                  f"</LastModified><ETag>{escape(c['ETag'])}</ETag><Size>{c['Size']}</Size>"
                  f"<StorageClass>{c['StorageClass']}</StorageClass></Contents>"
                  for c in result["Contents"]]  # fmt: skip
        parts += [f"<CommonPrefixes><Prefix>{escape(f['Prefix'])}</Prefix></CommonPrefixes>"
                  for f in result.get("CommonPrefixes", [])]  # fmt: skip
        parts.append("</ListBucketResult>")
        headers = {**self.response_headers, "content-type": "application/xml", "status": 200}
        return 200, headers, "".join(parts).encode()

    S3Response.serialized = quick


def _store_put():
    """Puts {path: bytes} straight into this process's moto store (no request each)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]

    def put(files: dict[str, bytes]) -> None:
        for path, data in files.items():
            bucket, key = path.split("/", 1)
            backend.put_object(bucket, key, data)

    return put


def _use_endpoint(endpoint: str) -> None:
    import fsspec.config

    os.environ.update(CREDENTIALS, FSSPEC_S3_ENDPOINT_URL=endpoint)
    fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = endpoint


def start_server(latency_ms: float, fabricated: list[int]):
    """The server process (holding the state `fabricate(*fabricated)` makes) and its direct
    and delayed endpoints."""
    command = [sys.executable, "-m", "bench.bench_scale", "--serve", str(latency_ms),
               "--fabricate", ",".join(map(str, fabricated))]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=harness.ROOT,
                               env={**os.environ, **CREDENTIALS})  # fmt: skip
    line = process.stdout.readline().split()
    if not line or line[0] != "PORTS":
        process.kill()
        sys.exit(f"the S3 server did not start: {line}")
    process.stdout.close()
    direct, delayed = (f"http://127.0.0.1:{port}" for port in line[1:3])
    return process, direct, delayed


def inputs(manifest: str, out: str):
    from easel.data.manifest import SweepDefaults
    from easel.models.engine.sweep import SweepInputs

    defaults = SweepDefaults(model="tiny-shapes", guidance_scale=7.5, num_inference_steps=2,
                             max_pixels=4096 * 4096)  # fmt: skip
    return SweepInputs(manifest=manifest, out=out, defaults=defaults, input_roots=(),
                       batch_size=8, device="cpu", dtype=None, trust_pickle=False)  # fmt: skip


def fabricate(images: int, batch: int, shards: int, put, compacted: bool = False) -> None:
    """The state of a finished sweep of `images` rows under `OUT`: the manifest and tallies
    written through the store's endpoint, images and record shards by `put` ({path: bytes}),
    or (`compacted`) their rows in one file per part, as this easel's shard runs leave
    them; the parameters, with the seconds it took, in `PARAMETERS`."""
    import pyarrow as pa
    from PIL import Image

    from easel.data import records, results, storage
    from easel.models.engine.sweep import plan_sweep

    started = time.perf_counter()
    fs = storage.filesystem(OUT)[0]
    fs.mkdir(BUCKET)
    rows = pa.table({"id": [f"r{i:07d}" for i in range(images)],
                     "prompt": [f"a red circle number {i}" for i in range(images)],
                     "seed": list(range(images))})  # fmt: skip
    storage.write_parquet_atomic(MANIFEST, rows)
    _, plan = plan_sweep(inputs(MANIFEST, OUT), check_done=False)
    planned = [image for b in plan.batches for image in b.images]
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    png = buffer.getvalue()
    for start in range(0, len(planned), UPLOAD_CHUNK):
        chunk = planned[start : start + UPLOAD_CHUNK]
        put({storage.path_of(results.image_uri(OUT, i.row_id, i.image_index)): png
             for i in chunk})  # fmt: skip
    tables, tallies = _record_tables(planned, batch, shards, png)
    folder = storage.path_of(records.records_dir(OUT))
    if compacted:
        put(_parts(folder, pa.concat_tables(tables)))
    else:
        put({f"{folder}/b{i * batch}.parquet": _parquet(t) for i, t in enumerate(tables)})
    for tally in tallies.values():
        tally.write(OUT)
    made = {"images": images, "batch": batch, "shards": shards, "compacted": compacted,
            "fabricated_s": round(time.perf_counter() - started, 1)}  # fmt: skip
    fs.pipe(PARAMETERS, json.dumps(made).encode())


def _record_tables(planned: list, batch: int, shards: int, png: bytes):
    """One record table per batch of `batch` images of `planned`, and the tallies of the
    shard runs that would have written them."""
    from dataclasses import asdict

    import pyarrow as pa

    from easel.data import records
    from easel.data.batching import shard_of

    sha = hashlib.sha256(png).hexdigest()
    written_at, tallies, tables = time.time() + 1, {}, []
    for start in range(0, len(planned), batch):
        made = [_record(OUT, image, png, sha, written_at, shard_of(image, shards))
                for image in planned[start : start + batch]]  # fmt: skip
        tables.append(pa.Table.from_pylist([asdict(r) for r in made],
                                           schema=records.RECORD_SCHEMA))  # fmt: skip
        for r in made:
            tallies.setdefault(r.flow_run_id, records.Tally(r.flow_run_id)).add([r])
    return tables, tallies


def _parts(folder: str, table) -> dict[str, bytes]:
    """`table`'s rows as compaction leaves them: one file per part of their slots."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from easel.data import records
    from easel.data.batching import slot_hash

    columns = (table.column(n).to_pylist() for n in ("id", "image_index", "request_key"))
    slots = zip(*columns, strict=True)
    part = pa.array([slot_hash(s) % records.PARTS for s in slots], pa.int64())
    return {f"{folder}/{records.PART_PREFIX}{p}/{records.COMPACTED_PREFIX}bench.parquet":
            _parquet(table.filter(pc.equal(part, p))) for p in range(records.PARTS)}  # fmt: skip


def _parquet(table) -> bytes:
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _record(out, image, png, sha, written_at, shard):
    from easel.data import records, results

    return records.ImageRecord(
        id=image.row_id, request_key=image.request_key, image_index=image.image_index,
        image_uri=results.image_uri(out, image.row_id, image.image_index), status="ok",
        error=None, warning=None, seed=image.request.seed, model_ref="tiny-shapes",
        model_digest="d", scheduler="ddim", duration_s=0.01, image_sha256=sha,
        mlflow_run_id="m", flow_run_id=f"shard-{shard}", image_bytes=len(png),
        written_at=written_at,
    )  # fmt: skip


def measure(what: str, shards: int, profile: str | None = None) -> dict:
    """In a measuring child (whatever easel `PYTHONPATH` names): time `what` once, its
    modules imported before the clock starts (`profile`: a file for its cProfile stats)."""
    from easel.data import results, storage
    from easel.data.batching import Shard
    from easel.models.engine.sweep import plan_sweep
    from easel.orchestration import shards as sharding

    def publish():  # as a sweep's run does once its images are generated
        table, plan = plan_sweep(inputs(MANIFEST, OUT), check_done=False)
        if hasattr(plan, "release_batches"):  # generated: their objects freed
            plan.release_batches()
        return results.publish_results(OUT, table.table, plan, 0).images_ok

    shard, planned = Shard(0, shards), inputs(MANIFEST, OUT)
    work = {
        "planning": lambda: _parent_planning(plan_sweep, planned).total_images,
        "shard_planning": lambda: plan_sweep(planned, shard, vouched_by=VERDICT)[1].total_images,
        "shard_planning_full": lambda: plan_sweep(planned, shard)[1].total_images,
        "progress": lambda: _poll(sharding, {f"shard-{i}" for i in range(shards)}),
        "manifest": lambda: plan_sweep(inputs(MANIFEST, OUT), check_done=False)[1].pending_images,
        "results": publish,
    }
    if what not in work:
        raise SystemExit(f"--child {what!r}: not one of {sorted(work)}")
    storage.filesystem(OUT)  # its filesystem's modules imported too
    if what == "shard_planning":
        from easel.data import verdict

        if verdict.read_verdict(OUT, VERDICT) is None:
            raise SystemExit("shard_planning trusts the verdict a planning step writes: "
                             "run rerun_planning (or first_rerun_planning) first")  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    count = profiler.runcall(work[what]) if profiler else work[what]()
    seconds = time.perf_counter() - start
    if profiler:
        profiler.dump_stats(profile)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if what == "planning":  # after the measure: the plan a fresh sweep's parent hands down
        _hand_down_rows(plan_sweep, planned, shards)
    return {"seconds": seconds, "count": count, "peak_mb": peak, "imports_mb": before}


VERDICT = "bench-parent"  # the name of the verdict the planning steps write, as a parent


def _parent_planning(plan_sweep, planned):
    """A rerun's planning as a sharded parent does it (the manifest validated and planned,
    every image vouched for), writing the verdict for its shards (an older easel, without
    verdicts: the planning alone); returns the plan."""
    import inspect

    if "hand_down" in inspect.signature(plan_sweep).parameters:
        return plan_sweep(planned, hand_down=VERDICT)[1]
    return plan_sweep(planned)[1]


def _hand_down_rows(plan_sweep, planned, shards: int) -> None:
    """The parent's plan for its shards as a fresh sweep's parent writes it (every image
    pending: each shard validates all of its rows), where this easel hands one down."""
    try:
        from easel.data import verdict
    except ImportError:  # an older easel
        return
    if hasattr(verdict, "write_rows"):
        table, plan = plan_sweep(planned, check_done=False)
        verdict.write_rows(OUT, VERDICT, plan.pending_rows(shards), table.versions)


def _poll(shards, run_ids: set) -> int:
    """The sharded parent's progress poll: this easel's, or an older one's `RecordCounter`."""
    if hasattr(shards, "images_recorded"):
        return shards.images_recorded(OUT, run_ids)
    return shards.RecordCounter(OUT).images_by(run_ids)


def child(what: str, endpoint: str, shards: int, tree: str, profile: str | None) -> dict:
    path = os.pathsep.join([tree, str(harness.ROOT)])  # that easel first
    env = {**os.environ, **CREDENTIALS, "FSSPEC_S3_ENDPOINT_URL": endpoint,
           "OMP_NUM_THREADS": "1", "PYTHONPATH": path}  # fmt: skip
    command = [sys.executable, "-m", "bench.bench_scale", "--child", what, "--shards", str(shards)]
    if profile:
        command += ["--profile", os.path.abspath(profile)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tree)
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"{what} ({tree}) failed:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def baseline_tree(commit: str, work: str) -> str:
    """easel at `commit`, extracted under `work` (its own package folder)."""
    tree = os.path.join(work, f"easel-{commit}")
    os.makedirs(tree)
    archive = subprocess.run(["git", "archive", commit, "easel"], cwd=harness.ROOT,
                             capture_output=True, check=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
    return tree


def options():
    parser = harness.parser(__doc__)
    parser.add_argument("--images", type=int, default=16384, help="rows of the manifest")
    parser.add_argument("--batch", type=int, default=8, help="images per record shard")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="added per request")
    parser.add_argument("--baseline", default="d2612de", help="today's easel ('': none)")
    parser.add_argument("--compacted", action="store_true",
                        help="the records as this easel leaves them (parts), not record shards")
    parser.add_argument("--hold", action="store_true", help="leave the server running")
    parser.add_argument("--endpoints", help="DIRECT,DELAYED of a held server: no fabrication")
    parser.add_argument("--only", help="the steps to run, comma-separated (default: all)")
    parser.add_argument("--profile", help="a folder for each step's cProfile statistics")
    parser.add_argument("--serve", type=float, help=argparse_hidden())
    parser.add_argument("--fabricate", default="", help=argparse_hidden())
    parser.add_argument("--child", help=argparse_hidden())
    return parser


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


def main() -> None:
    args = options().parse_args()
    if args.serve is not None:
        return serve(args.serve, [int(x) for x in args.fabricate.split(",") if x])
    if args.child:
        figures = measure(args.child, args.shards, args.profile)
        print("RESULT " + json.dumps(figures), flush=True)
        return
    if args.smoke:
        args.images, args.latency_ms = 256, 5.0
    if args.compacted and args.baseline and not args.endpoints:
        sys.exit(COMPACTED_TODAY.format(args.baseline))
    server = None
    if args.endpoints:
        direct, delayed = args.endpoints.split(",")
    else:
        made = [args.images, args.batch, args.shards, int(args.compacted)]
        server, direct, delayed = start_server(args.latency_ms, made)
    work = tempfile.mkdtemp(prefix="easel-scale-")
    try:
        result = run(args, direct, delayed, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if server and args.hold:
            print("HELD", server.pid, direct, delayed, flush=True)
        elif server:
            server.kill()
            server.wait()
    result.write()


COMPACTED_TODAY = ("a compacted state: today's easel ({}) reads record shards only; "
                   "give --baseline ''")
STEPS = (("first_rerun_planning", "planning"), ("rerun_planning", "planning"),
         ("shard_planning", "shard_planning"),
         ("shard_planning_full", "shard_planning_full"), ("progress_poll", "progress"),
         ("results_written", "results"), ("manifest_planning", "manifest"))  # fmt: skip
TODAY_STEPS = (("today_rerun_planning", "planning"), ("today_progress_poll", "progress"),
               ("today_results_written", "results"))  # fmt: skip


def run(args, direct: str, delayed: str, work: str) -> harness.Results:
    _use_endpoint(direct)
    from easel.data import storage

    made = json.loads(storage.read_bytes(f"s3://{PARAMETERS}"))
    args.images, args.batch, args.shards = made["images"], made["batch"], made["shards"]
    args.compacted = made.get("compacted", False)
    if args.compacted and args.baseline:
        sys.exit(COMPACTED_TODAY.format(args.baseline))
    results = harness.Results("bench_scale", args)
    results.parameters.update(images=args.images, batch=args.batch, shards=args.shards,
                              latency_ms=args.latency_ms, baseline=args.baseline,
                              compacted=args.compacted,
                              record_shards=-(-args.images // args.batch),
                              fabricated_s=made["fabricated_s"])  # fmt: skip
    only = set(args.only.split(",")) if args.only else None
    steps = []
    if args.baseline:
        tree = baseline_tree(args.baseline, work)
        steps += [(name, what, tree) for name, what in TODAY_STEPS]
    steps += [(name, what, str(harness.ROOT)) for name, what in STEPS]
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    for name, what, tree in steps:
        if only is not None and name not in only:
            continue
        profile = os.path.join(args.profile, f"{name}.prof") if args.profile else None
        figures = child(what, delayed, args.shards, tree, profile)
        print(f"{name}: {figures}", flush=True)
        results.add(f"{name}_s", "s", figures["seconds"])
        results.add(f"{name}_peak_mb", "MiB", figures["peak_mb"])
        results.parameters[f"{name}_count"] = figures["count"]
    return results


if __name__ == "__main__":
    main()
