"""End to end: the MLflow UI, rendered by headless Chromium, lists the ablation's variant runs.

The runs page nests child runs under a collapsed parent; sorting by run name flattens the list so a
DOM dump shows every run. ``--virtual-time-budget`` lets the single-page app render before the dump.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.harness import EXPERIMENT, VARIANTS, VENV_BIN, child_runs, mlflow_client, parent_run

pytestmark = pytest.mark.e2e

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
CHROMIUM_FLAGS += ["--no-first-run", "--virtual-time-budget=20000"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium not found: apt-get install -y chromium chromium-driver (.ci/run does)")
    return found


def render(url: str, profile: Path, *extra: str) -> str:
    """Headless Chromium on `url`; returns what it prints (the DOM with --dump-dom)."""
    argv = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def runs_page(server_url: str, experiment_id: str) -> str:
    return f"{server_url}/#/experiments/{experiment_id}/runs?orderByKey=attributes.run_name&orderByAsc=true"


def assert_runs_listed(dom: str, run_names: list[str]) -> None:
    """Each name must be the whole text of an element (``cyclegan`` inside ``cyclegan-ablation`` is not)."""
    missing = [name for name in run_names if not re.search(rf">\s*{re.escape(name)}\s*<", dom)]
    assert not missing, f"runs {missing} not on the rendered page ({len(dom)} characters of DOM)"


def test_runs_page_lists_the_variant_runs(mlflow_server, ablation_run, store_uri, tmp_path):
    parent = parent_run(store_uri, ablation_run.flow_run["id"])
    children = child_runs(store_uri, parent)
    names = [child.info.run_name for child in children]
    assert sorted(child.data.tags["cyclegan.variant"] for child in children) == sorted(VARIANTS)
    url = runs_page(mlflow_server.url, parent.info.experiment_id)

    dom = render(url, tmp_path / "profile", "--dump-dom")
    assert_runs_listed(dom, [*names, parent.info.run_name])

    screenshot = tmp_path / "runs.png"
    render(url, tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1400,900")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot of the runs page: {screenshot}")


def test_the_same_check_fails_on_an_experiment_without_runs(mlflow_server, store_uri, tmp_path):
    client = mlflow_client(store_uri)
    empty = client.get_experiment_by_name("e2e-empty") or client.get_experiment(
        client.create_experiment("e2e-empty")
    )
    dom = render(runs_page(mlflow_server.url, empty.experiment_id), tmp_path / "profile", "--dump-dom")
    assert re.search(r">\s*e2e-empty\s*<", dom), "the empty experiment's page did not render"
    with pytest.raises(AssertionError, match="not on the rendered page"):
        assert_runs_listed(dom, VARIANTS)


def test_compare_view_lines_up_the_five_variants_and_their_per_class_iou(
    mlflow_server, ablation_run, store_uri, tmp_path
):
    """The compare page of the five variant runs shows their metrics side by side, per-class IoU too."""
    import json

    parent = parent_run(store_uri, ablation_run.flow_run["id"])
    children = child_runs(store_uri, parent)
    assert len(children) == len(VARIANTS) == 5
    ids = json.dumps([child.info.run_id for child in children])
    url = (
        f"{mlflow_server.url}/#/compare-runs?runs={ids}&experiments={json.dumps([parent.info.experiment_id])}"
    )
    dom = render(url, tmp_path / "profile", "--dump-dom")
    assert_runs_listed(dom, [child.info.run_name for child in children])
    # The metrics table renders its first rows (it scrolls): the scores, then the per-class IoU.
    for metric in ("eval/fcn/label2photo/class_iou", "eval/fcn/label2photo/iou/"):
        assert metric in dom, metric
    render(url, tmp_path / "profile", f"--screenshot={tmp_path / 'compare.png'}", "--window-size=1400,2600")
    print(f"screenshot of the compare view: {tmp_path / 'compare.png'} (experiment {EXPERIMENT})")


def browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for flag in [*CHROMIUM_FLAGS[:-1], "--window-size=1600,1200", f"--user-data-dir={profile}"]:
        options.add_argument(flag.replace("--headless", "--headless=new"))
    options.binary_location = chromium()
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def test_chart_view_shows_the_sample_images_of_several_runs(mlflow_server, ablation_run, store_uri, tmp_path):
    """As a user would: open the runs' chart view, search the charts for one val image's translations,
    and see that image as each variant run translated it (stepped images, not loose files)."""
    import time

    from selenium.webdriver.common.by import By

    parent = parent_run(store_uri, ablation_run.flow_run["id"])
    run_ids = {child.info.run_id for child in child_runs(store_uri, parent)}
    url = runs_page(mlflow_server.url, parent.info.experiment_id) + "&workflowType=machine_learning"
    url += "&compareRunsMode=CHART"
    driver = browser(tmp_path / "profile")
    try:
        driver.get(url)
        deadline = time.monotonic() + 60
        box = None
        while box is None and time.monotonic() < deadline:
            found = driver.find_elements(By.CSS_SELECTOR, "input[placeholder='Search metric charts']")
            box = found[0] if found else time.sleep(0.5)
        assert box is not None, "the chart view did not render"
        box.send_keys("eval/label2photo/1")
        shown: set[str] = set()
        while len(shown) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            sources = [img.get_attribute("src") or "" for img in driver.find_elements(By.TAG_NAME, "img")]
            shown = {
                src.split("run_uuid=")[-1]
                for src in sources
                if "get-artifact" in src and "eval~label2photo~1" in src
            }
        driver.save_screenshot(str(tmp_path / "images.png"))
    finally:
        driver.quit()
    print(f"sample images of {len(shown)} runs in the chart view: {tmp_path / 'images.png'}")
    assert len(shown & run_ids) >= 2, shown


def test_cyclegan_ui_opens_the_runs_not_the_genai_overview(
    mlflow_server, ablation_run, project, env, e2e_root, tmp_path
):
    from tests.e2e.harness import Service, free_port, http_ok

    port = free_port()
    argv = [str(VENV_BIN / "cyclegan"), "ui", "--port", str(port)]
    ui = Service.start(
        "cyclegan ui",
        argv,
        {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_URI"},
        project,
        e2e_root / "ui.log",
    )
    try:
        ui.wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), 120, "the MLflow UI")
        link = re.search(r"http://\S+", (e2e_root / "ui.log").read_text())[0]
        assert link.endswith("/runs?workflowType=machine_learning"), link
        parent = parent_run(f"sqlite:///{project / 'mlflow.db'}", ablation_run.flow_run["id"])
        assert f"/experiments/{parent.info.experiment_id}/" in link
        dom = render(link, tmp_path / "profile", "--dump-dom")
        assert_runs_listed(dom, [parent.info.run_name])  # the runs table, not the traces overview
        assert "Model training" in dom
    finally:
        ui.stop()
