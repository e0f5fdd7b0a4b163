"""DreamBooth training pieces on a tiny random pipeline: smoke runs, data, LoRA export."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import torch
from dreambooth_fixtures import make_workspace, tiny_config, write_images

from easel.data.dreambooth import LatentCache, MicroBatches, list_images
from easel.models.dreambooth.config import DreamBoothConfig, Runtime
from easel.models.dreambooth.training import train
from easel.models.testing.random_pipelines import build_random_sd


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(str(tmp_path_factory.mktemp("dreambooth-ws")))


def _train(workspace, output, **overrides) -> str:
    config = DreamBoothConfig.model_validate(tiny_config(workspace, output, **overrides))
    return train(
        config,
        config.model,
        list_images(config.subject.instance_data),
        list_images(config.prior_preservation.class_data),
        os.path.join(output, "checkpoints"),
        enable_progress_bar=False,
        **overrides.get("trainer", {}),
    )


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"train_text_encoder": True, "snr_gamma": 5.0, "offset_noise": 0.1},
        {"method": "lora", "train_text_encoder": True, "prior_preservation": False},
    ],
)
def test_fast_dev_run(workspace, tmp_path, variant):
    config = DreamBoothConfig.model_validate(tiny_config(workspace, str(tmp_path), **variant))
    assert (
        train(
            config,
            config.model,
            list_images(config.subject.instance_data),
            list_images(config.prior_preservation.class_data),
            str(tmp_path / "checkpoints"),
            fast_dev_run=True,
            enable_progress_bar=False,
        )
        == ""
    )


def test_v_prediction_model_trains(tmp_path, workspace):
    v_model = build_random_sd(str(tmp_path / "v-model"), prediction_type="v_prediction")
    final = _train({**workspace, "model": v_model}, str(tmp_path / "out"), max_steps=2)
    state = torch.load(final, weights_only=True)
    assert state["global_step"] == 2 and all(
        torch.isfinite(v).all() for v in state["state_dict"].values()
    )


def test_micro_batches_are_a_function_of_their_number_and_rank():
    def cache(n, seed):
        latents = torch.randn(n, 4, 2, 2, generator=torch.Generator().manual_seed(seed))
        return LatentCache(latents, torch.zeros(1, 3, 5))

    def batches(rank=0, start=0):
        micro_batches = MicroBatches(
            cache(3, 0), cache(5, 1), batch_size=2, num_train_timesteps=1000, seed=7,
            start=start, stop=6, rank=rank, world_size=2,
        )  # fmt: skip
        return list(micro_batches)

    full, resumed, other_rank = batches(), batches(start=4), batches(rank=1)
    for a, b in zip(full[4:], resumed, strict=True):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)
    assert not torch.equal(full[0]["noise"], other_rank[0]["noise"])
    assert full[0]["latents"].shape == (4, 4, 2, 2)  # 2 instance + 2 class examples
    assert full[0]["num_instance"] == 2
    # the ranks interleave over one shuffled stream: positions 0, 1 (rank 0) and 2 (rank 1)
    # are the first epoch over the 3 instance images, so each image appears once
    first_epoch = torch.cat([full[0]["latents"][:2], other_rank[0]["latents"][:1]])
    latents = cache(3, 0).latents
    picked = sorted(next(i for i in range(3) if torch.equal(x, latents[i])) for x in first_epoch)
    assert picked == [0, 1, 2]


def test_lora_export_is_loadable_and_names_its_base(tmp_path, workspace):
    from diffusers import StableDiffusionPipeline

    from easel.models.dreambooth.export import export

    final = _train(workspace, str(tmp_path / "out"), method="lora", max_steps=2, learning_rate=1e-2)
    state = torch.load(final, weights_only=True)["state_dict"]
    assert state and all("lora_" in k for k in state)  # only the adapter is checkpointed
    folders = (str(tmp_path / "pipeline"), str(tmp_path / "lora"))
    result = export(final, workspace["model"], "base-ref", *folders)
    exported, lora_dir = folders
    assert result.pipeline == exported
    assert result.lora == os.path.join(lora_dir, "pytorch_lora_weights.safetensors")
    assert sorted(os.listdir(lora_dir)) == ["base_model.json", "pytorch_lora_weights.safetensors"]
    assert not os.path.exists(os.path.join(exported, "lora"))  # the adapter has one place
    with open(os.path.join(lora_dir, "base_model.json")) as f:
        assert json.load(f)["base_model"] == "base-ref"
    assert not any(
        name.endswith((".bin", ".ckpt")) for _, _, files in os.walk(exported) for name in files
    )
    _rerun_keeps_and_repairs(final, workspace["model"], folders)

    fused = StableDiffusionPipeline.from_pretrained(exported, use_safetensors=True)
    base = StableDiffusionPipeline.from_pretrained(workspace["model"], use_safetensors=True)
    base.load_lora_weights(lora_dir)
    kwargs = {
        "prompt": "a photo of sks shape",
        "num_inference_steps": 2,
        "output_type": "np",
        "height": 16,
        "width": 16,
    }
    image_fused = fused(**kwargs, generator=torch.Generator().manual_seed(0)).images
    image_adapter = base(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert abs(image_fused - image_adapter).max() < 1e-3  # the fused export = base + adapter
    _adapter_in_loras_is_the_merged_pipeline(workspace["model"], exported, result.lora)


def _rerun_keeps_and_repairs(checkpoint: str, base: str, folders: tuple[str, str]) -> None:
    """A second export of the same checkpoint writes nothing; a deleted adapter folder is
    written again without touching the pipeline."""
    import shutil

    from easel.models.dreambooth.export import export

    pipeline, lora_dir = folders
    stamps = {folder: os.stat(folder).st_ino for folder in folders}
    export(checkpoint, base, "base-ref", *folders)
    assert {folder: os.stat(folder).st_ino for folder in folders} == stamps
    shutil.rmtree(lora_dir)
    export(checkpoint, base, "base-ref", *folders)
    assert os.stat(pipeline).st_ino == stamps[pipeline]
    assert os.path.exists(os.path.join(lora_dir, "pytorch_lora_weights.safetensors"))


def _adapter_in_loras_is_the_merged_pipeline(base: str, exported: str, lora: str) -> None:
    """The exported adapter as a sweep's `loras` on the base model: the merged pipeline's
    image within 2/255 (easel's engine on both, same seed)."""
    import numpy as np

    from easel.data.batching import BatchSettings, ImageRequest
    from easel.data.loras import adapter_ref
    from easel.models.engine.generation import generate
    from easel.models.engine.loading import load_model

    adapter = adapter_ref(lora, 1.0)
    settings = BatchSettings(task="text2img", scheduler=None, guidance_scale=5.0,
                             num_inference_steps=2, width=16, height=16)  # fmt: skip
    request = [ImageRequest(prompt="a photo of sks shape", negative_prompt=None, seed=3)]
    (merged,) = generate(load_model(exported, "cpu"), settings, request)
    base_model = load_model(base, "cpu")
    (applied,) = generate(base_model, replace(settings, loras=(adapter,)), request)
    (plain,) = generate(base_model, settings, request)
    difference = np.abs(np.asarray(merged, np.int16) - np.asarray(applied, np.int16)).max()
    assert difference <= 2
    assert np.abs(np.asarray(plain, np.int16) - np.asarray(applied, np.int16)).max() > difference


def test_compiled_unet_keeps_parameter_names(workspace):
    """`compile_unet` compiles in place: checkpoints and exports see the same names."""
    from easel.models.dreambooth.module import DreamBoothModule

    plain = DreamBoothModule(workspace["model"])
    compiled = DreamBoothModule(workspace["model"], runtime=Runtime(compile_unet="full"))
    assert compiled.unet._compiled_call_impl is not None
    assert plain.unet._compiled_call_impl is None
    regional = DreamBoothModule(workspace["model"], runtime=Runtime(compile_unet="regional"))
    blocks = [m for m in regional.unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert regional.unet._compiled_call_impl is None
    assert blocks and all(block._compiled_call_impl is not None for block in blocks)
    for module in (compiled, regional):
        assert list(module.state_dict()) == list(plain.state_dict())
        assert not any("_orig_mod" in name for name in module.state_dict())


def test_fused_optimizer_is_clipped_on_true_gradients_under_fp16_scaling(workspace):
    """Under 16-mixed a fused AdamW unscales inside its step, so Lightning's precision plugin
    leaves the unscaling to it; the module must unscale before clipping, and the step must
    then not unscale again. Checked against the plain recipe: clip the true gradients, then
    take an unfused AdamW step."""
    from types import SimpleNamespace

    from easel.models.dreambooth.module import DreamBoothModule

    true_grads = [torch.randn(64, 64, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    scale = 2.0**16

    def step(fused: bool, module=None) -> list[torch.Tensor]:
        params = [torch.nn.Parameter(torch.ones(64, 64)) for _ in true_grads]
        optimizer = torch.optim.AdamW(params, lr=0.1, fused=fused)
        if module is None:  # the reference
            for p, g in zip(params, true_grads, strict=True):
                p.grad = g.clone()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            return params
        scaler = torch.amp.GradScaler("cpu", init_scale=scale)
        scaler.scale(torch.ones(()))  # the scaler starts with the first scaled loss
        module.trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler))
        for p, g in zip(params, true_grads, strict=True):
            p.grad = g * scale  # what backward leaves under the scaler
        module.configure_gradient_clipping(optimizer, gradient_clip_val=1.0)
        scaler.step(optimizer)
        return params

    module = DreamBoothModule(workspace["model"])
    for got, want in zip(step(True, module), step(False), strict=True):
        assert torch.allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "variant", [{}, {"method": "lora", "train_text_encoder": True, "prior_preservation": False}]
)
def test_gradient_checkpointing_trains_the_same_weights(tmp_path, workspace, variant):
    """Recomputing activations in the backward changes memory, not the result: on CPU the
    trained weights equal those of a run that kept its activations."""
    weights = {}
    for checkpointing in (False, True):
        output = str(tmp_path / f"checkpointing-{checkpointing}")
        settings = {"train_text_encoder": True, **variant, "max_steps": 2}
        final = _train(workspace, output, gradient_checkpointing=checkpointing, **settings)
        weights[checkpointing] = torch.load(final, weights_only=True)["state_dict"]
    assert weights[True].keys() == weights[False].keys()
    assert any("text_encoder" in key for key in weights[True])  # both networks trained
    for key, value in weights[True].items():
        assert torch.allclose(value, weights[False][key], rtol=0, atol=1e-6), key


def test_gradient_checkpointing_recomputes_the_unet_blocks(workspace):
    from easel.models.dreambooth.module import DreamBoothModule

    def resnet_runs(checkpointing: bool) -> int:
        unet = DreamBoothModule(
            workspace["model"], runtime=Runtime(gradient_checkpointing=checkpointing)
        ).unet
        runs = []  # a pre-hook: a recomputation stops once it has what the backward needs
        unet.down_blocks[0].resnets[0].register_forward_pre_hook(lambda *_: runs.append(1))
        size, width = unet.config.sample_size, unet.config.cross_attention_dim
        sample = torch.randn(1, unet.config.in_channels, size, size)
        unet(sample, 10, encoder_hidden_states=torch.randn(1, 3, width)).sample.mean().backward()
        return len(runs)

    assert (resnet_runs(False), resnet_runs(True)) == (1, 2)  # again in the backward pass


def test_a_step_s_losses_reach_the_loggers_before_its_checkpoint_is_written(workspace, tmp_path):
    """Lightning logs a step's metrics after the checkpoint callback has saved it: a kill in
    between lost the point for good (the resume starts after it). `StepMetrics` hands them
    over first."""
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import Logger

    class Recorded(Logger):
        name, version = "recorded", 0
        steps: list[int] = []

        def log_metrics(self, metrics, step=None):
            if "train/loss" in metrics:
                self.steps.append(step)

        def log_hyperparams(self, params):
            pass

    logger = Recorded()
    at_save = []

    class AtSave(pl.Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            at_save.append((trainer.global_step, list(logger.steps)))

    config = DreamBoothConfig.model_validate(tiny_config(
        workspace, str(tmp_path), max_steps=4, checkpoint_every_n_steps=2, gradient_accumulation=2
    ))  # fmt: skip
    images = list_images(config.subject.instance_data)
    train(config, config.model, images, list_images(config.prior_preservation.class_data),
          str(tmp_path / "checkpoints"), logger=logger,
          callbacks=[AtSave()], enable_progress_bar=False)  # fmt: skip
    assert logger.steps == [0, 1, 2, 3]  # one point per optimizer step, not per micro-batch
    for step, logged in at_save:
        assert logged == list(range(step)), (step, logged)


def test_identifier_mode_trains_only_the_identifier_s_embeddings(tmp_path, workspace):
    from transformers import CLIPTextModel, CLIPTokenizer

    base = CLIPTextModel.from_pretrained(workspace["model"], subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(workspace["model"], subfolder="tokenizer")
    final = _train(workspace, str(tmp_path / "out"), train_text_encoder="identifier",
                   text_encoder_learning_rate=1e-1, max_steps=2)  # fmt: skip
    state = torch.load(final, weights_only=True)["state_dict"]
    prefix = "text_encoder."
    trained = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    changed = {k for k, v in base.state_dict().items() if not torch.equal(v, trained[k])}
    assert len(changed) == 1 and next(iter(changed)).endswith("token_embedding.weight")
    name = next(iter(changed))
    rows = (trained[name] != base.state_dict()[name]).any(dim=1).nonzero().flatten().tolist()
    assert rows == sorted(set(tokenizer("sks", add_special_tokens=False).input_ids))


def test_caption_files_give_each_instance_image_its_prompt(tmp_path):
    from easel.data.dreambooth import read_captions

    folder = tmp_path / "instance"
    write_images(str(folder), 3, seed=0)
    (folder / "01.txt").write_text("a sks shape\n on a red background ")
    uris = list_images(str(folder))
    assert read_captions(uris, "a sks shape") == [
        "a sks shape", "a sks shape on a red background", "a sks shape"
    ]  # fmt: skip


def test_a_caption_without_the_identifier_is_refused_before_any_work(tmp_path, workspace):
    from easel.errors import InvalidInput
    from easel.tasks.dreambooth import check_inputs

    folder = tmp_path / "instance"
    write_images(str(folder), 3, seed=0)
    (folder / "02.txt").write_text("a shape on a red background")
    values = tiny_config({**workspace, "instance_data": str(folder)}, str(tmp_path / "out"))
    with pytest.raises(InvalidInput, match=r"02.txt.*identifier 'sks'"):
        check_inputs(DreamBoothConfig.model_validate(values), model_digest="d")


def test_micro_batches_carry_each_instance_image_s_own_conditioning():
    conditions = torch.arange(3.0).view(3, 1, 1).expand(3, 2, 2)  # image i: all i
    instance = LatentCache(torch.arange(3.0).view(3, 1, 1, 1).expand(3, 4, 2, 2), conditions)
    batch = MicroBatches(instance, None, batch_size=3, num_train_timesteps=10, seed=0,
                         start=0, stop=1).batch(0)  # fmt: skip
    assert torch.equal(batch["latents"][:, 0, 0, 0], batch["condition"][:, 0, 0])


@pytest.mark.parametrize("method", ["full", "lora"])
def test_differential_output_preservation_targets_the_base_model(tmp_path, workspace, method):
    from easel.models.dreambooth.training import build_module

    settings = {"method": method, "prior_preservation_method": "differential_output"}
    config = DreamBoothConfig.model_validate(tiny_config(workspace, str(tmp_path), **settings))
    module = build_module(config, config.model)
    unet = module.unet.config
    noisy = torch.randn(2, unet.in_channels, unet.sample_size, unet.sample_size)
    condition = module.encode_prompts(["a photo of shape"], "cpu").expand(2, -1, -1)
    timesteps = torch.tensor([10, 500])
    # on the base weights (LoRA: adapters that start at zero) the prior loss is exactly zero
    assert module._differential_output_loss(noisy, timesteps, condition).item() == 0.0
    final = _train(workspace, str(tmp_path / "out"), max_steps=2, **settings)
    state = torch.load(final, weights_only=True)["state_dict"]
    assert state and all(torch.isfinite(v).all() for v in state.values())
    assert not any("base_unet" in k for k in state)  # the frozen base is not checkpointed


def test_a_fresh_run_says_nothing_that_is_not_a_problem(tmp_path, workspace, caplog, recwarn):
    """Lightning's notes on a fresh run (a checkpoint folder that exists, the final save's
    `weights_only`) are neither warnings nor log lines; only a real problem may warn."""
    caplog.set_level("INFO")
    _train(workspace, str(tmp_path / "out"), max_steps=2)
    said = [record.getMessage() for record in caplog.records]
    said += [str(warning.message) for warning in recwarn]
    assert not [s for s in said if "weights_only" in s or "not empty" in s], said
    assert not [str(w.message) for w in recwarn if issubclass(w.category, UserWarning)]
