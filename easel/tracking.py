"""Where MLflow runs go: `MLFLOW_TRACKING_URI` if set, else `sqlite:///mlflow.db` in the
working directory (SPEC §7)."""

from __future__ import annotations

import os

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def configure_mlflow() -> str:
    """Point the mlflow client at the configured tracking URI and return it."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    return uri
