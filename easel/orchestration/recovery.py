"""Recovery without a person: Prefect automations that find and retry crashed easel runs.

Prefect's own mechanism, as its docs describe zombie detection: every flow run's process
sends a `prefect.flow-run.heartbeat` event every `PREFECT_FLOWS_HEARTBEAT_FREQUENCY`
seconds. Two automations, created (or updated in place) by `easel automations`:

- **mark silent runs crashed** (`ZOMBIE_AUTOMATION`): a proactive trigger that fires when a
  running easel flow run sends no heartbeat, and reaches no final state, for
  `heartbeat_window` seconds (a lost node, a frozen process, a worker killed with its run);
  it sets the run Crashed.
- **retry crashed runs** (`RETRY_AUTOMATION`): when an easel deployment's flow run has
  been Crashed (by the first automation, or by its worker seeing the process die) for
  `RETRY_SETTLE_SECONDS` with nobody acting on it, and has run at most `crash_retries`
  times, it is set Scheduled ("AwaitingRetry") again, and any worker of its pool takes it.
  The flows resume (sweeps do only the missing images, DreamBooth resumes from its last
  checkpoint), and the retry ends the MLflow runs its crashed attempt left RUNNING as
  FAILED (`tracking.start_run`).

Runs without a deployment (`easel sweep` on a shell, subflows) are never rescheduled:
Prefect refuses to schedule them again.
"""

from __future__ import annotations

from datetime import timedelta

# Seconds between heartbeats of easel's flow runs: the GPU pools' templates set
# PREFECT_FLOWS_HEARTBEAT_FREQUENCY to this; a process worker's environment should too.
HEARTBEAT_FREQUENCY = 60
MIN_HEARTBEAT_FREQUENCY = 30  # Prefect refuses a shorter PREFECT_FLOWS_HEARTBEAT_FREQUENCY
HEARTBEAT_WINDOWS = 3  # a run is silent after this many heartbeats are missed (Prefect's docs)
CRASH_RETRIES = 2  # reschedules of a crashed run; a third crash is left for a person
DEPLOYED_FLOWS = ("sweep", "class-priors", "dreambooth")  # flows prefect.yaml deploys
ZOMBIE_AUTOMATION = "easel: mark silent flow runs crashed"
RETRY_AUTOMATION = "easel: retry crashed flow runs"
# A crashed run is retried once it has stayed Crashed this long: a worker reports one death
# twice (its process watcher, then the run's exit code), and a retry scheduled between the
# two reports would be crashed by the second while it starts, and run twice.
RETRY_SETTLE_SECONDS = 15
LATER_STATES = ("Scheduled", "Pending", "Running", "Completed", "Failed", "Cancelling",
                "Cancelled", "Paused")  # fmt: skip  - anyone acting on a crashed run
FINAL_EVENTS = tuple(
    f"prefect.flow-run.{state}" for state in ("Completed", "Failed", "Cancelled", "Crashed")
)


def _easel_flows() -> dict:
    return {"prefect.resource.role": "flow", "prefect.resource.name": list(DEPLOYED_FLOWS)}


def recovery_automations(
    heartbeat_frequency: int = HEARTBEAT_FREQUENCY,
    heartbeat_window: int | None = None,
    crash_retries: int = CRASH_RETRIES,
) -> list:
    """The two automations (`prefect.events.schemas.automations.AutomationCore`).

    `heartbeat_frequency` (s) must be the runs' PREFECT_FLOWS_HEARTBEAT_FREQUENCY;
    `heartbeat_window` (s, default `HEARTBEAT_WINDOWS` x the frequency) is the silence after
    which a run is crashed; `crash_retries` (>= 0) bounds the reschedules of one run.
    Raises ValueError naming the argument when the window is not longer than the frequency.
    """
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    if heartbeat_frequency < MIN_HEARTBEAT_FREQUENCY:
        raise ValueError(
            f"heartbeat_frequency must be {MIN_HEARTBEAT_FREQUENCY} s or more (Prefect's "
            f"least), got {heartbeat_frequency}"
        )
    window = heartbeat_window or HEARTBEAT_WINDOWS * heartbeat_frequency
    if window <= heartbeat_frequency:
        raise ValueError(
            f"heartbeat_window ({window} s) must be longer than heartbeat_frequency "
            f"({heartbeat_frequency} s): every run would look silent"
        )
    if crash_retries < 0:
        raise ValueError(f"crash_retries must be 0 or more, got {crash_retries}")
    zombie = AutomationCore(
        name=ZOMBIE_AUTOMATION,
        description=f"An easel flow run silent for {window} s (heartbeats every "
        f"{heartbeat_frequency} s) is crashed: its process is gone.",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=_easel_flows(),
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *FINAL_EVENTS},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=window),
        ),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"No heartbeat for {window} s: the flow run's process is gone "
            f"(marked by the automation {ZOMBIE_AUTOMATION!r})",
        )],  # fmt: skip
    )
    retry = AutomationCore(
        name=RETRY_AUTOMATION,
        description=f"A crashed easel flow run is scheduled again, at most {crash_retries} "
        f"times, once it has stayed Crashed for {RETRY_SETTLE_SECONDS} s; any worker of its "
        "pool resumes it.",
        enabled=crash_retries > 0,
        trigger=EventTrigger(
            match={
                "prefect.resource.id": "prefect.flow-run.*",
                "prefect.run-count": [str(n) for n in range(1, crash_retries + 1)] or ["0"],
            },
            match_related=_easel_flows(),
            after={"prefect.flow-run.Crashed"},
            expect={f"prefect.flow-run.{state}" for state in LATER_STATES},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=RETRY_SETTLE_SECONDS),
        ),
        actions=[ChangeFlowRunState(
            state=StateType.SCHEDULED, name="AwaitingRetry",
            message=f"Crashed: scheduled again by the automation {RETRY_AUTOMATION!r}",
        )],  # fmt: skip
    )
    return [zombie, retry]


def create_recovery_automations(**settings) -> list[str]:
    """Create the automations on the Prefect server PREFECT_API_URL names, or update those of
    the same names in place (running it again changes nothing else); returns their ids."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL

    automations = recovery_automations(**settings)  # bad settings fail before any call
    if not PREFECT_API_URL.value():
        raise ValueError(
            "PREFECT_API_URL is not set: the automations belong on the Prefect server your "
            "workers use (a temporary one would vanish with this command)"
        )
    ids = []
    with get_client(sync_client=True) as client:
        for automation in automations:
            existing = client.read_automations_by_name(automation.name)
            if existing:
                client.update_automation(existing[0].id, automation)
                ids.append(str(existing[0].id))
            else:
                ids.append(str(client.create_automation(automation)))
    return ids
