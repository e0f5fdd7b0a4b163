"""Schedulers by name, built from the model's own scheduler config (`from_config`).

The names are the manifest's `scheduler` values (`easel.data.limits.SCHEDULER_NAMES`):
this table has exactly those keys, so a name the manifest accepts is one the engine builds.
Classes are named, and imported only when built: most of diffusers' scheduler modules import
SciPy at once, a second or so that a sweep on the model's own scheduler never needs.
"""

from __future__ import annotations

from easel.data.limits import SCHEDULER_NAMES

# name -> (diffusers class name, config overrides)
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": (
        "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}
    ),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
}
assert tuple(SCHEDULERS) == SCHEDULER_NAMES, "one list of scheduler names: easel.data.limits"


PNDM_WARMUP_STEPS = 4  # PNDMScheduler.pndm_order: its Runge-Kutta (PRK) warm-up


def minimum_steps(name: str, base_config) -> tuple[int, str]:
    """The fewest inference steps scheduler `name` runs from the model's scheduler config,
    and the rule that sets it. PNDM with its Runge-Kutta warm-up (the config's
    `skip_prk_steps` false, as with a DDIM config) needs 4; every other scheduler 1."""
    if name == "pndm" and not base_config.get("skip_prk_steps", False):
        return PNDM_WARMUP_STEPS, (
            "its Runge-Kutta warm-up takes 4 steps: the model's scheduler config has "
            "skip_prk_steps off"
        )
    return 1, ""


def build_scheduler(name: str, base_config):
    """A fresh scheduler `name` (a diffusers `SchedulerMixin`) sharing the model's betas and
    prediction type."""
    import diffusers

    class_name, overrides = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(base_config, **overrides)


def fresh_scheduler(current, name: str | None, drop: tuple[str, ...] = ()):
    """Scheduler `name` from `current`'s config less the `drop` keys, or a fresh copy of
    `current` for a name easel does not know: schedulers hold per-call state, so every
    pipeline call gets its own."""
    if name not in SCHEDULERS:
        return type(current).from_config(current.config)
    return build_scheduler(name, {k: v for k, v in current.config.items() if k not in drop})


def scheduler_name_from_config(config: dict) -> str:
    """The easel name for a saved scheduler config (its `_class_name` and options)."""
    for name, (class_name, overrides) in SCHEDULERS.items():
        if config.get("_class_name") == class_name and all(
            config.get(k, v) == v for k, v in overrides.items()
        ):
            return name
    return str(config.get("_class_name"))
