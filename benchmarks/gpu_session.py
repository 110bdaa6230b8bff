"""One GPU session, end to end, inside a time budget (`benchmarks/gpu_session.sh` runs it).

    python -m benchmarks.gpu_session run --pack .gpu --out $OUT --budget-s 450
    python -m benchmarks.gpu_session run --tiny --out /tmp/out      # CPU rehearsal, builds its own data

Phases, each in its own process (a crash or a hang in one - a CUDA error, a compile that does not
finish - is recorded and the session goes on; every phase has a deadline):

1. unpack the carried split and judge (`benchmarks.carry`);
2. on CUDA: the GPU tests of tests/cyclegan/test_fast.py (a captured step equals eager steps), ~10 s;
3. the benchmark (`benchmarks.bench`) with its own time budget, then N = 1, 2, 5, 10 batch-1 runs at
   once as N processes or one batched model (`benchmarks.concurrent`, into the benchmark JSON as
   `concurrent_b1`; no measurement starts after `CONCURRENT_BUDGET_S`);
4. the plan: from the benchmark's measured rate of the fastest working fast-path mode at the ablation
   batch size (default 1, the paper's), the number of epochs E that lets all five variants finish in the
   time left (the same E for every variant; lr constant for ceil(E/2) epochs then linear decay; if not
   even one epoch fits, the same max_steps for all);
5. the ablation: the five variants in one process (one compile serves all), paper settings at 128 px
   except for E, and the training domains stored at 128 px (`benchmarks.carry`: no crop jitter);
6. translate + evaluate + report for every finished variant (FID is null: no Inception weights travel);
7. the files under $OUT (at most 8, the device tool's limit): the benchmark JSON, session.json (plan,
   timings, errors), the report's markdown, report.tar.gz (report, metrics, loss CSVs) and the log.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu_session_phases import run_ablation, run_evaluation_phase
from benchmarks.gpu_session_plan import (
    SAFETY,
    VARIANT_ORDER,
    VARIANT_OVERHEAD_S,
    choose_mode,
    plan_ablation,
    train_config,
)
from pipeline.core.config import PROJECT_ROOT

# The public names, wherever they are defined: callers import them from this module.
__all__ = [
    "CONCURRENT_BUDGET_S",
    "EVAL_RESERVE_S",
    "SAFETY",
    "VARIANT_ORDER",
    "VARIANT_OVERHEAD_S",
    "Session",
    "choose_mode",
    "main",
    "make_tiny_pack",
    "measure_concurrent",
    "plan_ablation",
    "run_ablation",
    "run_evaluation_phase",
    "run_session",
    "train_config",
]

EVAL_RESERVE_S = 90.0  # translate + evaluate 5 x 1000 images, the report, packing the outputs
CONCURRENT_BUDGET_S = 60.0  # benchmarks.concurrent: no (design, N) measurement starts after this


@dataclasses.dataclass
class Session:
    work: Path
    out: Path
    budget_s: float
    tiny: bool
    started: float = dataclasses.field(default_factory=time.monotonic)
    record: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.work / "session.log"

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def say(self, message: str) -> None:
        line = f"[{time.monotonic() - self.started:6.1f} s] {message}"
        print(line, flush=True)
        with self.log_path.open("a") as log:
            log.write(line + "\n")

    def save(self) -> None:
        self.record["elapsed_s"] = round(time.monotonic() - self.started, 1)
        (self.work / "session.json").write_text(json.dumps(self.record, indent=2, default=str) + "\n")

    def phase(self, name: str, args: list[str], timeout: float, env: dict[str, str] | None = None) -> bool:
        """Run `python <args>` as one phase, output into the log; False on failure or timeout."""
        timeout = max(5.0, timeout)
        self.say(f"{name}: start (deadline {timeout:.0f} s)")
        started = time.monotonic()
        environment = {**os.environ, **(env or {})}
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(PROJECT_ROOT), environment.get("PYTHONPATH")])
        )
        environment["PYTHONUNBUFFERED"] = "1"
        with self.log_path.open("a") as log:
            # Its own process group, so a deadline also stops what it started (compile workers).
            child = subprocess.Popen(
                [sys.executable, *args],
                cwd=PROJECT_ROOT,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                code = child.wait(timeout=timeout)
                status, ok = f"exit {code}", code == 0
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                status, ok = f"stopped at its {timeout:.0f} s deadline", False
        seconds = round(time.monotonic() - started, 1)
        self.record.setdefault("phases", {})[name] = {"ok": ok, "status": status, "seconds": seconds}
        self.say(f"{name}: {status} after {seconds} s")
        self.save()
        return ok


# --- the data: carried, or made up for the CPU rehearsal ----------------------------------------------


def make_tiny_pack(work: Path) -> Path:
    """A pix2pix-style synthetic archive -> split -> tiny judge -> pack (what a real session carries)."""
    import numpy as np
    from PIL import Image

    from benchmarks.carry import pack
    from pipeline.data.labels import NUM_CLASSES, colorize
    from pipeline.data.split import SplitConfig, split
    from pipeline.judge.train import JudgeConfig, train_judge

    rng = np.random.default_rng(0)
    raw = work / "source" / "cityscapes"
    for subset, count in (("train", 24), ("val", 6)):
        (raw / subset).mkdir(parents=True, exist_ok=True)
        for index in range(1, count + 1):
            ids = np.kron(rng.integers(0, NUM_CLASSES, (8, 8)).astype(np.uint8), np.ones((32, 32), np.uint8))
            label = colorize(ids)
            photo = np.clip(label.astype(np.int16) // 2 + rng.integers(0, 96, label.shape), 0, 255).astype(
                np.uint8
            )
            Image.fromarray(np.concatenate([photo, label], axis=1)).save(
                raw / subset / f"{index}.jpg", quality=95
            )
    split_dir = work / "source" / "split"
    split(raw, split_dir, SplitConfig(load_size=36, test_size=32, workers=1))
    judge_cfg = JudgeConfig(
        device="cpu", image_size=32, epochs=1, batch_size=8, width=4, checkpoint_every=1000
    )
    scores = train_judge(split_dir, work / "source" / "fcn", judge_cfg)
    (work / "source" / "fcn.json").write_text(json.dumps(scores, default=str))
    return_dir = work / "pack"
    pack(
        split_dir,
        work / "source" / "fcn",
        return_dir,
        work / "source" / "fcn.json",
        train_size=32,
        site=False,
    )
    return return_dir


# --- the session ------------------------------------------------------------------------------------


def measure_concurrent(session: Session, bench: dict[str, Any], tiny: bool) -> None:
    """`benchmarks.concurrent` (designs a and b) into the benchmark JSON: `concurrent_b1` holds the
    pairs/s by design and N, `concurrent_b1_setup` the rest of its report."""
    path = session.work / "concurrent.json"
    args = ["-m", "benchmarks.concurrent", "--json", str(path), "--budget-s", str(CONCURRENT_BUDGET_S)]
    args += ["--tiny"] if tiny else ["--runs", "1,2,5,10"]
    session.phase("concurrent", args, CONCURRENT_BUDGET_S + 90)
    if bench and path.is_file():
        report = json.loads(path.read_text())
        bench["concurrent_b1"] = report.pop("concurrent_b1")
        bench["concurrent_b1_setup"] = report
        (session.work / "bench.json").write_text(json.dumps(bench, indent=2) + "\n")


def _environment(session: Session) -> None:
    import torch

    info = {"torch": torch.__version__, "python": sys.version.split()[0], "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = smi.stdout.strip()
    session.record["environment"] = info
    session.say(f"environment: {info}")


def _pairs_per_epoch(split_dir: Path, batch: int) -> int:
    from pipeline.data.domains import LABEL_SUBSET, PHOTO_SUBSET
    from pipeline.data.manifest import read_manifest

    largest = max(len(read_manifest(split_dir, subset=s)) for s in (PHOTO_SUBSET, LABEL_SUBSET))
    return largest // batch * batch


def _collect(session: Session, bench_name: str) -> list[Path]:
    """At most 8 files, one folder deep, into `out` (the device tool's limits)."""
    work, out = session.work, session.out
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for source, name in (
        (work / "bench.json", f"{bench_name}.json"),
        (work / "reports" / "ablation.md", "ablation.md"),
    ):
        if source.is_file():
            shutil.copy2(source, out / name)
            written.append(out / name)
    with tarfile.open(out / "report.tar.gz", "w:gz") as tar:
        for folder in (
            "reports",
            "metrics",
            "plots",
            "ablation_times.json",
            "plan.json",
            "bench.json",
            "session.json",
        ):
            if (work / folder).exists():
                tar.add(work / folder, arcname=folder)
    written.append(out / "report.tar.gz")
    session.save()
    for name in ("session.json", "session.log"):
        shutil.copy2(work / name, out / name)
        written.append(out / name)
    return written


def run_session(
    pack_dir: Path | None,
    out: Path,
    work: Path,
    budget_s: float,
    bench_budget_s: float,
    batch: int,
    tiny: bool,
    bench_name: str,
) -> int:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    session = Session(work, out, budget_s, tiny)
    session.record.update(
        {"budget_s": budget_s, "bench_budget_s": bench_budget_s, "batch": batch, "tiny": tiny}
    )
    _environment(session)
    import torch

    cuda = torch.cuda.is_available()
    from benchmarks.carry import unpack

    if tiny:
        session.say("tiny: making a synthetic split, a judge and their pack")
        pack_dir = make_tiny_pack(work)
    paths = unpack(pack_dir, work)
    session.record["pack"] = (
        json.loads((pack_dir / "pack.json").read_text()) if (pack_dir / "pack.json").is_file() else {}
    )
    session.say(f"unpacked {paths['split']}")
    split_dir = paths["split"]

    if cuda:
        session.phase(
            "gpu tests",
            [
                "-m",
                "pytest",
                "-q",
                "-m",
                "gpu",
                "tests/cyclegan/test_fast.py",
                "-k",
                "False",
                "-p",
                "no:cacheprovider",
            ],
            120,
        )
    bench_args = ["-m", "benchmarks.bench", "--split", str(split_dir), "--out", str(work / "bench.json")]
    bench_args += ["--tiny"] if tiny else []
    bench_args += ["--budget-s", str(bench_budget_s)]
    session.phase("benchmark", bench_args, bench_budget_s + (30 if tiny else 120))
    bench = json.loads((work / "bench.json").read_text()) if (work / "bench.json").is_file() else {}
    if bench:
        from benchmarks.bench import format_table

        session.say("benchmark table:\n" + format_table(bench))
    measure_concurrent(session, bench, tiny)

    image_size = session.record["pack"].get("train_size") or (32 if tiny else 128)
    seconds = session.left() - EVAL_RESERVE_S * (0.4 if tiny else 1.0)
    plan = plan_ablation(
        bench, batch, seconds, _pairs_per_epoch(split_dir, batch), max_epochs=2 if tiny else None
    )
    session.record["plan"] = plan
    session.say(f"plan: {plan}")
    if plan["feasible"]:
        cfg = train_config(plan, tiny, image_size)
        plan_file = {
            **plan,
            "train": dataclasses.asdict(cfg),
            "split": str(split_dir),
            "judge": str(paths["judge"]),
            "judge_metrics": str(paths["judge_metrics"]) if "judge_metrics" in paths else None,
        }
        (work / "plan.json").write_text(json.dumps(plan_file, indent=2))
        session.record["train"] = plan_file["train"]
        session.phase(
            "ablation",
            ["-m", "benchmarks.gpu_session", "ablation", str(work / "plan.json")],
            session.left() - EVAL_RESERVE_S * (0.4 if tiny else 1.0) + 20,
        )
        times_file = work / "ablation_times.json"
        session.record["ablation_seconds"] = (
            json.loads(times_file.read_text()) if times_file.is_file() else {}
        )
        session.phase(
            "evaluate",
            ["-m", "benchmarks.gpu_session", "evaluate", str(work / "plan.json")],
            max(session.left() - 10, 60),
        )
    written = _collect(session, bench_name)
    if (work / "reports" / "ablation.md").is_file():
        print((work / "reports" / "ablation.md").read_text()[:4000])
    if bench:
        from benchmarks.bench import format_table

        print(format_table(bench))
    seconds = time.monotonic() - session.started
    print(
        f"session: {seconds:.0f} s; plan {plan.get('mode')} x {plan.get('epochs')} epochs; "
        f"files: {', '.join(p.name for p in written)}"
    )
    return 0 if bench else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="the whole session")
    run.add_argument(
        "--pack", type=Path, default=PROJECT_ROOT / ".gpu", help="the carried folder (benchmarks.carry)"
    )
    run.add_argument("--out", type=Path, required=True, help="where the (at most 8) result files go ($OUT)")
    run.add_argument("--work", type=Path, default=Path("/tmp/gpu-session"))
    run.add_argument("--budget-s", type=float, default=450.0, help="wall time for everything")
    run.add_argument(
        "--bench-budget-s", type=float, default=240.0, help="no benchmark mode starts after this"
    )
    run.add_argument("--batch", type=int, default=1, help="the ablation's batch size (the paper: 1)")
    run.add_argument("--tiny", action="store_true", help="CPU rehearsal on synthetic data")
    run.add_argument(
        "--bench-name", default=None, help="name of the benchmark JSON in --out (default h200 / cpu-tiny)"
    )
    for name in ("ablation", "evaluate"):
        phase = commands.add_parser(name)
        phase.add_argument("plan", type=Path)
    args = parser.parse_args(argv)
    if args.command == "ablation":
        return run_ablation(args.plan)
    if args.command == "evaluate":
        return run_evaluation_phase(args.plan)
    bench_name = args.bench_name or ("cpu-tiny" if args.tiny else "h200")
    return run_session(
        None if args.tiny else args.pack,
        args.out,
        args.work,
        args.budget_s,
        args.bench_budget_s,
        args.batch,
        args.tiny,
        bench_name,
    )


if __name__ == "__main__":
    sys.exit(main())
