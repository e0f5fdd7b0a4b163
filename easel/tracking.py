"""Where MLflow runs go: `MLFLOW_TRACKING_URI` if set, else `sqlite:///mlflow.db` in the
working directory (SPEC §7)."""

from __future__ import annotations

import os

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def lightning_logger(run_id: str, uri: str | None = None):
    """Lightning's MLflow logger writing to the existing run `run_id`. Metrics are queued and
    sent in the background (a blocking call per step costs tens of milliseconds against a
    tracking server: bench/README.md); `mlflow.flush_async_logging()` waits for them."""
    from pytorch_lightning.loggers import MLFlowLogger

    return MLFlowLogger(tracking_uri=uri or tracking_uri(), run_id=run_id, synchronous=False)


def configure_mlflow() -> str:
    """Point the mlflow client at the configured tracking URI and return it."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def start_run(experiment: str, run_name: str, params: dict):
    """Start an MLflow run (nested when one is already active) and log `params`."""
    import mlflow

    configure_mlflow()
    nested = mlflow.active_run() is not None
    if not nested:
        mlflow.set_experiment(experiment)
    run = mlflow.start_run(run_name=run_name, nested=nested)
    mlflow.log_params({k: _param(v) for k, v in params.items()})
    return run


def _param(value) -> str:
    text = str(value)
    return text if len(text) <= 500 else text[:497] + "..."


def log_uri_artifact(uri: str, artifact_path: str | None = None) -> None:
    """Log a file that may live on any fsspec filesystem as an MLflow artifact."""
    import tempfile

    import mlflow

    from easel.data import storage

    if storage.is_local(uri) and "://" not in uri:
        mlflow.log_artifact(uri, artifact_path)
        return
    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, uri.rstrip("/").rsplit("/", 1)[-1])
        with open(local, "wb") as f:
            f.write(storage.read_bytes(uri))
        mlflow.log_artifact(local, artifact_path)
