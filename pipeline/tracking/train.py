"""A training run's record in MLflow (`TrainRecorder`): one run per (variant, seed), nested under its
launch's parent, with its params, tags, losses, per-epoch sample grids, G and F as MLflow models, and
MLflow's system metrics (CPU, memory, disk, network, and GPU use where there is one, every
`runs.SYSTEM_METRICS_INTERVAL_S`): runs trained side by side show how busy they kept the machine.

The train stage's entry point builds it and hands it to `pipeline.cyclegan.loop.train_variant`, which
never imports this module: nothing here can change a checkpoint or a loss curve.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipeline.core.profiles import matching_profile
from pipeline.core.project import data_provenance, dvc_output_md5
from pipeline.core.recording import Recorder
from pipeline.core.urls import redact_url
from pipeline.tracking import liveness, runs
from pipeline.tracking.parent import ABLATION_KEY_TAG, experiment_of, params_launch_key, parent_run_id
from pipeline.tracking.store import check_store, client, tracking_uri


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class TrainRecorder(Recorder):
    """Records one training run in MLflow; `params` is the whole params file the launch runs with."""

    def __init__(self, params: Mapping[str, Any], say: Callable[[str], None] = _stderr):
        self.params = params
        self.experiment = experiment_of(params)
        self.say = say
        self.run_id: str | None = None
        self.logger: runs.RunLogger | None = None
        self.system: Any = None  # MLflow's system metrics monitor of the run

    def check(self) -> None:
        check_store()

    def start(self, facts: Mapping[str, Any], resume: Mapping[str, Any] | None = None) -> None:
        try:  # runs a SIGKILLed stage left RUNNING cannot end themselves: this one ends them
            liveness.end_dead_runs(client(), self.experiment)
        except Exception as exc:  # a record, not the result: never a reason not to train
            self.say(f"could not end the MLflow runs of dead processes ({type(exc).__name__})")
        previous = (resume or {}).get("mlflow_run_id")
        if previous is not None and runs.reopen_run(previous):
            self.run_id = previous
            self.logger = runs.RunLogger(self.run_id, self.say)
        else:
            if previous is not None:
                self.say(
                    f"MLflow run {previous} is gone from {redact_url(tracking_uri())}: starting a new one"
                )
            self.run_id, data_version = self._new_run(facts)
            self.logger = runs.RunLogger(self.run_id, self.say)
            provenance = data_provenance(Path(facts["split"]))
            name = f"{provenance.get('dataset') or 'dataset'}-split"
            self.logger.call("log_dataset", name, data_version, provenance.get("source") or "unknown")
        # A resumed run may go further (max_steps): its digest is the one its finished checkpoint will have.
        self.logger.call("set_tags", {runs.DIGEST_TAG: facts["digest"]})
        self.system = runs.system_metrics(self.run_id, resumed=previous == self.run_id, say=self.say)

    def _new_run(self, facts: Mapping[str, Any]) -> tuple[str, str | None]:
        """A new run under the launch's parent; returns it and the split's DVC md5."""
        data, split = facts["data"], Path(facts["split"])
        key = params_launch_key(self.params, data["train_sha256"])
        parent = parent_run_id(self.experiment, key)
        data_version = dvc_output_md5(split)
        tags = {
            "cyclegan.variant": facts["variant"],
            "cyclegan.seed": str(facts["seed"]),
            "cyclegan.protocol": str(data["protocol"]),
            "cyclegan.profile": matching_profile(dict(self.params)),
            ABLATION_KEY_TAG: key,
            "cyclegan.data_version": str(data_version),
            "cyclegan.train_sha256": str(data["train_sha256"]),
            **{f"machine.{name}": value for name, value in facts["machine"].items()},
        }
        return runs.start_run(self.experiment, facts["name"], parent, facts["params"], tags), data_version

    def state(self) -> dict[str, Any]:
        return {"mlflow_run_id": self.run_id}

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        if self.logger is not None:
            self.logger.call("log_metrics", dict(values), step=step)

    def image(self, key: str, pixels: Callable[[], Any], step: int) -> None:
        if self.logger is not None:
            self.logger.call("log_image", pixels(), key=key, step=step)

    def models(self, nets: Mapping[str, Any], image_size: int) -> None:
        # G and F as MLflow models (loadable with mlflow.pytorch.load_model); the training checkpoint
        # itself stays in DVC, which already stores and versions it.
        if self.logger is not None:
            self.logger.call("log_generators", nets, image_size)

    def end(self, status: str) -> None:
        if self.system is not None:
            self.system.finish()  # its last samples, before the run ends
        if self.logger is not None:
            self.logger.call("end_run", status)
            self.logger.flush()
