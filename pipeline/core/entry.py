"""What every entry point (each stage, the `cyclegan` command) does with a failure: one `error:` line.

Whatever goes wrong, the user sees one line that says what and what to do, and a non-zero exit
status; the traceback only with ``CYCLEGAN_DEBUG=1``. A `PipelineError` already says both; the
common failures from below the pipeline (a full disk, a decompression bomb, an unreachable server,
a permission) are put into words here, and anything else is named as unexpected, with its type.
Every line has URLs redacted (`pipeline.core.urls`): an exception from a client library quotes the
URL it tried, credentials included.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator

from pipeline.core.errors import PipelineError
from pipeline.core.signals import Interrupted
from pipeline.core.urls import redact_text, redact_url

DEBUG_ENV = "CYCLEGAN_DEBUG"
MAX_LINE = 600  # characters: a client library's message can be a page long

_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
_FULL_HINT = (
    "free some space (or point the output at a larger disk) and rerun; outputs are replaced only "
    "when complete, so the previous ones are intact"
)


def run_main(main: Callable[[], int], prefix: str = "error") -> int:
    """Call `main`; any failure becomes one ``error: ...`` line on stderr and exit status 1.

    An interrupted loop (`Interrupted`) and Ctrl-C elsewhere print ``interrupted: ...`` and return
    128 + the signal number, so a caller (DVC, the flow) sees that the stage was stopped, not broken.
    """
    try:
        return main()
    except Interrupted as exc:
        _debug_traceback()
        print(f"interrupted: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        _debug_traceback()
        print("interrupted: stopped by SIGINT (Ctrl-C)", file=sys.stderr)
        return 130
    except Exception as exc:
        _debug_traceback()
        print(f"{prefix}: {_one_line(describe(exc))}", file=sys.stderr)
        return 1


def describe(exc: BaseException) -> str:
    """What went wrong and what to do, in words, for an exception of any kind."""
    if isinstance(exc, PipelineError):
        return str(exc)
    for cause in _chain(exc):
        message = _describe_known(cause)
        if message is not None:
            return message
    detail = str(exc) or "no message"
    return (
        f"unexpected {type(exc).__name__}: {detail} (rerun with {DEBUG_ENV}=1 for the traceback, "
        "and please report it)"
    )


def _describe_known(exc: BaseException) -> str | None:
    if isinstance(exc, OSError) and exc.errno in (*_FULL, errno.EFBIG):
        where = f" writing {exc.filename}" if exc.filename else ""
        what = _FULL.get(exc.errno, "file too large for this file system or the file size limit (ulimit -f)")
        return f"{what}{where}: {_FULL_HINT}"
    if type(exc).__name__ == "OperationalError" and re.search(r"disk is full|disk I/O error", str(exc)):
        # SQLite (the MLflow store) on a full disk, through sqlite3 or SQLAlchemy
        return f"a database could not be written ({str(exc).splitlines()[0][:200]}): {_FULL_HINT}"
    if type(exc).__name__ == "DecompressionBombError":  # PIL's, by name: PIL need not be imported
        return (
            f"refused an image as a possible decompression bomb ({exc}); remove it, or shrink it if it "
            "is a genuine image"
        )
    if _is_connection_error(exc):
        return _describe_connection(exc)
    if isinstance(exc, PermissionError):
        target = f" {exc.filename}" if exc.filename else ""
        return f"permission denied{target}: make it writable (or readable) for this user, or use another path"
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return f"{exc.filename or 'the output'} is on a read-only file system: choose another path"
    if isinstance(exc, FileExistsError):
        return f"{exc.filename or 'a file'} already exists where a folder or file was to be made: remove it"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or exc}: {exc.filename}"
    return None


def _is_connection_error(exc: BaseException) -> bool:
    """requests', urllib3's, httpx's and the standard library's refused/unreachable/timed-out errors."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    module = type(exc).__module__.split(".", 1)[0]
    return module in {"requests", "urllib3", "httpx", "httpcore"} and bool(
        names & {"ConnectionError", "ConnectError", "Timeout", "TimeoutException", "NewConnectionError"}
    )


def _describe_connection(exc: BaseException) -> str:
    request = getattr(exc, "request", None)
    url = getattr(request, "url", None)
    target = f" {redact_url(str(url))}" if url else ""
    hint = "check that the server runs and the network is up"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        hint += f" (MLflow store: MLFLOW_TRACKING_URI={redact_url(os.environ['MLFLOW_TRACKING_URI'])})"
    return f"cannot connect to{target or ' a server'} ({type(exc).__name__}): {hint}"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what caused it (``raise ... from`` or during handling), once each."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _one_line(text: str) -> str:
    line = redact_text(" ".join(text.split()))
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 1] + "…"


def _debug_traceback() -> None:
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        traceback.print_exc(file=sys.stderr)
