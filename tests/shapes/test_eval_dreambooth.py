"""The DreamBooth suites of `easel eval` (subject fidelity, prior preservation, DIV): their
math, the suites on tiny samples, and the command. The measured quality figures live in
bench/HISTORY.md; these tests check that the measures compute, register and react."""

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from easel.cli import main
from easel.data.dreambooth import list_images
from easel.data.shapes import write_shape_subject
from easel.models.engine.loading import LoadedModel, load_model
from easel.models.shapes import evaluation
from easel.models.shapes.judge import Judge

pytestmark = pytest.mark.usefixtures("prefect_server")

TINY = evaluation.EvalSettings(num_inference_steps=4, subject_images=4, world_images=64)
SUBJECT_METRICS = {
    "subject_fidelity/base/feature_similarity",
    "subject_fidelity/fine_tuned/feature_similarity",
    "subject_fidelity/gain",
    "prior_preservation/fine_tuned/base_similarity",
    "prior_preservation/fine_tuned/attribute_shift",
    "prior_preservation/fine_tuned/subject_similarity",
    "dreambooth_diversity/class/fine_tuned/feature_distance",
    "context/base/background_rate",
    "context/fine_tuned_subject/subject_and_background_rate",
    "context/drop",
}


@pytest.fixture(scope="module")
def base():
    return load_model("tiny-shapes", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def instance_folder(tmp_path_factory):
    return write_shape_subject(str(tmp_path_factory.mktemp("subject") / "instance"), count=3)


@pytest.fixture(scope="module")
def subject(instance_folder):
    images = [Image.open(uri).convert("RGB") for uri in list_images(instance_folder)]
    return evaluation.Subject(images, "a sks circle", "a circle")


def _metrics(context, names) -> dict[str, float]:
    results = evaluation.run_suites(context, names)
    return {k: v for result in results.values() for k, v in result.metrics.items()}


# -- math --------------------------------------------------------------------------------


def test_similarities_are_centred_cosines():
    centre = torch.tensor([1.0, 1.0])
    a = torch.tensor([[2.0, 1.0], [1.0, 2.0]])  # centred: (1, 0) and (0, 1)
    assert evaluation.feature_similarity(a[:1], a[:1], centre) == pytest.approx(1.0)
    assert evaluation.feature_similarity(a, a, centre) == pytest.approx(0.5)  # 1, 0, 0, 1
    assert evaluation.self_similarity(a, centre) == pytest.approx(0.0)
    assert evaluation.paired_similarity(a, a.flip(0), centre) == pytest.approx(0.0)
    assert evaluation.paired_similarity(a, a, centre) == pytest.approx(1.0)
    # uncentred, the two rows look alike (cos 0.8); centring removes the shared part
    assert evaluation.self_similarity(a, torch.zeros(2)) == pytest.approx(0.8)


def test_attribute_shift_is_total_variation_averaged_over_attributes():
    red_star = {"shape": "star", "color": "red", "background": "blue"}
    blue_star = {"shape": "star", "color": "blue", "background": "blue"}
    assert evaluation.attribute_shift([red_star, blue_star], [blue_star, red_star]) == 0.0
    # colour distributions disjoint, shape and background the same: (0 + 1 + 0) / 3
    assert evaluation.attribute_shift([red_star], [blue_star]) == pytest.approx(1 / 3)


def test_subject_reading_and_rate(subject):
    judge = Judge.load()
    reading = evaluation.subject_reading(judge, subject.instance_images)
    assert reading == ("star", "blue")  # write_shape_subject's default subject
    predictions = judge.predict(subject.instance_images)
    assert evaluation.subject_rate(predictions, reading) == 1.0
    assert evaluation.subject_rate(predictions, ("star", "green")) == 0.0
    grounds = evaluation.context_backgrounds(judge, subject)  # new contexts for the subject
    assert len(grounds) == 3 and "blue" not in grounds
    assert not set(grounds) & {p["background"] for p in predictions}


# -- the suites ---------------------------------------------------------------------------


def test_subject_suites_are_registered_apart_from_the_model_suites():
    assert set(evaluation.SUBJECT_SUITES) == {
        "subject_fidelity",
        "prior_preservation",
        "dreambooth_diversity",
        "subject_context",
    }
    assert set(evaluation.EVAL_SUITES) == set(evaluation.MODEL_SUITES) | set(
        evaluation.SUBJECT_SUITES
    )


def test_a_model_scored_against_itself_is_unchanged(base, subject):
    context = evaluation.EvalContext(base, Judge.load(), TINY, base, subject)
    metrics = _metrics(context, list(evaluation.SUBJECT_SUITES))
    assert SUBJECT_METRICS <= set(metrics)
    assert metrics["prior_preservation/fine_tuned/base_similarity"] == pytest.approx(1.0)
    assert metrics["prior_preservation/fine_tuned/attribute_shift"] == 0.0
    assert metrics["subject_fidelity/gain"] == pytest.approx(0.0, abs=1e-6)
    # other seeds of the same model: a real, positive distance; unrelated pairs
    assert metrics["prior_preservation/base_other_seeds/base_similarity"] < 0.9
    assert 0 < metrics["dreambooth_diversity/class/base/feature_distance"] <= 2
    # context: the same model and seeds read the same backgrounds on the class prompt
    assert metrics["context/fine_tuned/background_rate"] == metrics["context/base/background_rate"]


def test_a_changed_model_moves_away_from_its_base(base, subject):
    pipeline = StableDiffusionPipeline(**base.pipeline.components)
    unet = base.pipeline.unet
    pipeline.unet = type(unet).from_config(unet.config)  # same shapes, new weights
    pipeline.unet.load_state_dict(
        {k: v + 0.05 * torch.randn_like(v) for k, v in unet.state_dict().items()}
    )
    pipeline.set_progress_bar_config(disable=True)
    changed = LoadedModel(base.model, base.family, pipeline, base.facts)
    context = evaluation.EvalContext(changed, Judge.load(), TINY, base, subject)
    metrics = _metrics(context, ["prior_preservation"])
    assert metrics["prior_preservation/fine_tuned/base_similarity"] < 0.99


def test_subject_suites_need_a_base_and_a_subject(base):
    context = evaluation.EvalContext(base, Judge.load(), TINY)
    with pytest.raises(AssertionError, match="base_model"):
        evaluation.run_suites(context, ["subject_fidelity"])


# -- the command -----------------------------------------------------------------------------


def test_eval_command_reports_the_dreambooth_suites(
    tmp_path, capsys, prefect_server, instance_folder
):
    out = tmp_path / "eval"
    code = main(
        ["eval", "--model", "tiny-shapes", "--base-model", "tiny-shapes", "--out", str(out)]
        + ["--instance-data", instance_folder, "--instance-prompt", "a sks circle"]
        + ["--class-prompt", "a circle", "--quick", "--steps", "2"]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert SUBJECT_METRICS <= set(report["metrics"])  # default suites: the DreamBooth ones
    assert "adherence/seen/all" not in report["metrics"]
    assert report["subject"]["class_prompt"] == "a circle" and report["mlflow_run_id"]
    assert (out / "prior_preservation.png").exists()
    table = capsys.readouterr().out
    assert "prior preservation" in table and "fine_tuned: 'a circle'" in table


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "`base_model`"),
        (["--base-model", "tiny-shapes", "--class-prompt", "a circle"], "`instance_data`"),
        (
            ["--base-model", "tiny-shapes", "--instance-data", "/no/such/folder"]
            + ["--instance-prompt", "a sks circle", "--class-prompt", "a circle"],
            "/no/such/folder",
        ),
    ],
)
def test_eval_command_names_a_missing_or_bad_subject_field(tmp_path, capsys, extra, message):
    code = main(["eval", "--suite", "prior_preservation", "--out", str(tmp_path), *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "report.json").exists()
