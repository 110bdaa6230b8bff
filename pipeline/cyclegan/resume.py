"""What makes a checkpoint resumable: the data fingerprint, the config identity, the ablation key."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError
from pipeline.core.project import dvc_output_md5
from pipeline.cyclegan.checkpoint import load_checkpoint
from pipeline.cyclegan.config import OPERATIONAL_KEYS, TrainConfig
from pipeline.cyclegan.losses import LossSwitches
from pipeline.data.manifest import LABEL_SUBSET, PHOTO_SUBSET, SUMMARY, read_manifest, sorted_by_id


def data_fingerprint(split_dir: Path) -> dict[str, str | None]:
    """What identifies the training data: `train_sha256`, a hash of the training domains' manifest rows
    and file bytes (about a second for the full split; val and evaluator files do not count);
    `data_version`, DVC's md5 of the whole split folder (a tag for MLflow, None outside a DVC repo); and
    the split's `protocol` (disjoint halves or the paper's full domains)."""
    digest = hashlib.sha256()
    for subset in (PHOTO_SUBSET, LABEL_SUBSET):
        rows = sorted_by_id(read_manifest(split_dir, subset=subset))
        for image_id, relative in zip(rows["image_id"], rows["path"], strict=True):
            digest.update(f"{subset}/{image_id}/{relative}\n".encode())
            try:
                digest.update((split_dir / relative).read_bytes())
            except OSError as exc:
                raise PipelineError(
                    f"cannot read {split_dir / relative} ({exc}): rerun the split stage"
                ) from None
    return {
        "train_sha256": digest.hexdigest(),
        "data_version": dvc_output_md5(split_dir),
        "protocol": split_protocol(split_dir),
    }


def split_protocol(split_dir: Path) -> str:
    """The protocol the split was made with (its summary.json; `disjoint` for a split without one)."""
    try:
        summary = json.loads((split_dir / SUMMARY).read_text())
    except (OSError, ValueError):
        return "disjoint"
    return str(summary.get("config", {}).get("protocol", "disjoint"))


def ablation_key(data: dict[str, str | None], cfg: TrainConfig) -> str:
    """Same data + same train section (variant and seed aside) = same ablation = one MLflow parent run."""
    train = {k: v for k, v in cfg.identity().items() if k != "seed"}
    payload = json.dumps({"data": data["train_sha256"], "train": train}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


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
