"""tiny-shapes: tokenizer, the committed pipeline's contract, and a few steps of bootstrap."""

import json
import os

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from easel.data import shapes
from easel.models.engine.references import resolve_model_reference
from easel.models.engine.schedulers import build_scheduler
from easel.models.shapes import tiny_shapes

WEIGHTS = resolve_model_reference("tiny-shapes").path


@pytest.fixture(scope="module")
def pipeline():
    pipe = StableDiffusionPipeline.from_pretrained(WEIGHTS, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_tokenizer_has_one_token_per_caption_word_and_falls_back_to_bytes():
    tokenizer = tiny_shapes.build_tokenizer(shapes.vocabulary(), max_length=16)
    for word in shapes.vocabulary():
        assert tokenizer.tokenize(word) == [word + "</w>"]
    pieces = tokenizer.tokenize("a photo of sks shape")
    assert pieces[3:] == ["s", "k", "s</w>", "shape</w>"]
    pieces = tokenizer.tokenize("Zébra & co. 42")  # every piece is in the vocabulary
    assert pieces and all(piece in tokenizer.get_vocab() for piece in pieces)
    ids = tokenizer("Zébra & co. 42 " * 5, padding="max_length", truncation=True).input_ids
    assert len(ids) == 16 and ids[-1] == tokenizer.eos_token_id


def test_tokenizer_pads_with_its_own_pad_token():
    tokenizer = tiny_shapes.build_tokenizer(shapes.vocabulary(), max_length=16)
    ids = tiny_shapes.tokenize(tokenizer, ["a red star"])[0].tolist()
    assert ids[:5] == [
        tokenizer.bos_token_id,
        *tokenizer.convert_tokens_to_ids(["a</w>", "red</w>", "star</w>"]),
        tokenizer.eos_token_id,
    ]
    assert set(ids[5:]) == {tokenizer.pad_token_id}
    assert tokenizer.pad_token_id not in (tokenizer.eos_token_id, tokenizer.bos_token_id)


def test_committed_pipeline_contract(pipeline):
    with open(os.path.join(WEIGHTS, "model_index.json")) as f:
        index = json.load(f)
    assert index["requires_safety_checker"] is False
    assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]
    vae_factor = 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
    assert pipeline.unet.config.sample_size * vae_factor == 64
    assert pipeline.tokenizer.model_max_length <= 32
    assert pipeline.tokenizer.pad_token != pipeline.tokenizer.eos_token
    weights = [os.path.join(d, f) for d, _, fs in os.walk(WEIGHTS) for f in fs]
    assert not [f for f in weights if f.endswith((".bin", ".ckpt", ".pt"))]
    assert sum(os.path.getsize(f) for f in weights) < 30 * 2**20


@pytest.mark.parametrize("name", ["ddim", "ddpm", "pndm", "euler", "euler_a", "dpmpp_2m", "unipc"])
def test_every_sweep_scheduler_samples_from_the_saved_config(pipeline, name):
    pipeline.scheduler = build_scheduler(name, pipeline.scheduler.config)
    image = pipeline(
        "a red circle on a blue background",
        num_inference_steps=6,  # PNDM needs more than 4
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()


def test_generation_is_deterministic_per_seed_whatever_the_batch(pipeline):
    def run(prompts, seeds):
        return pipeline(
            prompts,
            num_inference_steps=4,
            guidance_scale=5.0,
            output_type="np",
            generator=[torch.Generator().manual_seed(s) for s in seeds],
        ).images

    alone = run(["a red star on a blue background"], [7])[0]
    batched = run(
        ["a green heart on a white background", "a red star on a blue background"], [3, 7]
    )[1]
    assert np.abs(alone - batched).max() <= 2 / 255


def test_unknown_words_and_sks_still_generate(pipeline):
    image = pipeline(
        "a photo of sks shape, zebra!",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert image.size == (64, 64)


def test_diffusion_stage_saves_the_moving_average_and_a_rerun_keeps_it(tmp_path):
    from dataclasses import replace

    from easel.models.shapes import training

    base = training.TinyShapesTraining()
    schedule = replace(base.diffusion, steps=4, batch_size=8, warmup_steps=1)
    config = replace(base, diffusion=schedule, diffusion_images=16)
    vae = tiny_shapes.build_vae(base.architecture)

    def unet_weights(ema_decay: float, folder: str) -> dict[str, torch.Tensor]:
        module = training.train_diffusion(
            replace(config, diffusion_ema_decay=ema_decay), vae, str(tmp_path / folder)
        )
        return {k: v.clone() for k, v in module.unet.state_dict().items()}

    last = unet_weights(0.0, "last")
    nearly_last = unet_weights(1e-9, "nearly-last")  # an average that forgets at once
    averaged = unet_weights(0.9, "ema")
    rerun = unet_weights(0.9, "ema")  # resumes from the finished checkpoint
    name = "conv_in.weight"
    assert torch.allclose(nearly_last[name], last[name], atol=1e-6)
    assert not torch.allclose(averaged[name], last[name], atol=1e-6)
    assert all(torch.equal(rerun[k], averaged[k]) for k in averaged)


def test_movq_of_tiny_shapes_k22_is_the_vae_exactly():
    """Kandinsky's MOVQ latents are tiny-shapes' scaled posterior means; decoding matches."""
    from diffusers import AutoencoderKL

    from easel.models.shapes.recipe import images_to_tensor
    from easel.models.shapes.tiny_shapes_k22 import movq_from_vae

    base = resolve_model_reference("tiny-shapes").path
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    movq = movq_from_vae(vae)
    pixels = images_to_tensor(shapes.render_array(shapes.sample_specs(4, seed=9)))
    with torch.no_grad():
        mean = vae.encode(pixels).latent_dist.mode()
        latents = movq.encode(pixels).latents
        assert torch.allclose(latents, mean * vae.config.scaling_factor, atol=1e-5)
        decoded = movq.decode(latents, force_not_quantize=True).sample
        assert torch.allclose(decoded, vae.decode(mean).sample, atol=1e-4)
    torch.rand(3)  # whatever the global random state, the same weights (file reproducible)
    again = movq_from_vae(vae).state_dict()
    assert all(torch.equal(value, again[name]) for name, value in movq.state_dict().items())
