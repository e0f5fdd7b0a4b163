"""The offline quality report: the suites `easel eval` runs and their registry.

A suite is a function `(EvalContext) -> SuiteResult`, registered in `EVAL_SUITES` under
its name; `run_suites` runs the chosen ones. A new suite adds one function and one registry
entry, nothing else. Every image is generated through `generate_images`, which hands it to
the engine.

Two kinds of suite: `MODEL_SUITES` score one model; `SUBJECT_SUITES` score a DreamBooth
model against its base on the subject it was taught (`EvalContext.base_model` and
`EvalContext.subject`), the judge's features standing in for the DINO features of the
DreamBooth paper (see `SUBJECT_SUITES` and docs/tiny-shapes.md).
"""

from __future__ import annotations

from collections.abc import Callable

from easel.models.shapes.evaluation.common import (  # noqa: F401 (the package's interface)
    ATTRIBUTES,
    EvalContext,
    EvalSettings,
    Subject,
    SuiteResult,
    adherence,
    generate_images,
    image_grid,
    mean_pairwise_cosine_distance,
    mean_pairwise_pixel_distance,
    vae_round_trip,
)
from easel.models.shapes.evaluation.subject import (  # noqa: F401
    attribute_shift,
    context_backgrounds,
    dreambooth_diversity_suite,
    feature_similarity,
    paired_similarity,
    prior_preservation_suite,
    self_similarity,
    subject_context_suite,
    subject_fidelity_suite,
    subject_rate,
    subject_reading,
    world_centre,
)
from easel.models.shapes.evaluation.world import (  # noqa: F401
    adherence_suite,
    diversity_suite,
    guidance_suite,
    judge_suite,
    languages_suite,
    negative_prompt_suite,
)

Suite = Callable[[EvalContext], SuiteResult]
MODEL_SUITES: dict[str, Suite] = {
    "judge": judge_suite,
    "adherence": adherence_suite,
    "languages": languages_suite,
    "guidance": guidance_suite,
    "negative_prompt": negative_prompt_suite,
    "diversity": diversity_suite,
}
SUBJECT_SUITES: dict[str, Suite] = {  # need EvalContext.base_model and .subject
    "subject_fidelity": subject_fidelity_suite,
    "prior_preservation": prior_preservation_suite,
    "dreambooth_diversity": dreambooth_diversity_suite,
    "subject_context": subject_context_suite,
}
EVAL_SUITES: dict[str, Suite] = MODEL_SUITES | SUBJECT_SUITES


def run_suites(context: EvalContext, names: list[str] | None = None) -> dict[str, SuiteResult]:
    """Run the named suites (default: every model suite, in registry order)."""
    names = list(MODEL_SUITES) if names is None else names
    unknown = [name for name in names if name not in EVAL_SUITES]
    if unknown:
        raise ValueError(f"`suites` must be among {list(EVAL_SUITES)} but has {unknown}")
    return {name: EVAL_SUITES[name](context) for name in names}
