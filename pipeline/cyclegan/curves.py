"""The loss curves of a run as CSV rows for `dvc plots`: per-epoch means of every loss term."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.fileio import atomic_write_text


def write_plots(path: Path | None, history: list[dict[str, float]]) -> None:
    """Per-epoch mean losses as CSV (columns epoch, step, losses), atomically, for `dvc plots`."""
    if path is None:
        return
    import pandas as pd

    columns = ["epoch", "step", *sorted({k for row in history for k in row} - {"epoch", "step"})]
    atomic_write_text(path, pd.DataFrame(history, columns=columns).to_csv(index=False))


def epoch_row(sums: dict[str, float], steps: int, step: int, steps_per_epoch: int) -> dict[str, float]:
    """One plots row: the mean of each loss over the `steps` steps of the epoch that ends at `step`."""
    row = {"epoch": (step - 1) // steps_per_epoch, "step": step}
    row.update({name: total / steps for name, total in sums.items()})
    return row


def plot_rows(
    history: list[dict[str, float]], sums: dict[str, float], steps: int, step: int, steps_per_epoch: int
) -> list[dict[str, float]]:
    """The finished epochs' rows plus the epoch in progress, if any (a run stopped by max_steps)."""
    return history + ([epoch_row(sums, steps, step, steps_per_epoch)] if steps else [])
