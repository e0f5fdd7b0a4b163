"""The DreamBooth config in groups, and the flat keys of earlier releases: each old key and
old value spelling converts with one warning line; a checkpoint made under a flat config (its
snapshot and module arguments flat, as the previous release wrote them) resumes bitwise
under the grouped config."""

from __future__ import annotations

import logging
import os

import pytest
import torch
import yaml
from dreambooth_fixtures import flat_config, make_workspace

from easel.data.dreambooth import list_images
from easel.models.checkpoint_io import load_checkpoint_file
from easel.models.dreambooth import resume
from easel.models.dreambooth.config import DreamBoothConfig
from easel.models.dreambooth.flat_keys import MOVED, dotted, regroup
from easel.models.dreambooth.training import train
from easel.models.lightning import SNAPSHOT_KEY

SUBJECT = {"instance_data": "x", "instance_prompt": "a sks dog", "class_prompt": "a dog"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(str(tmp_path_factory.mktemp("ws")))


def _flat(**values) -> dict:
    return {**SUBJECT, "output": "out", **values}


@pytest.mark.parametrize(
    ("old", "value", "where", "expected"),
    [
        ("train_text_encoder", True, "train.text_encoder", "all"),
        ("train_text_encoder", False, "train.text_encoder", "off"),
        ("train_text_encoder", "identifier", "train.text_encoder", "identifier"),
        ("compile_unet", True, "runtime.compile_unet", "full"),
        ("compile_unet", False, "runtime.compile_unet", "off"),
        ("compile_unet", "regional", "runtime.compile_unet", "regional"),
        ("prior_preservation", False, "prior_preservation.enabled", False),
        ("max_steps", 7, "train.max_steps", 7),
        ("checkpoint_every_n_steps", 3, "checkpoints.every_n_steps", 3),
        ("validation_prompts", ["a sks dog"], "validation.prompts", ["a sks dog"]),
        ("instance_captions", False, "subject.captions", False),
        ("devices", "0,1", "runtime.devices", "0,1"),
    ],
)
def test_each_old_spelling_converts(old, value, where, expected):
    config = DreamBoothConfig.model_validate(_flat(**{old: value}))
    assert dotted(config.model_dump())[where] == expected


def test_every_old_key_has_a_place_and_a_flat_config_equals_its_grouped_form(workspace):
    flat = flat_config(workspace, "out", max_steps=3, train_text_encoder=True, snr_gamma=5.0)
    assert set(flat) - {"model", "output", "register_as"} <= set(MOVED)
    grouped, moved = regroup(flat)
    assert DreamBoothConfig.model_validate(flat) == DreamBoothConfig.model_validate(grouped)
    assert sorted(moved) == sorted(set(flat) - {"model", "output"})
    assert set(dotted(DreamBoothConfig.model_validate(grouped).model_dump())) >= set(
        MOVED.values()
    )  # every new place exists


def test_the_warning_is_one_line_naming_each_old_key_and_its_place(caplog):
    with caplog.at_level(logging.WARNING):
        DreamBoothConfig.model_validate(_flat(max_steps=7, train_text_encoder=True))
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "\n" not in message
    for words in ("max_steps -> train.max_steps", "train_text_encoder -> train.text_encoder",
                  "instance_data -> subject.instance_data", "deprecated"):
        assert words in message, message  # fmt: skip


def test_a_grouped_config_says_nothing(caplog):
    with caplog.at_level(logging.WARNING):
        DreamBoothConfig.model_validate({"subject": SUBJECT, "output": "out"})
    assert not caplog.records


def test_yaml_s_bare_off_reads_as_off_and_true_is_not_a_grouped_spelling():
    grouped = {"subject": SUBJECT, "output": "out"}
    config = DreamBoothConfig.model_validate(
        {**grouped, "train": {"text_encoder": False}, "runtime": {"compile_unet": False}}
    )
    assert (config.train.text_encoder, config.runtime.compile_unet) == ("off", "off")
    with pytest.raises(ValueError, match=r"runtime\.compile_unet[\s\S]*True"):
        DreamBoothConfig.model_validate({**grouped, "runtime": {"compile_unet": True}})


def test_an_unknown_key_in_a_group_is_refused_naming_group_and_key():
    with pytest.raises(ValueError, match=r"train\.max_step\b[\s\S]*input_value=5"):
        DreamBoothConfig.model_validate({"subject": SUBJECT, "output": "o",
                                         "train": {"max_step": 5}})  # fmt: skip


def test_an_old_key_beside_its_new_place_names_both():
    with pytest.raises(ValueError, match=r"`max_steps` 7 .*`train.max_steps`.*\(9\)"):
        DreamBoothConfig.model_validate(_flat(max_steps=7, train={"max_steps": 9}))


@pytest.mark.parametrize("where", ["file", "--set"])
def test_an_old_key_beside_its_new_place_is_one_line_and_exit_2(tmp_path, capsys, where):
    from easel.cli import main

    config = tmp_path / "config.yaml"
    values = _flat() if where == "--set" else _flat(max_steps=7, train={"max_steps": 9})
    config.write_text(yaml.safe_dump(values))
    extra = ["--set", "max_steps=7", "--set", "train.max_steps=9"] if where == "--set" else []
    assert main(["dreambooth", "--config", str(config), *extra]) == 2
    err = capsys.readouterr().err
    assert "`max_steps`" in err and "`train.max_steps`" in err and "keep one" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def _as_previous_release(checkpoint_path: str) -> None:
    """Rewrite a checkpoint's recorded config and module arguments in the flat form the
    release before the groups wrote (`train_text_encoder: false`, `max_steps`, ...)."""
    checkpoint = load_checkpoint_file(checkpoint_path, weights_only=False)
    new = checkpoint[SNAPSHOT_KEY]
    old_of = {place: old for old, place in MOVED.items()}
    flat = {old_of.get(key, key): value for key, value in new.items()}
    mode = flat["train_text_encoder"]
    flat["train_text_encoder"] = {"off": False, "all": True}.get(mode, mode)
    checkpoint[SNAPSHOT_KEY] = flat
    module_arguments = ("method", "lora_rank", "train_text_encoder", "identifier",
                        "learning_rate", "text_encoder_learning_rate", "lr_scheduler",
                        "lr_warmup_steps", "max_steps", "prior_loss_weight", "snr_gamma",
                        "offset_noise", "compile_unet", "gradient_checkpointing")  # fmt: skip
    checkpoint["hyper_parameters"] = {
        "model_dir": checkpoint["hyper_parameters"]["model_dir"], "differential_output": False,
        **{name: flat[name] for name in module_arguments},
    }  # fmt: skip
    assert "train" not in checkpoint["hyper_parameters"]
    torch.save(checkpoint, checkpoint_path + ".tmp")  # beside it: the loaded one is mapped
    os.replace(checkpoint_path + ".tmp", checkpoint_path)


def _train(values: dict, snapshot: dict) -> str:
    config = DreamBoothConfig.model_validate(values)
    return train(config, config.model, list_images(config.subject.instance_data),
                 list_images(config.prior_preservation.class_data),
                 os.path.join(config.output, "checkpoints"), snapshot=snapshot)  # fmt: skip


def _snapshot(values: dict) -> dict:
    return resume.snapshot(DreamBoothConfig.model_validate(values), "model", "images")


def test_a_flat_config_s_checkpoint_resumes_bitwise_under_the_groups(tmp_path, workspace):
    settings = {"gradient_accumulation": 2, "checkpoint_every_n_steps": 2,
                "train_text_encoder": "identifier", "text_encoder_learning_rate": 1e-2}  # fmt: skip
    old = flat_config(workspace, str(tmp_path / "resumed"), max_steps=2, **settings)
    first = _train(old, _snapshot(old))  # the previous release's run, stopped at step 2
    _as_previous_release(first)

    grouped, _ = regroup(flat_config(workspace, str(tmp_path / "resumed"), max_steps=4,
                                     **settings))  # fmt: skip
    snapshot = _snapshot(grouped)
    changes = resume.check_resume(snapshot, first)
    assert [(c.key, c.old, c.new) for c in changes] == [("train.max_steps", 2, 4)]
    resumed = _train(grouped, snapshot)

    straight, _ = regroup(flat_config(workspace, str(tmp_path / "straight"), max_steps=4,
                                      **settings))  # fmt: skip
    uninterrupted = _train(straight, _snapshot(straight))
    weights = [torch.load(p, weights_only=False)["state_dict"] for p in (resumed, uninterrupted)]
    assert weights[0].keys() == weights[1].keys()
    for name, tensor in weights[1].items():
        assert torch.equal(tensor, weights[0][name]), name


def test_a_flat_checkpoint_refuses_what_the_groups_changed(tmp_path, workspace):
    old = flat_config(workspace, str(tmp_path / "out"), max_steps=2)
    first = _train(old, _snapshot(old))
    _as_previous_release(first)
    grouped, _ = regroup({**old, "learning_rate": 5e-4, "seed": 3})
    with pytest.raises(Exception, match=r"`train.learning_rate` 0.001 -> 0.0005.*`train.seed` 0"):
        resume.check_resume(_snapshot(grouped), first)
