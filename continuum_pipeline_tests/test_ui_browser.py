"""The Dagster UI tells the flywheel's story, checked in a real browser.

Headless Chromium (Debian's `chromium`, driven by selenium through /usr/bin/chromedriver) opens `continuum ui` on
a demo home — the home `continuum demo` leaves, as a newcomer would look at it — and checks what a person sees:
the asset graph shows every stage, the learning-curve asset shows its plot, the training job's page lists the
demo's runs, the quality-drop sensor's page shows the tick that launched cycle 2, the overview timeline has the
runs, and the champion / registered_model assets state the aliases MLflow holds. Dagster's UI is a React app:
each check navigates to a route, waits for the text to render, and saves a screenshot (the folder is printed).

The home: `continuum demo --scale 0.3` (a few minutes on 2 cores), or CONTINUUM_UI_TEST_HOME=<a demo home> to look
at one that exists (e.g. ./.continuum after `make demo`); the UI only reads it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
from dagster._core.scheduler.instigation import InstigatorType

from continuum_pipeline_tests.test_ui_process import answers, free_port

CONTINUUM = Path(sys.executable).with_name("continuum")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TASK = "support_answer"  # the packaged support desk's task
TRAINING_JOB = f"{TASK}_training_job"
QUALITY_DROP_SENSOR = f"{TASK}_quality_drop_sensor"
# `continuum ui` runs `dg dev -m continuum_pipeline.definitions`: the location is named after the module
REPO_PATH = "__repository__@continuum_pipeline.definitions"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                       reason=f"no browser: the UI test needs Debian's chromium and chromedriver ({CHROMIUM}, "
                              f"{CHROMEDRIVER}); `apt-get install chromium chromium-driver`"),
]


def clean_env(home: Path) -> dict[str, str]:
    # MLFLOW_TRACKING_URI too: mlflow.set_tracking_uri() exports it, so an earlier test's home leaks into this process
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CONTINUUM_", "DAGSTER_")) and k != "MLFLOW_TRACKING_URI"}
    env.update(CONTINUUM_HOME=str(home), OMP_NUM_THREADS="1", MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    return env


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory) -> Path:
    given = os.environ.get("CONTINUUM_UI_TEST_HOME")
    if given:
        home = Path(given).resolve()
        assert (home / "dagster" / "dagster.yaml").exists(), f"CONTINUUM_UI_TEST_HOME={home} is not a demo home"
        return home
    home = tmp_path_factory.mktemp("demo") / "home"
    demo = subprocess.run([str(CONTINUUM), "demo", "--scale", "0.3"], env=clean_env(home), capture_output=True,
                          text=True, timeout=1500)
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
    print(f"demo home {home}:\n{demo.stdout[-2500:]}")
    return home


@pytest.fixture(scope="module")
def instance(demo_home):
    with dg.DagsterInstance.from_config(str(demo_home / "dagster")) as the_instance:
        yield the_instance


@pytest.fixture(scope="module")
def ui(demo_home, tmp_path_factory):
    """`continuum ui` on the demo home, as `make ui` starts it; its whole process group is stopped afterwards."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("ui") / "ui.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([str(CONTINUUM), "ui", "--port", str(port)], env=clean_env(demo_home), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 240  # webserver + code server import Dagster and the definitions
            while not answers(f"http://127.0.0.1:{port}/server_info"):
                assert proc.poll() is None, f"continuum ui exited early: {log_path.read_text()[-3000:]}"
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(1)
            yield f"http://127.0.0.1:{port}"
        finally:
            tree = []
            with contextlib.suppress(psutil.Error):
                tree = psutil.Process(proc.pid).children(recursive=True)
            proc.terminate()  # `continuum ui` stops dg dev's group on SIGTERM
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            for p in tree:
                with contextlib.suppress(psutil.Error):
                    p.kill()


@pytest.fixture(scope="module")
def screens(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("screenshots")
    print(f"\nscreenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1600,1200"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """One route of the UI in the browser: wait for text to render, screenshot it."""

    def __init__(self, driver, base: str, screens: Path):
        self.driver, self.base, self.screens = driver, base, screens

    def text(self) -> str:
        return self.driver.execute_script("return document.body.innerText")

    def open(self, route: str, *expected: str, shot: str, timeout: float = 120) -> str:
        """Navigate to `route` and wait until every `expected` text is visible; screenshot either way."""
        self.driver.get(self.base + route)
        return self.wait_for(*expected, shot=shot, timeout=timeout, where=route)

    def wait_for(self, *expected: str, shot: str, timeout: float = 60, where: str = "the page") -> str:
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            WebDriverWait(self.driver, timeout, poll_frequency=1).until(
                lambda d: all(e in self.text() for e in expected))
        except TimeoutException:
            self.shot(shot)
            seen = self.text()
            missing = [e for e in expected if e not in seen]
            raise AssertionError(f"{where}: {missing} not shown after {timeout}s; page text:\n{seen[-3000:]}") from None
        time.sleep(1)  # let the layout settle for the screenshot
        self.shot(shot)
        return self.text()

    def row_with(self, *texts: str) -> bool:
        """Whether one table row shows every text (a run and who launched it, a tick and its run)."""
        from selenium.webdriver.common.by import By

        return any(all(t in row.text for t in texts) for row in self.driver.find_elements(By.XPATH, "//tr"))

    def shot(self, name: str) -> Path:
        path = self.screens / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path


@pytest.fixture(scope="module")
def page(browser, ui, screens) -> Page:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    the_page = Page(browser, ui, screens)
    # A fresh browser gets Dagster's "Join the Dagster community" dialog over the first page: skip it once (the
    # choice is kept in the browser's storage), or it sits over what we click.
    browser.get(ui + "/overview")
    with contextlib.suppress(TimeoutException):
        WebDriverWait(browser, 20).until(expected_conditions.element_to_be_clickable(
            (By.XPATH, "//button[normalize-space()='Skip']"))).click()
    return the_page


def test_the_asset_graph_shows_every_stage_of_the_flywheel(page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    groups = ["ingest", "sql", f"{TASK}_labels", f"{TASK}_curation", f"{TASK}_training", f"{TASK}_registry"]
    page.open("/asset-groups", *groups, shot="asset_graph_groups")
    # The global lineage opens with the groups collapsed; "Expand all groups" (⌥E, in the graph's settings menu)
    # is kept in the browser's storage, and a reload lays the expanded graph out to fit the window.
    ActionChains(page.driver).key_down(Keys.ALT).send_keys("e").key_up(Keys.ALT).perform()
    time.sleep(2)
    page.driver.refresh()
    page.wait_for("learning_curve", shot="asset_graph_expanded")
    # one step out and the whole graph is on screen (nodes outside the window are not drawn at all)
    page.driver.find_element(By.XPATH, "//button[.//*[@aria-label='zoom_out']]").click()
    stages = ["interactions", "feedback_events", "quarantine", "stg_interactions", "reward_labels", "quality_daily",
              "sft_candidates", "golden", "embeddings", "sft_dataset", "base_model", "candidate_model",
              "registered_model", "champion", "learning_curve", "rollout"]
    page.wait_for(*stages, shot="asset_graph", where="/asset-groups, expanded")


def test_the_learning_curve_asset_shows_its_plot(page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page.open(f"/assets/{TASK}/learning_curve", "success_plot", "cost_quality_plot", "base", shot="learning_curve")
    # a markdown metadata value opens in a dialog: the plot is a PNG inside it
    page.driver.find_element(
        By.XPATH, "//tr[td[normalize-space()='success_plot']]//a[normalize-space()='[Show Markdown]']").click()

    def drawn_plot(driver):
        return driver.execute_script(
            "return [...document.querySelectorAll('img')].filter(i => i.src.startsWith('data:image/png') && "
            "i.complete && i.naturalWidth > 300 && i.getBoundingClientRect().width > 300).length")

    WebDriverWait(page.driver, 30, poll_frequency=1).until(drawn_plot)
    time.sleep(1.5)  # the dialog fades in
    page.shot("learning_curve_plot")


def test_the_training_jobs_page_lists_the_demos_runs(page, instance):
    runs = instance.get_runs(dg.RunsFilter(job_name=TRAINING_JOB))
    assert len(runs) >= 2, f"the demo home should hold its two trainings, not {len(runs)} {TRAINING_JOB} runs"
    text = page.open(f"/locations/{REPO_PATH}/jobs/{TRAINING_JOB}/runs", *(r.run_id[:8] for r in runs),
                     shot="training_job_runs")
    # "Launched by": cycle 2's run names the sensor whose tick launched it, not "Manually launched". The rows are
    # divs: a run's row is the page text from its id to the next run's id.
    by_sensor = [r for r in runs if r.tags.get("dagster/sensor_name") == QUALITY_DROP_SENSOR]
    assert by_sensor, f"no {TRAINING_JOB} run was launched by {QUALITY_DROP_SENSOR}"
    start = text.index(by_sensor[0].run_id[:8])
    row = text[start:min([i for i in (text.find(r.run_id[:8]) for r in runs) if i > start], default=len(text))]
    assert QUALITY_DROP_SENSOR in row and "Manually launched" not in row, row


def test_the_quality_drop_sensor_shows_the_tick_that_launched_cycle_2(page, instance):
    launched = instance.get_runs(dg.RunsFilter(job_name=TRAINING_JOB, tags={"dagster/sensor_name": QUALITY_DROP_SENSOR}))
    assert len(launched) == 1, f"{QUALITY_DROP_SENSOR} should have launched cycle 2, launched {len(launched)} runs"
    # its cursor records the cause it acted on (it was None when the demo called the decision function itself)
    state = next(s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
                 if s.instigator_name == QUALITY_DROP_SENSOR)
    cursor = state.instigator_data.cursor
    assert cursor, f"{QUALITY_DROP_SENSOR} has no cursor"
    page.open(f"/locations/{REPO_PATH}/sensors/{QUALITY_DROP_SENSOR}", "1 run requested", launched[0].run_id[:8],
              cursor, shot="quality_drop_sensor")
    assert page.row_with("1 run requested", launched[0].run_id[:8])  # the tick and the run it launched, one row


def test_the_overview_timeline_shows_the_demos_runs_by_job(page, instance):
    recent = time.time() - 11 * 3600  # the timeline opens on the last 12 hours
    jobs = sorted({r.dagster_run.job_name for r in instance.get_run_records()  # not asset-selection runs (__ASSET_JOB)
                   if r.create_timestamp.timestamp() > recent and not r.dagster_run.job_name.startswith("__")})
    assert TRAINING_JOB in jobs and "ingest_job" in jobs, f"no demo runs in the last 11 hours, only {jobs}"
    page.open("/overview/activity/timeline", *jobs, shot="timeline")


def test_the_champion_and_registered_model_state_the_aliases_mlflow_holds(page, demo_home):
    from continuum_pipeline.registry import models
    from continuum_pipeline.settings import EXAMPLE_TASKS
    from continuum_pipeline.task.config import load_task_config

    task = load_task_config(EXAMPLE_TASKS / "support_desk" / "defs.yaml")
    champion = models.champion(f"sqlite:///{demo_home / 'mlflow' / 'mlflow.db'}", task.registered_model_name)
    assert champion is not None and champion.version != "1", "the demo should have promoted cycle 2's version"
    # the promotion was a Dagster run: the champion asset's latest materialization names the version MLflow holds
    page.open(f"/assets/{TASK}/champion", "aliases", f"champion={champion.version}",
              f"models:/{task.registered_model_name}/{champion.version}", shot="champion")
    # and the registered model's latest event is the promotion's observation, with the aliases as they are now
    page.open(f"/assets/{TASK}/registered_model?view=events", "Observed in run", f"champion={champion.version}",
              shot="registered_model_events")
