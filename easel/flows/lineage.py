"""Which Prefect flow run this is, for the MLflow runs it makes (`tracking.LINEAGE_TAGS`)."""

from __future__ import annotations


def prefect_tags() -> dict[str, str]:
    """The current flow run's id and dashboard URL (empty outside a flow run)."""
    from prefect.runtime import flow_run

    if not flow_run.id:
        return {}
    tags = {"prefect.flow_run_id": str(flow_run.id)}
    if flow_run.ui_url:
        tags["prefect.flow_run_url"] = str(flow_run.ui_url)
    return tags
