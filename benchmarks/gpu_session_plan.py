"""The plan of a GPU session's ablation: from the benchmark's measured rate, how many epochs (or
steps) each of the five variants trains in the time left, and the training config that carries it out.
"""

from __future__ import annotations

from typing import Any

VARIANT_ORDER = ("cyclegan", "gan_forward", "gan_backward", "gan_only", "cycle_only")
SAFETY = 0.85  # share of the measured rate the plan counts on (variants differ; epoch ends; saves)
VARIANT_OVERHEAD_S = 10.0  # per variant: decode the domains, build, warm up, capture, final checkpoint


def choose_mode(bench: dict[str, Any], batch: int) -> dict[str, Any] | None:
    """The fastest fast-path mode the benchmark measured at `batch` (None if none ran)."""
    candidates = [
        m for m in bench.get("modes", []) if m.get("fast") and m.get("batch") == batch and "pairs_per_s" in m
    ]
    return max(candidates, key=lambda m: m["pairs_per_s"], default=None)


def plan_ablation(
    bench: dict[str, Any],
    batch: int,
    seconds: float,
    pairs_per_epoch: int,
    max_epochs: int | None = None,
) -> dict[str, Any]:
    """How long the ablation can train: epochs (or steps) for each of the five variants.

    `seconds` is the wall time left for training all five. The measured rate of the chosen mode is the
    `cyclegan` variant's (every term on, the slowest); the others are faster, so this errs short.
    """
    mode = choose_mode(bench, batch)
    if mode is None:
        return {"feasible": False, "reason": f"the benchmark measured no fast-path mode at batch {batch}"}
    compile_s = (mode.get("first_step_s") or 0.0) if mode.get("compile") else 0.0
    train_s = seconds - len(VARIANT_ORDER) * VARIANT_OVERHEAD_S - compile_s
    pairs = max(0.0, train_s) * mode["pairs_per_s"] * SAFETY / len(VARIANT_ORDER)
    epochs = int(pairs // pairs_per_epoch)
    if max_epochs is not None:
        epochs = min(epochs, max_epochs)
    plan = {
        "feasible": True,
        "mode": mode["key"],
        "batch": batch,
        "compile": bool(mode.get("compile")),
        "cuda_graphs": bool(mode.get("graphs")),
        "rate_pairs_per_s": mode["pairs_per_s"],
        "seconds_for_training": round(train_s, 1),
        "pairs_per_variant": int(pairs),
        "pairs_per_epoch": pairs_per_epoch,
    }
    if epochs >= 1:
        plan.update(epochs=epochs, epochs_constant=-(-epochs // 2), epochs_decay=epochs // 2, max_steps=None)
    else:
        steps = int(pairs // batch)
        if steps < 1:
            return {**plan, "feasible": False, "reason": f"no time left to train ({train_s:.0f} s)"}
        plan.update(epochs=pairs / pairs_per_epoch, epochs_constant=1, epochs_decay=0, max_steps=steps)
    return plan


def train_config(plan: dict[str, Any], tiny: bool, image_size: int):
    """The paper's settings at `image_size`, stored without crop jitter, with the planned length."""
    from pipeline.cyclegan.config import TrainConfig

    size = {"ngf": 8, "ndf": 8, "n_blocks": 1} if tiny else {"ngf": 64, "ndf": 64, "n_blocks": 6}
    return TrainConfig(
        seed=0,
        device="auto",
        bf16=True,
        fast=True,
        channels_last=True,
        compile=plan["compile"],
        cuda_graphs=plan["cuda_graphs"],
        load_size=image_size,
        crop_size=image_size,
        batch_size=plan["batch"],
        **size,
        epochs_constant=plan["epochs_constant"],
        epochs_decay=plan["epochs_decay"],
        max_steps=plan["max_steps"],
        checkpoint_every=10**9,  # one checkpoint, at the end (a killed variant is reported missing)
        log_every=10 if tiny else 100,
        experiment="cyclegan-gpu-session",
    )
