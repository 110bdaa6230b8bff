"""The one view that computing code has of recording: a `Recorder`, handed down by the stage's entry point.

A stage's result is its files. MLflow only records how they came about: run ids, wall times, tags,
sample images, the models as MLflow models. So the code that decides a result never imports the
recording layer (`pipeline.tracking`): the entry point builds a recorder and passes it down, and the
computing code tells it what happened without reading back anything that could change a result. That
is what lets the DVC graph leave the recording layer out of every stage's code deps
(`tests/dvc_graph.py`): an edit to MLflow code re-runs no training.

`Recorder` itself records nothing (tests, benchmarks, a machine without a store); the MLflow
recorders of `pipeline.tracking` override what their stage uses. Every method is a record, never a
reason to fail a result: a recorder warns and goes on when its store goes away (only `check`, at the
start, may refuse).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


class Recorder:
    """Records one stage's run; this base class records nothing."""

    def check(self) -> None:
        """Refuse, in seconds and with one line, a record that cannot be kept (an unreachable store):
        called before work that would otherwise be lost."""

    def start(self, facts: Mapping[str, Any], resume: Mapping[str, Any] | None = None) -> None:
        """A run begins: `facts` say what it computes (variant, seed, params, data, device...).
        `resume` is what `state` returned when the run was last checkpointed, for a resumed run."""

    def state(self) -> dict[str, Any]:
        """What a resumed run needs to continue the same record (kept in resume checkpoints only, never
        in a stage's output)."""
        return {}

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        """Numbers at a training step (losses, learning rate, throughput)."""

    def image(self, key: str, pixels: Callable[[], Any], step: int) -> None:
        """An ``(H, W, 3)`` uint8 image under `key` at `step` (the per-epoch sample grid). `pixels` makes
        it when called: only a recorder that keeps images pays for drawing one."""

    def models(self, nets: Mapping[str, Any], image_size: int) -> None:
        """The trained networks, by name, for loading elsewhere (G and F)."""

    def evaluation(self, metrics: Mapping[str, Any], files: Mapping[str, Path], step: int | None) -> None:
        """A run's scores (the metrics file's content) and the files behind them (``metrics``: the
        JSON, ``translations``: the folder of translated images)."""

    def report(self, runs: Sequence[Mapping[str, Any]], markdown: str, table: Any, out_dir: Path) -> None:
        """The ablation's report: every run's metrics, the markdown, the table (a DataFrame) and the
        folder it was written to."""

    def end(self, status: str) -> None:
        """The run ended: ``FINISHED``, ``FAILED`` or ``KILLED`` (stopped by a signal)."""


NOTHING = Recorder()  # the default of every computing function: record nothing
