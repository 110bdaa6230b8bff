"""SIGINT/SIGTERM as a flag that a training loop checks between steps, so it can checkpoint first."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.core.errors import PipelineError


@dataclass
class StopRequest:
    """Set by the handler: the signal that asked the loop to stop (None: keep going)."""

    signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


class Interrupted(PipelineError):
    """A loop stopped on SIGINT/SIGTERM after saving its checkpoint; rerunning the stage resumes it.

    `exit_code` is the shell's convention for death by that signal, 128 + its number, so a caller
    (DVC, the flow) sees that the stage was interrupted rather than that it failed.
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Turn the first SIGINT/SIGTERM into `StopRequest.signum`; a second one gets the old behaviour.

    Only the main thread can install handlers; elsewhere (a Prefect worker thread) signals keep their
    defaults and the request never fires.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, _frame: Any) -> None:
        request.signum = signum
        signal.signal(signum, previous[signum])

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
