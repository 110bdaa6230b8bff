"""What every entry point (each stage, the `cyclegan` command) does with a failure: one `error:` line."""

from __future__ import annotations

import sys
from collections.abc import Callable

from pipeline.core.errors import PipelineError
from pipeline.core.signals import Interrupted


def run_main(main: Callable[[], int], prefix: str = "error") -> int:
    """Call `main`; a `PipelineError` becomes one ``error: ...`` line on stderr and exit status 1, an
    interrupted loop its 128 + signal status."""
    try:
        return main()
    except Interrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return exc.exit_code
    except PipelineError as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return 1
