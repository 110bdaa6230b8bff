"""What the dataset lets the report measure: its two directions, and which metric families exist.

The split stage describes the dataset in its ``summary.json`` under ``dataset``: the ``layout``
(``paired`` or ``unpaired``), the two ``domains`` (``{"A": "photo", "B": "label"}``), the ``classes``
of its label maps (``cityscapes`` or null), whether the test set is paired (``paired_test``) and the
``directions``, always ``[f"{B}2{A}", f"{A}2{B}"]``: F (B → A, the paper's Table 4 on Cityscapes), then
G (A → B, Table 5). A split without that block was made before other datasets existed: Cityscapes.

The families, each present only where it means something:

- FCN scores (``fcn/<d>/<score>``): a judge segments the output, so they need Cityscapes classes and a
  paired test set (the true label map of every test photo);
- paired fidelity (``ssim/<d>``, ``psnr/<d>``): a translation against its true counterpart, so they
  need a paired test set;
- distribution (``fid/<d>``, ``kid/<d>``): translations against the real test images of the target
  domain as sets, so they exist for every dataset.

The block is read by the data layer (`pipeline.data.dataset`); this module adds what the report needs
of it: the metric families, their names, and why one is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.data.dataset import read_split_info as split_info
from pipeline.data.manifest import SUMMARY
from pipeline.judge.metrics import SCORES

CITYSCAPES = "cityscapes"
FIDELITY = ("ssim", "psnr")  # per test image, against its true counterpart
DISTRIBUTION = ("fid", "kid")  # per image set, from Inception features


@dataclass(frozen=True)
class DatasetInfo:
    """The split's ``dataset`` block, and the metrics it implies."""

    domain_a: str = "photo"
    domain_b: str = "label"
    classes: str | None = CITYSCAPES
    paired_test: bool = True
    layout: str = "paired"

    @property
    def directions(self) -> tuple[str, str]:
        """F (B -> A), then G (A -> B): on Cityscapes ``label2photo``, ``photo2label``."""
        return f"{self.domain_b}2{self.domain_a}", f"{self.domain_a}2{self.domain_b}"

    def arrow(self, direction: str) -> str:
        """A direction as its domains: ``label → photo`` for ``label2photo``."""
        backward, forward = self.directions
        if direction == backward:
            return f"{self.domain_b} → {self.domain_a}"
        if direction == forward:
            return f"{self.domain_a} → {self.domain_b}"
        raise ValueError(f"{direction!r} is neither of this dataset's directions {self.directions}")

    @property
    def is_cityscapes(self) -> bool:
        return self.classes == CITYSCAPES

    @property
    def has_judge(self) -> bool:
        return self.is_cityscapes and self.paired_test

    @property
    def judged_directions(self) -> tuple[str, ...]:
        """The directions the judge scores: both with a judge, none without."""
        return self.directions if self.has_judge else ()

    @property
    def fcn_metrics(self) -> tuple[str, ...]:
        return tuple(f"fcn/{d}/{s}" for d in self.judged_directions for s in SCORES)

    @property
    def fidelity_metrics(self) -> tuple[str, ...]:
        return tuple(f"{m}/{d}" for d in self.directions for m in FIDELITY) if self.paired_test else ()

    @property
    def distribution_metrics(self) -> tuple[str, ...]:
        return tuple(f"{m}/{d}" for d in self.directions for m in DISTRIBUTION)

    @property
    def per_image_metrics(self) -> tuple[str, ...]:
        """The metrics scored image by image: bootstrapped over images and compared pairwise."""
        return self.fcn_metrics + self.fidelity_metrics

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.per_image_metrics + self.distribution_metrics

    def why_no_judge(self) -> str | None:
        if not self.is_cityscapes:
            return "the dataset has no class label maps to score a segmentation against"
        if not self.paired_test:
            return "the test set is unpaired, so no test photo has its true label map"
        return None

    def why_no_fidelity(self) -> str | None:
        if not self.paired_test:
            return "the test set is unpaired, so no translation has a true counterpart to compare with"
        return None

    def as_json(self) -> dict:
        return {
            "layout": self.layout,
            "domains": {"A": self.domain_a, "B": self.domain_b},
            "classes": self.classes,
            "paired_test": self.paired_test,
            "directions": list(self.directions),
        }


def metric_direction(metric: str) -> str:
    """The direction a metric name holds: ``fcn/<d>/<score>`` or ``<name>/<d>``."""
    return metric.split("/")[1]


def metric_column(metric: str) -> str:
    """A metric's name within its direction: the FCN score, else the family (``ssim``, ``fid``)."""
    parts = metric.split("/")
    return parts[2] if parts[0] == "fcn" else parts[0]


def read_split_info(split_dir: str | Path) -> DatasetInfo:
    """The dataset the split at `split_dir` holds, read by the data layer's reader
    (`pipeline.data.dataset.read_split_info`: Cityscapes for a split without a ``dataset`` block)."""
    path = Path(split_dir) / SUMMARY
    info = split_info(split_dir)
    domains = info.domains
    if domains.get("A") == domains.get("B") or not domains.get("A") or not domains.get("B"):
        raise PipelineError(f"{path}: domains must be two different names, got {domains}")
    try:
        block = json.loads(path.read_text()).get("dataset") or {}
    except (OSError, ValueError, AttributeError):
        block = {}
    if "directions" in block and list(block["directions"]) != list(info.directions):
        raise PipelineError(
            f"{path}: directions {block['directions']} do not follow the domains "
            f"(expected {list(info.directions)}): re-run the split stage"
        )
    return DatasetInfo(domains["A"], domains["B"], info.classes, info.paired_test, info.layout)
