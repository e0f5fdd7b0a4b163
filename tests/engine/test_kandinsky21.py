"""Kandinsky 2.1 (issue #18): text2img, img2img, inpaint and fusion through the prior and the
text-reading decoder, on random-weight pipelines built from config, against diffusers'
own Kandinsky 2.1 pipelines; the multilingual encoder; which folders load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    KandinskyCombinedPipeline,
    KandinskyImg2ImgCombinedPipeline,
    KandinskyInpaintCombinedPipeline,
)
from PIL import Image
from sweep_helpers import (
    STEPS,
    generated,
    max_pixel_difference,
    pixels,
    read_results,
    write_manifest,
    write_scenes,
)

from easel.data.batching import ImageRequest
from easel.data.fusion import FusionInput
from easel.errors import ModelReferenceError
from easel.models.engine.loading import load_model, model_facts
from easel.models.testing.random_pipelines import build_random_kandinsky21

SIZE = 16  # the tiny decoder's native side
GUIDANCE = 4.0
RUSSIAN = "красный круг на синем фоне"  # a red circle on a blue background


@pytest.fixture(scope="module")
def k21(tmp_path_factory) -> str:
    """Prior and text-to-image decoder in one folder."""
    return build_random_kandinsky21(str(tmp_path_factory.mktemp("k21") / "model"))


@pytest.fixture(scope="module")
def k21_inpaint(k21) -> str:
    """Prior and inpainting decoder, in a folder beside `k21`'s."""
    return build_random_kandinsky21(f"{k21}-inpaint", seed=1, inpaint=True)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict[str, str]:
    """Two init images and a mask over the middle, as files."""
    folder = tmp_path_factory.mktemp("scenes")
    return write_scenes(folder, SIZE, {"red": ("red", "blue"), "yellow": ("yellow", "black")})


def ours(model: str, task: str, requests: list[ImageRequest], **settings) -> list[np.ndarray]:
    """easel's images for `requests` in one batch, as uint8 pixels."""
    return generated(model, requests, task=task, guidance_scale=GUIDANCE,
                     num_inference_steps=STEPS, width=SIZE, height=SIZE, **settings)  # fmt: skip


def uint8(image: np.ndarray) -> np.ndarray:
    return (image * 255).round().astype(np.uint8)


def combined_call(cls, model: str, request: ImageRequest, **arguments) -> np.ndarray:
    """The bare diffusers combined-pipeline call a user would make for `request`."""
    pipe = cls.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        request.prompt, negative_prompt=request.negative_prompt, guidance_scale=GUIDANCE,
        num_inference_steps=STEPS, height=SIZE, width=SIZE, output_type="np",
        generator=torch.Generator().manual_seed(request.seed), **arguments,
    ).images[0]  # fmt: skip
    return uint8(image)


def prior_then_decoder(model: str, request: ImageRequest, fusion=None) -> np.ndarray:
    """diffusers' prior (or its `interpolate` of `fusion`: conditions, weights) and then its
    text2img decoder, both given the negative prompt, one generator throughout."""
    combined = KandinskyCombinedPipeline.from_pretrained(model)
    generator = torch.Generator().manual_seed(request.seed)
    negative = request.negative_prompt
    if fusion:
        embeddings = combined.prior_pipe.interpolate(
            *fusion, generator=generator, negative_prior_prompt=negative
        )
    else:
        embeddings = combined.prior_pipe(request.prompt, negative_prompt=negative,
                                         generator=generator)  # fmt: skip
    decoder = combined.decoder_pipe
    decoder.set_progress_bar_config(disable=True)
    image = decoder(
        "" if fusion else request.prompt, image_embeds=embeddings.image_embeds,
        negative_image_embeds=embeddings.negative_image_embeds, negative_prompt=negative or "",
        guidance_scale=GUIDANCE, num_inference_steps=STEPS, height=SIZE, width=SIZE,
        generator=generator, output_type="np",
    ).images[0]  # fmt: skip
    return uint8(image)


def test_text2img_same_image_whatever_the_batch_and_as_diffusers(k21):
    plain = ImageRequest(prompt="a red star on a blue background", negative_prompt=None, seed=42)
    negative = ImageRequest(prompt=RUSSIAN, negative_prompt="green", seed=7)
    others = [ImageRequest(prompt=p, negative_prompt=n, seed=i) for i, (p, n) in
              enumerate([("a green square", "red"), ("a circle", None)])]  # fmt: skip
    alone = ours(k21, "text2img", [plain]) + ours(k21, "text2img", [negative])
    crowd = ours(k21, "text2img", [others[0], negative, others[1], plain])
    assert max_pixel_difference(alone[0], crowd[3]) <= 2
    assert max_pixel_difference(alone[1], crowd[1]) <= 2
    # without a negative prompt: exactly diffusers' combined pipeline
    assert max_pixel_difference(alone[0], combined_call(KandinskyCombinedPipeline, k21, plain)) <= 2
    # a negative prompt steers the prior and the decoder's text guidance
    assert max_pixel_difference(alone[1], prior_then_decoder(k21, negative)) <= 2
    assert max_pixel_difference(alone[1], combined_call(KandinskyCombinedPipeline, k21,
                                                        negative)) > 2  # fmt: skip


def test_img2img_follows_its_own_init_image_in_a_batch(k21, scenes):
    rows = [ImageRequest(prompt="a circle", negative_prompt=None, seed=3, init_image=scenes[name])
            for name in ("red", "yellow")]  # fmt: skip
    together = ours(k21, "img2img", rows, strength=0.5)
    alone = ours(k21, "img2img", rows[1:], strength=0.5)
    assert max_pixel_difference(together[1], alone[0]) <= 2
    init = Image.open(scenes["yellow"]).convert("RGB")
    expected = combined_call(KandinskyImg2ImgCombinedPipeline, k21, rows[1], image=init,
                             strength=0.5)  # fmt: skip
    assert max_pixel_difference(together[1], expected) <= 2
    assert max_pixel_difference(together[0], together[1]) > 10


def test_inpaint_keeps_unmasked_pixels_and_each_row_its_own_image(k21_inpaint, scenes):
    rows = [ImageRequest(prompt="a green square", negative_prompt=None, seed=5,
                         init_image=scenes[name], mask_image=scenes["mask"])
            for name in ("red", "yellow")]  # fmt: skip
    together = ours(k21_inpaint, "inpaint", rows)
    alone = ours(k21_inpaint, "inpaint", rows[1:])
    mask = Image.open(scenes["mask"])
    keep = np.asarray(mask) == 0
    for name, image in zip(("red", "yellow"), together, strict=True):
        assert np.array_equal(image[keep], pixels(scenes[name])[keep])
    assert max_pixel_difference(together[1], alone[0]) <= 2
    init = Image.open(scenes["yellow"]).convert("RGB")
    generated = combined_call(KandinskyInpaintCombinedPipeline, k21_inpaint, rows[1],
                              image=init, mask_image=mask)  # fmt: skip
    assert max_pixel_difference(together[1][~keep], generated[~keep]) <= 2


def test_fusion_mixes_texts_and_images_through_the_prior(k21, scenes):
    image = Image.open(scenes["red"]).convert("RGB")
    items = (FusionInput(text=RUSSIAN, image=None, weight=0.25),
             FusionInput(text=None, image=scenes["red"], weight=0.75))  # fmt: skip
    many = ImageRequest(prompt=None, negative_prompt="blue", seed=11, fusion_inputs=items)
    legacy = ImageRequest(prompt="a blue square", negative_prompt=None, seed=12,
                          init_image=scenes["red"])  # fmt: skip
    together = ours(k21, "fusion", [many, legacy], strength=0.3)
    alone = ours(k21, "fusion", [legacy], strength=0.3)
    assert max_pixel_difference(together[1], alone[0]) <= 2
    expected_many = prior_then_decoder(k21, many, ([RUSSIAN, image], [0.25, 0.75]))
    assert max_pixel_difference(together[0], expected_many) <= 2
    expected_legacy = prior_then_decoder(k21, legacy, (["a blue square", image], [0.7, 0.3]))
    assert max_pixel_difference(together[1], expected_legacy) <= 2


def test_a_cyrillic_prompt_reaches_the_multilingual_encoder_as_written(k21):
    loaded = load_model(k21, dtype=torch.float32)
    seen = []
    hook = loaded.pipeline.text_encoder.register_forward_hook(
        lambda module, args, kwargs, output: seen.append(kwargs["input_ids"]), with_kwargs=True
    )
    try:
        ours(k21, "text2img", [ImageRequest(prompt=RUSSIAN, negative_prompt=None, seed=1)])
    finally:
        hook.remove()
    tokenizer = loaded.pipeline.tokenizer
    direct = tokenizer(RUSSIAN, padding="max_length", max_length=77, return_tensors="pt")
    prompt_ids = seen[0][0]  # the prompt's row (then the empty negative prompt's call)
    assert torch.equal(prompt_ids, direct.input_ids[0])
    assert tokenizer.decode(prompt_ids, skip_special_tokens=True) == RUSSIAN
    assert tokenizer.unk_token_id not in prompt_ids.tolist()


@pytest.mark.usefixtures("prefect_server")
def test_truncation_is_reported_per_text_encoder_in_the_warning_column(tmp_path, k21):
    long_prompt = " ".join([RUSSIAN] * 16)  # 80 words: 82 tokens with <s> and </s>
    Image.new("RGB", (SIZE, SIZE), "red").save(tmp_path / "red.png")
    rows = [{"id": "long", "prompt": long_prompt, "seed": 0, "guidance_scale": GUIDANCE},
            {"id": "short", "prompt": RUSSIAN, "seed": 0, "guidance_scale": GUIDANCE},
            {"id": "fusion", "prompt": long_prompt, "task": "fusion", "init_image": "red.png",
             "strength": 0.5, "seed": 0, "guidance_scale": GUIDANCE}]  # fmt: skip
    results = run_sweep(tmp_path, rows, k21)
    assert results["long"]["status"] == "ok" and results["short"]["warning"] is None
    warning = results["long"]["warning"]
    assert ("`prompt` has 82 tokens and was truncated by the multilingual text encoder to the "
            "model's 77") in warning  # fmt: skip
    assert "truncated by the prior's text encoder to the model's 77" in warning  # CLIP's
    # a fusion's decoder reads no prompt: only the prior cuts it
    assert results["fusion"]["status"] == "ok"
    assert "prior's" in results["fusion"]["warning"]
    assert "multilingual" not in results["fusion"]["warning"]


def run_sweep(tmp_path, rows, model) -> dict[str, dict]:
    from easel.flows.sweep import SweepParameters, sweep_flow

    manifest = write_manifest(tmp_path / "rows.parquet", rows)
    out = tmp_path / "out"
    sweep_flow(SweepParameters(manifest=manifest, out=str(out), model=model,
                               num_inference_steps=STEPS))  # fmt: skip
    return {r["id"]: r for r in read_results(out)}


def test_model_facts(k21, k21_inpaint):
    facts = model_facts(k21)
    assert (facts.family, facts.native_size, facts.default_scheduler) == (
        "Kandinsky 2.1", SIZE, "ddim"
    )  # fmt: skip
    assert facts.tasks == ("text2img", "img2img", "fusion") and facts.size_multiple == 4
    assert facts.strength_tasks == ("img2img",) and facts.has_prior
    assert model_facts(k21_inpaint).tasks == ("inpaint",)


def test_flops_count_the_decoder_s_text_tokens(k21):
    from easel.models.engine import flops

    loaded = load_model(k21, dtype=torch.float32)
    unet = loaded.family.denoiser(loaded.pipeline)
    assert loaded.family.context_length(loaded.pipeline) == 77  # not the tokenizer's 512
    assert flops.denoiser_flops(unet, (4, 4), 77) > flops.denoiser_flops(unet, (4, 4), 1) > 0


def test_a_decoder_folder_loads_with_the_prior_its_card_names_and_not_without(tmp_path, k21):
    combined = KandinskyCombinedPipeline.from_pretrained(k21)
    combined.prior_pipe.save_pretrained(tmp_path / "prior")
    combined.decoder_pipe.save_pretrained(tmp_path / "decoder")
    with pytest.raises(ModelReferenceError) as refused:
        model_facts(str(tmp_path / "decoder"))
    assert "'KandinskyPipeline', a Kandinsky 2.1 decoder without its diffusion prior" in str(
        refused.value
    ) and "`prior: REF`" in str(refused.value)  # fmt: skip

    card = tmp_path / "decoder" / "README.md"
    card.write_text("---\nprior: tiny-shapes\n---\n")
    with pytest.raises(ModelReferenceError, match="not a KandinskyPriorPipeline"):
        model_facts(str(tmp_path / "decoder"))

    card.write_text("---\nprior:\n- ../prior\n---\nA Kandinsky 2.1 decoder.\n")
    request = ImageRequest(prompt="a green star", negative_prompt="red", seed=5)
    split = ours(str(tmp_path / "decoder"), "text2img", [request])
    assert model_facts(str(tmp_path / "decoder")).family == "Kandinsky 2.1"
    assert max_pixel_difference(split[0], ours(k21, "text2img", [request])[0]) == 0
