"""One slot of a Prefect global concurrency limit, taken under a lease that a thread renews,
and given back whatever the server went through meanwhile (`locks.hold` is the API; this
module is its mechanics).

Prefect's own `concurrency()` fails the work it guards when the server does not answer at
release (`httpx.ConnectError` out of a finished run), and after a server restart (its
leases are kept in memory) its release is a no-op that leaves the slot taken for good.
Here: a release that fails is one warning line; a lease the server lost is detected
(renewing it answers 410 Gone) and its slot freed, by the holder when it ends, or by the
next run that finds the slot taken under a lease that is gone (`_free_if_orphaned`). The
holder of each hold is recorded in a Prefect variable of the hold's name
(`HolderRecord`), which survives a restart.
"""

from __future__ import annotations

import contextvars
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from uuid import UUID

LEASE_SECONDS = 60  # a dead holder's hold is free again after this long (Prefect's least)
TRY_SECONDS = 3.0  # how long `take(..., wait=False)` tries before it reports the hold busy
POLL_SECONDS = 1.0  # between tries while a hold is taken, for the first NOTICE_SECONDS
NOTICE_SECONDS = 10.0  # a wait longer than this is announced (one line)
SLOW_POLL_SECONDS = 5.0  # between tries after that (a long wait: a live holder's work)
REPOSSESS_SECONDS = 15  # how often Prefect's server frees the slots of expired leases
LOCKED, GONE = 423, 410  # Prefect's answers: the slot is taken; the lease no longer exists
FREE_COMMAND = "prefect gcl update {name} --active-slots 0"  # frees a hold by hand


class Busy(Exception):
    """Another live run holds it (the message names what)."""


@dataclass
class Lease:
    """A slot taken: the hold's name, the server's lease id, and whether the server lost
    the lease while it was held (set by the renewing thread)."""

    name: str
    id: UUID
    taken: float = field(default_factory=time.monotonic)
    lost: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)


def take(name: str, wait: bool, holder) -> Lease:
    """Take the one slot of the limit `name` for `holder` (a ConcurrencyLeaseHolder or
    None) and keep its lease renewed until `release`. Raises `Busy` when `wait` is False and
    a holder keeps it for `TRY_SECONDS`."""
    from prefect import get_client

    started, announced, probed = time.monotonic(), False, set()
    with get_client(sync_client=True) as client:
        while True:
            lease_id = _try_take(client, name, holder)
            if lease_id is not None:
                _write_record(client, name, lease_id, holder)
                return _renewed_in_background(Lease(name, lease_id))
            if _free_if_orphaned(client, name, probed):
                continue
            waited = time.monotonic() - started
            if not wait and waited >= TRY_SECONDS and _active_slots(client, name):
                raise Busy(name)
            if wait and not announced and waited >= NOTICE_SECONDS:
                print(_waiting_line(name, _read_record(client, name)), file=sys.stderr)
                announced = True
            time.sleep(POLL_SECONDS if waited < NOTICE_SECONDS else SLOW_POLL_SECONDS)


def release(lease: Lease) -> None:
    """Give the slot back: with its lease, or, if the server lost the lease (a restart), by
    freeing the slot itself (nobody else could take it meanwhile). Never raises: a server
    that does not answer gets one warning line."""
    from prefect import get_client

    lease.stop.set()
    try:
        with get_client(sync_client=True) as client:
            if lease.lost.is_set() or not _renew(client, lease.id):
                _free_slot(client, lease.name, time.monotonic() - lease.taken)
                print(f"hold {lease.name}: its lease was lost (the Prefect server restarted); "
                      "its slot is freed", file=sys.stderr)  # fmt: skip
            else:
                client.release_concurrency_slots_with_lease(lease.id)
            _delete_record(client, lease)
    except Exception as error:  # the work is done: a hold left taken is the next run's to free
        print(f"hold {lease.name}: not released ({type(error).__name__}: {error}); it lapses "
              f"within {LEASE_SECONDS} s, or the next run to want it frees it if the server "
              "lost its lease", file=sys.stderr)  # fmt: skip


def _try_take(client, name: str, holder) -> UUID | None:
    """The lease id of the slot just taken, or None if it is taken."""
    from httpx import HTTPStatusError

    try:
        response = client.increment_concurrency_slots_with_lease(
            names=[name], slots=1, mode="concurrency", lease_duration=LEASE_SECONDS,
            holder=holder,
        )  # fmt: skip
    except HTTPStatusError as error:
        if error.response.status_code == LOCKED:
            return None
        raise
    return UUID(response.json()["lease_id"])


def _renew(client, lease_id: UUID) -> bool:
    """Renew the lease for `LEASE_SECONDS`; False if the server no longer has it."""
    from httpx import HTTPStatusError

    try:
        client.renew_concurrency_lease(lease_id, LEASE_SECONDS)
    except HTTPStatusError as error:
        if error.response.status_code in (GONE, 404):
            return False
        raise
    return True


def _renewed_in_background(lease: Lease) -> Lease:
    """Renew `lease` every third of its duration until it is released; a server that does
    not answer is tried again, a lease the server lost is marked `lost`."""
    from prefect import get_client

    def renew() -> None:
        while not lease.stop.wait(LEASE_SECONDS / 3):
            try:
                with get_client(sync_client=True) as client:
                    if not _renew(client, lease.id):
                        lease.lost.set()
                        return
            except Exception:  # unreachable for now; the next try may reach it
                continue

    context = contextvars.copy_context()  # the caller's Prefect settings (its API URL)
    threading.Thread(target=context.run, args=(renew,), daemon=True,
                     name=f"easel-lease-{lease.name}").start()  # fmt: skip
    return lease


def _free_slot(client, name: str, held_seconds: float) -> None:
    """Free the slot of `name` without its lease (one the server lost)."""
    client.release_concurrency_slots(
        names=[name], slots=1, occupancy_seconds=max(held_seconds, 0.001)
    )


def _active_slots(client, name: str) -> int:
    return client.read_global_concurrency_limit_by_name(name).active_slots


# -- who holds a hold: a Prefect variable named after it -------------------------------------


def _write_record(client, name: str, lease_id: UUID, holder) -> None:
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate

    record = {"lease_id": str(lease_id), "flow_run_id": str(holder.id) if holder else None,
              "since": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC"}  # fmt: skip
    if client.read_variable_by_name(name) is None:
        client.create_variable(VariableCreate(name=name, value=record))
    else:
        client.update_variable(VariableUpdate(name=name, value=record))


def _read_record(client, name: str) -> dict:
    variable = client.read_variable_by_name(name)
    return variable.value if variable is not None and isinstance(variable.value, dict) else {}


def _delete_record(client, lease: Lease) -> None:
    if _read_record(client, lease.name).get("lease_id") == str(lease.id):
        client.delete_variable_by_name(lease.name)


def _free_if_orphaned(client, name: str, probed: set[str]) -> bool:
    """Free the slot of `name` if its recorded holder is gone (`_lease_may_be_lost`) and
    the server no longer has its lease (a restart lost it, or the holder could not release
    it); True if freed. Each recorded lease is probed once (renewing it is the only way to
    ask)."""
    record = _read_record(client, name)
    lease_id = record.get("lease_id")
    if not lease_id or lease_id in probed or not _lease_may_be_lost(client, record):
        return False
    probed.add(lease_id)
    if _renew(client, UUID(lease_id)) or _read_record(client, name) != record:
        return False
    if not _active_slots(client, name):
        return False
    _free_slot(client, name, LEASE_SECONDS)  # how long it was taken is unknown
    print(f"hold {name}: left taken by flow run {record.get('flow_run_id')} (since "
          f"{record.get('since')}) whose lease is gone (a restart of the Prefect server); "
          "freed", file=sys.stderr)  # fmt: skip
    return True


def _lease_may_be_lost(client, record: dict) -> bool:
    """Is the recorded holder gone in a way that would have let its slot go, had the server
    kept its lease: it ended and tried to release (completed, failed, cancelled), or it
    crashed longer ago than a lease lives and the server takes to free it, or it is no
    flow run at all (unknown)? Only then is its lease asked about: renewing a crashed
    holder's live lease would keep its hold for another `LEASE_SECONDS`."""
    from prefect.client.schemas.objects import StateType

    flow_run_id = record.get("flow_run_id")
    if not flow_run_id:
        return True
    state = _final_state(client, flow_run_id)
    if state is None or state.type != StateType.CRASHED:
        return state is not None
    crashed = (datetime.now(timezone.utc) - state.timestamp).total_seconds()
    return crashed > LEASE_SECONDS + REPOSSESS_SECONDS


def _final_state(client, flow_run_id: str):
    """The final state of the flow run `flow_run_id`, a COMPLETED one if it was deleted,
    None while it runs (or it is the flow run this code runs in)."""
    from prefect.exceptions import ObjectNotFound
    from prefect.runtime import flow_run
    from prefect.states import Completed

    if flow_run_id == str(flow_run.id):
        return None
    try:
        state = client.read_flow_run(UUID(flow_run_id)).state
    except ObjectNotFound:
        return Completed()
    return state if state is not None and state.is_final() else None


def flow_run_ended(client, flow_run_id: str) -> bool:
    """Is the flow run `flow_run_id` in a final state, deleted, or an earlier attempt of the
    flow run this code runs in?"""
    from prefect.runtime import flow_run

    return flow_run_id == str(flow_run.id) or _final_state(client, flow_run_id) is not None


def _waiting_line(name: str, record: dict) -> str:
    holder = (f"flow run {record['flow_run_id']} since {record.get('since')}"
              if record.get("flow_run_id") else "an unknown holder")  # fmt: skip
    return (f"waiting for hold {name}, held by {holder}; if that run is gone: "
            f"{FREE_COMMAND.format(name=name)}")
