"""The runs trained side by side: how many at once, in which order, on which GPU, and how they end."""

from __future__ import annotations

import threading
import time

import pytest
from prefect import task
from prefect.cache_policies import NO_CACHE

from pipeline.core.errors import PipelineError
from pipeline.orchestration import concurrent
from pipeline.orchestration.concurrent import cost_order, default_jobs, gpu_env, resolve_jobs

VARIANTS = {
    "cycle_only": {"adversarial": False, "cycle_forward": True, "cycle_backward": True},
    "gan_only": {"adversarial": True, "cycle_forward": False, "cycle_backward": False},
    "gan_forward": {"adversarial": True, "cycle_forward": True, "cycle_backward": False},
    "cyclegan": {"adversarial": True, "cycle_forward": True, "cycle_backward": True},
}


def test_single_threaded_cpu_runs_all_go_at_once_up_to_four_a_core(monkeypatch):
    monkeypatch.setattr(concurrent, "cpu_cores", lambda: 2)
    assert default_jobs(5, threads_per_run=1, gpus=0) == 5
    assert default_jobs(30, threads_per_run=1, gpus=0) == 8
    assert default_jobs(5, threads_per_run=2, gpus=0) == 1  # OpenMP threads must not outnumber cores
    assert default_jobs(5, threads_per_run=None, gpus=0) == 1  # torch's default: a thread per core
    monkeypatch.setattr(concurrent, "cpu_cores", lambda: 16)
    assert default_jobs(10, threads_per_run=4, gpus=0) == 4


def test_gpu_runs_are_runs_per_gpu_times_gpus(monkeypatch):
    monkeypatch.delenv(concurrent.RUNS_PER_GPU_ENV, raising=False)
    assert default_jobs(5, threads_per_run=1, gpus=1) == 5
    assert default_jobs(20, threads_per_run=1, gpus=2) == 10
    monkeypatch.setenv(concurrent.RUNS_PER_GPU_ENV, "3")
    assert default_jobs(20, threads_per_run=1, gpus=2) == 6


def test_jobs_given_or_from_the_environment_win_and_bad_ones_are_one_line(monkeypatch):
    monkeypatch.delenv(concurrent.JOBS_ENV, raising=False)
    assert resolve_jobs(3, runs=5, threads_per_run=1, gpus=0) == 3
    monkeypatch.setenv(concurrent.JOBS_ENV, "2")
    assert resolve_jobs(None, runs=5, threads_per_run=1, gpus=0) == 2
    for bad in ("0", "two", "1.5"):
        monkeypatch.setenv(concurrent.JOBS_ENV, bad)
        with pytest.raises(PipelineError, match="CYCLEGAN_JOBS must be a whole number >= 1"):
            resolve_jobs(None, runs=5, threads_per_run=1, gpus=0)
    with pytest.raises(PipelineError, match="jobs must be a whole number >= 1"):
        resolve_jobs(0, runs=5, threads_per_run=1, gpus=0)


def test_the_costliest_runs_go_first():
    names = ["gan_only-0", "cycle_only-0", "cyclegan-1", "gan_forward-0", "cyclegan-0"]
    assert cost_order(names, VARIANTS) == [
        "cyclegan-1",
        "cyclegan-0",
        "gan_forward-0",
        "cycle_only-0",
        "gan_only-0",
    ]


def test_on_several_gpus_each_run_gets_one_round_robin():
    env = {"PATH": "/bin"}
    assert gpu_env(env, 3, gpus=1) == env  # one GPU: nothing to choose
    assert [gpu_env(env, i, gpus=2)["CUDA_VISIBLE_DEVICES"] for i in range(4)] == ["0", "1", "0", "1"]
    visible = {**env, "CUDA_VISIBLE_DEVICES": "2,5,7"}
    assert [gpu_env(visible, i, gpus=3)["CUDA_VISIBLE_DEVICES"] for i in range(4)] == ["2", "5", "7", "2"]


@task(cache_policy=NO_CACHE)
def _train(name: str, seconds: float, fail: bool, state: dict) -> str:
    with state["lock"]:
        state["running"] += 1
        state["most"] = max(state["most"], state["running"])
    time.sleep(seconds)
    with state["lock"]:
        state["running"] -= 1
    if fail:
        raise RuntimeError(f"{name} broke")
    return name


@pytest.mark.slow
def test_runs_go_side_by_side_at_most_jobs_at_once_and_a_failure_stops_no_other(prefect_api):
    state = {"lock": threading.Lock(), "running": 0, "most": 0}
    ended: dict[str, str] = {}

    def submit(runner, name: str, index: int):
        return runner.submit(_train, {"name": name, "seconds": 0.5, "fail": name == "b", "state": state})

    def done(name: str, error: BaseException | None) -> None:
        ended[name] = "completed" if error is None else f"failed: {error}"

    started = time.monotonic()
    concurrent.train_concurrently(["a", "b", "c", "d"], 2, submit, done, stop=lambda: pytest.fail("no stop"))
    print(f"4 runs of 0.5 s, 2 at a time: {time.monotonic() - started:.2f} s")  # a figure, not a test
    assert state["most"] == 2
    assert list(ended) == ["a", "b", "c", "d"] and ended["b"] == "failed: b broke"
    assert all(ended[name] == "completed" for name in "acd")


@pytest.mark.slow
def test_an_interruption_stops_every_running_run_and_goes_on(prefect_api):
    stopped = []

    def submit(runner, name: str, index: int):
        return runner.submit(_train, {"name": name, "seconds": 0.2, "fail": False, "state": _fresh()})

    def done(name: str, error: BaseException | None) -> None:
        raise KeyboardInterrupt  # Ctrl-C while waiting for the runs

    with pytest.raises(KeyboardInterrupt):
        concurrent.train_concurrently(["a", "b"], 2, submit, done, stop=lambda: stopped.append(True))
    assert stopped == [True]


def _fresh() -> dict:
    return {"lock": threading.Lock(), "running": 0, "most": 0}
