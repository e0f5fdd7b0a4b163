"""A model's own safety checker (issue 27): it runs where the model has one, as diffusers
runs it (flagged images black), unless `safety_checker: off`; results, summary and MLflow
count what it flagged."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
import yaml
from diffusers import StableDiffusionPipeline
from safety_checker import with_safety_checker
from sweep_helpers import max_pixel_difference, pixels, read_results, write_manifest

from easel.cli import main
from easel.data.batching import BatchSettings, ImageRequest
from easel.models.engine.generation import generate_screened
from easel.models.engine.loading import load_model, model_facts
from easel.models.engine.spec import ModelSpec
from easel.models.testing.random_pipelines import build_random_sd

STEPS, SIZE = 2, 32
SETTINGS = BatchSettings(task="text2img", scheduler=None, guidance_scale=5.0,
                         num_inference_steps=STEPS, width=SIZE, height=SIZE)  # fmt: skip
REQUESTS = [ImageRequest("a red circle", None, seed) for seed in (1, 2)]


@pytest.fixture(scope="module")
def sd(tmp_path_factory) -> str:
    return build_random_sd(str(tmp_path_factory.mktemp("sd") / "model"))


@pytest.fixture(scope="module")
def flagging(sd, tmp_path_factory) -> str:
    """The same model with a safety checker that flags every image."""
    return with_safety_checker(sd, tmp_path_factory.mktemp("checked") / "sd-checked")


def as_array(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_the_checker_flags_and_blacks_out_as_diffusers_does(flagging):
    screened = generate_screened(load_model(flagging, device="cpu"), SETTINGS, REQUESTS)
    assert [s.nsfw_content_detected for s in screened] == [True, True]
    assert all(as_array(s.image).max() == 0 and s.image.size == (SIZE, SIZE) for s in screened)
    pipe = StableDiffusionPipeline.from_pretrained(flagging)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe("a red circle", num_inference_steps=STEPS, height=SIZE, width=SIZE,
                  generator=torch.Generator().manual_seed(1), output_type="np")  # fmt: skip
    assert theirs.nsfw_content_detected == [True] and theirs.images.max() == 0


def test_a_checker_that_flags_nothing_keeps_the_images(sd, tmp_path):
    lenient = with_safety_checker(sd, tmp_path / "lenient", flag_everything=False)
    screened = generate_screened(load_model(lenient, device="cpu"), SETTINGS, REQUESTS)
    bare = generate_screened(load_model(sd, device="cpu"), SETTINGS, REQUESTS)
    assert [s.nsfw_content_detected for s in screened] == [False, False]
    assert [s.nsfw_content_detected for s in bare] == [None, None]  # no checker ran
    for ours, plain in zip(screened, bare, strict=True):
        assert max_pixel_difference(as_array(ours.image), as_array(plain.image)) == 0


def test_off_runs_no_checker_and_is_its_own_request_identity(sd, flagging):
    off = ModelSpec(path=flagging, safety_checker="off")
    loaded = load_model(off, device="cpu")
    assert loaded.safety is None
    screened = generate_screened(loaded, SETTINGS, REQUESTS)
    bare = generate_screened(load_model(sd, device="cpu"), SETTINGS, REQUESTS)
    assert [s.nsfw_content_detected for s in screened] == [None, None]
    for ours, plain in zip(screened, bare, strict=True):
        assert max_pixel_difference(as_array(ours.image), as_array(plain.image)) == 0
    # its images differ from the screened ones: a changed setting regenerates them
    assert model_facts(off).digest != model_facts(flagging).digest
    # a model without a checker keeps its identity whatever the setting
    assert model_facts(ModelSpec(path=sd, safety_checker="off")).digest == model_facts(sd).digest


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_sweep_records_flags_counts_them_and_off_writes_the_unfiltered_image(
    sd, flagging, tmp_path, capsys
):  # fmt: skip
    config = {"experiment": "safety", "num_inference_steps": STEPS,
              "models": {"checked": {"path": flagging},
                         "unchecked": {"path": flagging, "safety_checker": "off"}}}  # fmt: skip
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    row = {"prompt": "a red circle", "seed": 3, "width": SIZE, "height": SIZE, "num_images": 2}
    rows = [{**row, "id": "checked", "model": "checked"},
            {**row, "id": "off", "model": "unchecked"}, {**row, "id": "bare", "model": sd}]
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    out = str(tmp_path / "out")
    assert main(["sweep", manifest, "--out", out, "--config", str(tmp_path / "sweep.yaml")]) == 0
    assert "2 images flagged by the model's safety checker" in capsys.readouterr().out
    results = {(r["id"], r["image_index"]): r for r in read_results(out)}
    for k in (0, 1):
        checked, off, bare = results[("checked", k)], results[("off", k)], results[("bare", k)]
        assert checked["nsfw_content_detected"] is True and checked["model_ref"] == "checked"
        assert pixels(checked["image_uri"]).max() == 0
        assert off["nsfw_content_detected"] is None and bare["nsfw_content_detected"] is None
        assert max_pixel_difference(off["image_uri"], bare["image_uri"]) == 0
        assert pixels(off["image_uri"]).max() > 0
    (run,) = mlflow.search_runs(experiment_names=["safety"], output_format="list")
    assert run.data.metrics["images_nsfw"] == 2
