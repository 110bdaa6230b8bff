"""The loss curves side by side: every run's training CSV regrouped into one long-format CSV per loss
term (``step, run, <term>``), which `dvc plots` draws as one line per (variant, seed) (dvc.yaml's
top-level `plots:`, template `.dvc/plots/losses.json`)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from pipeline.core.study import run_name


def read_curves(train_plots_dir: Path | None, runs: list[tuple[str, int]]) -> dict[str, pd.DataFrame]:
    """Run name -> its loss curves (a row every `train.log_every` steps); missing or unreadable ones
    are left out with a warning."""
    curves: dict[str, pd.DataFrame] = {}
    if train_plots_dir is None:
        return curves
    for variant, seed in runs:
        name = run_name(variant, seed)
        path = train_plots_dir / f"{name}.csv"
        try:
            curves[name] = pd.read_csv(path)
        except FileNotFoundError:
            warnings.warn(f"no loss curves for {name} ({path})", stacklevel=2)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            warnings.warn(f"skipping unreadable loss curves {path}: {exc}", stacklevel=2)
    return curves


def loss_terms(curves: dict[str, pd.DataFrame]) -> list[str]:
    return sorted({c for df in curves.values() for c in df.columns if c.startswith("loss")})


def write_long_format(curves: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    """``out_dir/<term>.csv`` for every loss term any run has: the runs that have it, stacked."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for term in loss_terms(curves):
        parts = [
            pd.DataFrame({"step": df["step"], "run": name, term: df[term]})
            for name, df in curves.items()
            if term in df.columns
        ]
        path = out_dir / f"{term}.csv"
        pd.concat(parts, ignore_index=True).to_csv(path, index=False, float_format="%.6g")
        written.append(path)
    return written
