"""The loss curves of a run: one row every `train.log_every` steps, the mean of each loss term over
those steps, written as CSV (columns step, epoch, then the terms the variant has)."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.fileio import atomic_write_text


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
