"""`shards: auto` counts the online workers of the deployment's pool on a real server."""

from __future__ import annotations

import uuid

import pytest

from easel.orchestration.shards import pool_workers

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_the_pool_s_online_workers_bound_auto_shards():
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    pool = f"gpus-{uuid.uuid4().hex[:6]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        deployment = client.create_deployment(
            flow_id=client.create_flow_from_name("sweep"), name=f"sweep-{pool}",
            work_pool_name=pool, entrypoint="easel.flows.sweep:sweep_flow",
        )  # fmt: skip
        assert pool_workers(str(deployment)) == 1  # no worker yet: still one shard
        for worker in ("gpu-a", "gpu-b", "gpu-c"):
            client.send_worker_heartbeat(pool, worker, heartbeat_interval_seconds=30)
    assert pool_workers(str(deployment)) == 3
    assert pool_workers(None) == 1  # a run from a shell
