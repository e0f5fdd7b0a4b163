"""Holds (easel/orchestration/locks.py) on a real Prefect server that restarts or goes away:
a finished piece of work is never failed by its release, and a hold the restart left taken
is freed, by its holder or by the next run, without anyone running a command by hand."""

from __future__ import annotations

import time

import pytest
from conftest import PrefectServer

from easel.orchestration import leases, locks

pytestmark = pytest.mark.slow  # each test restarts a Prefect server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Prefect server of this module's own (the session's is never restarted), with
    Prefect's client retrying a stopped server once, not for half a minute."""
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    server = PrefectServer(tmp_path_factory.mktemp("restarted-prefect"))
    try:
        with temporary_settings({PREFECT_API_URL: server.url, PREFECT_CLIENT_MAX_RETRIES: 1}):
            yield server
    finally:
        server.stop()


def active_slots(name: str) -> int:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots


def taken_within(name: str, seconds: float) -> float:
    """Take and give back the hold `name`, waiting at most `seconds` on a live holder (a
    few: `Busy` after `TRY_SECONDS`); how long it took."""
    started = time.monotonic()
    with locks.hold(name, wait=seconds > leases.TRY_SECONDS):
        assert active_slots(name) == 1
    return time.monotonic() - started


def test_a_holder_whose_lease_a_restart_lost_frees_its_slot_itself(server, capsys):
    name = locks.lock_name("test", "restart-while-held")
    with locks.hold(name):
        server.stop()
        server.start()  # the lease, kept in the server's memory, is gone; the slot is not
        assert active_slots(name) == 1
    assert "its lease was lost" in capsys.readouterr().err
    assert active_slots(name) == 0
    assert taken_within(name, leases.TRY_SECONDS) < leases.TRY_SECONDS


def test_a_release_the_server_missed_never_fails_the_work_and_the_next_run_frees_it(
    server, capsys
):
    name = locks.lock_name("test", "down-at-release")
    finished = []
    with locks.hold(name):
        server.stop()
        finished.append("the work")
    assert finished == ["the work"]  # the block's end was not turned into an error
    assert "not released" in capsys.readouterr().err
    server.start()
    assert active_slots(name) == 1  # left taken: its lease died with the server
    assert taken_within(name, leases.TRY_SECONDS) < leases.TRY_SECONDS + 5
    line = capsys.readouterr().err
    assert name in line and "lease is gone" in line and "freed" in line, line
    assert active_slots(name) == 0


def test_a_live_holder_is_waited_on_with_one_line_naming_the_way_out(
    server, capsys, monkeypatch
):
    import contextvars
    import threading

    name = locks.lock_name("test", "live-holder")
    monkeypatch.setattr(leases, "NOTICE_SECONDS", 1.0)
    waited = []
    with locks.hold(name):
        with pytest.raises(locks.Busy):
            taken_within(name, leases.TRY_SECONDS)
        context = contextvars.copy_context()  # this module's server
        waiter = threading.Thread(
            target=context.run, args=(lambda: waited.append(taken_within(name, 60)),)
        )
        waiter.start()
        time.sleep(3)
        assert waiter.is_alive()  # still waiting: the holder lives
    waiter.join(timeout=30)
    assert waited, "the waiter never got the hold"
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "waiting" in line]
    assert name in line and f"prefect gcl update {name} --active-slots 0" in line, line
    assert active_slots(name) == 0


def test_a_sweep_through_a_server_restart_finishes_and_a_rerun_completes_by_itself(
    server, tmp_path
):
    """The Prefect server restarted (down 5 s) while a sweep generates: the sweep still
    writes every row's result, and a rerun finds everything done without waiting on a
    hold the restart left taken."""
    import os
    import subprocess
    import sys

    from sweep_helpers import easel, read_results, write_manifest

    rows = [{"id": f"r{i}", "prompt": "a red circle", "num_inference_steps": 8} for i in range(6)]
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    out = tmp_path / "out"
    env = {**os.environ, "PREFECT_API_URL": server.url}
    command = [sys.executable, "-m", "easel.cli", "sweep", manifest, "--out", str(out),
               "--batch-size", "1"]  # fmt: skip
    sweep = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(out.glob("images/*/0.png")):
        assert sweep.poll() is None and time.monotonic() < deadline, sweep.communicate()
        time.sleep(0.2)
    assert sweep.poll() is None, "the sweep ended before the restart"
    server.stop()
    time.sleep(5)
    server.start()
    stdout, stderr = sweep.communicate(timeout=400)
    assert sweep.returncode == 0, stderr[-3000:]
    assert "its lease was lost" in stderr, stderr[-3000:]  # and its slot freed at the end
    assert sorted(row["id"] for row in read_results(out)) == [f"r{i}" for i in range(6)]

    started = time.monotonic()
    rerun = easel("sweep", manifest, "--out", str(out), env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "0 generated now" in rerun.stdout, rerun.stdout
    assert time.monotonic() - started < 120, "the rerun waited on a hold"


def test_a_hold_kept_longer_than_its_lease_stays_taken(server, capsys):
    """The lease is renewed while the holder lives: the server's expiry of dead holders'
    leases (every 15 s) never frees it."""
    name = locks.lock_name("test", "kept-long")
    with locks.hold(name):
        time.sleep(leases.LEASE_SECONDS + 2 * leases.REPOSSESS_SECONDS)
        assert active_slots(name) == 1
    assert "lost" not in capsys.readouterr().err
    assert active_slots(name) == 0
