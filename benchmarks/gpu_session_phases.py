"""The GPU session's phases that run in child processes of their own
(``python -m benchmarks.gpu_session ablation PLAN``, then ``... evaluate PLAN``): the planned variants
trained in one process, then translated, scored and reported.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

from benchmarks.gpu_session_plan import VARIANT_ORDER
from pipeline.core.config import PROJECT_ROOT


def run_ablation(plan_path: Path) -> int:
    """Train the planned variants in order, in this one process; times into ablation_times.json."""
    import torch

    from pipeline.core.config import from_mapping, read_params
    from pipeline.core.study import read_variants
    from pipeline.cyclegan.config import TrainConfig
    from pipeline.cyclegan.loop import TrainingRun, train_variant
    from pipeline.cyclegan.losses import LossSwitches

    plan = json.loads(plan_path.read_text())
    work = plan_path.parent
    cfg = TrainConfig(**plan["train"])
    variants = read_variants(read_params(PROJECT_ROOT / "params.yaml"))
    times: dict[str, float] = {}
    for name in VARIANT_ORDER:
        switches = from_mapping(LossSwitches, variants[name], f"variants.{name}")
        started = time.monotonic()
        run = TrainingRun(
            name,
            switches,
            cfg,
            Path(plan["split"]),
            work / "models" / name,
            curves=work / "plots" / "train" / f"{name}-{cfg.seed}.csv",
        )
        train_variant(run)  # recorded by nothing: this session has no MLflow store
        times[name] = round(time.monotonic() - started, 1)
        (work / "ablation_times.json").write_text(json.dumps(times, indent=2))
        print(f"ablation: {name} trained in {times[name]} s", flush=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return 0


def run_evaluation_phase(plan_path: Path) -> int:
    """Translate and score every finished variant, the floor and ceiling, then the report."""
    import pipeline.scoring.fid
    from pipeline.core.config import from_mapping, load_section
    from pipeline.cyclegan.checkpoint import load_checkpoint
    from pipeline.cyclegan.translate import TranslateConfig, translate_val
    from pipeline.report.build import ReportConfig, build_report
    from pipeline.report.paper import PAPER_ORDER
    from pipeline.scoring.bounds import BoundsConfig, run_bounds
    from pipeline.scoring.evaluate import EvaluateConfig, run_evaluation

    # No Inception weights travel and nothing outside the machine answers: fail fast, not 60 s a try.
    pipeline.scoring.fid.DOWNLOAD_TIMEOUT_S = 3.0
    plan = json.loads(plan_path.read_text())
    work, params = plan_path.parent, PROJECT_ROOT / "params.yaml"
    translate_cfg = load_section(params, "translate", TranslateConfig)
    evaluate_cfg = load_section(params, "evaluate", EvaluateConfig)
    seed = plan["train"].get("seed", 0)
    done = []
    for name in VARIANT_ORDER:
        checkpoint = work / "models" / name / "checkpoint.pt"
        if not checkpoint.is_file() or not load_checkpoint(checkpoint).get("finished"):
            print(f"evaluate: {name} has no finished checkpoint: left out of the report", flush=True)
            continue
        run = f"{name}-{seed}"
        translate_val(checkpoint, plan["split"], work / "translations" / run, translate_cfg)
        run_evaluation(
            name,
            work / "translations" / run,
            plan["split"],
            plan["judge"],
            work / "metrics" / f"{run}.json",
            evaluate_cfg,
            checkpoint=checkpoint,
            confusion_npz=work / "confusion" / f"{run}.npz",
        )
        done.append(name)
        print(f"evaluate: {name} scored", flush=True)
    if not done:
        print("evaluate: nothing to report", flush=True)
        return 1
    bounds = work / "metrics" / "bounds.json"
    bounds_cfg = from_mapping(
        BoundsConfig, {"batch_size": evaluate_cfg.batch_size, "device": evaluate_cfg.device}, "evaluate"
    )
    run_bounds(plan["split"], plan["judge"], bounds, work / "confusion" / "bounds.npz", bounds_cfg)
    build_report(
        [name for name in PAPER_ORDER if name in done],
        [seed],
        work / "metrics",
        work / "confusion",
        bounds,
        work / "translations",
        plan["split"],
        work / "plots" / "train",
        work / "reports",
        load_section(params, "report", ReportConfig),
    )
    return 0
