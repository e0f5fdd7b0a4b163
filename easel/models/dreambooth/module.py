"""The DreamBooth LightningModule: the math of one training step, nothing else.

Loss per example is the MSE between the UNet's prediction and its target (the noise for
`epsilon` schedulers, the velocity for `v_prediction`), optionally min-SNR weighted. The
batch holds instance examples then class examples; the loss is
`instance_loss + prior_loss_weight * prior_loss`. With differential output preservation
there are no class examples: the prior loss is the MSE, on the instance examples' noisy
latents, between the prediction for their prompt without the identifier and the base
model's prediction for the same (the frozen base UNet; with LoRA, the adapters off).

The VAE is always frozen and is used once, by the DataModule, to cache latents; so is the
text encoder when `train.text_encoder` is off. Frozen networks are kept outside the module's
registered children: they are not in `state_dict`, checkpoints or the optimizer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from easel.models.dreambooth.config import PriorPreservation, Runtime, Train
from easel.models.dreambooth.flat_keys import dotted_snapshot, nested

LORA_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
MAX_GRAD_NORM = 1.0
FUSED_ADAMW_DEVICES = ("cpu", "cuda")  # where torch has the single-kernel AdamW


@dataclass
class _FrozenEncoders:
    """Held by reference so torch does not register them as children."""

    vae: Any
    text_encoder: Any
    base_unet: Any = None  # differential output preservation, full fine-tuning: the base UNet


def lora_config(rank: int, targets: list[str]):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=targets)


def train_token_embeddings(text_encoder, token_ids: list[int]) -> None:
    """Make the rows `token_ids` of the text encoder's token embeddings trainable and no
    other (textual inversion's update: the gradient of every other row is zeroed)."""
    weight = text_encoder.get_input_embeddings().weight  # (vocab, D)
    mask = torch.zeros(weight.shape[0], 1)
    mask[token_ids] = 1.0
    weight.requires_grad_(True)
    weight.register_hook(lambda grad: grad * mask.to(grad.device, grad.dtype))


class DreamBoothModule(pl.LightningModule):
    def __init__(
        self,
        model_dir: str,
        train: Train | None = None,  # None: the defaults
        prior_preservation: PriorPreservation | None = None,  # None: none
        runtime: Runtime | None = None,  # None: the defaults
        identifier: str | None = None,  # `subject.identifier`: for `train.text_encoder` identifier
        variant: str | None = None,  # the weight files' variant in `model_dir` (`fp16`)
    ):
        super().__init__()
        train, runtime = train or Train(), runtime or Runtime()
        prior_preservation = prior_preservation or PriorPreservation(enabled=False)
        self.settings, self.prior, self.runtime = train, prior_preservation, runtime
        # in checkpoints, not in MLflow: the training run's parameters are the config's,
        # logged once by the task (a resume may honour a changed `train.max_steps`)
        self.save_hyperparameters({
            "model_dir": model_dir, "identifier": identifier, "train": train.model_dump(),
            "prior_preservation": prior_preservation.model_dump(), "runtime": runtime.model_dump(),
        }, logger=False)  # fmt: skip
        method, text_encoder_mode = train.method, train.text_encoder
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        # float32 whatever the files hold (transformers would keep an fp16 variant's dtype)
        load = {"use_safetensors": True, "variant": variant, "dtype": torch.float32}
        self.unet = UNet2DConditionModel.from_pretrained(
            model_dir, subfolder="unet", **load
        ).train()
        self.tokenizer = CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder", **load)
        vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae", **load)
        vae.requires_grad_(False).eval()
        scheduler_config = DDPMScheduler.load_config(model_dir, subfolder="scheduler")
        self.noise_scheduler = DDPMScheduler.from_config(scheduler_config)

        if method == "lora":
            self.unet.requires_grad_(False)
            self.unet.add_adapter(lora_config(train.lora_rank, LORA_UNET_TARGETS))
            self.strict_loading = False  # checkpoints hold only the adapter weights
        if text_encoder_mode == "identifier":
            self.text_encoder = text_encoder.train()
            text_encoder.requires_grad_(False)
            train_token_embeddings(text_encoder, self.identifier_token_ids(identifier))
        elif text_encoder_mode == "all":
            self.text_encoder = text_encoder.train()
            if method == "lora":
                from peft import (
                    inject_adapter_in_model,  # transformers' add_adapter wants peft>=0.22
                )

                text_encoder.requires_grad_(False)
                inject_adapter_in_model(
                    lora_config(train.lora_rank, LORA_TEXT_TARGETS), text_encoder
                )
        else:
            text_encoder.requires_grad_(False).eval()
        if runtime.gradient_checkpointing:  # activations recomputed in the backward: less memory
            self.unet.enable_gradient_checkpointing()
            if self.text_encoder_trains:
                text_encoder.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
        if runtime.compile_unet == "regional":  # the repeated blocks, forward and backward
            self.unet.compile_repeated_blocks()
        elif runtime.compile_unet == "full":  # in place: names, so checkpoints, unchanged
            self.unet.compile()
        self.step_metrics: dict = {}  # name -> (sum, count) over this step's micro-batches
        base_unet = None
        if prior_preservation.differential_output and method == "full":  # LoRA: adapters off
            base_unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", **load)
            base_unet.requires_grad_(False).eval()
        self._frozen = _FrozenEncoders(
            vae=vae, text_encoder=None if self.text_encoder_trains else text_encoder,
            base_unet=base_unet,
        )

    @classmethod
    def from_hyperparameters(
        cls, hparams: dict, model_dir: str, variant: str | None = None
    ) -> DreamBoothModule:
        """The module a checkpoint's `hyper_parameters` describe, on `model_dir` (its weight
        files' `variant`; also the flat arguments of checkpoints made before the config's
        groups)."""
        groups = nested(dotted_snapshot(hparams))
        prior = groups.get("prior_preservation", {})
        if groups.get("differential_output"):  # a flat module argument once
            prior = {**prior, "enabled": True, "method": "differential_output"}
        return cls(
            model_dir,
            Train(**groups.get("train", {})),
            PriorPreservation(**prior),
            Runtime(**groups.get("runtime", {})),
            groups.get("subject", {}).get("identifier"),
            variant,
        )

    @property
    def text_encoder_trains(self) -> bool:
        """Whether the text encoder is in the module (`train.text_encoder` all or identifier)."""
        return self.settings.text_encoder != "off"

    def identifier_token_ids(self, identifier: str | None) -> list[int]:
        """The tokens of `identifier` as a word of a prompt ("sks": `s`, `k`, `s</w>`)."""
        assert identifier, "training the identifier's embeddings needs the identifier"
        return self.tokenizer(identifier, add_special_tokens=False).input_ids

    # ---- encoders, called once by the DataModule ---------------------------------------
    @property
    def num_train_timesteps(self) -> int:
        return self.noise_scheduler.config.num_train_timesteps

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, device) -> torch.Tensor:
        """Latent posterior means of (N, 3, H, W) pixels in [-1, 1], in the UNet's scale.

        The mean, not a sample: it is what a UNet trained on deterministic latents saw, and a
        VAE whose posterior variance stayed large (tiny-shapes': std about 1 against means
        about 2) would otherwise feed the UNet noise it never learned from.
        """
        vae = self._frozen.vae.to(device)
        mean = vae.encode(pixels.to(device, vae.dtype)).latent_dist.mean
        scale, shift = vae.config.scaling_factor, vae.config.shift_factor or 0.0
        latents = ((mean - shift) * scale).float().cpu()
        vae.to("cpu")  # off the accelerator before training starts
        return latents

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], device) -> torch.Tensor:
        """Token ids (1, L) when the text encoder trains, else its embeddings (1, L, D)."""
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
            max_length=self.tokenizer.model_max_length,
        ).input_ids
        if self.text_encoder_trains:
            return ids
        text_encoder = self._frozen.text_encoder.to(device)
        embeddings = text_encoder(ids.to(device))[0].float().cpu()
        text_encoder.to("cpu")
        return embeddings

    def release_frozen_encoders(self) -> None:
        """Drop the VAE (and frozen text encoder) once the caches exist: less memory."""
        self._frozen = _FrozenEncoders(None, None, self._frozen.base_unet)

    @torch.no_grad()
    def base_prediction(self, noisy, timesteps, condition) -> torch.Tensor:
        """The base model's prediction: the frozen base UNet, or this one with its LoRA
        adapters switched off."""
        if self._frozen.base_unet is None:
            self.unet.disable_adapters()
            try:
                return self.unet(noisy, timesteps, encoder_hidden_states=condition).sample
            finally:
                self.unet.enable_adapters()
        base = self._frozen.base_unet.to(noisy.device)
        return base(noisy, timesteps, encoder_hidden_states=condition).sample

    # ---- training -----------------------------------------------------------------------
    def _min_snr_weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        alphas_cumprod = self.noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
        snr = alphas_cumprod / (1 - alphas_cumprod)
        clipped = snr.clamp(max=self.settings.snr_gamma)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            return clipped / (snr + 1)
        return clipped / snr

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        latents, timesteps = batch["latents"], batch["timesteps"]  # (B, 4, h, w), (B,)
        noise = batch["noise"] + self.settings.offset_noise * batch["offset"]
        condition = batch["condition"]
        if self.text_encoder_trains:
            condition = self.text_encoder(condition)[0]  # ids (B, L) -> (B, L, D)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = self.unet(noisy, timesteps, encoder_hidden_states=condition).sample
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        per_example = self._per_example_loss(prediction, target, timesteps)

        n = batch["num_instance"]  # a Python int: slicing, unlike a mask, needs no device sync
        instance_loss = per_example[:n].mean()
        loss = instance_loss
        self._record("train/instance_loss", instance_loss)
        if n < per_example.shape[0]:
            prior_loss = per_example[n:].mean()
        elif "class_condition" in batch:  # differential output preservation
            prior_loss = self._differential_output_loss(noisy, timesteps, batch["class_condition"])
        else:
            prior_loss = None
        if prior_loss is not None:
            loss = loss + self.prior.loss_weight * prior_loss
            self._record("train/prior_loss", prior_loss)
        self._record("train/loss", loss)
        self.log("train/loss", loss, prog_bar=True, logger=False)  # the bar; loggers: below
        return loss

    def _per_example_loss(self, prediction, target, timesteps) -> torch.Tensor:
        """(B,) MSE per example, min-SNR weighted when `snr_gamma` is set."""
        per_example = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(
            dim=(1, 2, 3)
        )
        if self.settings.snr_gamma is not None:
            per_example = per_example * self._min_snr_weights(timesteps)
        return per_example

    def _differential_output_loss(self, noisy, timesteps, class_condition) -> torch.Tensor:
        """The prediction for the class prompt (the prompt without the identifier) on the
        instance examples' noisy latents, against the base model's own for the same input."""
        if self.text_encoder_trains:  # identifier: the class prompt's words are
            class_condition = self.text_encoder(class_condition)[0]  # the base's
        target = self.base_prediction(noisy, timesteps, class_condition)
        prediction = self.unet(noisy, timesteps, encoder_hidden_states=class_condition).sample
        return self._per_example_loss(prediction, target, timesteps).mean()

    def _record(self, name: str, value: torch.Tensor) -> None:
        """Sum a metric over the micro-batches of this optimizer step (on the device)."""
        total, count = self.step_metrics.get(name, (0.0, 0))
        self.step_metrics[name] = (total + value.detach(), count + 1)

    def pop_step_metrics(self) -> dict[str, float]:
        """The mean of each metric over the last step's micro-batches (one copy to the host
        for all of them); cleared."""
        if not self.step_metrics:
            return {}
        names = list(self.step_metrics)
        means = torch.stack([total / count for total, count in self.step_metrics.values()])
        self.step_metrics = {}
        return dict(zip(names, means.float().tolist(), strict=True))

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Free the gradients now: Lightning zeroes them only after the next forward, so they
        # would otherwise sit next to that forward's activations (a full copy of the weights).
        optimizer.zero_grad(set_to_none=True)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Clip by total norm here rather than in Lightning's precision plugin, which refuses
        optimizers that unscale fp16 gradients inside their step (the fused AdamW). Where the
        plugin left the unscaling to the optimizer, do it first: clipping needs true norms,
        and the grad scaler then steps without scaling again."""
        if not gradient_clip_val:
            return
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
            scaler.unscale_(optimizer)
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(parameters, gradient_clip_val)

    def _parameter_groups(self) -> list[dict]:
        """One group; or the UNet's and the text encoder's, when that has its own learning
        rate or trains only the identifier's embeddings (no weight decay there: it would
        shrink the rows left untrained)."""
        hp = self.settings
        if hp.text_encoder != "identifier" and not (
            hp.text_encoder == "all" and hp.text_encoder_learning_rate
        ):  # one group: what checkpoints made before the text encoder's own rate hold
            return [{"params": [p for p in self.parameters() if p.requires_grad]}]
        trainable = lambda network: [p for p in network.parameters() if p.requires_grad]
        text = {"params": trainable(self.text_encoder),
                "lr": hp.text_encoder_learning_rate or hp.learning_rate}  # fmt: skip
        if hp.text_encoder == "identifier":
            text["weight_decay"] = 0.0
        return [{"params": trainable(self.unet)}, text]

    def configure_optimizers(self):
        from diffusers.optimization import get_scheduler

        groups = self._parameter_groups()
        # The fused kernel: one launch for all parameters instead of a dozen per group
        # (SD1.5 full fine-tuning on an H100: 11.7 ms a step against 29.7 ms).
        fused = all(p.device.type in FUSED_ADAMW_DEVICES for g in groups for p in g["params"])
        optimizer = torch.optim.AdamW(groups, lr=self.settings.learning_rate, fused=fused)
        schedule = get_scheduler(
            self.settings.lr_scheduler,
            optimizer,
            num_warmup_steps=self.settings.lr_warmup_steps,
            num_training_steps=self.settings.max_steps,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ---- checkpoints: trainable weights only, plus the RNG streams -----------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.settings.method == "lora":
            checkpoint["state_dict"] = {
                k: v for k, v in checkpoint["state_dict"].items() if "lora_" in k
            }
        name, keys, position, has_gauss, cached_gauss = np.random.get_state()
        # The data position is a function of the step (see easel.data.dreambooth); recorded
        # for whoever reads the checkpoint, not needed to resume.
        checkpoint["data_position"] = {
            "micro_batch": self.trainer.global_step * self.trainer.accumulate_grad_batches
        }
        checkpoint["rng_streams"] = {  # plain types and tensors: loadable with weights_only
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": [
                name,
                torch.from_numpy(keys.astype(np.int64)),
                position,
                has_gauss,
                cached_gauss,
            ],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        streams = checkpoint.get("rng_streams")
        if streams is None:
            return
        torch.set_rng_state(streams["torch"])
        name, keys, position, has_gauss, cached_gauss = streams["numpy"]
        np.random.set_state(
            (name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gauss)
        )
        random.setstate(streams["python"])
        if streams["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(streams["cuda"])

    def trained_networks(self) -> dict[str, torch.nn.Module]:
        """The networks that were trained, by pipeline component name."""
        networks = {"unet": self.unet}
        if self.text_encoder_trains:
            networks["text_encoder"] = self.text_encoder
        return networks
