"""`easel automations`: the two automations as Prefect will store them, and bad settings
refused naming the setting."""

from __future__ import annotations

from datetime import timedelta

import pytest

from easel.cli import main
from easel.orchestration.recovery import (
    DEPLOYED_FLOWS,
    RETRY_SETTLE_SECONDS,
    recovery_automations,
)


def test_the_automations_watch_easel_s_flows_and_bound_the_retries():
    zombie, retry = recovery_automations(heartbeat_frequency=30, crash_retries=2)
    assert zombie.trigger.posture == "Proactive" and zombie.trigger.within == timedelta(seconds=90)
    assert zombie.trigger.after == {"prefect.flow-run.heartbeat"}
    assert zombie.actions[0].state.value == "CRASHED"
    assert retry.trigger.match["prefect.run-count"] == ["1", "2"]  # at most two retries
    assert retry.trigger.within == timedelta(seconds=RETRY_SETTLE_SECONDS)
    assert retry.actions[0].name == "AwaitingRetry"
    for automation in (zombie, retry):
        assert automation.trigger.match_related["prefect.resource.name"] == list(DEPLOYED_FLOWS)
    assert not recovery_automations(crash_retries=0)[1].enabled


@pytest.mark.parametrize("args, named", [
    (["--heartbeat-frequency", "10"], "heartbeat_frequency"),
    (["--heartbeat-frequency", "60", "--heartbeat-window", "60"], "heartbeat_window"),
    (["--crash-retries", "-1"], "crash_retries"),
])  # fmt: skip
def test_bad_settings_exit_2_naming_the_setting(args, named, capsys):
    assert main(["automations", *args]) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1, err


def test_without_a_prefect_server_it_says_so(monkeypatch, capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings({PREFECT_API_URL: None}):
        assert main(["automations"]) == 2
    assert "PREFECT_API_URL" in capsys.readouterr().err


def test_a_run_taking_over_an_output_ends_what_its_killed_holder_left_running(
    tmp_path, prefect_server
):
    """`easel dreambooth` killed -9 leaves its MLflow run RUNNING and its name in the output's
    holder file; the next run into that output ends the run FAILED, saying why."""
    import json
    import uuid

    import mlflow
    from prefect import flow

    from easel.flows.dreambooth import holding_output

    killed = str(uuid.uuid4())
    (tmp_path / "out" / ".easel").mkdir(parents=True)
    (tmp_path / "out" / ".easel" / "holder").write_text(json.dumps({"flow_run_id": killed}))
    client = mlflow.MlflowClient()
    experiment = client.create_experiment(f"takeover-{killed}")
    left = client.create_run(experiment, tags={"prefect.flow_run_id": killed}).info.run_id
    other = client.create_run(experiment, tags={"prefect.flow_run_id": "alive"}).info.run_id

    @flow
    def takeover() -> None:
        with holding_output(str(tmp_path / "out")):
            pass

    takeover()
    ended = client.get_run(left)
    assert ended.info.status == "FAILED"
    assert ended.data.tags["easel.ended_by"] == "a later run took over its output folder"
    assert client.get_run(other).info.status == "RUNNING"  # another flow run's: untouched
