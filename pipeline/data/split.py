"""The `split` stage: a downloaded dataset -> the training domains, the test set, and the judge's pairs.

Two dataset layouts (`pipeline.data.archive`), named by their two domains, A and B (``split.domains``:
for Cityscapes A = photo, B = label):

- **paired** (pix2pix: cityscapes, facades, maps): every image is an A|B pair side by side. The
  training domains come from ``train/`` by one of two protocols (``split.protocol``):

  - ``disjoint`` (the default): train ids are shuffled with a seeded permutation and halved; domain A
    comes from one half and domain B from the other, so the generators never see a true pair (a
    stricter setting than the paper's);
  - ``paper``: every train image's A half is in domain A and its B half in domain B, as in the paper
    and the reference code; the pairs are broken only by sampling the two domains independently.

  The test set is ``val/`` (``test/`` when there is no ``val/``), kept as aligned pairs, so that each
  translation can be scored against its true counterpart.
- **unpaired** (the CycleGAN repo's horse2zebra and its siblings, or a user's own folders):
  ``trainA/`` and ``trainB/`` are the training domains and ``testA/``, ``testB/`` the test set, whatever
  their sizes; there are no pairs (the protocol does not apply).

When domain B is Cityscapes colour label maps (``split.classes: cityscapes``) of a paired dataset, each
B image is also decoded into a class-id mask, and every train photo is kept with its mask for the FCN
judge (the ``evaluator`` pairs). Any other dataset has no judge and no FCN scores.

Outputs (``manifest.csv`` lists every file; its subsets keep their historical names: ``train_photo``
is domain A, ``train_label`` domain B, ``val`` the test set, kinds ``photo`` = A, ``label`` = B):
``train_photo/``, ``train_label/``, ``val/{photo,label[,mask]}/``, ``evaluator/{photo,mask}/``, and
``summary.json`` with the dataset's description (`pipeline.data.dataset`). Images are stored square:
the training domains at ``load_size``, the test set and the judge's pairs at ``test_size``. Written to a
temporary folder and moved into place whole, so a killed run never leaves a half-written split.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.core.config import check_range
from pipeline.core.errors import PipelineError
from pipeline.core.fileio import publish_dir, staging_dir, write_json
from pipeline.core.progress import progress
from pipeline.data.archive import UNPAIRED_SPLITS, detect_layout
from pipeline.data.dataset import NO_PAIRS, dataset_record, no_judge_reason
from pipeline.data.labels import decode_label_map
from pipeline.data.manifest import COLUMNS, MANIFEST, SUMMARY, image_id_key

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DOMAIN_NAME = re.compile(r"[a-z][a-z_]*")  # no digits: a direction is <B>2<A>


@dataclass(frozen=True)
class SplitConfig:
    """Params section `split`."""

    seed: int = 0  # the permutation that halves train (paired data, disjoint protocol)
    protocol: Literal["disjoint", "paper"] = "disjoint"  # paired data only
    domains: dict[str, str] = field(default_factory=lambda: {"A": "photo", "B": "label"})
    classes: Literal["cityscapes"] | None = "cityscapes"  # domain B is Cityscapes label maps
    load_size: int = 143
    test_size: int = 128
    on_bad_image: Literal["error", "skip"] = "error"
    workers: int = 2

    # How fast, not what: the split's files do not depend on it, so it is not a DVC params dep.
    OUTPUT_NEUTRAL_KEYS: ClassVar[frozenset[str]] = frozenset({"workers"})

    def __post_init__(self) -> None:
        check_range(self, "seed", ge=0)
        check_range(self, "test_size", ge=16)
        check_range(self, "load_size", ge=self.test_size)
        check_range(self, "workers", ge=1)
        names = [self.domains.get(key) for key in ("A", "B")]
        if set(self.domains) != {"A", "B"} or not all(n and DOMAIN_NAME.fullmatch(n) for n in names):
            raise ValueError(
                f"domains must name A and B in lowercase letters and _ (e.g. {{A: horse, B: zebra}}), got "
                f"{self.domains}"
            )
        if names[0] == names[1]:
            raise ValueError(f"domains must name A and B differently, got {self.domains}")


@dataclass(frozen=True)
class _Output:
    """One file the split makes from a source image: which part, where, at which size."""

    part: Literal["A", "B", "whole"]
    subset: str
    kind: Literal["photo", "label", "mask"]
    size: int


@dataclass(frozen=True)
class _Job:
    """One dataset image and every file the split makes from it."""

    source: Path
    image_id: str
    outputs: tuple[_Output, ...]
    nearest_b: bool  # domain B is a colour label map: resized nearest, never blended


class BadImage(Exception):
    """A dataset image that cannot be decoded, or a paired image that is not an A|B pair."""


def _read(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImage(f"{path}: cannot decode ({exc})") from None


def _halves(path: Path, image: Image.Image) -> dict[str, Image.Image]:
    if image.width % 2:
        raise BadImage(f"{path}: size {image.width}x{image.height}, not an A|B pair (an even width)")
    half = image.width // 2
    return {
        "A": image.crop((0, 0, half, image.height)),
        "B": image.crop((half, 0, image.width, image.height)),
    }


def _resized(image: Image.Image, size: int, nearest: bool) -> Image.Image:
    if nearest:  # a label map must keep the table's exact colours, never blends of two classes
        return image.resize((size, size), Image.Resampling.NEAREST)
    return image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)


def _process(job: _Job, root: Path) -> list[dict]:
    """Write every file made from one dataset image; return its manifest rows."""
    image = _read(job.source)
    parts = _halves(job.source, image) if any(o.part != "whole" for o in job.outputs) else {"whole": image}
    rows = []
    for output in job.outputs:
        source = parts[output.part] if output.part != "whole" else image
        nearest = job.nearest_b and output.kind in ("label", "mask")
        resized = _resized(source, output.size, nearest)
        if output.kind == "mask":
            resized = Image.fromarray(decode_label_map(np.asarray(resized)), mode="L")
        relative = f"{output.subset}/{output.kind}/{job.image_id}.png"
        if output.subset in ("train_photo", "train_label"):
            relative = f"{output.subset}/{job.image_id}.png"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        resized.save(root / relative, format="PNG", compress_level=1)
        rows.append(
            {
                "image_id": job.image_id,
                "subset": output.subset,
                "kind": output.kind,
                "path": relative,
                "width": resized.width,
                "height": resized.height,
            }
        )
    return rows


def _process_or_report(args: tuple[_Job, Path]) -> tuple[list[dict], str | None]:
    job, root = args
    try:
        return _process(job, root), None
    except BadImage as exc:
        return [], str(exc)


def _image_files(folder: Path) -> dict[str, Path]:
    """The images of `folder` by id (the file stem), in id order."""
    if not folder.is_dir():
        raise PipelineError(f"{folder} not found: run the download stage first (`dvc repro download`)")
    files = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    if not files:
        raise PipelineError(f"{folder} holds no images: re-run the download stage (`dvc repro -f download`)")
    # Sorted so that the seeded permutation does not depend on the order the folder lists in.
    return {image_id: files[image_id] for image_id in sorted(files, key=image_id_key)}


def domain_halves(train_ids: list[str], seed: int) -> tuple[list[str], list[str]]:
    """Split train ids into disjoint (domain A, domain B) halves with a seeded permutation."""
    order = np.random.default_rng(seed).permutation(len(train_ids))
    shuffled = [train_ids[i] for i in order]
    middle = (len(shuffled) + 1) // 2
    return sorted(shuffled[:middle], key=image_id_key), sorted(shuffled[middle:], key=image_id_key)


def dataset_layout(raw_dir: Path) -> str:
    """The layout of the downloaded dataset at `raw_dir`, from its split folders."""
    if not raw_dir.is_dir():
        raise PipelineError(f"{raw_dir} not found: run the download stage first (`dvc repro download`)")
    return detect_layout(p.name for p in raw_dir.iterdir() if p.is_dir())


def _paired_jobs(raw_dir: Path, cfg: SplitConfig) -> list[_Job]:
    train = _image_files(raw_dir / "train")
    test = _image_files(raw_dir / ("val" if (raw_dir / "val").is_dir() else "test"))
    judged = cfg.classes is not None
    if cfg.protocol == "paper":
        a_ids = b_ids = set(train)
    else:
        halves = domain_halves(list(train), cfg.seed)
        a_ids, b_ids = set(halves[0]), set(halves[1])
    jobs = []
    for image_id, path in train.items():
        outputs = [
            *([_Output("A", "train_photo", "photo", cfg.load_size)] if image_id in a_ids else []),
            *([_Output("B", "train_label", "label", cfg.load_size)] if image_id in b_ids else []),
            *(
                [
                    _Output("A", "evaluator", "photo", cfg.test_size),
                    _Output("B", "evaluator", "mask", cfg.test_size),
                ]
                if judged
                else []
            ),
        ]
        if outputs:
            jobs.append(_Job(path, image_id, tuple(outputs), judged))
    for image_id, path in test.items():
        outputs = [_Output("A", "val", "photo", cfg.test_size), _Output("B", "val", "label", cfg.test_size)]
        if judged:
            outputs.append(_Output("B", "val", "mask", cfg.test_size))
        jobs.append(_Job(path, image_id, tuple(outputs), judged))
    return jobs


def _unpaired_jobs(raw_dir: Path, cfg: SplitConfig) -> list[_Job]:
    folders = dict(zip(UNPAIRED_SPLITS, ("train_photo", "train_label", "val", "val"), strict=True))
    jobs = []
    for folder, subset in folders.items():
        kind = "photo" if folder.endswith("A") else "label"
        size = cfg.load_size if subset.startswith("train") else cfg.test_size
        for image_id, path in _image_files(raw_dir / folder).items():
            jobs.append(
                _Job(path, image_id, (_Output("whole", subset, kind, size),), cfg.classes is not None)
            )
    return jobs


def split(raw_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: SplitConfig) -> dict:
    """Build the split under `out_dir` from the downloaded dataset at `raw_dir`; return its summary."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    layout = dataset_layout(raw_dir)
    jobs = _paired_jobs(raw_dir, cfg) if layout == "paired" else _unpaired_jobs(raw_dir, cfg)
    with staging_dir(out_dir) as tmp:
        for folder in ("train_photo", "train_label", "val", "evaluator"):
            (tmp / folder).mkdir(parents=True)
        rows: list[dict] = []
        skipped: list[str] = []
        with ProcessPoolExecutor(max_workers=cfg.workers) as pool:
            results = pool.map(_process_or_report, [(job, tmp) for job in jobs], chunksize=32)
            for job_rows, problem in progress(results, total=len(jobs), desc="split", unit="img"):
                if problem is None:
                    rows.extend(job_rows)
                elif cfg.on_bad_image == "skip":
                    skipped.append(problem)
                else:
                    raise PipelineError(f"bad image {problem}; replace it or set split.on_bad_image: skip")
        rows.sort(key=lambda row: (row["subset"], row["kind"], image_id_key(row["image_id"])))
        manifest = pd.DataFrame(rows, columns=COLUMNS)
        manifest.to_csv(tmp / MANIFEST, index=False)
        summary = _summary(manifest, skipped, cfg, layout)
        if not summary["dataset"]["judged"]:
            # The judge stage reads this folder (a DVC dep, which must exist): say why it is empty.
            (tmp / "evaluator" / NO_PAIRS).write_text(no_judge_reason(summary["dataset"]) + "\n")
        write_json(tmp / SUMMARY, summary)
        publish_dir(tmp, out_dir)
    return summary


def _summary(manifest: pd.DataFrame, skipped: list[str], cfg: SplitConfig, layout: str) -> dict:
    counts = manifest.groupby(["subset", "kind"]).size()
    return {
        # Speed, not output: left out so that outputs stay byte-identical.
        "config": {k: v for k, v in asdict(cfg).items() if k not in cfg.OUTPUT_NEUTRAL_KEYS},
        "counts": {f"{subset}/{kind}": int(n) for (subset, kind), n in counts.items()},
        "skipped": skipped,
        "dataset": dataset_record(layout, cfg.domains, cfg.classes),
    }
