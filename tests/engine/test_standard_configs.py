"""The configurations easel ships for standard single-file checkpoints: their architectures
against the published parameter counts, the CLIP tokenizer built from the shipped merges,
which one a file's weights call for, and a full-size SD 1.5 single file swept with no
`config` at all (slow)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from easel.errors import ModelReferenceError
from easel.models.engine import standard_configs
from easel.models.engine.loading import model_facts
from easel.models.engine.references import cache_dir
from easel.models.engine.standard_configs import inferred_name, shipped_folder

# Published parameter counts (UNet, VAE, text encoder) of the hub models the configs follow
PUBLISHED = {
    "stable-diffusion-v1-5": (859_520_964, 83_653_863, 123_060_480),
    "stable-diffusion-inpainting": (859_535_364, 83_653_863, 123_060_480),
    "stable-diffusion-2-1": (865_910_724, 83_653_863, 340_387_840),
    "stable-diffusion-2-1-base": (865_910_724, 83_653_863, 340_387_840),
    "stable-diffusion-2-inpainting": (865_925_124, 83_653_863, 340_387_840),
}
SD2_KEY = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"


def test_every_shipped_configuration_has_the_published_architecture():
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    assert set(standard_configs.NAMES) == set(PUBLISHED)
    for name, counts in PUBLISHED.items():
        folder = standard_configs.SHIPPED_DIR / name
        with init_empty_weights():
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(
                folder / "unet"))  # fmt: skip
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
            text = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        found = tuple(sum(p.numel() for p in m.parameters()) for m in (unet, vae, text))
        assert found == counts, name


def test_the_shipped_tokenizer_is_clips_with_the_ids_clip_gives():
    from transformers import CLIPTokenizer

    def tokenizer(name):
        return CLIPTokenizer.from_pretrained(f"{shipped_folder(name, cache_dir())}/tokenizer")

    sd1 = tokenizer("stable-diffusion-v1-5")
    assert len(sd1) == 49408
    assert sd1("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    padded = sd1("a cat", padding="max_length", max_length=8).input_ids
    assert padded == [49406, 320, 2368, 49407, 49407, 49407, 49407, 49407]
    sd2 = tokenizer("stable-diffusion-2-1")  # pads with "!", token 0
    assert sd2("a cat", padding="max_length", max_length=6).input_ids == [49406, 320, 2368,
                                                                          49407, 0, 0]  # fmt: skip
    again = shipped_folder("stable-diffusion-v1-5", cache_dir())  # written once, then reused
    assert again == shipped_folder("stable-diffusion-v1-5", cache_dir())


def fake_checkpoint(path, **tensors) -> str:
    save_file({key: torch.zeros(shape) for key, shape in tensors.items()}, str(path))
    return str(path)


def test_the_weights_call_for_a_configuration_and_sd2_needs_its_yaml_or_config(tmp_path):
    v1 = fake_checkpoint(tmp_path / "v1.safetensors", **{
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (4, 4),
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
    })  # fmt: skip
    assert inferred_name(v1, "v1.safetensors", None) == "stable-diffusion-v1-5"
    inpainting = fake_checkpoint(tmp_path / "in.safetensors", **{
        "model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3),
    })  # fmt: skip
    assert inferred_name(inpainting, "in", None) == "stable-diffusion-inpainting"
    v2 = fake_checkpoint(tmp_path / "v2.safetensors", **{SD2_KEY: (640, 1024)})
    assert inferred_name(v2, "v2", "v") == "stable-diffusion-2-1"
    assert inferred_name(v2, "v2", "eps") == "stable-diffusion-2-1-base"
    with pytest.raises(ModelReferenceError) as error:
        model_facts(v2)  # no yaml beside it, no `config`
    message = str(error.value)
    assert "`config`" in message and "'stable-diffusion-2-1-base'" in message
    assert v2 in message and "\n" not in message


def test_a_file_that_does_not_fit_its_inferred_configuration_names_it_and_config(tmp_path):
    """A tiny SD 1.x file is inferred as SD 1.5 and does not fit its full-size shapes."""
    from ldm_checkpoint import write_single_file

    from easel.models.testing.random_pipelines import build_random_sd

    folder = build_random_sd(str(tmp_path / "sd"))
    path = write_single_file(folder, str(tmp_path / "tiny.safetensors"))
    with pytest.raises(ModelReferenceError) as error:
        model_facts(path)
    message = str(error.value)
    assert "'stable-diffusion-v1-5', the configuration its weights call for" in message
    assert "give `config`" in message and "\n" not in message


def test_config_names_a_shipped_configuration_or_a_folder(tmp_path):
    from easel.models.engine.spec import ModelSpec

    path = fake_checkpoint(tmp_path / "m.safetensors", **{SD2_KEY: (640, 1024)})
    with pytest.raises(ModelReferenceError, match="one of the configurations easel ships"):
        model_facts(ModelSpec(path=path, config="stable-diffusion-3"))


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_full_size_sd15_single_file_sweeps_with_no_config_as_diffusers(tmp_path, monkeypatch):
    """An SD 1.5-sized file (random fp16 weights, 1.07 B parameters, as civitai ships them):
    `--model model.safetensors` alone; the image equals diffusers' given the same configs;
    the conversion is done once."""
    import os

    import numpy as np
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from ldm_checkpoint import write_components
    from sweep_helpers import max_pixel_difference, pixels, read_results, write_manifest
    from transformers import CLIPTextConfig, CLIPTextModel

    from easel.cli import main
    from easel.models.engine import single_file
    from easel.models.engine.references import resolve_model_reference

    shipped = standard_configs.SHIPPED_DIR / "stable-diffusion-v1-5"
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(shipped / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(shipped / "vae"))
    text = CLIPTextModel(CLIPTextConfig.from_pretrained(shipped / "text_encoder"))
    path = write_components(unet, vae, text, str(tmp_path / "v1-5-pruned-emaonly.safetensors"),
                            dtype=torch.float16)  # fmt: skip
    del unet, vae, text
    row = {"id": "r", "prompt": "a red circle", "seed": 3, "guidance_scale": 5.0,
           "width": 64, "height": 64, "num_inference_steps": 2}  # fmt: skip
    manifest = write_manifest(tmp_path / "m.parquet", [row])
    out = str(tmp_path / "out")
    assert main(["sweep", manifest, "--out", out, "--model", path]) == 0
    (result,) = read_results(out)
    assert result["status"] == "ok"

    monkeypatch.setattr(single_file, "convert", lambda *a, **k: pytest.fail("converted again"))
    converted = resolve_model_reference(path).path
    assert os.path.exists(os.path.join(converted, "unet", "diffusion_pytorch_model.safetensors"))
    config = shipped_folder("stable-diffusion-v1-5", cache_dir())
    pipe = StableDiffusionPipeline.from_single_file(path, config=config, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(3)
    native = pipe(row["prompt"], guidance_scale=5.0, num_inference_steps=2, height=64, width=64,
                  generator=generator, output_type="np").images[0]  # fmt: skip
    native = (native * 255).round().astype(np.uint8)
    assert max_pixel_difference(pixels(result["image_uri"]), native) <= 2
