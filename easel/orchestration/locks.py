"""Exclusive holds on a piece of work across processes and machines: Prefect global
concurrency limits of one slot, taken under a lease.

A hold is named after what it guards (`lock_name`: a sweep output's shard, a DreamBooth
output folder, an output's results table). The holder renews its lease while it lives; a
holder that dies (kill -9, a lost node) stops renewing, and its hold is free again after
`LEASE_SECONDS`, so nothing waits forever on a dead run. The limits are made on first use
(one slot each) on the Prefect server the run talks to; beside each, a Prefect variable of
the same name records its holder (`HolderRecord`: the lease, the flow run, since when).

A server restart loses the leases Prefect keeps in memory (its default) but not the slots:
- the holder finds its lease gone (renewing it answers 410) and frees its slot itself when
  it ends;
- a holder that could not release (the server was down at that moment) never fails its
  finished work: one warning line, and the next run that wants the hold finds the
  recorded lease gone while the slot is taken, and frees it (one line naming it);
- a hold whose holder is not known to have ended is waited on, with one line naming it,
  its holder, and the command that frees it (`FREE_COMMAND`).
A Prefect server started with `PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=
prefect.server.concurrency.lease_storage.filesystem` keeps its leases on disk across
restarts (docs/operations.md).

Without a Prefect server (`PREFECT_API_URL` unset: a command on a shell runs on Prefect's
temporary server, which lives and dies with the process) nothing is held: runs started
from two shells into one output are not kept apart.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from datetime import datetime, timezone

from easel.data import storage
from easel.orchestration import leases
from easel.orchestration.leases import LEASE_SECONDS, Busy  # noqa: F401 - part of this API


def lock_name(kind: str, location: str, part: str = "") -> str:
    """The limit's name: `easel-KIND-<16 hex of the location>[-PART]` (Prefect's names are
    short; the location itself, any URI, is hashed)."""
    digest = hashlib.sha256(location.rstrip("/").encode()).hexdigest()[:16]
    return f"easel-{kind}-{digest}" + (f"-{part}" if part else "")


def _ensure_limit(name: str) -> None:
    """The one-slot limit `name`, made if missing (two runs making it at once: one wins)."""
    from httpx import HTTPStatusError
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists, HTTPStatusError):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )


def _holder():
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.runtime import flow_run

    return ConcurrencyLeaseHolder(type="flow_run", id=flow_run.id) if flow_run.id else None


@contextlib.contextmanager
def hold(name: str, wait: bool = True) -> Iterator[None]:
    """Hold `name` for the block. `wait=False`: raise `Busy` if another run holds it (after
    trying for `TRY_SECONDS`); `wait=True`: wait until it is free (at most the holder's
    work, or `LEASE_SECONDS` after the holder died). Releasing never raises: a server that
    does not answer then gets one warning line (the hold lapses, or the next run frees it)."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():  # Prefect's temporary server: this process alone
        yield
        return
    _ensure_limit(name)
    lease = leases.take(name, wait, _holder())
    try:
        yield
    finally:
        leases.release(lease)


@contextlib.contextmanager
def hold_folder(kind: str, folder: str) -> Iterator[str | None]:
    """Hold `folder` (any fsspec URI) for the block, and say who holds it in
    `FOLDER/.easel/holder`. A hold whose holder has ended (its flow run is in a final
    state, or is this same flow run: an earlier, crashed attempt) is waited for, since it
    lapses within `LEASE_SECONDS`; a live holder raises `Busy` naming it. Yields the flow
    run id of the previous holder (an ended one), if any."""
    from prefect.runtime import flow_run

    name, holder_file = lock_name(kind, folder), storage.join(folder, ".easel", "holder")
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(hold(name, wait=False))
        except Busy:
            holder = _read_holder(holder_file)
            if not _ended(holder.get("flow_run_id")):
                raise Busy(
                    f"flow run {holder.get('flow_run_name', '?')} "
                    f"{holder.get('flow_run_id', '?')}, since {holder.get('since', '?')}"
                ) from None
            print(f"waiting for the hold of the ended run {holder['flow_run_id']} to lapse")
            stack.enter_context(hold(name))
        previous = _read_holder(holder_file).get("flow_run_id")
        since = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC"
        storage.write_text_atomic(holder_file, json.dumps(
            {"flow_run_id": str(flow_run.id), "flow_run_name": flow_run.name, "since": since}
        ))  # fmt: skip
        yield previous


def _read_holder(holder_file: str) -> dict:
    return json.loads(storage.read_bytes(holder_file)) if storage.exists(holder_file) else {}


def _ended(holder_id: str | None) -> bool:
    """Has the flow run `holder_id` ended (or is it an earlier attempt of this run)?"""
    if not holder_id:
        return False
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return leases.flow_run_ended(client, holder_id)
