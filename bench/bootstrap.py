"""Train tiny-shapes and the judge with the default bootstrap config, time it, evaluate it.

The same training functions, config and order as `easel bootstrap`, without Prefect and
MLflow, so it runs where only torch, Lightning, transformers and diffusers are installed
(the GPU workers). Usage:

    python -m bench.bootstrap OUT_DIR [--seed N] [--smoke] [--no-eval]

Writes OUT_DIR/tiny-shapes (diffusers format), OUT_DIR/judge, OUT_DIR/report.json
(training wall times and the eval metrics) and OUT_DIR/samples.png; the wall times and
metrics as a bench result too. `--smoke`: a few steps of everything.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS

import torch

from bench import harness
from easel.data import shapes
from easel.models.lightning import last_complete_checkpoint
from easel.models.shapes import evaluation, recipe, tiny_shapes
from easel.models.shapes import training as tiny_shapes_training
from easel.models.shapes.judge import Judge, JudgeTraining, train_judge

SMOKE = {"steps": 3, "batch_size": 8, "learning_rate": 1e-3, "warmup_steps": 1}


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-eval", action="store_true")
    parser.add_argument(
        "--only", choices=("all", "model", "judge", "decoder", "diffusion"), default="all"
    )
    parser.add_argument("--max-time", help="stop diffusion training after DD:HH:MM:SS")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out, work = Path(args.out), Path(args.out) / "work"
    config = tiny_shapes_training.TinyShapesTraining(seed=args.seed)
    judge_config = JudgeTraining(seed=args.seed)
    settings = evaluation.EvalSettings()
    if args.smoke:
        schedule = recipe.TrainingSchedule(**SMOKE)
        config = replace(
            config,
            vae=schedule,
            decoder=schedule,
            diffusion=schedule,
            vae_images=64,
            diffusion_images=64,
        )
        judge_config = replace(judge_config, images=64, steps=3, batch_size=8)
        settings = replace(settings, num_inference_steps=2, adherence_images=4, guidance_images=2,
                           negative_images=2, diversity_prompts=2, diversity_seeds=2,
                           judge_images=20)  # fmt: skip
    report: dict = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "seed": args.seed,
    }
    started = time.time()
    if args.only in ("all", "model"):
        vae = tiny_shapes_training.train_vae(config, str(work / "vae"), progress=False)
        report["vae_s"] = time.time() - started
        module = tiny_shapes_training.train_diffusion(
            config, vae, str(work / "diffusion"), progress=False
        )
        report["diffusion_s"] = time.time() - started - report["vae_s"]
        pipeline = tiny_shapes.assemble_pipeline(
            module.tokenizer, module.text_encoder, vae, module.unet
        )
        pipeline.save_pretrained(out / "tiny-shapes", safe_serialization=True)
    if args.only == "diffusion":  # stage 2 on its own, on the VAE of a finished stage 1
        stage1 = tiny_shapes_training.VaeModule.load_from_checkpoint(
            last_complete_checkpoint(str(work / "vae")), map_location="cpu"
        )
        specs = shapes.sample_specs(config.vae_images, config.seed, "train")[:512]
        vae = stage1.vae.eval()
        vae.register_to_config(
            scaling_factor=tiny_shapes_training.latent_scaling_factor(
                vae, recipe.images_to_tensor(shapes.render_array(specs))
            )
        )
        module = tiny_shapes_training.train_diffusion(
            config, vae, str(work / "diffusion-only"), progress=False, max_time=args.max_time
        )
        report["diffusion_s"] = time.time() - started
        pipeline = tiny_shapes.assemble_pipeline(
            module.tokenizer, module.text_encoder, vae, module.unet
        )
        pipeline.save_pretrained(out / "tiny-shapes", safe_serialization=True)
    if args.only in ("all", "decoder"):
        if args.only == "decoder":  # stage 1b on its own: the VAE of a finished stage 1
            stage1 = tiny_shapes_training.VaeModule.load_from_checkpoint(
                last_complete_checkpoint(str(work / "vae")), map_location="cpu"
            )
            images = recipe.images_to_tensor(
                tiny_shapes_training.shapes.render_array(
                    tiny_shapes_training.shapes.sample_specs(512, config.seed, "train")
                )
            )
            vae = stage1.vae.eval()
            vae.register_to_config(
                scaling_factor=tiny_shapes_training.latent_scaling_factor(vae, images)
            )
        decoder_started = time.time()
        refined = tiny_shapes_training.refine_decoder(
            config, vae, str(work / "decoder"), progress=False
        )
        refined.save_pretrained(out / "vae-refined", safe_serialization=True)
        report["decoder_s"] = time.time() - decoder_started
        if args.only == "all":
            pipeline.vae = refined
            pipeline.save_pretrained(out / "tiny-shapes", safe_serialization=True)
    if args.only in ("all", "judge"):
        judge_started = time.time()
        judge = train_judge(judge_config, str(work / "judge"), progress=False)
        judge.save(out / "judge")
        report["judge_s"] = time.time() - judge_started
    report["training_s"] = time.time() - started
    print(json.dumps(report), flush=True)
    if args.only != "all":
        (out / f"report_{args.only}.json").write_text(json.dumps(report, indent=2) + "\n")
        return
    if not args.no_eval:
        from easel.models.engine.loading import load_model

        loaded = load_model(str(out / "tiny-shapes"), dtype=torch.float32)
        context = evaluation.EvalContext(loaded, Judge.load(out / "judge"), settings)
        eval_started = time.time()
        results = evaluation.run_suites(context)
        report["eval_s"] = time.time() - eval_started
        report["metrics"] = {k: v for result in results.values() for k, v in result.metrics.items()}
        grid = evaluation.image_grid(
            [image for result in results.values() for image in result.images], columns=8
        )
        grid.save(out / "samples.png")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    results = harness.Results("bootstrap", args, report["device"])
    results.parameters["seed"] = args.seed
    results.add_figures({k: v for k, v in report.items() if k not in ("metrics", "seed")})
    results.add_figures(report.get("metrics", {}), prefix="eval: ")
    results.write()


if __name__ == "__main__":
    main()
