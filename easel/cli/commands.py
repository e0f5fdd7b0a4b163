"""The `easel` command line's parsers: every command's arguments and help, and which
function runs it (`module:function`, imported only once the command is chosen). Nothing
heavy is imported here, so `easel --help` and `easel CMD --help` answer at once."""

from __future__ import annotations

from easel.data import limits
from easel.orchestration import recovery  # constants only: nothing heavy at import


def count_or_auto(text: str) -> int | str:
    """A number option that also takes `auto` (the sweep parameters check its range)."""
    return text if text == "auto" else int(text)


def _sweep(subparsers) -> None:
    parser = subparsers.add_parser("sweep", help="generate the images of a Parquet manifest")
    parser.add_argument("manifest", help="Parquet file, folder or glob (fsspec URI)")
    parser.add_argument("--out", required=True, help="output folder (fsspec URI)")
    parser.add_argument("--model", help="model for rows without a `model` (default tiny-shapes)")
    parser.add_argument("--config", help="YAML file of sweep parameters")
    parser.add_argument(
        "--batch-size", type=count_or_auto,
        help=f"images per pipeline call ({limits.MIN_BATCH}..{limits.MAX_BATCH}, or auto: the "
        f"largest the GPU's free memory holds; default {limits.BATCH_SIZE})",
    )  # fmt: skip
    parser.add_argument(
        "--shards", type=count_or_auto,
        help=f"flow runs to split the work into, run one after the other here, on the pool's "
        f"workers from a deployment (1..{limits.MAX_SHARDS}, or auto: from the pending images, "
        f"the pool's workers and a shard's measured fixed cost; default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--input-root",
        action="append",
        dest="input_roots",
        help="another folder init, mask and fusion images may come from (repeatable)",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        default=None,
        help="allow loading pickle (.bin/.ckpt) weights",
    )
    parser.set_defaults(run="easel.cli.sweep_command:check_then_sweep")


def _priors(subparsers) -> None:
    parser = subparsers.add_parser("priors", help="generate class-prior images (cached by content)")
    parser.add_argument("--class-prompt", required=True, help="the class to draw: 'a dog'")
    parser.add_argument("--num", type=int, required=True, help="number of images")
    parser.add_argument("--out", required=True, help="cache root (fsspec URI)")
    parser.add_argument("--model", help="model reference (default tiny-shapes)")
    parser.add_argument("--negative-prompt", help="what the images should not show")
    parser.add_argument("--config", help="YAML file of prior parameters")
    parser.set_defaults(run="easel.cli.priors:run_priors_command")


def _dreambooth(subparsers) -> None:
    parser = subparsers.add_parser("dreambooth", help="fine-tune a model on a subject (DreamBooth)")
    parser.add_argument("--config", required=True, help="YAML config (any fsspec URI)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a config key, dotted in its group (train.max_steps=50); the value is "
        "read as YAML (repeatable)",
    )
    parser.set_defaults(run="easel.cli.dreambooth:run_dreambooth_command")


def _quickstart(subparsers) -> None:
    parser = subparsers.add_parser("quickstart", help="run the main job on the embedded model")
    parser.add_argument("--out", default="easel-out", help="output folder (default easel-out)")
    parser.add_argument(
        "--skip-dreambooth", action="store_true", help="only the sweep (no fine-tuning stage)"
    )
    parser.set_defaults(run="easel.cli.quickstart:run_quickstart")


def _eval(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="score a shapes-world model with the judge")
    parser.add_argument("--model", help="model reference (default tiny-shapes)")
    parser.add_argument("--judge", help="judge folder (default: the committed judge)")
    parser.add_argument("--out", help="folder for report.json and grids (default easel-out/eval)")
    parser.add_argument("--config", help="YAML file of eval parameters")
    parser.add_argument(
        "--suite",
        action="append",
        dest="suites",
        help="a suite to run (repeatable; default: the DreamBooth suites with --instance-data, "
        "else the model suites)",
    )
    parser.add_argument("--guidance-scale", type=float)
    parser.add_argument("--steps", type=int, dest="num_inference_steps")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--quick", action="store_true", default=None, help="small samples (a smoke check)"
    )
    subject = parser.add_argument_group(
        "DreamBooth suites", "score a fine-tuned --model against --base-model on its subject"
    )
    subject.add_argument("--base-model", help="the model --model was fine-tuned from")
    subject.add_argument("--instance-data", help="folder of the subject's instance images")
    subject.add_argument("--instance-prompt", help="prompt with the identifier: 'a sks circle'")
    subject.add_argument("--class-prompt", help="prompt of the class: 'a circle'")
    subject.add_argument(
        "--subject-images", type=int, help="generations per prompt and model (default 48)"
    )
    parser.set_defaults(run="easel.cli.evaluate:run_eval_command")


def _bootstrap(subparsers) -> None:
    parser = subparsers.add_parser(
        "bootstrap", help="retrain the embedded model tiny-shapes and the judge"
    )
    parser.add_argument(
        "--model", choices=["tiny-shapes", "tiny-shapes-k22", "tiny-shapes-k22-inpaint"],
        default="tiny-shapes", help="which embedded model to retrain (tiny-shapes-k22 grows "
        "from tiny-shapes, tiny-shapes-k22-inpaint from tiny-shapes-k22)",
    )  # fmt: skip
    parser.add_argument("--config", help="YAML file of bootstrap parameters")
    parser.add_argument(
        "--out", help="folder receiving tiny-shapes/ and judge/ (default: the package's weights)"
    )
    parser.add_argument("--work-dir", help="checkpoint folder; rerunning resumes from it")
    parser.add_argument("--seed", type=int)
    parser.set_defaults(run="easel.cli.bootstrap:run_bootstrap_command")


def _automations(subparsers) -> None:
    parser = subparsers.add_parser(
        "automations",
        help="create the Prefect automations that crash silent runs and retry crashed ones",
    )
    parser.add_argument(
        "--heartbeat-frequency", type=int, default=recovery.HEARTBEAT_FREQUENCY,
        help="seconds between the runs' heartbeats: their PREFECT_FLOWS_HEARTBEAT_FREQUENCY "
        f"({recovery.MIN_HEARTBEAT_FREQUENCY} or more; default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--heartbeat-window", type=int,
        help="seconds of silence after which a run is crashed (default "
        f"{recovery.HEARTBEAT_WINDOWS} x the frequency)",
    )  # fmt: skip
    parser.add_argument(
        "--crash-retries", type=int, default=recovery.CRASH_RETRIES,
        help="times one crashed run is scheduled again (0: never; default %(default)s)",
    )  # fmt: skip
    parser.set_defaults(run="easel.cli.automations:run_automations_command", tracked=False)


def _convert(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert a model as its authors ship it into a folder easel loads"
    )
    parser.add_argument(
        "format", choices=["kandinsky-2.0"],
        help="kandinsky-2.0: the hub's ai-forever/Kandinsky_2.0 files (Kandinsky-2-0.pt, "
        "vae.ckpt, text_encoder1/, text_encoder2/)",
    )  # fmt: skip
    parser.add_argument("source", help="the folder holding them (fsspec URI)")
    parser.add_argument("destination", help="the diffusers folder to write (fsspec URI)")
    parser.add_argument(
        "--inpainting", action="store_true",
        help="convert the inpainting UNet (Kandinsky-2-0-inpainting.pt) instead",
    )  # fmt: skip
    parser.add_argument(
        "--trust-pickle", action="store_true",
        help="allow reading the pickle (.pt/.ckpt/.bin) files, which is all of them",
    )  # fmt: skip
    parser.add_argument(
        "--attention-head-dim", type=int, default=64,
        help="channels per attention head, which the weights do not tell (the original "
        "config's num_head_channels: %(default)s)",
    )  # fmt: skip
    parser.set_defaults(run="easel.cli.convert:run_convert_command", tracked=False)


COMMANDS = {"sweep": _sweep, "priors": _priors, "dreambooth": _dreambooth,
            "quickstart": _quickstart, "eval": _eval, "bootstrap": _bootstrap,
            "automations": _automations, "convert": _convert}  # fmt: skip


def add_commands(subparsers) -> None:
    for add in COMMANDS.values():
        add(subparsers)
