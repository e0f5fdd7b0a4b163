"""`easel automations`: create (or update) the crash-recovery automations on the Prefect
server; a bad setting exits 2."""

from __future__ import annotations

import argparse

from easel.errors import InvalidInput
from easel.orchestration.recovery import (
    RETRY_AUTOMATION,
    ZOMBIE_AUTOMATION,
    create_recovery_automations,
)


def run_automations_command(args: argparse.Namespace) -> int:
    try:
        ids = create_recovery_automations(
            heartbeat_frequency=args.heartbeat_frequency,
            heartbeat_window=args.heartbeat_window,
            crash_retries=args.crash_retries,
        )
    except ValueError as error:
        raise InvalidInput(str(error)) from None
    for name, automation_id in zip((ZOMBIE_AUTOMATION, RETRY_AUTOMATION), ids, strict=True):
        print(f"{automation_id}  {name}")
    print(
        f"flow runs must send heartbeats every {args.heartbeat_frequency} s: "
        f"PREFECT_FLOWS_HEARTBEAT_FREQUENCY={args.heartbeat_frequency} in the workers' "
        "environment (the GPU pools' templates set it)"
    )
    return 0
