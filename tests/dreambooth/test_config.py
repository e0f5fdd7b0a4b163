"""Bad DreamBooth configs: one clear error (field and value), exit code 2, before any work."""

from __future__ import annotations

import os

import pytest
import yaml
from dreambooth_fixtures import write_images

import easel.flows.dreambooth  # noqa: F401  Prefect sets up its log handler on import: not under capsys
from easel.cli import main
from easel.models.dreambooth.config import DreamBoothConfig
from easel.models.dreambooth.flat_keys import regroup


@pytest.fixture
def valid(tmp_path) -> dict:
    return {
        "model": "tiny-shapes",
        "instance_data": write_images(str(tmp_path / "instance"), 4, seed=0),
        "instance_prompt": "a photo of sks shape",
        "class_prompt": "a photo of shape",
        "resolution": 32,
        "max_steps": 2,
        "output": str(tmp_path / "out"),
    }


def _cli(tmp_path, values: dict, *extra: str) -> int:
    """Run the command on `values` (flat keys, written in their groups)."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(regroup(values)[0]))
    return main(["dreambooth", "--config", str(path), *extra])


def _unreadable(tmp_path, valid):
    with open(os.path.join(valid["instance_data"], "03.png"), "wb") as f:
        f.write(b"not a png")
    return {}


def _too_large(tmp_path, valid):
    from PIL import Image

    Image.new("1", (9000, 9000)).save(os.path.join(valid["instance_data"], "04.png"))
    return {}


def _kandinsky(tmp_path, valid):
    from easel.models.testing.random_pipelines import build_random_kandinsky22

    return {"model": build_random_kandinsky22(str(tmp_path / "k22"))}


def _too_few(tmp_path, valid):
    folder = write_images(str(tmp_path / "two"), 2, seed=0)
    return {"instance_data": folder}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda tmp, v: {"learning_rat": 1e-4}, ["learning_rat", "0.0001"]),
        (lambda tmp, v: {"instance_data": str(tmp / "missing")}, ["instance_data", "missing"]),
        (lambda tmp, v: {"train": {"max_step": 5}}, ["unknown", "`train.max_step`", "5"]),
        (_too_few, ["instance_data", "holds 2"]),
        (_unreadable, ["instance_data", "03.png", "not an image"]),
        (_too_large, ["instance_data", "04.png", "9000x9000", "downscale it"]),
        (lambda tmp, v: {"identifier": "zxq"}, ["instance_prompt", "zxq", "a photo of sks shape"]),
        (
            lambda tmp, v: {"instance_prompt": "a photo of shape"},
            ["instance_prompt", "no identifier"],
        ),
        (lambda tmp, v: {"resolution": 65}, ["train.resolution", "multiple of 8", "65"]),
        (lambda tmp, v: {"method": "dora"}, ["train.method", "dora"]),
        (_kandinsky, ["`model`", "Kandinsky 2.2", "Stable Diffusion"]),
        (
            lambda tmp, v: {"model": {"path": "tiny-shapes", "varient": "fp16"}},
            ["unknown field `model.varient`", "fp16"],
        ),
        (
            lambda tmp, v: {"model": {"path": "tiny-shapes", "loras": [{"path": "a.safetensors"}]}},
            ["`model`", "model.loras", "a.safetensors"],
        ),
        (
            lambda tmp, v: {"train_text_encoder": "identifier", "method": "lora"},
            ["train.text_encoder", "identifier", "train.method", "lora"],
        ),
        (
            lambda tmp, v: {
                "prior_preservation_method": "differential_output",
                "train_text_encoder": True,
            },  # fmt: skip
            ["differential_output", "train.text_encoder", "'all'"],
        ),
    ],
    ids=[
        "unknown-key",
        "unknown-key-in-a-group",
        "missing-folder",
        "too-few-images",
        "unreadable-image",
        "too-large-image",
        "identifier-absent",
        "no-identifier",
        "resolution",
        "method",
        "kandinsky-model",
        "model-spec-unknown-key",
        "model-spec-loras",
        "identifier-embeddings-with-lora",
        "differential-output-with-text-encoder",
    ],
)
def test_bad_config_is_one_clear_error_before_any_work(tmp_path, valid, capsys, change, expected):
    values = {**valid, **change(tmp_path, valid)}
    capsys.readouterr()  # what building the inputs printed
    assert _cli(tmp_path, values) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for word in expected:
        assert word in err, (word, err)
    assert not os.path.exists(valid["output"])  # nothing was started


@pytest.mark.parametrize(
    ("override", "words"),
    [("train.resolution=12", ["--set", "`train.resolution`", "12"]),
     ("foo=1", ["--set", "unknown", "`foo`"]),
     ("train.foo=1", ["--set", "unknown", "`train.foo`", "1"]),
     ("train.resolution=[1", ["--set", "'train.resolution=[1'", "not valid YAML"])],
)  # fmt: skip
def test_set_overrides_are_validated_too_and_named_as_given(tmp_path, valid, capsys, override,
                                                            words):  # fmt: skip
    assert _cli(tmp_path, valid, "--set", override) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config.yaml" not in err, err
    for word in words:
        assert word in err, (word, err)


def test_a_config_file_that_is_not_yaml_is_one_line(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("model: [tiny-shapes\nmax_steps: 3\n")
    assert main(["dreambooth", "--config", str(tmp_path / "config.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not valid YAML" in err, err


def test_identifier_is_given_or_derived():
    base = {"instance_data": "x", "output": "y", "class_prompt": "a photo of shape"}
    derived = DreamBoothConfig(**base, instance_prompt="a photo of sks shape")
    assert derived.subject.identifier == "sks"
    given = DreamBoothConfig(**base, instance_prompt="a photo of zxq sks shape", identifier="sks")
    assert given.subject.identifier == "sks"


def test_model_is_a_reference_or_a_spec(valid):
    from easel.models.dreambooth.resume import snapshot
    from easel.models.engine.spec import ModelSpec

    grouped = regroup(valid)[0]
    plain = DreamBoothConfig.model_validate(grouped)
    path_only = DreamBoothConfig.model_validate({**grouped, "model": {"path": "tiny-shapes"}})
    assert path_only == plain and plain.model == "tiny-shapes"  # a path alone: the reference
    spec = DreamBoothConfig.model_validate(
        {**grouped, "model": {"path": "tiny-shapes", "variant": "fp16"}}
    )
    assert spec.model == ModelSpec(path="tiny-shapes", variant="fp16")
    # a resume compares the model by its path and content (the digest covers the variant)
    assert snapshot(spec, "d", "i")["model"] == snapshot(plain, "d", "i")["model"] == "tiny-shapes"


def test_model_may_name_one_of_models(valid):
    from easel.models.engine.spec import ModelSpec

    grouped = regroup(valid)[0]
    models = {"base": {"path": "tiny-shapes", "variant": "fp16"}}
    named = DreamBoothConfig.model_validate({**grouped, "models": models, "model": "base"})
    assert named.model == ModelSpec(path="tiny-shapes", variant="fp16")
    unnamed = DreamBoothConfig.model_validate({**grouped, "models": models})
    assert unnamed.model == "tiny-shapes"  # the default reference, not a name
    models["base"]["loras"] = [{"path": "style.safetensors"}]
    with pytest.raises(ValueError, match="model.loras"):
        DreamBoothConfig.model_validate({**grouped, "models": models, "model": "base"})


def test_preset_is_valid_and_ready_made_for_tiny_shapes(tmp_path):
    from easel.cli.dreambooth import tiny_shapes_config
    from easel.tasks.dreambooth import check_inputs

    config = tiny_shapes_config(str(tmp_path / "db"), {"train.max_steps": 3})
    assert config.subject.identifier == "v" and config.train.resolution == 64
    assert config.train.max_steps == 3
    assert config.train.text_encoder == "identifier"
    assert len(check_inputs(config, model_digest="d").instance_images) == 5


def test_set_reads_yaml_values_and_null_resets(tmp_path, valid):
    from easel.cli.dreambooth import load_config

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**regroup(valid)[0], "register_as": "sks@candidate"}))
    config = load_config(
        str(path), ["register_as=null", "train.max_steps=7", "validation.prompts=[a sks shape]"]
    )
    assert config.register_as is None and config.train.max_steps == 7
    assert config.validation.prompts == ["a sks shape"]


def test_instance_data_may_be_an_fsspec_uri(tmp_path):
    import fsspec

    from easel.data.dreambooth import check_instance_data, load_pixels

    fs = fsspec.filesystem("memory")
    for name in sorted(os.listdir(write_images(str(tmp_path / "local"), 3, seed=0))):
        fs.pipe(f"/subject/{name}", (tmp_path / "local" / name).read_bytes())
    images = check_instance_data("memory://subject")
    assert len(images) == 3 and all(uri.startswith("memory://") for uri in images)
    assert load_pixels(images, 16).shape == (3, 3, 16, 16)


def test_a_flat_config_file_and_flat_set_keys_still_read_with_one_warning(tmp_path, valid,
                                                                          caplog):  # fmt: skip
    from easel.cli.dreambooth import load_config

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**valid, "train_text_encoder": False}))
    with caplog.at_level("WARNING"):
        config = load_config(str(path), ["max_steps=7", "compile_unet=true"])
    assert (config.train.max_steps, config.runtime.compile_unet) == (7, "full")
    assert config.train.text_encoder == "off" and config.subject.identifier == "sks"
    [record] = [r for r in caplog.records if "flat keys" in r.getMessage()]
    message = record.getMessage()
    assert "\n" not in message and "max_steps -> train.max_steps" in message
    assert "compile_unet -> runtime.compile_unet" in message
    assert "train_text_encoder -> train.text_encoder" in message
