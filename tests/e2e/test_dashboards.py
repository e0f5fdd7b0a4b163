"""The dashboards as a user sees them, in a real browser: Debian's `chromium`, driven by
Selenium through Debian's `chromium-driver`, against the local stack (deploy/local_stack.py,
with the Prefect UI) and the shipped `sweep-local` deployment, run with its defaults as the
dashboard's "Quick run" does.

- Prefect: the printed UI asks its own server (not :4200), the deployment's page (its
  description) and its Custom run form (descriptions, dropdowns for choices, an optional
  number as a plain number field, no internal fields), the run's Logs tab (progress lines and the
  MLflow link), its artifacts (the summary's contact sheet rendered, the results with
  prompts and image links that open).
- MLflow: the run's page (parameters, metrics), its artifacts (the contact sheet, the
  results table).

Each page's screenshot is kept in the test's folder; with EASEL_SCREENSHOTS=DIR also copied
there (docs/operations.md's images: `EASEL_SCREENSHOTS=docs/img pytest
tests/e2e/test_dashboards.py`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
WAIT = 90.0  # seconds a page may take to show what is awaited
RUN_WAIT = 600.0  # the Quick run of sweep-local (11 images at 20 steps) on a busy CPU

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and DRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


class Dashboards:
    """The started stack (its client environment) and a headless Chromium."""

    def __init__(self, env: dict[str, str], shots: Path, printed: str):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.env, self.shots = env, shots
        self.printed_ui = printed.split("Prefect UI ", 1)[1].split()[0]  # what `start` said
        self.prefect = f"{env['PREFECT_UI_URL']}/v2"  # the UI the server opens on
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--window-size=1400,1800"):  # fmt: skip
            options.add_argument(argument)
        self.driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)

    def api(self, path: str, body: dict | None = None):
        """The Prefect API's answer (JSON) to a GET, or to a POST of `body`."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.env['PREFECT_API_URL']}{path}", data=data,
                                         headers={"content-type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def open(self, url: str, *texts: str) -> str:
        """Open `url` afresh (a single-page app may keep the last page when only the part
        after `#` changes) and wait until the page shows every one of `texts`; returns its
        text."""
        self.driver.get("about:blank")
        self.driver.get(url)
        return self.wait_for(*texts)

    def wait_for(self, *texts: str) -> str:
        from selenium.webdriver.common.by import By

        deadline, body = time.monotonic() + WAIT, ""
        while time.monotonic() < deadline:
            body = self.driver.find_element(By.TAG_NAME, "body").text
            if all(text in body for text in texts):
                return body
            time.sleep(1.0)
        self.shoot("timed-out", publish=False)
        missing = [text for text in texts if text not in body]
        raise AssertionError(f"{self.driver.current_url} never showed {missing}:\n{body[:3000]}")

    def shoot(self, name: str, publish: bool = True) -> Path:
        """A screenshot of the page as it is, kept as `NAME.png` (and, with `publish`, copied
        to EASEL_SCREENSHOTS)."""
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        if publish and os.environ.get("EASEL_SCREENSHOTS"):
            target = Path(os.environ["EASEL_SCREENSHOTS"])
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target / path.name)
        return path


@pytest.fixture(scope="module")
def dashboards(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack")
    script = [sys.executable, str(ROOT / "deploy" / "local_stack.py")]
    env = {**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "2"}
    for name in ("PREFECT_API_URL", "PREFECT_UI_URL"):
        env.pop(name, None)
    started = subprocess.run([*script, "start", "--dir", str(root), "--workers", "1"], env=env,
                             capture_output=True, text=True, timeout=400)  # fmt: skip
    browser = None
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "Prefect UI http://127.0.0.1:" in started.stdout and "MLflow UI" in started.stdout
        sys.path.insert(0, str(ROOT / "deploy"))
        import local_stack

        stack_env = local_stack.read_env(root)
        deployed = subprocess.run(
            [str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "sweep-local"], cwd=ROOT,
            env={**env, **stack_env}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        browser = Dashboards(stack_env, tmp_path_factory.mktemp("screenshots"), started.stdout)
        yield browser
    finally:
        if browser is not None:
            print(f"screenshots: {browser.shots}")
            browser.driver.quit()
        subprocess.run([*script, "stop", "--dir", str(root)], env=env, timeout=60)


@pytest.fixture(scope="module")
def deployment(dashboards) -> dict:
    return dashboards.api("/deployments/name/sweep/sweep-local")


@pytest.fixture(scope="module")
def quick_run(dashboards, deployment) -> dict:
    """A run of sweep-local with its defaults (the dashboard's "Quick run"), finished."""
    run = dashboards.api(f"/deployments/{deployment['id']}/create_flow_run", {})
    deadline = time.monotonic() + RUN_WAIT
    while (run := dashboards.api(f"/flow_runs/{run['id']}"))["state_type"] not in (
        "COMPLETED", "FAILED", "CRASHED", "CANCELLED"
    ):  # fmt: skip
        assert time.monotonic() < deadline, run["state"]
        time.sleep(2.0)
    assert run["state_type"] == "COMPLETED", run["state"]
    return run


def test_the_dashboard_asks_its_own_server_and_shows_the_deployment(dashboards, deployment):
    """Fails when the UI at the printed URL points elsewhere (Prefect's default :4200, or
    another server): its API must be the very server that serves it and holds the
    deployment, and the page must show the deployment, not "Oops"."""
    printed = dashboards.printed_ui
    assert printed == dashboards.env["PREFECT_UI_URL"], (printed, dashboards.env)
    with urllib.request.urlopen(f"{printed}/ui-settings") as answer:
        settings = json.load(answer)
    assert settings["api_url"] == f"{printed}/api", settings  # the server serving this UI
    with urllib.request.urlopen(f"{settings['api_url']}/deployments/{deployment['id']}") as found:
        assert json.load(found)["name"] == "sweep-local"  # and holding the deployment
    url = f"{printed}/v2/deployments/deployment/{deployment['id']}?tab=Description"
    page = dashboards.open(url, "sweep-local", "Prompt sweep on the local CPU pool",
                           "docs/sweeps.md")  # fmt: skip
    for broken in ("Something went wrong", "Create a deployment to get started"):
        assert broken not in page, broken
    dashboards.shoot("prefect-deployment")


FORM_FIELD = """
const label = [...document.querySelectorAll('label')]
  .find(l => l.textContent.trim().split(' (')[0] === arguments[0]);
if (!label) return null;
const input = document.getElementById(label.htmlFor);
let field = label.parentElement;
while (field && input && !field.contains(input)) field = field.parentElement;
return {input: input ? `${input.tagName.toLowerCase()}:${input.type}` : null,
        toggle: !!(field || label.parentElement).querySelector('[role=tablist]')};
"""  # the form's field labelled arguments[0]: what its label names, whether it has type tabs


def form_labels(form: str) -> set[str]:
    """The field labels of a form's text, without " (Optional)"."""
    return {line.split(" (")[0] for line in form.splitlines()}


def test_the_custom_run_form_offers_choices_as_dropdowns_and_hides_internal_fields(
    dashboards, deployment
):
    from selenium.webdriver.common.by import By

    url = f"{dashboards.prefect}/deployments/deployment/{deployment['id']}/run"
    form = dashboards.open(url, "Parameters", "Parquet file, folder or glob", "Scheduler")
    labels = form_labels(form)
    assert {"Shards", "Manifest", "Prior Guidance Scale"} <= labels, labels  # read as labels
    internal = {"Shard", "Parent Mlflow Run Id"} & labels  # the fields a parent run sets
    assert not internal, f"internal fields offered in the form: {internal}"
    assert "set by the parent run" not in form  # nor their descriptions
    prior = dashboards.driver.execute_script(FORM_FIELD, "Prior Guidance Scale")
    assert prior == {"input": "input:number", "toggle": False}, prior  # a plain number field
    for field, shown in (("Scheduler", "default"), ("Dtype", "default"),
                         ("Vae Dtype", "default"), ("Compile", "off")):  # fmt: skip
        select = dashboards.driver.find_element(By.CSS_SELECTOR, f'[aria-label="Select {field}"]')
        assert select.get_attribute("aria-haspopup") == "listbox" and select.text == shown
    scheduler = dashboards.driver.find_element(By.CSS_SELECTOR, '[aria-label="Select Scheduler"]')
    dashboards.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", scheduler)
    scheduler.click()
    choices = dashboards.wait_for("dpmpp_2m", "euler_a")
    assert "Property is type" not in choices.split("Scheduler", 1)[1].split("Prior Guidance")[0]
    dashboards.shoot("prefect-custom-run")


def test_the_logs_tab_shows_progress_and_the_mlflow_link(dashboards, quick_run):
    """Fails when easel's progress lines or the MLflow link are missing from the run's Logs
    tab (`open` names what the page never showed)."""
    url = f"{dashboards.prefect}/runs/flow-run/{quick_run['id']}?tab=Logs"
    logs = dashboards.open(url, "sweep: 11/11 images (100%)", "MLflow run '", "images ok")
    assert "sweep: 11/11 images (100%)" in logs, "no progress line in the Logs tab"
    assert f"{dashboards.env['MLFLOW_TRACKING_URI']}/#/experiments/" in logs
    for noise in ("FutureWarning", "DeprecationWarning", "[transformers]", "View run"):
        assert noise not in logs  # library noise stays in the worker's own log
    dashboards.shoot("prefect-logs")


def artifact(dashboards, run: dict, key: str) -> dict:
    (found,) = dashboards.api("/artifacts/filter", {"artifacts": {
        "flow_run_id": {"any_": [run["id"]]}, "key": {"any_": [key]}}})  # fmt: skip
    return found


def test_artifacts_show_the_contact_sheet_and_results_with_prompts_and_image_links(
    dashboards, quick_run
):
    from selenium.webdriver.common.by import By

    summary = artifact(dashboards, quick_run, "sweep-summary")
    dashboards.open(f"{dashboards.prefect}/artifacts/artifact/{summary['id']}", "images ok")
    sheet = dashboards.driver.find_element(By.CSS_SELECTOR, 'img[alt="contact sheet"]')
    assert dashboards.driver.execute_script("return arguments[0].naturalWidth", sheet) > 0
    dashboards.shoot("prefect-summary")

    results = artifact(dashboards, quick_run, "sweep-results")
    url = f"{dashboards.prefect}/artifacts/artifact/{results['id']}"
    dashboards.open(url, "a red circle on a blue background", "tiny-shapes", "warning")
    links = dashboards.driver.find_elements(By.LINK_TEXT, "open")
    assert len(links) == 11
    with urllib.request.urlopen(links[0].get_attribute("href"), timeout=30) as image:
        assert image.read(8) == b"\x89PNG\r\n\x1a\n"  # the presigned link opens the image
    dashboards.shoot("prefect-results")

    progress = artifact(dashboards, quick_run, "sweep-progress")
    assert progress["data"] == 100.0 and progress["description"].startswith("11 of 11 images")


def test_the_mlflow_run_page_shows_params_metrics_contact_sheet_and_results_table(
    dashboards, quick_run
):
    import mlflow

    client = mlflow.MlflowClient(dashboards.env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        f"tags.`prefect.flow_run_id` = '{quick_run['id']}'",
    )
    assert run.info.run_name.startswith(f"{quick_run['name']}: sweep")
    assert run.data.tags["mlflow.source.name"] == "prefect deployment sweep/sweep-local"
    page = (f"{dashboards.env['MLFLOW_TRACKING_URI']}/#/experiments/{run.info.experiment_id}"
            f"/runs/{run.info.run_id}")  # fmt: skip
    dashboards.open(f"{page}?workflowType=machine_learning", quick_run["name"], "images_ok",
                    "s3://prompts/nightly/*.parquet", "Model training")  # fmt: skip
    dashboards.shoot("mlflow-run")
    dashboards.open(f"{page}/artifactPath/contact_sheet.png?workflowType=machine_learning",
                    "results.json", "contact_sheet.png")  # fmt: skip
    dashboards.shoot("mlflow-contact-sheet")
    table = dashboards.open(f"{page}/artifactPath/results.json?workflowType=machine_learning",
                            "View as table", "red-circle", "image")  # fmt: skip
    assert "prompt" in table and "tiny-shapes" in table
    dashboards.shoot("mlflow-results-table")
