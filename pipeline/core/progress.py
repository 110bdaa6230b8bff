"""Progress bars, one way: lively in a terminal, a line at most every ~30 s in a log.

Under DVC, CI or a Prefect worker stderr is a pipe or a file, and every refresh of a tqdm bar becomes
one more line in the log (a default `dvc repro` wrote about 3,000 of them). So every bar in the
pipeline comes from `progress`, which refreshes at most every `LOG_INTERVAL_S` seconds when stderr
is not a terminal. ``TQDM_MININTERVAL`` (seconds), when set, wins either way: the Prefect flow sets
it for its stages, and anyone can set it for a run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

INTERVAL_ENV = "TQDM_MININTERVAL"
LOG_INTERVAL_S = 30.0
TERMINAL_INTERVAL_S = 0.5


def refresh_interval(stream: Any = None, default: float = TERMINAL_INTERVAL_S) -> float:
    """Seconds between two refreshes of a bar on `stream` (default: stderr), `default` in a terminal."""
    configured = os.environ.get(INTERVAL_ENV, "").strip()
    if configured:
        try:
            return max(0.0, float(configured))
        except ValueError:
            pass  # a malformed setting is not worth failing a stage for: use the policy below
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        terminal = bool(isatty and isatty())
    except (OSError, ValueError):  # a closed stream
        terminal = False
    return default if terminal else LOG_INTERVAL_S


class Bar(tqdm):
    """A tqdm bar whose postfix and description show at its next timed refresh: tqdm's default redraws
    at every call, which is a log line per training step when a loop updates the losses shown."""

    def set_postfix(self, ordered_dict=None, refresh: bool = False, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=refresh, **kwargs)

    def set_description(self, desc=None, refresh: bool = False) -> None:
        super().set_description(desc, refresh=refresh)


def progress(iterable: Iterable | None = None, **kwargs: Any) -> Bar:
    """A bar refreshed as `refresh_interval` says; `kwargs` are tqdm's (``mininterval`` is the
    interval in a terminal only)."""
    interval = refresh_interval(kwargs.get("file"), kwargs.pop("mininterval", TERMINAL_INTERVAL_S))
    # tqdm also redraws a bar that has been quiet for `maxinterval` (10 s by default): never more
    # often than the interval asked for.
    kwargs["maxinterval"] = max(kwargs.get("maxinterval", 10.0), interval)
    return Bar(iterable, mininterval=interval, **kwargs)


def print_line(message: str) -> None:
    """Print `message` as its own line without tearing a bar that is being drawn (`tqdm.write`)."""
    tqdm.write(message)
