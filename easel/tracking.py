"""Everything easel says to MLflow, in one module: no other module imports `mlflow`.

- Where runs go: `MLFLOW_TRACKING_URI` if set, else `sqlite:///mlflow.db` in the working
  directory (SPEC §7).
- Runs: `start_run` (a flow's run, nested under an active one), `finished_run_with_tag`
  (an earlier run that holds the same thing, e.g. a sweep's unchanged results), `child_run`
  (a step's run under a parent, e.g. one training stage), `resumable_child_run` (the same
  child run for every rerun of one piece of work, its id kept in a file beside the work),
  `finish_run`.
  Every run carries the tags the caller passes for lineage (the Prefect flow run's id and
  URL: `LINEAGE_TAGS`), a child its parent's; `run_link` gives a run's address.
- What goes in them: `log_params`, `log_metrics`, `log_artifact` (a file on any fsspec
  filesystem), and Lightning's MLflow logger (`lightning_logger`, `flush_metrics`).
- The model registry: `register_model` logs an exported diffusers folder as a pyfunc model
  (`PipelineModel`) and registers it; `download_registered_model` fetches the folder of
  `models:/NAME@ALIAS` or `models:/NAME/VERSION`.

`mlflow` is imported inside the functions: commands that never track start faster.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from easel import startup
from easel.data import storage
from easel.errors import ModelReferenceError
from easel.progress import say

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
LINEAGE_TAGS = ("prefect.flow_run_id", "prefect.flow_run_url")  # copied to child runs
ATTEMPT_TAG = "prefect.run_count"  # which attempt of the flow run made the run (1: the first)
ENDED_BY_TAG = "easel.ended_by"  # why easel, not the run's own process, ended a run
PROCESS_TAG = "easel.process"  # the process whose run it is ("host~pid"): if it is killed,
# its watchdog (watchdog.py) ends the runs it left RUNNING
NAMED_MODELS = 3  # a run's name names up to this many models, else counts them
SOURCE_TAG = "mlflow.source.name"  # what the MLflow UI shows as a run's source
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # which view the MLflow 3 UI opens it on
MODEL_TRAINING = "custom_model_development"  # that tag's value for "Model training"
TRAINING_VIEW = "workflowType=machine_learning"  # the same view in a link (MLflow 3.17's UI
# follows its global GenAI / Model training switch, unless a link names one)
PARAM_LENGTH = 500  # MLflow's limit on a parameter value
PIPELINE_ARTIFACT = "pipeline"  # the pyfunc model's artifact: the diffusers folder
REGISTRY_REFERENCE = re.compile(
    r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$"
)


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _client():
    uri = tracking_uri()
    first = uri not in _READY
    # the first time: MLflow's and its store's modules imported (seconds)
    with startup.importing() if first else contextlib.nullcontext():
        import mlflow

        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient()
    if first:
        with _sqlite_lock(uri):  # one process at a time creates a fresh database's tables
            client.search_experiments(max_results=1)
        _READY.add(uri)
    return client


_READY: set[str] = set()  # tracking URIs whose store this process has opened


@contextlib.contextmanager
def _sqlite_lock(uri: str) -> Iterator[None]:
    """An exclusive lock beside a SQLite tracking database (`sqlite:///path`), nothing for
    other stores. Two commands started at once on a database that does not exist yet would
    both run MLflow's schema migrations, and one of them fails ("alembic_version ... 0
    found")."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# -- runs ------------------------------------------------------------------------------------


@contextlib.contextmanager
def start_run(
    experiment: str, run_name: str, params: dict, tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[str]:  # fmt: skip
    """A run of `experiment` with `params` logged and `tags` set, nested under the active
    run if any, else under `parent_run_id` (a run of another process: a shard's parent,
    whose experiment it joins); yields its id and ends it FINISHED, or FAILED if the block
    raises."""
    import mlflow

    client = _client()
    if tags and int(tags.get(ATTEMPT_TAG, 1)) > 1:
        end_crashed_attempts(tags["prefect.flow_run_id"])
    nested = mlflow.active_run() is not None
    flow_run_name, source = _origin()
    tags = {**(tags or {}), PROCESS_TAG: _this_process(), SOURCE_TAG: source}
    if flow_run_name and not (nested or parent_run_id):  # reruns of one work told apart, as
        # in the dashboard (a child run is named within its parent's, which has the name)
        run_name = f"{flow_run_name}: {run_name}"
    if parent_run_id and not nested:
        tags["mlflow.parentRunId"] = parent_run_id
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        mlflow.set_experiment(experiment_id=experiment_id)
    elif not nested:
        mlflow.set_experiment(experiment_id=experiment_id_of(experiment))
    with mlflow.start_run(run_name=run_name, nested=nested, tags=tags) as run:
        log_params(params)
        say(f"MLflow run {run_name!r}: {run_link(run.info.run_id)}")
        yield run.info.run_id


def experiment_id_of(name: str) -> str:
    """The id of the experiment `name`, made if missing; one easel made (or one without a
    view of its own) opens on MLflow's model-training view (`EXPERIMENT_KIND_TAG`), not on
    the GenAI traces a fresh experiment of MLflow 3 shows."""
    client = _client()
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
    if EXPERIMENT_KIND_TAG not in found.tags:
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return found.experiment_id


def _origin() -> tuple[str | None, str]:
    """The Prefect flow run this code runs in (its name, else None) and what started it, as
    a run's source: "prefect deployment FLOW/DEPLOYMENT", "easel COMMAND", or the flow."""
    from prefect.runtime import deployment, flow_run

    if not flow_run.id:
        return None, _command() or "easel"
    if deployment.id:
        return flow_run.name, f"prefect deployment {flow_run.flow_name}/{deployment.name}"
    return flow_run.name, _command() or f"easel flow {flow_run.flow_name}"


def _command() -> str | None:
    """"easel COMMAND" when this process is the easel command line, else None."""
    import sys

    program = Path(sys.argv[0]).name
    if len(sys.argv) > 1 and (program == "easel" or sys.argv[0].endswith("easel/cli/__main__.py")):
        return f"easel {sys.argv[1]}"
    return None


def end_crashed_attempts(
    flow_run_id: str, reason: str = "a retry of its crashed Prefect flow run"
) -> list[str]:
    """End as FAILED every run still RUNNING that the Prefect flow run `flow_run_id` made
    (an attempt that crashed: its process was killed before it could end them), tagged
    `easel.ended_by` with `reason`. Call it only once that attempt is known to be gone (a
    later attempt of it; a run that took over the output it held). Returns their ids."""
    return _end_running(f"tags.`prefect.flow_run_id` = '{flow_run_id}'", reason, "FAILED")


def _this_process() -> str:
    """The `easel.process` tag of this process's runs."""
    return storage.process_name(os.getpid())


def end_runs_of_process(process: str, reason: str) -> list[str]:
    """End as KILLED every run still RUNNING that the process `process` ("host~pid") made,
    tagged `easel.ended_by` with `reason`: called once that process is known to be gone.
    A store that does not exist yet (a SQLite file not made) is left alone. Returns their
    ids."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not os.path.exists(uri.removeprefix("sqlite:///")):
        return []
    return _end_running(f"tags.`{PROCESS_TAG}` = '{process}'", reason, "KILLED")


def _end_running(run_filter: str, reason: str, status: str) -> list[str]:
    import mlflow

    client = _client()
    stale = mlflow.search_runs(
        search_all_experiments=True, output_format="list",
        filter_string=f"{run_filter} and attributes.status = 'RUNNING'",
    )  # fmt: skip
    for run in stale:
        client.set_tag(run.info.run_id, ENDED_BY_TAG, reason)
        client.set_terminated(run.info.run_id, status)
    return [run.info.run_id for run in stale]


def finished_run_with_tag(experiment: str, key: str, value: str) -> str | None:
    """The id of the latest FINISHED run of `experiment` whose tag `key` is `value`, or
    None (no such run, or no such experiment)."""
    import mlflow

    found = _client().get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = mlflow.search_runs(
        experiment_ids=[found.experiment_id], output_format="list", max_results=1,
        filter_string=f"tags.`{key}` = '{value}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )  # fmt: skip
    return runs[0].info.run_id if runs else None


def run_name_of(run_id: str) -> str:
    """The name of the run `run_id`."""
    return _client().get_run(run_id).info.run_name


def child_run(parent_run_id: str, name: str) -> str:
    """A new run under `parent_run_id`, in its experiment, with its lineage tags; returns
    its id (end it with `finish_run`)."""
    client = _client()
    parent = client.get_run(parent_run_id)
    tags = {key: parent.data.tags[key] for key in LINEAGE_TAGS if key in parent.data.tags}
    tags["mlflow.parentRunId"] = parent_run_id
    tags[PROCESS_TAG] = _this_process()
    return client.create_run(parent.info.experiment_id, run_name=name, tags=tags).info.run_id


def run_name(kind: str, subject: str, *models: str) -> str:
    """What a run's name says: what ran, on what, with which models (each reference's last
    part; more than `NAMED_MODELS`: their number), e.g. "sweep prompts.parquet on
    tiny-shapes", "sweep mixed.parquet on tiny-shapes, tiny-shapes-k22"."""
    names = list(dict.fromkeys(short_name(model) for model in models))
    said = ", ".join(names) if len(names) <= NAMED_MODELS else f"{len(names)} models"
    return f"{kind} {subject} on {said}"


def short_name(reference: str) -> str:
    """The last part of a path or URI ("s3://b/prompts.parquet": "prompts.parquet")."""
    return reference.rstrip("/").rsplit("/", 1)[-1] or reference


def run_link(run_id: str) -> str:
    """Where to see the run: its page on a tracking server (in the model-training view),
    else its id and store."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        experiment_id = _client().get_run(run_id).info.experiment_id
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"
    return f"run {run_id} in {uri} (mlflow ui --backend-store-uri {uri})"


def resumable_child_run(
    run_file: str, parent_run_id: str | None, name: str, experiment: str,
    params: dict | None = None,
) -> str:  # fmt: skip
    """The run whose id `run_file` holds; made once (under `parent_run_id`, or in
    `experiment` without a parent) with `params`, and reused by every rerun of the same
    work (MLflow's parameters cannot change: record what a rerun changes with `set_tags`)."""
    if storage.exists(run_file):
        run_id = storage.read_bytes(run_file).decode().strip()
        if parent_run_id:  # the lineage of the flow run that resumes it
            parent = _client().get_run(parent_run_id).data.tags
            set_tags(run_id, {key: parent[key] for key in LINEAGE_TAGS if key in parent})
        client = _client()
        if ENDED_BY_TAG in client.get_run(run_id).data.tags:  # ended with a crashed attempt
            client.delete_tag(run_id, ENDED_BY_TAG)
            client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, PROCESS_TAG, _this_process())  # now this one's
        return run_id
    client = _client()
    if parent_run_id:
        run_id = child_run(parent_run_id, name)
    else:
        experiment_id = experiment_id_of(experiment)
        tags = {PROCESS_TAG: _this_process()}
        run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    for key, value in (params or {}).items():
        if value is not None:
            client.log_param(run_id, key, _param(value))
    storage.write_text_atomic(run_file, run_id)
    return run_id


def set_tags(run_id: str, tags: dict[str, str]) -> None:
    """Tags of the run `run_id` (a tag, unlike a parameter, may change)."""
    client = _client()
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def finish_run(run_id: str, params: dict | None = None) -> None:
    """Log `params` to the run `run_id` and end it FINISHED."""
    client = _client()
    for key, value in (params or {}).items():
        if value is not None:
            client.log_param(run_id, key, _param(value))
    client.set_terminated(run_id)


def log_params(params: dict) -> None:
    """Parameters of the active run (values as text, cut to MLflow's limit; a nested mapping
    as `outer.inner` keys); an unset (None) one is left out: MLflow would show the string
    'None' as if it were a value."""
    import mlflow

    mlflow.log_params({key: _param(value) for key, value in _flat(params).items()
                       if value is not None})  # fmt: skip


def _flat(params: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _param(value) -> str:
    text = str(value)
    return text if len(text) <= PARAM_LENGTH else text[: PARAM_LENGTH - 3] + "..."


def log_metrics(metrics: dict[str, float]) -> None:
    """Metrics of the active run."""
    import mlflow

    mlflow.log_metrics(metrics)


def log_table(columns: dict[str, list], artifact_file: str) -> None:
    """A table of the active run (`columns`: name -> values, one per row; a column of PIL
    images is stored as images the MLflow UI shows), as `artifact_file` (.json)."""
    import mlflow

    mlflow.log_table(columns, artifact_file)


def latest_metrics(run_id: str) -> dict[str, float]:
    """The last value of each metric of the run `run_id`."""
    return dict(_client().get_run(run_id).data.metrics)


IMAGES_FOLDER = "images"  # where MLflow's `log_image` puts a run's images


def log_image(run_id: str, image, key: str, step: int) -> None:
    """An image (PIL) of the run `run_id` at `step`, under `key` (MLflow's image logging:
    the run page shows it with a step slider)."""
    _client().log_image(run_id, image, key=key, step=step, synchronous=True)


def copy_images(source_run_id: str, run_id: str) -> int:
    """Every image `log_image` logged in `source_run_id` logged in `run_id` too (with its key
    and step: the run page's slider works the same); returns how many files were copied."""
    client = _client()
    if not client.list_artifacts(source_run_id, IMAGES_FOLDER):
        return 0
    with tempfile.TemporaryDirectory() as folder:
        local = client.download_artifacts(source_run_id, IMAGES_FOLDER, folder)
        client.log_artifacts(run_id, local, IMAGES_FOLDER)
        return len(os.listdir(local))


def log_external_model(name: str, location: str, model_type: str) -> str:
    """A model of the active run that lives outside MLflow (an MLflow 3 `LoggedModel` holding
    no copy of the files: a diffusers pipeline is gigabytes), tagged with its `location`;
    returns its id."""
    import mlflow

    model = mlflow.create_external_model(name=name, model_type=model_type,
                                         tags={"easel.location": location})  # fmt: skip
    return model.model_id


def log_artifact(uri: str, artifact_path: str | None = None) -> None:
    """A file of the active run; `uri` may be a local path or on any fsspec filesystem."""
    import mlflow

    if storage.is_local(uri) and "://" not in uri:
        mlflow.log_artifact(uri, artifact_path)
        return
    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, uri.rstrip("/").rsplit("/", 1)[-1])
        with open(local, "wb") as f:
            f.write(storage.read_bytes(uri))
        mlflow.log_artifact(local, artifact_path)


# -- Lightning -------------------------------------------------------------------------------


def lightning_logger(run_id: str, uri: str | None = None):
    """Lightning's MLflow logger writing to the existing run `run_id` (at `uri`, default the
    configured tracking URI). Metrics are queued and sent in the background (a blocking call
    per step costs tens of milliseconds against a tracking server: bench/HISTORY.md);
    `flush_metrics` waits for them.

    Exactly one point per step: a resumed training (the same run, reopened) leaves out the
    steps of a metric that the run already has, which the killed attempt logged after its
    last checkpoint. The resume is bitwise exact, so those points hold the same values."""
    from pytorch_lightning.loggers import MLFlowLogger

    uri = uri or tracking_uri()
    logged_through = last_logged_steps(run_id, uri)

    class ResumedMLFlowLogger(MLFlowLogger):
        def log_metrics(self, metrics, step=None) -> None:
            new = {k: v for k, v in metrics.items()
                   if step is None or step > logged_through.get(k, -1)}  # fmt: skip
            if new:
                super().log_metrics(new, step)

    return ResumedMLFlowLogger(tracking_uri=uri, run_id=run_id, synchronous=False)


def last_logged_steps(run_id: str, uri: str | None = None) -> dict[str, int]:
    """The highest step logged so far of each metric of the run `run_id`."""
    import mlflow

    client = mlflow.MlflowClient(uri or tracking_uri())
    return {
        key: max(point.step for point in client.get_metric_history(run_id, key))
        for key in client.get_run(run_id).data.metrics
    }


def flush_metrics() -> None:
    """Wait until every metric queued by `lightning_logger` has reached the server."""
    import mlflow

    mlflow.flush_async_logging()


# -- the model registry ----------------------------------------------------------------------


def _define_pipeline_model():
    import mlflow.pyfunc

    class PipelineModel(mlflow.pyfunc.PythonModel):
        """A pyfunc over an exported diffusers folder (the artifact `pipeline`). `load`
        turns the folder into a model and `predict(model, frame, params)` answers; both are
        module-level functions of the engine, pickled by reference."""

        def __init__(self, load: Callable, predict: Callable):
            self._load, self._predict = load, predict

        def load_context(self, context) -> None:
            self.model = self._load(context.artifacts[PIPELINE_ARTIFACT])

        def predict(self, context, model_input, params=None):
            return self._predict(self.model, model_input, params)

    PipelineModel.__module__ = __name__
    return PipelineModel


def __getattr__(name: str):
    """`PipelineModel`, defined on first use (it subclasses an mlflow class) and then kept
    as a module attribute, so that pickles find it by name."""
    if name == "PipelineModel":
        globals()[name] = _define_pipeline_model()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_model(pipeline_dir: str, register_as: str, load: Callable, predict: Callable) -> str:
    """Log `pipeline_dir` in the active run as a `PipelineModel`, register it under
    `register_as` ("NAME" or "NAME@ALIAS", the alias then pointing at the new version) and
    return the reference `models:/NAME/VERSION`."""
    import mlflow.pyfunc

    name, _, alias = register_as.partition("@")
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=__getattr__("PipelineModel")(load, predict),
        artifacts={PIPELINE_ARTIFACT: pipeline_dir},
        registered_model_name=name,
        pip_requirements=["torch", "diffusers", "transformers", "safetensors"],
    )
    version = info.registered_model_version
    if alias:
        _client().set_registered_model_alias(name, alias, version)
    return f"models:/{name}/{version}"


def download_registered_model(ref: str, cache_root: Path) -> str:
    """The local diffusers folder of the model registered as `ref`, downloaded once under
    `cache_root/NAME/VERSION-KEY`, KEY naming the model version's identity (`registry_key`):
    another tracking store's `NAME/VERSION` is another entry. `ModelReferenceError` saying
    why not."""
    import mlflow

    match = REGISTRY_REFERENCE.match(ref)
    if not match:
        raise ModelReferenceError(
            f"registry reference must be models:/NAME@ALIAS or models:/NAME/VERSION but is {ref!r}"
        )
    client, name = _client(), match["name"]
    try:
        version = (
            client.get_model_version_by_alias(name, match["alias"])
            if match["alias"]
            else client.get_model_version(name, match["version"])
        )
    except mlflow.exceptions.MlflowException as error:
        raise ModelReferenceError(
            f"registry reference {ref!r} not found: {str(error).splitlines()[0]}"
        ) from None
    target = cache_root / name / f"{version.version}-{registry_key(version)}"
    if not (target / "MLmodel").exists():
        with storage.staged_folder(str(target)) as staging:
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version.version}", dst_path=staging
            )
    pipeline = target / _pipeline_artifact(target / "MLmodel")
    if not (pipeline / "model_index.json").exists():
        raise ModelReferenceError(f"registry reference {ref!r} holds no diffusers pipeline")
    return str(pipeline)


def registry_key(version) -> str:
    """What tells one registered model version from every other (16 hex digits): the
    tracking store it is in (a SQLite or file store by its absolute path), its name and
    number, the run that logged it and where its files are (`source`)."""
    identity = "\n".join(
        (store_identity(tracking_uri()), version.name, str(version.version),
         str(version.run_id), str(version.source), str(version.creation_timestamp))
    )  # fmt: skip
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def store_identity(uri: str) -> str:
    """The tracking URI `uri` as the same store is named from any working folder: a SQLite
    database's or a file store's path made absolute (any other URI as it is)."""
    if uri.startswith("sqlite:///"):
        return "sqlite:///" + os.path.abspath(uri.removeprefix("sqlite:///"))
    if uri.startswith("file://") or ("://" not in uri and not uri.startswith("databricks")):
        return "file://" + os.path.abspath(uri.removeprefix("file://"))
    return uri


def _pipeline_artifact(mlmodel: Path) -> str:
    """Where a downloaded pyfunc model keeps its `pipeline` artifact, as its MLmodel file
    records it (MLflow names the folder after the logged one's: `artifacts/NAME`)."""
    import yaml

    flavor = yaml.safe_load(mlmodel.read_text()).get("flavors", {}).get("python_function", {})
    artifact = flavor.get("artifacts", {}).get(PIPELINE_ARTIFACT, {})
    return artifact.get("path") or f"artifacts/{PIPELINE_ARTIFACT}"
