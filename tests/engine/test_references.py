"""Model references (SPEC §4): embedded, local, fsspec URIs, hub ids, family, safetensors."""

from __future__ import annotations

import json
import os
import shutil

import fsspec
import pytest

from easel.errors import ModelReferenceError
from easel.models.engine import kandinsky22, stable_diffusion
from easel.models.engine.families import family_of
from easel.models.engine.loading import load_model
from easel.models.engine.references import resolve_model_reference


@pytest.fixture
def tiny_copy(tmp_path):
    path = tmp_path / "my-model"
    shutil.copytree(resolve_model_reference("tiny-shapes").path, path)
    return path


def test_embedded_and_local_directory_share_a_digest(tiny_copy):
    embedded = resolve_model_reference("tiny-shapes")
    local = resolve_model_reference(str(tiny_copy))
    assert local.path == str(tiny_copy) and local.digest == embedded.digest
    assert resolve_model_reference(f"file://{tiny_copy}").digest == embedded.digest
    (tiny_copy / "unet" / "config.json").write_text(
        (tiny_copy / "unet" / "config.json").read_text().replace("}", ' , "extra": 1}', 1)
    )
    assert resolve_model_reference(str(tiny_copy)).digest != embedded.digest  # content-addressed


def test_fsspec_uri_is_copied_once_into_the_cache(tiny_copy):
    fs = fsspec.filesystem("memory")
    fs.put(str(tiny_copy), "/bucket/models/tiny", recursive=True)
    first = resolve_model_reference("memory://bucket/models/tiny")
    assert os.path.exists(os.path.join(first.path, "model_index.json"))
    stamp = os.stat(os.path.join(first.path, "unet", "config.json")).st_mtime_ns
    second = resolve_model_reference("memory://bucket/models/tiny")
    assert second.path == first.path and second.digest == first.digest
    assert os.stat(os.path.join(second.path, "unet", "config.json")).st_mtime_ns == stamp
    assert first.digest == resolve_model_reference("tiny-shapes").digest


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("/no/such/model", ["/no/such/model", "not a known model"]),
        ("someone/some-model", ["someone/some-model", "Hub", "HF_HUB_OFFLINE"]),
        ("memory://nothing/here", ["memory://nothing/here"]),
        ("", ["non-empty"]),
    ],
)
def test_unresolvable_references_say_why(ref, words):
    with pytest.raises(ModelReferenceError) as error:
        resolve_model_reference(ref)
    for word in words:
        assert word in str(error.value)


def test_family_comes_from_model_index_not_name(tiny_copy, tmp_path):
    assert family_of(str(tiny_copy)) is stable_diffusion.FAMILY
    index = json.loads((tiny_copy / "model_index.json").read_text())
    index["_class_name"] = "KandinskyV22CombinedPipeline"
    (tiny_copy / "model_index.json").write_text(json.dumps(index))
    assert family_of(str(tiny_copy)) is kandinsky22.FAMILY
    index["_class_name"] = "KandinskyV22Pipeline"  # a decoder without its prior
    (tiny_copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelReferenceError, match="without its diffusion prior"):
        family_of(str(tiny_copy))
    index["_class_name"] = "FluxPipeline"
    (tiny_copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelReferenceError, match="FluxPipeline"):
        family_of(str(tiny_copy))


def test_pickle_weights_are_refused_without_the_trust_flag(tiny_copy):
    import torch
    from safetensors.torch import load_file

    unet = tiny_copy / "unet"
    weights = load_file(unet / "diffusion_pytorch_model.safetensors")
    torch.save(weights, unet / "diffusion_pytorch_model.bin")
    os.remove(unet / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ModelReferenceError, match="trust"):
        load_model(str(tiny_copy), device="cpu")
    loaded = load_model(str(tiny_copy), device="cpu", trust_pickle=True)
    assert loaded.family is stable_diffusion.FAMILY


def test_a_model_key_leaving_its_folder_is_refused_and_nothing_copied(
    tiny_copy, s3_server, tmp_path, monkeypatch
):  # fmt: skip
    """An object store's keys are names its writer chose: `unet/../../../../escaped.txt`
    would be copied outside EASEL_CACHE_DIR."""
    cache = tmp_path / "deep" / "cache" / "dir"
    monkeypatch.setenv("EASEL_CACHE_DIR", str(cache))
    fs = fsspec.filesystem("s3")
    fs.mkdir("hostile")
    fs.put(str(tiny_copy), "hostile/tiny", recursive=True)
    fs.pipe_file("hostile/tiny/unet/../../../../escaped.txt", b"outside")
    assert "hostile/tiny/unet/../../../../escaped.txt" in fs.find("hostile/tiny")  # kept as is
    with pytest.raises(ModelReferenceError) as error:
        resolve_model_reference("s3://hostile/tiny")
    assert "'unet/../../../../escaped.txt'" in str(error.value)
    assert "s3://hostile/tiny" in str(error.value)
    assert not any(p.name == "escaped.txt" for p in tmp_path.rglob("*"))
    assert not (cache / "models").exists()
