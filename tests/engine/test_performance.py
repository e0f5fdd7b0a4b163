"""The sweep's fast path: compiled, channels-last, another attention kernel, the VAE in its
own dtype, `batch_size: auto`, and the utilisation figures every sweep logs."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from sweep_helpers import write_manifest

from easel.data.batching import BatchSettings, ImageRequest
from easel.data.limits import BATCH_SIZE
from easel.flows.sweep import SweepParameters, sweep_flow
from easel.models.engine import flops, memory
from easel.models.engine.generation import generate
from easel.models.engine.loading import load_model
from easel.models.engine.performance import Performance
from easel.models.testing.random_pipelines import build_random_sd

pytestmark = pytest.mark.usefixtures("prefect_server")

SAME_IMAGE = 2  # out of 255: an image at batch 1 against batch 8, as on the eager path
PROMPTS = ["a red circle", "a blue square on a green background", "a yellow triangle", "shape"]


@pytest.fixture(scope="module")
def random_sd(tmp_path_factory):
    return build_random_sd(str(tmp_path_factory.mktemp("sd") / "model"), "tiny")


def images(loaded, settings, requests) -> np.ndarray:
    return np.stack([np.asarray(i, dtype=np.int16) for i in generate(loaded, settings, requests)])


def settings(task="text2img", side=32, **changes) -> BatchSettings:
    return BatchSettings(task=task, scheduler="ddim", guidance_scale=7.5, num_inference_steps=6,
                         width=side, height=side, **changes)  # fmt: skip


def requests(n, **fields) -> list[ImageRequest]:
    return [ImageRequest(prompt=PROMPTS[i % 4], negative_prompt=None, seed=100 + i, **fields)
            for i in range(n)]  # fmt: skip


@pytest.mark.slow
def test_compiled_channels_last_images_do_not_depend_on_the_batch(random_sd):
    fast = load_model(random_sd, "cpu", performance=Performance(compile="regional",
                                                                channels_last=True))  # fmt: skip
    unet = fast.pipeline.unet
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    compiled = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert compiled and all(m._compiled_call_impl is not None for m in compiled)
    crowd = images(fast, settings(), requests(8))
    alone = images(fast, settings(), requests(8)[5:6])
    assert np.abs(crowd[5] - alone[0]).max() <= SAME_IMAGE
    eager = images(load_model(random_sd, "cpu"), settings(), requests(8))
    assert np.abs(crowd - eager).max() <= SAME_IMAGE
    assert np.abs(crowd - eager).mean() < 0.05  # the same images, not merely close ones


def test_attention_kernel_and_vae_dtype(random_sd, tmp_path):
    from PIL import Image

    eager = load_model(random_sd, "cpu")
    math = load_model(random_sd, "cpu", performance=Performance(attention_backend="math"))
    bf16 = load_model(random_sd, "cpu", performance=Performance(vae_dtype="bfloat16"))
    assert (bf16.pipeline.vae.dtype, bf16.pipeline.unet.dtype) == (torch.bfloat16, torch.float32)
    assert eager.pipeline.vae.dtype == torch.float32  # the cached eager model is untouched
    text = settings()
    reference = images(eager, text, requests(4))
    assert np.abs(images(math, text, requests(4)) - reference).max() <= SAME_IMAGE
    assert 0 < np.abs(images(bf16, text, requests(4)) - reference).max() <= 4
    # img2img: pixels go in through the bfloat16 encoder, latents come back to the UNet's dtype
    init = tmp_path / "init.png"
    Image.fromarray(reference[0].astype(np.uint8)).save(init)
    edit = settings("img2img", strength=0.5)
    edited = images(bf16, edit, requests(2, init_image=str(init)))
    assert np.abs(edited - images(eager, edit, requests(2, init_image=str(init)))).max() <= 4


def test_auto_batch_size_never_exceeds_the_memory_budget():
    mib = 2**20

    def simulated(fixed, per_image, curve):  # a peak that grows a little faster than linear
        return lambda n: fixed + n * per_image + int(curve * n * n)

    for fixed, per_image, curve, budget in [(3000, 700, 0.0, 16000), (100, 45, 0.0, 900),
                                            (5000, 1200, 2.0, 80000), (9000, 500, 0.0, 9400)]:
        peak = simulated(fixed * mib, per_image * mib, curve * mib)
        n = memory.largest_batch(peak, budget * mib)
        assert n >= 1 and (peak(n) <= budget * mib or n == 1)
        if curve == 0 and n > 1:
            assert peak(n + 1) > budget * mib  # the largest that fits
    assert memory.largest_batch(lambda n: n * mib, 10**12, limit=32) == 32  # capped
    assert memory.largest_batch(lambda n: n * 10**9, mib) == 1  # nothing fits: 1, it fails alone


def test_auto_batches_follow_the_budget_through_the_sweep(random_sd, tmp_path, monkeypatch):
    """The engine splits planned batches to the size measured for their settings: a budget
    of 3.5 simulated images gives batches of 3; on CPU (no memory statistics) the default."""
    assert memory.fitted_batch_size(None, None, None, "cpu", None) == BATCH_SIZE
    probes = []
    monkeypatch.setattr(memory, "_SIZES", {})
    monkeypatch.setattr(memory, "device_budget", lambda device: 350)
    monkeypatch.setattr(memory, "probe", lambda generate, device: probes.append(1) or (
        lambda n: 100 * n))  # fmt: skip
    from easel.data.manifest import SweepDefaults
    from easel.models.engine.sweep import SweepInputs, generate_batches, plan_sweep

    rows = [{"id": "a", "prompt": "a red circle", "num_images": 7},
            {"id": "b", "prompt": "a blue square", "num_images": 2, "width": 48, "height": 48}]
    defaults = SweepDefaults(model=random_sd, guidance_scale=7.5, num_inference_steps=3,
                             max_pixels=2**22)  # fmt: skip
    inputs = SweepInputs(
        manifest=write_manifest(tmp_path / "m.parquet", rows), out=str(tmp_path / "out"),
        defaults=defaults, input_roots=(), batch_size="auto", device="cpu", dtype=None,
        trust_pickle=False,
    )  # fmt: skip
    _, plan = plan_sweep(inputs)
    sizes = []
    outcome = generate_batches(inputs, plan.batches, None, on_batch=sizes.append)
    assert outcome.ok == 9 and sorted(sizes) == [1, 2, 3, 3]  # 7 = 3 + 3 + 1, then 2
    assert len(probes) == 2  # one measurement per distinct settings
    generate_batches(inputs, plan.batches[:1], None)  # a later task of the same process
    assert len(probes) == 2  # measured once


def test_flops_are_counted_from_the_configuration():
    """Stable Diffusion 1.5's shapes, built on the meta device: the published figures (a UNet
    forward of one 64x64 latent about 0.84 TFLOP with 77 tokens, a VAE decode to 512x512
    about 2.5 TFLOP) within 15%; a smaller model costs less."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768)  # diffusers' defaults: SD 1.x
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), layers_per_block=2,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        )  # fmt: skip
    forward = flops.denoiser_flops(unet, (64, 64), 77)
    decode = flops.autoencoder_flops(vae, (64, 64), False)
    assert forward == pytest.approx(0.84e12, rel=0.15)
    assert decode == pytest.approx(2.5e12, rel=0.15)
    assert flops.autoencoder_flops(vae, (64, 64), True) > 1.3 * decode  # + the encoder
    assert flops.denoiser_flops(unet, (32, 32), 77) < forward / 3


def test_every_sweep_logs_its_utilisation(random_sd, tmp_path, monkeypatch, prefect_server):
    monkeypatch.setenv("EASEL_PEAK_TFLOPS", "0.5")
    rows = [{"id": "r", "prompt": "a red circle", "num_images": 3}]
    params = SweepParameters(
        manifest=write_manifest(tmp_path / "m.parquet", rows), out=str(tmp_path / "out"),
        model=random_sd, num_inference_steps=4, batch_size="auto", experiment="perf",
        performance={"channels_last": True, "attention_backend": "math"},
    )  # fmt: skip
    sweep_flow(params)
    (run,) = mlflow.search_runs(experiment_names=["perf"], output_format="list")
    metrics, logged = run.data.metrics, run.data.params
    assert metrics["images_per_s"] > 0 and metrics["tflop_per_image"] > 0
    assert metrics["model_flops_utilization"] == pytest.approx(
        metrics["achieved_tflops"] / 0.5, rel=1e-6
    )
    assert metrics["achieved_tflops"] == pytest.approx(
        metrics["tflop_per_image"] * metrics["images_per_s"], rel=1e-6
    )
    assert logged["performance.channels_last"] == "True"
    assert logged["performance.attention_backend"] == "math"
    assert (logged["device_name"], logged["torch_dtype"], logged["batch_size"]) == (
        "cpu", "float32", "auto")  # fmt: skip
