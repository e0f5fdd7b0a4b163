"""Shared fixtures: one thread per process, isolated MLflow/caches, one Prefect test server."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: small models, 2 shared cores
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import logging  # noqa: E402

import prefect  # noqa: E402, F401 - before any capsys test: Prefect's log handler binds stderr once

# Prefect's temporary server (tests without the `prefect_server` fixture) says "Stopping
# temporary server" after pytest has closed the stream its log handler holds: without this,
# a "Logging error" traceback follows the summary.
logging.raiseExceptions = False
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory):
    """MLflow tracking and the model cache in a temporary folder for the whole session."""
    root = tmp_path_factory.mktemp("env")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["EASEL_CACHE_DIR"] = str(root / "cache")
    yield root


@pytest.fixture(scope="session")
def prefect_harness():
    """The one Prefect API for a test process's flows: Prefect's own test harness (a temporary
    server on a temporary database), also named in PREFECT_API_URL so the `easel` commands a
    test starts as subprocesses report to it instead of each starting a server of its own."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    before = os.environ.get("PREFECT_API_URL")
    with prefect_test_harness(server_startup_timeout=180):
        os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()
        yield PREFECT_API_URL.value()
        restore_environment("PREFECT_API_URL", before)


def restore_environment(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real `prefect server` for the session, with its services (lease expiry,
    automations), on loopback; subprocesses reach it via PREFECT_API_URL."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = PrefectServer(tmp_path_factory.mktemp("prefect"))
    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.url
    try:
        with temporary_settings({PREFECT_API_URL: server.url}):
            yield server.url
            send_what_prefect_holds()
    finally:
        restore_environment("PREFECT_API_URL", before)
        server.stop()


class PrefectServer:
    """`prefect server start` on loopback with its database in `root`; `stop()` and
    `start()` again restart it on the same port and database (its in-memory state lost)."""

    def __init__(self, root):
        import socket

        self.root = root
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.start()

    def start(self) -> None:
        import subprocess
        import sys
        import time
        import urllib.request
        from pathlib import Path

        env = {**os.environ, "PREFECT_HOME": str(self.root),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # fmt: skip
        env.pop("PREFECT_API_URL", None)
        command = [str(Path(sys.executable).with_name("prefect")), "server", "start",
                   "--host", "127.0.0.1", "--port", str(self.port), "--no-ui"]  # fmt: skip
        with open(self.root / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except OSError:
                assert self.process.poll() is None and time.monotonic() < deadline, (
                    (self.root / "server.log").read_text()[-3000:]
                )
                time.sleep(0.5)

    def stop(self) -> None:
        import subprocess

        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def send_what_prefect_holds() -> None:
    """Send the logs and events Prefect's background workers still hold while the server is
    up: at exit they would retry a stopped server for a minute and more before giving up
    (as Prefect's own test harness does before it stops its server)."""
    import contextlib

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with contextlib.suppress(RuntimeError):  # no log worker was started
        APILogWorker.instance().drain()
    EventsWorker.drain_all()


@pytest.fixture(scope="session")
def s3_server():
    """An S3-compatible server (moto) on loopback; yields the endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                      AWS_DEFAULT_REGION="us-east-1", FSSPEC_S3_ENDPOINT_URL=endpoint)  # fmt: skip
    import fsspec.config

    fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = endpoint  # this process
    yield endpoint
    server.stop()


def pytest_collection_modifyitems(items):
    """Everything under tests/e2e/ is slow by nature (`make test-fast` leaves it out). The stack
    tests first: they wait more than they compute (heartbeat windows, leases), so under
    `make test`'s two processes the other files run beside them."""
    for item in items:
        if item.nodeid.startswith("tests/e2e/"):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: not item.nodeid.startswith("tests/e2e/test_stack.py"))
