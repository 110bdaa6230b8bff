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

from tests.e2e.harness import EXPERIMENT, VARIANTS, child_runs, mlflow_client, parent_run

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
    names = [child.info.run_name for child in child_runs(store_uri, parent)]
    assert sorted(names) == sorted(VARIANTS)
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


def test_compare_view_lines_up_the_variants_metrics(mlflow_server, ablation_run, store_uri, tmp_path):
    """The compare page of the two variant runs shows their shared FCN metric names side by side."""
    import json

    parent = parent_run(store_uri, ablation_run.flow_run["id"])
    children = child_runs(store_uri, parent)
    ids = json.dumps([child.info.run_id for child in children])
    url = (
        f"{mlflow_server.url}/#/compare-runs?runs={ids}&experiments={json.dumps([parent.info.experiment_id])}"
    )
    dom = render(url, tmp_path / "profile", "--dump-dom")
    assert_runs_listed(dom, [child.info.run_name for child in children])
    assert "eval/fcn/label2photo/class_iou" in dom and "eval/fcn/photo2label/class_iou" in dom
    render(url, tmp_path / "profile", f"--screenshot={tmp_path / 'compare.png'}", "--window-size=1400,900")
    print(f"screenshot of the compare view: {tmp_path / 'compare.png'} (experiment {EXPERIMENT})")
