"""What logging a DreamBooth step's metrics to an MLflow tracking server costs the step:
Lightning's MLFlowLogger with blocking calls against `synchronous=False` (easel's).

    mlflow server --host 127.0.0.1 --port 5077 --backend-store-uri sqlite:////tmp/m.db &
    python bench/bench_mlflow_logging.py --uri http://127.0.0.1:5077
"""

import argparse
import time

import mlflow
from pytorch_lightning.loggers import MLFlowLogger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", default="http://127.0.0.1:5077")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    mlflow.set_tracking_uri(args.uri)
    experiment = mlflow.set_experiment("bench-mlflow-logging")
    client = mlflow.MlflowClient()
    for synchronous in (True, False):
        run_id = client.create_run(experiment.experiment_id).info.run_id
        logger = MLFlowLogger(tracking_uri=args.uri, run_id=run_id, synchronous=synchronous)
        logger.log_metrics({"warm_up": 1.0}, step=0)
        started = time.perf_counter()
        for step in range(1, args.steps + 1):
            metrics = {"train/loss": 0.1, "train/instance_loss": 0.2, "train/prior_loss": 0.3}
            logger.log_metrics(metrics, step=step)
        per_step_ms = (time.perf_counter() - started) / args.steps * 1000
        started = time.perf_counter()
        logger.finalize("success")  # waits for queued metrics
        finalize_s = time.perf_counter() - started
        logged = len(client.get_metric_history(run_id, "train/loss"))
        print(
            f"synchronous={synchronous}: {per_step_ms:.2f} ms per step's log call, "
            f"finalize {finalize_s:.2f} s, {logged}/{args.steps} steps logged"
        )


if __name__ == "__main__":
    main()
