"""What logging a DreamBooth step's metrics to an MLflow tracking server costs the step:
Lightning's MLFlowLogger with blocking calls against `synchronous=False` (easel's).

    mlflow server --host 127.0.0.1 --port 5077 --backend-store-uri sqlite:////tmp/m.db &
    python -m bench.mlflow_logging --uri http://127.0.0.1:5077 [--repeats 3]

`--smoke`: 5 steps into a sqlite store in a temporary folder (no server).
"""

from __future__ import annotations

import tempfile
import time

from bench import harness

METRICS = {"train/loss": 0.1, "train/instance_loss": 0.2, "train/prior_loss": 0.3}


def log_steps(client, experiment_id: str, uri: str, steps: int, synchronous: bool) -> dict:
    """One run: ms per step's log call, the finalize's wait, the steps that arrived."""
    from pytorch_lightning.loggers import MLFlowLogger

    run_id = client.create_run(experiment_id).info.run_id
    logger = MLFlowLogger(tracking_uri=uri, run_id=run_id, synchronous=synchronous)
    logger.log_metrics({"warm_up": 1.0}, step=0)
    started = time.perf_counter()
    for step in range(1, steps + 1):
        logger.log_metrics(METRICS, step=step)
    per_step_ms = (time.perf_counter() - started) / steps * 1000
    finalize_s = harness.timed(lambda: logger.finalize("success"))  # waits for queued metrics
    logged = len(client.get_metric_history(run_id, "train/loss"))
    if logged != steps:
        raise RuntimeError(f"synchronous={synchronous}: {logged} of {steps} steps logged")
    return {"per_step_ms": per_step_ms, "finalize_s": finalize_s}


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--uri", default="http://127.0.0.1:5077")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    if args.smoke:
        args.uri = f"sqlite:///{tempfile.mkdtemp(prefix='bench-mlflow-')}/m.db"
        args.steps = 5
    import mlflow

    mlflow.set_tracking_uri(args.uri)
    experiment = mlflow.set_experiment("bench-mlflow-logging")
    client = mlflow.MlflowClient()
    results = harness.Results("mlflow_logging", args)
    results.parameters.update(uri=args.uri, steps=args.steps)
    for synchronous in (True, False):
        runs = [log_steps(client, experiment.experiment_id, args.uri, args.steps, synchronous)
                for _ in range(harness.repeats(args, 3))]  # fmt: skip
        name = "blocking" if synchronous else "queued (easel)"
        for key in runs[0]:
            results.add(f"{name}: {key}", harness.unit_of(key), [r[key] for r in runs])
    results.write()


if __name__ == "__main__":
    main()
