"""What a GPU session carries to the device machine: the split's training domains and val triples,
the FCN judge and two small pure-Python packages, packed under 64 MiB (the device tool's limit for one call).

    # here, before the session:
    python -m benchmarks.carry pack --split data/split --judge models/fcn --judge-metrics metrics/fcn.json \\
        --out .gpu
    # there (benchmarks/gpu_session.sh does it):
    python -m benchmarks.carry unpack --pack .gpu --out /tmp/gpu-run

Sizes measured on the full split (2026-11-28): the PNG split is 198 MB; its training domains alone
are 83 MB of PNG at 143 px, 87 MiB each as raw uint8. Lossless WebP at 128 px takes the two
training domains to about 42 MiB and the 500 val triples to about 15 MiB; at 143 px the domains alone
would be 50 MiB and nothing else would fit. So the pack holds the training domains at 128 px (what
`train.load_size: 128` makes of the split: the split's 143 px images resized, bicubic for photos and
nearest for label maps) - the GPU ablation trains without the 143 -> 128 random-crop jitter (flips
kept), a stated deviation. The val triples are the split's own 128 px files, bit for bit (WebP
lossless for RGB, PNG for the masks). The judge is carried without its optimiser state and with fp16
weights (2.7 MB instead of 16 MB; unpacking restores fp32 tensors). Nothing here is ever committed:
Cityscapes may not be redistributed, so the pack lives in an ignored folder and travels with `carry`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from pipeline.core.errors import PipelineError
from pipeline.data.domains import LABEL_SUBSET, PHOTO_SUBSET, load_domain
from pipeline.data.manifest import read_manifest

PACK_FILE = "split.zip"
JUDGE_FILE = "fcn.pt"
JUDGE_METRICS_FILE = "judge_metrics.json"
SITE_DIR = "site"  # put on PYTHONPATH there
# pipeline.data.labels imports cityscapesscripts.helpers.labels and pipeline.scoring.fid imports
# pytorch_fid; the device image has neither (it has torch, numpy, pandas, pillow, scipy, matplotlib,
# pyyaml, tqdm).
# Both are pure Python: the modules the pipeline imports are copied from this environment (the
# cityscapesscripts wheel is 475 kB, the one module needed 8 kB; no pip install there).
SITE_FILES = {
    "cityscapesscripts": ("__init__.py", "helpers/__init__.py", "helpers/labels.py"),
    "pytorch_fid": None,  # the whole package (40 kB)
}
CARRY_LIMIT_BYTES = 64 * 2**20
TRAIN_SIZE = 128
WEBP_EFFORT = 80  # lossless WebP: quality is the effort; 80 (method 4) is within 1 % of the maximum size gain


def _encode(pixels: np.ndarray, lossless_webp: bool) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    if lossless_webp:
        image.save(buffer, "WEBP", lossless=True, quality=WEBP_EFFORT, method=4)
    else:
        image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def _read_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L" if image.mode in ("L", "P") else "RGB"))


def _members(
    split_dir: Path, train_size: int, max_images: int | None
) -> tuple[list[tuple[str, np.ndarray]], list[dict]]:
    """(archive name, pixels) for every file of the pack, and the manifest rows of the unpacked split."""
    members, rows = [], []
    for subset, kind in ((PHOTO_SUBSET, "photo"), (LABEL_SUBSET, "label")):
        images, ids = load_domain(split_dir, subset, train_size, max_images)
        for image_id, image in zip(ids, images, strict=True):
            members.append((f"{subset}/{image_id}", image.permute(1, 2, 0).numpy()))
            rows.append(
                {
                    "image_id": image_id,
                    "subset": subset,
                    "kind": kind,
                    "path": f"{subset}/{image_id}.png",
                    "width": train_size,
                    "height": train_size,
                }
            )
    val = read_manifest(split_dir, subset="val")
    if max_images is not None:
        keep = sorted(set(val["image_id"]), key=lambda i: (len(i), i))[:max_images]
        val = val[val["image_id"].isin(keep)]
    for row in val.itertuples(index=False):
        pixels = _read_pixels(split_dir / row.path)
        members.append((str(Path(row.path).with_suffix("")), pixels))
        rows.append(
            {
                "image_id": row.image_id,
                "subset": "val",
                "kind": row.kind,
                "path": row.path,
                "width": pixels.shape[1],
                "height": pixels.shape[0],
            }
        )
    return members, rows


def copy_site_packages(target: Path) -> list[str]:
    """Copy the modules the device image lacks (SITE_FILES) from this environment into `target`."""
    import importlib
    import shutil

    copied = []
    for package, files in SITE_FILES.items():
        root = Path(importlib.import_module(package).__file__).parent
        if files is None:
            shutil.copytree(
                root, target / package, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
            )
            copied.append(package)
            continue
        for relative in files:
            (target / package / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / relative, target / package / relative)
            copied.append(f"{package}/{relative}")
    return copied


def slim_judge(judge_checkpoint: Path) -> dict:
    """The judge checkpoint without optimiser state, weights in fp16 (a fraction of the bytes)."""
    state = torch.load(judge_checkpoint, map_location="cpu", weights_only=True)
    if not state.get("finished"):
        raise PipelineError(f"{judge_checkpoint} is not a finished judge: run `dvc repro judge` first")
    slim = {k: v for k, v in state.items() if k != "optimizer"}
    slim["net"] = {k: v.half() if v.is_floating_point() else v for k, v in state["net"].items()}
    slim["carried_as_fp16"] = True
    return slim


def pack(
    split_dir: str | os.PathLike,
    judge: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    judge_metrics: str | os.PathLike | None = None,
    train_size: int = TRAIN_SIZE,
    max_images: int | None = None,
    site: bool = True,
    workers: int = 2,
) -> dict:
    """Write `out_dir`/{split.zip, fcn.pt, judge_metrics.json, site/, pack.json}; returns pack.json."""
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    members, rows = _members(split_dir, train_size, max_images)
    rgb = [len(p.shape) == 3 for _, p in members]
    with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while encoding
        blobs = list(pool.map(_encode, [p for _, p in members], rgb))
    tmp = out_dir / f".{PACK_FILE}.tmp"
    # A stored zip: ~100 bytes per member (a tar's headers and padding cost 3.3 MiB here).
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        for (name, _), blob, is_rgb in zip(members, blobs, rgb, strict=True):
            archive.writestr(f"{name}.{'webp' if is_rgb else 'png'}", blob)
        manifest = pd.DataFrame(rows).to_csv(index=False)
        archive.writestr("manifest.csv", manifest, compress_type=zipfile.ZIP_DEFLATED)
    os.replace(tmp, out_dir / PACK_FILE)
    info: dict = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source_split": str(split_dir.resolve()),
        "train_size": train_size,
        "counts": {
            f"{s}/{k}": int(n) for (s, k), n in pd.DataFrame(rows).groupby(["subset", "kind"]).size().items()
        },
        "split_bytes": (out_dir / PACK_FILE).stat().st_size,
    }
    if judge is not None:
        judge = Path(judge)
        judge = judge / "checkpoint.pt" if judge.is_dir() else judge
        torch.save(slim_judge(judge), out_dir / JUDGE_FILE)
        info["judge_bytes"] = (out_dir / JUDGE_FILE).stat().st_size
    if judge_metrics is not None:
        (out_dir / JUDGE_METRICS_FILE).write_text(Path(judge_metrics).read_text())
    if site:
        info["site_packages"] = copy_site_packages(out_dir / SITE_DIR)
    info["total_bytes"] = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    info["seconds"] = round(time.perf_counter() - started, 1)
    (out_dir / "pack.json").write_text(json.dumps(info, indent=2) + "\n")
    if info["total_bytes"] > CARRY_LIMIT_BYTES - 2 * 2**20:
        raise PipelineError(
            f"the pack is {info['total_bytes'] / 2**20:.1f} MiB; with the code it must stay under 64 MiB: "
            "lower --train-size or --max-images"
        )
    return info


def _decode_to_png(blob: bytes, target: Path) -> None:
    with Image.open(io.BytesIO(blob)) as image:
        image.load()
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, "PNG", compress_level=1)


def unpack(pack_dir: str | os.PathLike, out_dir: str | os.PathLike, workers: int = 8) -> dict[str, Path]:
    """Recreate the split (PNG files + manifest.csv, the layout the pipeline reads) under
    `out_dir/split`, the judge under `out_dir/models/fcn/checkpoint.pt`; returns the paths."""
    pack_dir, out_dir = Path(pack_dir), Path(out_dir)
    split_dir = out_dir / "split"
    split_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(pack_dir / PACK_FILE) as archive:
        jobs = []
        for name in archive.namelist():
            if name.startswith("/") or ".." in Path(name).parts:
                raise PipelineError(f"{pack_dir / PACK_FILE}: unexpected member {name!r}")
            blob = archive.read(name)
            if name == "manifest.csv":
                (split_dir / "manifest.csv").write_bytes(blob)
            else:
                jobs.append((blob, split_dir / Path(name).with_suffix(".png")))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda job: _decode_to_png(*job), jobs))
    paths = {"split": split_dir}
    if (pack_dir / JUDGE_FILE).is_file():
        state = torch.load(pack_dir / JUDGE_FILE, map_location="cpu", weights_only=True)
        state["net"] = {k: v.float() if v.is_floating_point() else v for k, v in state["net"].items()}
        judge = out_dir / "models" / "fcn" / "checkpoint.pt"
        judge.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, judge)
        paths["judge"] = judge
    if (pack_dir / JUDGE_METRICS_FILE).is_file():
        paths["judge_metrics"] = pack_dir / JUDGE_METRICS_FILE
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("pack", help="split + judge -> a folder to carry")
    make.add_argument("--split", required=True)
    make.add_argument("--judge", help="the judge's folder or checkpoint.pt (models/fcn)")
    make.add_argument("--judge-metrics", help="the judge's real-val scores (metrics/fcn.json)")
    make.add_argument("--out", required=True, help="an ignored folder, e.g. .gpu")
    make.add_argument("--train-size", type=int, default=TRAIN_SIZE)
    make.add_argument("--max-images", type=int, help="first N ids per subset (smaller packs for tests)")
    make.add_argument("--no-site", action="store_true", help="do not copy cityscapesscripts/pytorch_fid")
    take = commands.add_parser("unpack", help="a carried folder -> split/ and models/fcn/")
    take.add_argument("--pack", required=True)
    take.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            info = pack(
                args.split,
                args.judge,
                args.out,
                args.judge_metrics,
                args.train_size,
                args.max_images,
                site=not args.no_site,
            )
            print(json.dumps(info, indent=2))
        else:
            paths = unpack(args.pack, args.out)
            print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
