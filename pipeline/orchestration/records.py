"""What a flow run leaves behind besides DVC's outputs: its MLflow parent run, and its Prefect artifacts
(the summary with the overrides and each run's outcome, the scores table)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.core.overrides import BACKUP_NAME, PARAMS_NAME, ParamsChange
from pipeline.core.urls import redact_text, redact_url
from pipeline.tracking import liveness, runs
from pipeline.tracking.parent import open_parent

SCORES_ARTIFACT_KEY = "cyclegan-scores"
ARTIFACT_KEY = "cyclegan-ablation"
PREFECT_RUN_TAG = "prefect.flow_run_id"


def flow_run_info() -> dict[str, str | None]:
    """The current Prefect flow run: id, name, deployment and UI address."""
    from prefect.runtime import deployment, flow_run

    return {"id": flow_run.id, "name": flow_run.name, "deployment": deployment.name, "url": flow_run.ui_url}


def open_flow_parent(
    experiment: str, key: str, run_info: Mapping[str, str | None], change: ParamsChange, params_path: Path
) -> str:
    """The parent of this launch (race-free by key), tagged with what launched it and held by this
    process (`liveness`: a flow run that is SIGKILLed leaves it to be ended KILLED)."""
    parent_id = open_parent(experiment, key, tags={PREFECT_RUN_TAG: run_info["id"] or ""})
    runs.set_tags(
        parent_id,
        {
            "prefect.flow_run_name": run_info["name"],
            "prefect.deployment": run_info["deployment"],
            "prefect.flow_run_url": run_info["url"],
            "cyclegan.params_changed": change.changed,
            "cyclegan.overrides": redact_text(json.dumps(change.overrides))[:5000],
            "cyclegan.variants": ",".join(change.variants),
            **liveness.process_tags(),
        },
    )
    with tempfile.TemporaryDirectory() as tmp:  # the params files as MLflow may keep them: URLs redacted
        for path in filter(None, (params_path, change.backup)):
            (Path(tmp) / path.name).write_text(redact_text(path.read_text()))
            runs.log_artifacts(parent_id, Path(tmp) / path.name, "params")
    return parent_id


def markdown_summary(
    change: ParamsChange,
    outcomes: Mapping[str, str],
    parent_id: str,
    store: str,
    report: str,
    project_dir: Path,
) -> str:
    """The flow run's Prefect artifact: each run's outcome, the report, the parent, the overrides."""
    lines = ["# CycleGAN ablation", "", "| variant-seed | result |", "|---|---|"]
    lines += [f"| `{name}` | {redact_text(outcome)} |" for name, outcome in outcomes.items()]
    lines += [
        "",
        f"Report: {report}",
        "",
        f"MLflow parent run `{parent_id}` in `{redact_url(store)}`.",
        "",
    ]
    if change.overrides:
        lines += ["## Parameter overrides", ""]
        lines += [f"- `{redact_text(item)}`" for item in change.overrides]
        if change.changed:
            lines += [
                "",
                f"`{project_dir / PARAMS_NAME}` now holds these values, so `dvc.lock` and `dvc status`",
                f"agree with the outputs. The file as this run found it is `{change.backup}` (also logged",
                f"to the parent run under `params/`). Restore it with `cp {BACKUP_NAME} {PARAMS_NAME}` or",
                f"`git checkout {PARAMS_NAME}`, then `dvc repro` (or `dvc checkout` with dvc.lock restored).",
            ]
        else:
            lines += ["", f"`{PARAMS_NAME}` already held these values: nothing changed."]
    else:
        lines += ["No parameter overrides: params.yaml as it is in the workspace."]
    return "\n".join(lines)


def publish_summary(markdown: str) -> None:
    """`markdown` (a `markdown_summary`) as the flow run's artifact `ARTIFACT_KEY`."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        markdown,
        key=ARTIFACT_KEY,
        description="variants, overrides and the MLflow parent run of this ablation",
    )


def scores_rows(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per variant of a report (reports/ablation.json): each scalar score as
    ``mean [95% interval]``, whatever metrics the dataset has."""
    rows = []
    for name, entry in document.get("variants", {}).items():
        row: dict[str, Any] = {"variant": name, "seeds": ",".join(map(str, entry.get("seeds", [])))}
        for metric, value in entry.items():
            if isinstance(value, dict) and value.get("mean") is not None:
                interval = value.get("ci95") or value.get("bootstrap_ci95")
                shown = f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
                row[metric] = f"{value['mean']:.3f}{shown}"
        rows.append(row)
    return rows


def scores_artifact(project: Path) -> None:
    """The report's scores with their intervals as a Prefect table artifact."""
    from prefect.artifacts import create_table_artifact

    try:
        document = json.loads((project / "reports" / "ablation.json").read_text())
    except (OSError, ValueError):
        return
    description = "the scores its dataset has (FCN, FID, KID, SSIM, PSNR), mean [95% interval]"
    create_table_artifact(scores_rows(document), key=SCORES_ARTIFACT_KEY, description=description)


def failure_message(outcomes: Mapping[str, str], kind: str) -> str | None:
    """One line naming every run that did not complete and why (None when all did)."""
    failures = {name: why for name, why in outcomes.items() if why != "completed"}
    if not failures:
        return None
    completed: Sequence[str] = [name for name, outcome in outcomes.items() if outcome == "completed"]
    listed = "; ".join(f"{name} ({why.removeprefix('failed: ')})" for name, why in failures.items())
    return (
        f"{kind}: {listed}. Completed: {', '.join(completed) or 'none'}. Fix the cause and run again: "
        "completed stages are up to date in dvc.lock (or the DVC remote's run cache) and are skipped."
    )
