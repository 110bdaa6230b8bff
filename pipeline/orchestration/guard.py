"""Run one command so that it, and every process it starts, dies with the process that asked for it.

    python pipeline/orchestration/guard.py <parent pid> <command...>

The flow runs each DVC command through this guard (`pipeline.orchestration.dvc_runner`). The command gets a
process group of its own: DVC and the stage it runs (and the stage's own workers) are all in it. The
guard stops that whole group, SIGTERM first so a training stage saves its checkpoint and ends its
MLflow run KILLED, then SIGKILL after `GRACE_S`, when

- it is asked to (SIGTERM, SIGINT or SIGHUP: a cancelled flow run, the worker shutting down), or
- its parent is gone (the flow-run process was SIGKILLed, or crashed): the guard checks every
  `POLL_S`, since a dead parent sends nothing.

Without it, a SIGKILLed flow run left DVC and its stage running until the stage next wrote to the dead
pipe, and a quiet stage held DVC's lock for as long as it ran. The guard also relays the command's
output, so that no write of the stage ever fails on a dead reader: a stage that is being stopped saves
its checkpoint and ends its MLflow run instead of dying of a broken pipe. The command's exit status is
the guard's (128 + the signal number when stopped). Standard library only, run as a file, so it starts in
milliseconds whatever the working directory; POSIX only (the flow's workers are Linux machines).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

GRACE_S = 10.0  # SIGTERM -> SIGKILL: a train stage finishes its step and saves its checkpoint
POLL_S = 0.25  # how often the parent's presence is checked


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(process: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """SIGTERM to `process`'s whole group, SIGKILL to what is left after `grace_s`; waits for it."""
    pgid = process.pid
    for signum, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            process.poll()  # reap the leader, or the group never empties
            if not _group_alive(pgid):
                return
            time.sleep(0.05)
    process.poll()


def _relay(source) -> None:
    """Copy the command's output to ours until it ends; once our reader is gone, drop it."""
    reader_alive = True
    for chunk in iter(lambda: source.read1(65536), b""):
        if reader_alive:
            try:
                os.write(sys.stdout.fileno(), chunk)
            except OSError:  # EPIPE: the flow-run process is gone; the command must not notice
                reader_alive = False


def main(argv: list[str]) -> int:
    """Start ``argv[1:]`` in a new session and wait for it; stop its group with the parent ``argv[0]``."""
    parent, command = int(argv[0]), argv[1:]
    requested: list[int] = []

    def on_signal(signum: int, _frame) -> None:
        requested.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    if os.getppid() != parent:  # the parent died before the guard got going
        return 128 + signal.SIGTERM
    # Its own session: a signal to the flow's process group (Prefect cancelling the run) reaches the
    # guard's parent, which then stops the guard, never DVC half-way through a write.
    process = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    relay = threading.Thread(target=_relay, args=(process.stdout,), daemon=True)
    relay.start()
    while True:
        try:
            returncode = process.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            if requested or os.getppid() != parent:
                stop_group(process)
                returncode = 128 + (requested[0] if requested else signal.SIGTERM)
                break
            continue
        if _group_alive(process.pid):  # something the command started outlived it
            stop_group(process)
        break
    relay.join(timeout=5)
    return returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
