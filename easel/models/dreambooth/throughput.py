"""How fast a DreamBooth run steps, against what the device could do at best.

Logged once, at the end of training, at the last step:
- `startup_seconds`: from `fit` to the end of the first optimizer step (data set-up, latent
  caching, moving to the device, and compilation, which happens in the first step);
  `first_step_seconds`: that first step alone;
- `step_seconds` and `steps_per_s` over the steps after the first;
- `train_tflop_per_step`: counted work of a step: the UNet forward of every example of the
  step (FLOPs counted from its config, `easel.models.engine.flops`) times 3 for full
  fine-tuning (the backward computes gradients of activations and of weights, about twice
  the forward), times 2 for LoRA (frozen weights get no gradient); `achieved_tflops`;
- on a GPU whose figures are known (`flops.DEVICES`): `step_floor_seconds`, the step at the
  device's peak (the work at dense 16-bit or tf32 peak, plus AdamW's 28 bytes a trainable
  parameter in float32, read and written once, at memory bandwidth), and
  `model_flops_utilization`.
"""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch

from easel.models.engine import flops

ADAMW_BYTES_PER_PARAMETER = 28  # float32 param, grad, 2 moments read; param, 2 moments written


class Throughput(pl.Callback):
    def on_fit_start(self, trainer, pl_module) -> None:
        self.fit_started = time.perf_counter()
        self.first_started, self.first_step = None, None  # first step: start, (start, end)
        self.step, self.steps, self.examples, self.shape = trainer.global_step, 0, 0, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_started is None:
            self.first_started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.first_step is not None:
            self.examples += batch["latents"].shape[0]  # (B, 4, h, w)
        self.shape = (tuple(batch["latents"].shape[-2:]), batch["condition"].shape[1])
        if trainer.global_step == self.step:  # mid-accumulation
            return
        self.step = trainer.global_step
        if self.first_step is None:
            self.first_step = (self.first_started, time.perf_counter())
        else:
            self.steps += 1
            self.last_ended = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        if self.first_step is None:
            return
        metrics = self.metrics(trainer, pl_module)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def metrics(self, trainer, pl_module) -> dict[str, float]:
        started, ended = self.first_step
        metrics = {"startup_seconds": ended - self.fit_started,
                   "first_step_seconds": ended - started}  # fmt: skip
        if not self.steps:
            return metrics
        step = (self.last_ended - ended) / self.steps
        latent_side, context = self.shape
        forward = flops.denoiser_flops(pl_module.unet, latent_side, context)
        factor = 2 if pl_module.settings.method == "lora" else 3
        work = factor * forward * self.examples / self.steps
        metrics.update(
            step_seconds=step, steps_per_s=1 / step, train_tflop_per_step=work / 1e12,
            achieved_tflops=work / step / 1e12,
        )  # fmt: skip
        device = str(pl_module.device)
        half = any(p in str(trainer.precision) for p in ("16", "bf16"))
        peak = flops.peak_flops(device, torch.float16 if half else torch.float32)
        bandwidth = flops.memory_bandwidth(device)
        if peak and bandwidth:
            trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
            floor = work / peak + trainable * ADAMW_BYTES_PER_PARAMETER / bandwidth
            metrics.update(step_floor_seconds=floor, model_flops_utilization=work / step / peak)
        return metrics

