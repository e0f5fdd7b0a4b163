"""What the dashboard's Logs tab shows of a flow run: easel's lines (`progress.say`, progress
lines) and easel's warnings, not other libraries' output."""

from __future__ import annotations

import logging

from prefect import flow, task
from sweep_helpers import flow_run_logs

import easel.flows  # noqa: F401 - importing the flows sends easel's warnings to Prefect
from easel.progress import ProgressLine, say


@task
def _work() -> None:
    line = ProgressLine("work", 2, "items", every=3600.0)
    line.update(1)  # within `every` of the start: not written
    line.update(2)  # the last: written
    logging.getLogger("easel.models.engine.sweep").warning("row r1: an easel warning")
    logging.getLogger("diffusers.pipelines").warning("a library's own warning")


@flow
def _logged() -> None:
    say("MLflow run 'x': http://mlflow.example/#/experiments/1/runs/abc")
    _work()


def test_easel_lines_and_warnings_reach_the_run_logs_and_library_noise_does_not(capsys):
    state = _logged(return_state=True)
    by_message = flow_run_logs(state.state_details.flow_run_id, "an easel warning")
    assert by_message["MLflow run 'x': http://mlflow.example/#/experiments/1/runs/abc"] == 20
    progress = [message for message in by_message if message.startswith("work: ")]
    assert len(progress) == 1 and progress[0].startswith("work: 2/2 items (100%)")  # cadence
    assert by_message["row r1: an easel warning"] == logging.WARNING
    assert not any("a library's own warning" in message for message in by_message)
    say("outside any run")  # printed, no error
    assert "outside any run" in capsys.readouterr().out
