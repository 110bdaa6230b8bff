"""One checkpoint dict per variant, written atomically, loaded with `torch.load(weights_only=True)`.

Layout of the dict (`pipeline.cyclegan.loop` writes it; everything is a tensor or a plain container, which is
what `weights_only=True` accepts):

    format          1
    variant         variant name, e.g. "cyclegan"
    config          {"train": resolved TrainConfig as a dict, "switches": the variant's LossSwitches}
    data            {"train_sha256": hash of the training files, "data_version": DVC md5 of the split}
    nets            {"G": state_dict, "F": ..., "D_X": ..., "D_Y": ...}  (no D_* without adversarial term)
    optimizers      {"G": Adam state (G and F), "D": Adam state (D_X and D_Y)}
    schedulers      {"G": LambdaLR state, "D": ...}
    pools           {"X": ImagePool state, "Y": ...}
    sampler         UnpairedSampler state (generator, permutations, position)
    rng             {"torch_cpu": ..., "cuda": [...]}  global states, seeded from the config at the start
                    (`seed_global_generators`): only torch's default layer init draws from them
    step, epoch     completed steps and the epoch the next step belongs to
    finished        True once the schedule (or max_steps) is done
    history         per-epoch mean losses (rows of the DVC plots file)
    epoch_sums, epoch_steps   running sums of the current epoch's losses
    mlflow_run_id   the variant's MLflow run (a resumed run logs into it)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from pipeline.core.directions import GENERATOR
from pipeline.core.errors import PipelineError
from pipeline.core.fileio import save_torch
from pipeline.cyclegan.models import GeneratorConfig, ResnetGenerator

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically."""
    save_torch(path, state)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict (tensors and plain containers only: `weights_only=True`)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"checkpoint {path} not found: run the train stage first (`dvc repro train`)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated or foreign file: torch raises a zoo of types
        raise PipelineError(f"cannot load checkpoint {path} ({exc}): delete it and rerun training") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise PipelineError(f"{path} is not a format-{FORMAT} training checkpoint: delete it and retrain")
    return state


@dataclasses.dataclass
class LoadedGenerators:
    """The two trained generators of one variant, in eval mode on the requested device."""

    G: ResnetGenerator  # photo -> label map
    F: ResnetGenerator  # label map -> photo
    config: dict[str, Any]  # {"train": {...}, "switches": {...}}
    variant: str
    mlflow_run_id: str | None
    step: int

    def generator(self, direction: str) -> ResnetGenerator:
        """The network that translates `direction` (``photo2label`` -> G, ``label2photo`` -> F)."""
        return getattr(self, GENERATOR[direction])


def load_generators(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedGenerators:
    """Rebuild G and F from a checkpoint alone (their sizes come from the stored config)."""
    state = load_checkpoint(path)
    train_cfg = state["config"]["train"]
    gen_cfg = GeneratorConfig(ngf=train_cfg["ngf"], n_blocks=train_cfg["n_blocks"])
    nets = {}
    for name in ("G", "F"):
        net = ResnetGenerator(gen_cfg)
        net.load_state_dict(state["nets"][name])
        nets[name] = net.to(device).eval()
    return LoadedGenerators(
        G=nets["G"],
        F=nets["F"],
        config=state["config"],
        variant=state["variant"],
        mlflow_run_id=state.get("mlflow_run_id"),
        step=state["step"],
    )
