"""A run's losses: read back from the device (`LossLog`, with the NaN/inf check), then one row every
`train.log_every` steps, the mean of each loss term over those steps, written as CSV (columns step,
epoch, then the terms the variant has)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from pipeline.core.errors import PipelineError
from pipeline.core.fileio import atomic_write_text
from pipeline.cyclegan.distributed import Parallel
from pipeline.cyclegan.losses import LossDict


def window_row(sums: dict[str, float], steps: int, step: int, steps_per_epoch: int) -> dict[str, float]:
    """One row: the mean of each loss over the `steps` steps that end at `step`."""
    row: dict[str, float] = {"step": step, "epoch": (step - 1) // steps_per_epoch}
    row.update({name: total / steps for name, total in sums.items()})
    return row


def write_curves(path: Path | None, rows: list[dict[str, float]]) -> None:
    """The rows as CSV, atomically (nothing when `path` is None)."""
    if path is None:
        return
    import pandas as pd

    columns = ["step", "epoch", *sorted({k for row in rows for k in row} - {"epoch", "step"})]
    atomic_write_text(path, pd.DataFrame(rows, columns=columns).to_csv(index=False))


class LossLog:
    """Per-step losses kept where they were computed until read back (one host sync per read-back).

    `record` copies a step's losses into a row of a device buffer (no sync); `read` fetches the rows
    recorded since the last read, averaged over ranks under DDP, and stops the run at the first NaN or
    inf, naming its step and term even when it is read back steps later.
    """

    def __init__(self, capacity: int, device: torch.device, parallel: Parallel | None = None):
        self.capacity, self.device, self.parallel = capacity, device, parallel
        self.names: list[str] = []
        self.buffer: torch.Tensor | None = None
        self.steps: list[int] = []

    def record(self, step: int, losses: LossDict) -> None:
        if self.buffer is None:
            self.names = list(losses)
            self.buffer = torch.empty(
                (self.capacity, len(self.names)), dtype=torch.float32, device=self.device
            )
        if len(self.steps) == self.capacity:
            raise RuntimeError(f"LossLog holds {self.capacity} unread steps: read it back first")
        torch.stack([losses[name].float() for name in self.names], out=self.buffer[len(self.steps)])
        self.steps.append(step)

    def read(self, read_every: int = 1) -> list[tuple[int, dict[str, float]]]:
        """(step, {loss name: value}) for each unread step, oldest first; PipelineError on NaN/inf."""
        if not self.steps:
            return []
        values = self.buffer[: len(self.steps)]
        if self.parallel is not None:
            values = self.parallel.mean(values)
        rows = values.tolist()
        steps, self.steps = self.steps, []
        for step, row in zip(steps, rows, strict=True):
            for name, value in zip(self.names, row, strict=True):
                if not math.isfinite(value):
                    late = (
                        f" (found when reading losses back after step {steps[-1]}; the fast path reads "
                        f"them every {read_every} steps)"
                        if steps[-1] != step
                        else ""
                    )
                    raise PipelineError(
                        f"{name} is {value} at step {step}{late}: training diverged; lower train.lr or "
                        "check the data, then delete the checkpoint and rerun"
                    )
        return [
            (step, dict(zip(self.names, row, strict=True))) for step, row in zip(steps, rows, strict=True)
        ]
