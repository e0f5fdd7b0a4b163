"""Leave no process behind: `easel CMD` killed without a chance to clean up (kill -9, the
OOM killer) would leave what it started running, Prefect's temporary server first of all
(it is stopped at exit, which a killed process never reaches).

`watch()` starts this module as a small process of its own (standard library only) that
notes the command's descendants every `POLL_SECONDS` and, once the command is gone, stops
those still running (SIGTERM, then SIGKILL after `GRACE_SECONDS`). A process is recognised
by its pid and its start time, so a recycled pid is never touched. Linux (/proc) only;
elsewhere it does nothing.

A command that ends on its own calls `disarm()` (the `easel` CLI does, however it ends),
which removes the file `watch()` made. If the file is still there once the command is gone,
the command was killed: the MLflow runs it left RUNNING (tagged `easel.process` with its
"host~pid") are ended KILLED, tagged `easel.ended_by` (only then is MLflow imported).

    python -m easel.watchdog PID ARMED_FILE
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time

POLL_SECONDS = 0.5
GRACE_SECONDS = 3.0
KILLED_REASON = "its easel command was killed"  # the `easel.ended_by` of the runs it ends

_armed: str | None = None  # this process's file: present while it may still be killed


def watch() -> None:
    """Watch this process (see the module's docstring)."""
    global _armed
    if not os.path.isdir(f"/proc/{os.getpid()}/task"):
        return
    descriptor, _armed = tempfile.mkstemp(prefix=f"easel-{os.getpid()}-", suffix=".armed")
    os.close(descriptor)
    subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "easel.watchdog", str(os.getpid()), _armed],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in the terminal's group: a ^C does not reach it
    )  # fmt: skip


def disarm() -> None:
    """This process ends on its own: its watchdog only stops what it left running."""
    global _armed
    if _armed is not None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(_armed)
        _armed = None


def started(pid: int) -> str | None:
    """The start time of `pid` (clock ticks since boot), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as f:
                    children = {int(child) for child in f.read().split()}
            except FileNotFoundError:
                continue
            todo.extend(children - found)
            found |= children
    return found


def run(parent: int, armed: str) -> None:
    me, parent_started, known = os.getpid(), started(parent), {}
    while started(parent) == parent_started and parent_started is not None:
        for pid in descendants(parent) - {me}:
            known.setdefault(pid, started(pid))
        time.sleep(POLL_SECONDS)
    left = {pid: start for pid, start in known.items() if start and started(pid) == start}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, start in left.items():
            if started(pid) == start:
                os.kill(pid, sig)
        deadline = time.monotonic() + GRACE_SECONDS
        while any(started(p) == s for p, s in left.items()) and time.monotonic() < deadline:
            time.sleep(0.1)
    if os.path.exists(armed):  # killed: it never said it was ending
        os.remove(armed)
        end_runs_of(parent)


def end_runs_of(parent: int) -> list[str]:
    """End the MLflow runs the killed command `parent` left RUNNING (never raises: the
    watchdog has no one to tell)."""
    try:
        from easel import tracking
        from easel.data import storage

        return tracking.end_runs_of_process(storage.process_name(parent), KILLED_REASON)
    except Exception:  # noqa: BLE001 - a store out of reach: the runs stay as they are
        return []


if __name__ == "__main__":
    run(int(sys.argv[1]), sys.argv[2])
