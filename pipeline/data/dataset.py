"""What a split says about its dataset: its layout, its two domains by name, whether domain B is a
class label map, and so which directions there are and which scores exist.

The split stage writes it into ``summary.json`` (`dataset_record`); every later stage reads it back
(`read_split_info`), so that names and metrics follow the data, not Cityscapes:

- the directions are named by the domains: ``<B>2<A>`` (F, B -> A) first, then ``<A>2<B>`` (G, A -> B).
  For Cityscapes (A = photo, B = label) they are ``label2photo`` (the paper's Table 4) and
  ``photo2label`` (Table 5); for horse2zebra ``zebra2horse`` and ``horse2zebra``;
- a paired test set (each test image A|B) gives each translation its true counterpart: paired
  fidelity (SSIM, PSNR);
- class label maps of a paired dataset (``classes: cityscapes``) give the judge and the FCN scores;
- every dataset has the distribution scores (FID, KID), both ways.

A split written before datasets were described (no ``dataset`` block) is the Cityscapes default.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from pipeline.data.manifest import SUMMARY

CITYSCAPES = {"layout": "paired", "domains": {"A": "photo", "B": "label"}, "classes": "cityscapes"}
NO_PAIRS = "none.txt"  # in the split's evaluator/ folder when there is no judge: why


def no_judge_reason(record: dict[str, Any]) -> str:
    """Why a dataset (its `dataset_record`) has no judge and no FCN scores."""
    if record.get("classes") is None:
        return "the dataset has no class label maps (split.classes: null): no judge, no FCN scores"
    return "the test set is unpaired: no photo has its true label map, so there is no judge and no FCN score"


def directions_of(domains: dict[str, str]) -> tuple[str, str]:
    """``(<B>2<A>, <A>2<B>)``: the direction of F, then of G."""
    return f"{domains['B']}2{domains['A']}", f"{domains['A']}2{domains['B']}"


def dataset_record(layout: str, domains: dict[str, str], classes: str | None) -> dict[str, Any]:
    """The ``dataset`` block of a split's summary.json."""
    return {
        "layout": layout,
        "domains": dict(domains),
        "classes": classes,
        "paired_test": layout == "paired",
        "judged": layout == "paired" and classes is not None,
        "directions": list(directions_of(domains)),
    }


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    """A split's dataset, as `dataset_record` describes it."""

    layout: str
    domains: dict[str, str]
    classes: str | None

    @property
    def directions(self) -> tuple[str, str]:
        return directions_of(self.domains)

    @property
    def paired_test(self) -> bool:
        """Each test image has its true counterpart in the other domain."""
        return self.layout == "paired"

    @property
    def judged(self) -> bool:
        """There is a judge (class label maps of a paired dataset), and so FCN scores."""
        return self.layout == "paired" and self.classes is not None

    def generator(self, direction: str) -> str:
        """The network of `direction`: F (B -> A) or G (A -> B)."""
        return {self.directions[0]: "F", self.directions[1]: "G"}[direction]

    def source_kind(self, direction: str) -> str:
        """The manifest kind a direction translates: ``label`` (domain B) for F, ``photo`` (A) for G."""
        return "label" if self.generator(direction) == "F" else "photo"

    def target_kind(self, direction: str) -> str:
        """The manifest kind a direction's translations are compared with (the other domain)."""
        return "photo" if self.generator(direction) == "F" else "label"

    def describe(self, direction: str) -> str:
        """``label → photo (F)``-style words for a direction."""
        network = self.generator(direction)
        source, target = ("B", "A") if network == "F" else ("A", "B")
        return f"{self.domains[source]} → {self.domains[target]} ({network})"


def read_split_info(split_dir: str | os.PathLike) -> SplitInfo:
    """The dataset of the split at `split_dir` (the Cityscapes default for a split without one)."""
    try:
        summary = json.loads((Path(split_dir) / SUMMARY).read_text())
    except (OSError, ValueError):
        summary = {}
    record = {**CITYSCAPES, **(summary.get("dataset") or {})}
    return SplitInfo(record["layout"], dict(record["domains"]), record["classes"])
