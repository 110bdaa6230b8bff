"""The fan-out: the study's units of work as child flow runs on a work pool, through Prefect's own
`run_deployment`.

The orchestrating flow run (``fan_out=True``, deployment `cyclegan/fan-out`) starts one child of the
work-pool deployment `cyclegan/ablation` for the shared stages, waits for it, then one child per
(variant, seed), all at once, and waits for all of them; the workers run them, each in its own clone,
and push outputs and DVC's run cache to the shared remote. Every child gets the orchestrator's MLflow
parent run and its overrides, and selects its work with ``variants``/``seeds``, which never edit
params.yaml. A child that fails does not stop the others: the collect step (in `flows`) restores what
completed from the remote's run cache and names the rest as missing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any, Protocol

from pipeline.core.errors import PipelineError

SHARED = "shared"  # the child that runs the shared stages (download, split, judge, bounds)
POLL_S = 5.0  # how often the orchestrator asks the API how its children are doing


@dataclasses.dataclass(frozen=True)
class ChildResult:
    """How one child flow run ended."""

    name: str  # "<variant>-<seed>", or SHARED
    flow_run: str  # the child flow run's name
    state: str  # Prefect state type: COMPLETED, FAILED, CRASHED, CANCELLED
    message: str = ""

    @property
    def completed(self) -> bool:
        return self.state == "COMPLETED"

    def why(self) -> str:
        """The outcome as the summary and the failure message show it."""
        if self.completed:
            return "completed"
        detail = f": {self.message}" if self.message else ""
        return f"child flow run {self.flow_run} ended {self.state}{detail}"


class Children(Protocol):
    """Starts child flow runs and waits for them (`DeploymentChildren`; tests pass a fake)."""

    def check(self) -> str:
        """Where the children will run (the work pool's name); one line if they cannot."""
        ...

    def start(self, name: str, parameters: dict[str, Any]) -> str:
        """Start the child `name` with `parameters`; returns a handle for `wait`."""
        ...

    def wait(self, handles: Mapping[str, str]) -> dict[str, ChildResult]:
        """Block until every child in `handles` (name -> handle) has ended."""
        ...


def child_parameters(
    base: Mapping[str, Any], variant: str | None = None, seed: int | None = None
) -> dict[str, Any]:
    """One child's flow parameters: `base` (overrides, parent run, push) and its selection; no variant
    selects only the shared stages."""
    if variant is None:
        return {**base, "variants": []}
    return {**base, "variants": [variant], "seeds": [seed]}


class DeploymentChildren:
    """Children as flow runs of `deployment` (``flow/deployment``), which must be on a work pool."""

    def __init__(self, deployment: str, label: str, orchestrator_id: str | None, logger):
        self.deployment = deployment
        self.label = label
        self.orchestrator_id = orchestrator_id
        self.logger = logger

    def check(self) -> str:
        """The deployment's work pool; one line if it has none (a served deployment runs where it is
        served, one run at a time: the fan-out would wait on itself)."""
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        with get_client(sync_client=True) as client:
            try:
                found = client.read_deployment_by_name(self.deployment)
            except ObjectNotFound:
                found = None
        if found is None or not found.work_pool_name:
            raise PipelineError(
                f"fan_out needs the deployment {self.deployment} on a work pool "
                f"({'it is served, not deployed' if found else 'there is none'}): run `prefect deploy --all` "
                "in the project (prefect.yaml) and start a worker per machine"
            )
        return found.work_pool_name

    def start(self, name: str, parameters: dict[str, Any]) -> str:
        from prefect.deployments import run_deployment

        flow_run = run_deployment(
            self.deployment,
            parameters=parameters,
            flow_run_name=f"{self.label}-{name}",
            timeout=0,  # returns at once: the children run side by side
            # A retried orchestrator finds the children it already started instead of doubling them.
            idempotency_key=f"{self.orchestrator_id}:{name}" if self.orchestrator_id else None,
            tags=[f"fan-out:{self.label}"],
        )
        return str(flow_run.id)

    def wait(self, handles: Mapping[str, str]) -> dict[str, ChildResult]:
        from prefect.client.orchestration import get_client

        results: dict[str, ChildResult] = {}
        with get_client(sync_client=True) as client:
            while len(results) < len(handles):
                for name, flow_run_id in handles.items():
                    if name in results:
                        continue
                    flow_run = client.read_flow_run(flow_run_id)
                    if flow_run.state is not None and flow_run.state.is_final():  # Prefect's terminal states
                        state = flow_run.state.type.value
                        message = (flow_run.state.message or "")[:500]
                        results[name] = ChildResult(name, flow_run.name, state, message)
                        self.logger.info("%s: child flow run %s ended %s", name, flow_run.name, state)
                if len(results) < len(handles):
                    time.sleep(POLL_S)
        return {name: results[name] for name in handles}
