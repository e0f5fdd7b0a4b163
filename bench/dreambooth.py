"""DreamBooth training throughput and peak memory: easel's Lightning module (latents and
prompt embeddings cached once, frozen encoders released) against a straightforward loop in
the style of diffusers' train_dreambooth.py (VAE encode + text encode every step).

Same model, images, batch (instance + class), precision, optimizer and LR. Each variant runs
in its own process so peak memory is its own.

    python -m bench.dreambooth --model tiny --resolution 32 --steps 60        # CPU
    python -m bench.dreambooth --model sd15 --resolution 512 --steps 40 \\
        --precision 16-mixed                                                 # GPU

`--model` is `tiny` or `sd15` (random weights with those shapes, built locally) or a
diffusers directory / easel model reference. A variant's step times are its repeats;
`--repeats N` runs each variant N times (processes) and keeps every run's steps.
`--smoke`: the tiny model, 32x32, 8 steps.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import tempfile
import time

import torch

from bench import harness

WARMUP_STEPS = 5
VARIANTS = ("baseline", "easel", "easel-compile", "easel-regional")
COMPILE = {"easel-compile": "full", "easel-regional": "regional"}  # compile_unet per variant


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class StepProfiler:
    """torch.profiler over steps [WARMUP_STEPS, WARMUP_STEPS + n) when `--profile n`; writes
    the op tables (by device time and by CPU time) to `<workdir>/profile-<variant>.txt`."""

    def __init__(self, args, workdir: str):
        self.steps, self.profiler = args.profile, None
        self.path = os.path.join(workdir, f"profile-{args.variant}.txt")

    def step(self, index: int) -> None:  # call before step `index` runs
        if not self.steps:
            return
        from torch.profiler import ProfilerActivity, profile

        if index == WARMUP_STEPS:
            activities = [ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(ProfilerActivity.CUDA)
            self.profiler = profile(activities=activities)
            self.profiler.__enter__()
        elif index == WARMUP_STEPS + self.steps and self.profiler is not None:
            self.profiler.__exit__(None, None, None)
            table = self.profiler.key_averages()
            device_sort = (
                "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
            )
            with open(self.path, "w") as f:
                f.write(f"{self.steps} steps\n")
                f.write(table.table(sort_by=device_sort, row_limit=30) + "\n")
                f.write(table.table(sort_by="cpu_time_total", row_limit=30) + "\n")
            self.profiler = None


def _config(args, workdir: str):
    from easel.models.dreambooth.config import DreamBoothConfig

    return DreamBoothConfig(
        model=args.model_dir,
        subject={"instance_data": os.path.join(workdir, "instance"),
                 "instance_prompt": "a photo of sks shape", "class_prompt": "a photo of shape"},
        prior_preservation={"class_data": os.path.join(workdir, "class")},
        train={"resolution": args.resolution, "batch_size": args.batch_size,
               "learning_rate": args.learning_rate, "max_steps": args.steps, "seed": 0,
               "method": args.method, "lora_rank": args.lora_rank},
        runtime={"precision": args.precision, "accelerator": "gpu" if args.device == "cuda"
                 else "cpu", "compile_unet": COMPILE.get(args.variant, "off"),
                 "gradient_checkpointing": args.gradient_checkpointing},
        checkpoints={"every_n_steps": 10**6, "keep_last_n": 1},
        output=os.path.join(workdir, "out"),
    )  # fmt: skip


def run_easel(args, workdir: str) -> dict:
    import pytorch_lightning as pl

    from easel.data.dreambooth import list_images
    from easel.models.dreambooth.training import train

    config = _config(args, workdir)
    times, losses, started = [], [], []
    profiler = StepProfiler(args, workdir)

    class Clock(pl.Callback):
        def on_train_start(self, trainer, module):
            _sync(args.device)
            started.append(time.perf_counter())

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            profiler.step(trainer.global_step)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            _sync(args.device)
            times.append(time.perf_counter())
            losses.append(float(outputs["loss"]))

    checkpoints = os.path.join(workdir, "ckpt-easel")
    shutil.rmtree(checkpoints, ignore_errors=True)  # a fresh run, not a resume
    train(
        config,
        config.model,
        list_images(config.subject.instance_data),
        list_images(config.prior_preservation.class_data),
        checkpoints,
        callbacks=[Clock()],
        enable_progress_bar=False,
    )
    shutil.rmtree(checkpoints, ignore_errors=True)
    return {"times": times, "losses": losses, "started": started[0]}


def run_baseline(args, workdir: str) -> dict:
    """One plain loop: every step encodes the images with the VAE and the prompts with the
    text encoder, as diffusers' train_dreambooth.py does (not its code)."""
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    from easel.data.dreambooth import list_images, load_pixels
    from easel.models.dreambooth.module import MAX_GRAD_NORM

    config, device = _config(args, workdir), args.device
    torch.manual_seed(0)
    mixed = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(config.runtime.precision)
    frozen_dtype = mixed or torch.float32
    unet = UNet2DConditionModel.from_pretrained(config.model, subfolder="unet").to(device).train()
    if config.train.method == "lora":  # the same adapter as easel's: rank, targets, init
        from easel.models.dreambooth.module import LORA_UNET_TARGETS, lora_config

        unet.requires_grad_(False)
        unet.add_adapter(lora_config(config.train.lora_rank, LORA_UNET_TARGETS))
    if config.runtime.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    vae = (
        AutoencoderKL.from_pretrained(config.model, subfolder="vae")
        .to(device, frozen_dtype)
        .requires_grad_(False)
    )
    text_encoder = CLIPTextModel.from_pretrained(config.model, subfolder="text_encoder").to(
        device, frozen_dtype
    )
    text_encoder.requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(config.model, subfolder="tokenizer")
    scheduler = DDPMScheduler.from_pretrained(config.model, subfolder="scheduler")
    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.train.learning_rate)
    steps = config.train.max_steps
    lr_schedule = get_scheduler(config.train.lr_scheduler, optimizer, num_training_steps=steps)
    scaler = torch.amp.GradScaler(device, enabled=config.runtime.precision == "16-mixed")

    side = config.train.resolution
    instance = load_pixels(list_images(config.subject.instance_data), side)
    classes = load_pixels(list_images(config.prior_preservation.class_data), side)
    ids = tokenizer(
        [config.subject.instance_prompt, config.subject.class_prompt],
        padding="max_length",
        truncation=True,
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    ).input_ids
    generator = torch.Generator().manual_seed(0)
    b = config.train.batch_size
    times, losses = [], []
    profiler = StepProfiler(args, workdir)
    started = time.perf_counter()
    for step in range(config.train.max_steps):
        profiler.step(step)
        pick_i = torch.randint(len(instance), (b,), generator=generator)
        pick_c = torch.randint(len(classes), (b,), generator=generator)
        pixels = torch.cat([instance[pick_i], classes[pick_c]]).to(device, frozen_dtype)
        prompt_ids = torch.cat([ids[:1].expand(b, -1), ids[1:].expand(b, -1)]).to(device)
        with torch.no_grad():
            # The posterior mean, as easel trains on (train_dreambooth.py samples; same cost).
            # On tiny-shapes the posterior std is about 1, so sampled latents would be
            # another objective and the two loss curves could not be compared.
            latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
            condition = text_encoder(prompt_ids)[0]
        latents = latents.float()
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (2 * b,), device=device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with torch.autocast(device, dtype=mixed, enabled=mixed is not None):
            prediction = unet(noisy, timesteps, encoder_hidden_states=condition).sample
        per_example = F.mse_loss(prediction.float(), noise.float(), reduction="none").mean(
            dim=(1, 2, 3)
        )
        prior_weight = config.prior_preservation.loss_weight
        loss = per_example[:b].mean() + prior_weight * per_example[b:].mean()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
        scaler.step(optimizer)
        scaler.update()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter())
        losses.append(float(loss))
    return {"times": times, "losses": losses, "started": started}


def _prepare(args, workdir: str) -> None:
    from PIL import Image

    from easel.models.testing.random_pipelines import build_random_sd

    if args.model in ("tiny", "sd15"):
        args.model_dir = os.path.join(workdir, f"model-{args.model}")
        if not os.path.exists(os.path.join(args.model_dir, "model_index.json")):
            build_random_sd(args.model_dir, size=args.model)
    elif os.path.isdir(args.model):
        args.model_dir = args.model
    else:
        from easel.models.engine.references import resolve_model_reference

        args.model_dir = resolve_model_reference(args.model).path
    g = torch.Generator().manual_seed(0)
    for folder, count in (("instance", 5), ("class", 20)):
        os.makedirs(os.path.join(workdir, folder), exist_ok=True)
        for i in range(count):
            pixels = (torch.rand(3, 1, 1, generator=g) * 255).expand(
                3, args.resolution, args.resolution
            )
            image = Image.fromarray(pixels.permute(1, 2, 0).to(torch.uint8).numpy())
            image.save(os.path.join(workdir, folder, f"{i:02d}.png"))


def _add(results: harness.Results, name: str, runs: list[dict]) -> None:
    """A variant's figures from its runs: every timed step, steps/s, warm-up, memory, loss."""
    steps, speeds, warmups, losses = [], [], [], []
    for run in runs:
        times = run["times"][WARMUP_STEPS:]
        steps += [1000 * (b - a) for a, b in itertools.pairwise(times)]
        speeds.append((len(times) - 1) / (times[-1] - times[0]))
        warmups.append(times[0] - run["started"])  # incl. any compile
        window = max(1, len(run["losses"]) // 4)
        losses.append(sum(run["losses"][-window:]) / window)
    results.add(f"{name}: step", "ms", steps)  # the median is robust to a busy neighbour
    results.add(f"{name}: steps_per_s", "/s", speeds)
    results.add(f"{name}: warm-up (first {WARMUP_STEPS} steps)", "s", warmups)
    results.add(f"{name}: peak memory", "MiB", [run["peak_memory_mb"] for run in runs])
    results.add(f"{name}: loss, last quarter of the steps", "loss", losses)


def options():
    parser = harness.parser(__doc__)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--method", choices=["full", "lora"], default="full")
    parser.add_argument("--lora-rank", type=int, default=4)
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="in both variants: less memory"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workdir", default=None)
    parser.add_argument(
        "--profile", type=int, default=0, help="profile this many steps after the warm-up"
    )
    parser.add_argument(
        "--variants",
        default="baseline,easel",
        help="comma-separated, in order: baseline, easel, easel-compile (torch.compile'd UNet), "
        "easel-regional (its repeated blocks compiled)",
    )
    parser.add_argument("--variant", choices=VARIANTS, help=harness.argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.model, args.resolution, args.steps = "tiny", 32, WARMUP_STEPS + 3
    if unknown := sorted(set(args.variants.split(",")) - set(VARIANTS)):
        parser.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    if args.steps < WARMUP_STEPS + 2:
        parser.error(f"--steps must be at least {WARMUP_STEPS + 2}, got {args.steps}")
    return args


def main() -> None:
    args = options()
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-dreambooth-")
    if args.variant:  # one measurement, in this process
        _prepare(args, workdir)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        result = (run_baseline if args.variant == "baseline" else run_easel)(args, workdir)
        result["peak_memory_mb"] = harness.peak_memory_mb(args.device)
        harness.report(result)
        return
    cuda = args.device == "cuda"
    results = harness.Results("dreambooth", args, torch.cuda.get_device_name() if cuda else "cpu")
    results.parameters.update(
        model=args.model, resolution=args.resolution, precision=args.precision,
        batch=f"{args.batch_size} instance + {args.batch_size} class", method=args.method,
        gradient_checkpointing=args.gradient_checkpointing, steps=args.steps,
        torch_threads=torch.get_num_threads(),
    )  # fmt: skip
    child = [a for a in sys.argv[1:] if a != "--smoke"]
    child += ["--model", args.model, "--resolution", str(args.resolution),
              "--steps", str(args.steps), "--workdir", workdir]  # fmt: skip
    for variant in args.variants.split(","):
        runs = [harness.isolated("bench.dreambooth", *child, "--variant", variant, label=variant)
                for _ in range(harness.repeats(args, 1))]  # fmt: skip
        _add(results, variant, runs)
    results.write()


if __name__ == "__main__":
    main()
