"""The servers a command talks to, checked once before it starts: the MLflow tracking
server (an `http(s)://` `MLFLOW_TRACKING_URI`) and the Prefect API (`PREFECT_API_URL`).

Left to themselves, MLflow's client retries an unreachable server for minutes (about
260 s) and Prefect's for about a minute, then fail with a traceback deep in the work. Here a
server that does not answer within `WAIT_SECONDS` ends the command at once with one line
naming its address and the setting that points at it (`errors.Unreachable`, exit code 3).
Any HTTP answer counts (a proxy's 404 included): only a refused, failed or timed-out
connection is "unreachable". Standard library only: nothing heavy is imported.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request

from easel.errors import Unreachable

WAIT_SECONDS = 15.0  # how long a server may take to answer before the command gives up
RETRY_SECONDS = 1.0  # between tries (a server restarting answers again within seconds)


def check_servers(tracking_uri: str) -> None:
    """Raise `Unreachable` naming the first server that does not answer: the tracking
    server at `tracking_uri` (if it is one: a file or SQLite store needs none), then the
    Prefect API named in `PREFECT_API_URL` (if set)."""
    if tracking_uri.startswith(("http://", "https://")):
        wait_for(tracking_uri, "the MLflow tracking server", "MLFLOW_TRACKING_URI", "/health")
    prefect_api = os.environ.get("PREFECT_API_URL")
    if prefect_api:
        wait_for(prefect_api, "the Prefect server", "PREFECT_API_URL", "/health")


def wait_for(url: str, what: str, setting: str, path: str = "") -> None:
    """Return once `url + path` answers; raise `Unreachable` after `WAIT_SECONDS` without
    an answer."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        reason = _no_answer(url.rstrip("/") + path, max(deadline - time.monotonic(), 1.0))
        if reason is None:
            return
        if time.monotonic() + RETRY_SECONDS >= deadline:
            raise Unreachable(
                f"{what} at {url} ({setting}) did not answer for {WAIT_SECONDS:.0f} s: "
                f"{reason}; start it, or point {setting} at one that runs"
            )
        time.sleep(RETRY_SECONDS)


def _no_answer(url: str, timeout: float) -> str | None:
    """Why `url` gave no HTTP answer, or None if it answered (any status)."""
    try:
        with urllib.request.urlopen(url, timeout=min(timeout, WAIT_SECONDS)):
            return None
    except urllib.error.HTTPError:  # an answer, if not the one a health check hopes for
        return None
    except (urllib.error.URLError, OSError) as error:
        return str(getattr(error, "reason", None) or error)
