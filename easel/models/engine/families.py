"""The table of model families the engine runs, and which one a model folder belongs to.

The family is read from the folder's own `model_index.json` (`_class_name`), never guessed
from the model's name. Adding a family: its module, and one entry in `FAMILIES`.
"""

from __future__ import annotations

from easel.errors import ModelReferenceError
from easel.models.engine import kandinsky20, kandinsky21, kandinsky22, stable_diffusion
from easel.models.engine.family import ModelFamily, pipeline_class

FAMILIES: tuple[ModelFamily, ...] = (
    stable_diffusion.FAMILY, kandinsky22.FAMILY, kandinsky21.FAMILY, kandinsky20.FAMILY
)  # fmt: skip
BY_PIPELINE_CLASS = {name: family for family in FAMILIES for name in family.pipeline_classes}


def family_of(model_path: str, prior_path: str | None = None) -> ModelFamily:
    """The family of the folder at `model_path` (with its connected prior's folder, if
    any); `ModelReferenceError` for a pipeline easel does not run."""
    class_name = pipeline_class(model_path)
    family = BY_PIPELINE_CLASS.get(class_name)
    if family is None:
        runs = ", ".join(sorted(BY_PIPELINE_CLASS))
        raise ModelReferenceError(f"model at {model_path!r} is a {class_name!r}; easel runs {runs}")
    family.check_folder(model_path, class_name, prior_path)
    return family


def prior_class_for(class_name: str | None) -> str | None:
    """The pipeline class a decoder folder of `class_name` names as its prior in its model
    card, or None if folders of that class hold everything."""
    family = BY_PIPELINE_CLASS.get(class_name)
    return family.prior_class if family and class_name in family.decoder_classes else None
