"""What makes a checkpoint resumable: the same config identity and the same training data."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError
from pipeline.cyclegan.checkpoint import load_checkpoint
from pipeline.cyclegan.config import OPERATIONAL_KEYS, TrainConfig
from pipeline.cyclegan.losses import LossSwitches


def config_record(cfg: TrainConfig, switches: LossSwitches) -> dict[str, Any]:
    return {"train": dataclasses.asdict(cfg), "switches": dataclasses.asdict(switches)}


def config_differences(
    state: dict[str, Any], variant: str, cfg: TrainConfig, switches: LossSwitches, data: dict[str, str | None]
) -> list[str]:
    """Why a checkpoint cannot be resumed under the current params ([] if it can)."""
    stored = {f"train.{k}": v for k, v in state["config"]["train"].items() if k not in OPERATIONAL_KEYS}
    stored.update({f"variant.{k}": v for k, v in state["config"]["switches"].items()})
    stored["variant"] = state["variant"]
    stored["data.train_sha256"] = state["data"]["train_sha256"]
    current = {f"train.{k}": v for k, v in cfg.identity().items()}
    current.update({f"variant.{k}": v for k, v in dataclasses.asdict(switches).items()})
    current["variant"] = variant
    current["data.train_sha256"] = data["train_sha256"]
    return [
        f"{key}: checkpoint {stored.get(key, '<absent>')!r}, now {current.get(key, '<absent>')!r}"
        for key in sorted(set(stored) | set(current))
        if stored.get(key, "<absent>") != current.get(key, "<absent>")
    ]


def resumable_checkpoint(
    path: Path,
    variant: str,
    cfg: TrainConfig,
    switches: LossSwitches,
    data: dict[str, str | None],
    say: Callable[[str], None],
) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = load_checkpoint(path)
    except PipelineError as exc:
        say(f"starting over: {exc}")
        return None
    differences = config_differences(state, variant, cfg, switches, data)
    if differences:
        say("starting over: the checkpoint was trained with other settings:\n  " + "\n  ".join(differences))
        return None
    return state
