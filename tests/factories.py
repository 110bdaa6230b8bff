"""Synthetic data for the tests: tiny stand-ins for the archive, the split, checkpoints and configs.

Never real Cityscapes images: every picture here is made from random numbers and the label table.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image

from pipeline.core.fileio import save_torch
from pipeline.core.recording import NOTHING, Recorder
from pipeline.cyclegan.checkpoint import FORMAT, load_checkpoint
from pipeline.cyclegan.config import TrainConfig
from pipeline.cyclegan.loop import TrainingRun, TrainResult, train_variant
from pipeline.cyclegan.losses import LossSwitches
from pipeline.cyclegan.models import GeneratorConfig, ResnetGenerator, init_weights
from pipeline.data.labels import NUM_CLASSES, colorize
from pipeline.judge.model import FCN8s, FCNConfig
from pipeline.judge.segment import FORMAT as JUDGE_FORMAT
from pipeline.judge.segment import KIND

ROOT = Path(__file__).resolve().parents[1]

# A training run of a few seconds on a CPU.
TINY_TRAIN = TrainConfig(
    device="cpu",
    num_threads=1,
    load_size=28,
    crop_size=24,
    ngf=4,
    ndf=4,
    n_blocks=1,
    epochs_constant=2,
    epochs_decay=2,
    checkpoint_every=10,
    log_every=5,
    experiment="test-train",
)
TINY_GENERATOR = GeneratorConfig(ngf=4, n_blocks=1)

# The whole pipeline on a generated archive of N_TRAIN + N_VAL images in seconds per stage, as
# `dvc exp run -S` / flow overrides. `++` sets a key whether or not params.yaml has it yet (a typo
# still fails: the stage's config rejects unknown keys).
N_TRAIN, N_VAL = 8, 4
TINY_OVERRIDES = [
    f"++data.expected_counts={{train:{N_TRAIN},val:{N_VAL}}}",
    "++split.load_size=40",
    "++split.test_size=32",
    "++split.workers=1",
    "++train.device=cpu",
    "++train.load_size=36",
    "++train.crop_size=32",
    "++train.max_images=4",
    "++train.ngf=4",
    "++train.ndf=4",
    "++train.n_blocks=1",
    "++train.max_steps=4",
    "++train.checkpoint_every=2",
    "++train.log_every=1",
    "++judge.device=cpu",
    "++judge.image_size=32",
    "++judge.epochs=1",
    "++judge.batch_size=4",
    "++judge.width=4",
    "++judge.eval_batch_size=4",
    "++translate.device=cpu",
    "++translate.batch_size=4",
    "++evaluate.device=cpu",
    "++evaluate.batch_size=4",
    "++evaluate.log_samples=1",
    "++report.n_samples=2",
]


# --- the archive --------------------------------------------------------------------------------------


def make_pair_image(rng: np.random.Generator, width: int = 512, height: int = 256) -> Image.Image:
    """One archive-style image: a noisy 'photo' on the left, a blocky colour label map on the right."""
    half = width // 2
    blocks = rng.integers(0, NUM_CLASSES, size=(height // 32, half // 32)).astype(np.uint8)
    train_ids = np.kron(blocks, np.ones((32, 32), dtype=np.uint8))
    label = colorize(train_ids)
    photo = np.clip(label.astype(np.int16) // 2 + rng.integers(0, 96, size=label.shape), 0, 255)
    return Image.fromarray(np.concatenate([photo.astype(np.uint8), label], axis=1))


def make_pix2pix_tree(
    root: Path, n_train: int = 12, n_val: int = 4, seed: int = 0, width: int = 512, height: int = 256
) -> Path:
    """Write ``root/cityscapes/{train,val}/N.jpg`` like the pix2pix archive; return ``root/cityscapes``."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("val", n_val)):
        folder = root / "cityscapes" / split
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(1, count + 1):
            make_pair_image(rng, width, height).save(folder / f"{index}.jpg", quality=95)
    return root / "cityscapes"


def make_bomb_image(path: Path, width: int = 30_000, height: int = 30_000) -> Path:
    """A PNG whose header claims `width` x `height` pixels (PIL refuses it as a decompression bomb when
    opening it, before decoding anything), in a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return path


def make_archive(tree_parent: Path, archive: Path, mode: str = "w:gz") -> Path:
    """Pack ``tree_parent/cityscapes`` into a tar archive at `archive` (sorted, like the shared copy)."""
    with tarfile.open(archive, mode) as tar:
        tar.add(tree_parent / "cityscapes", arcname="cityscapes")
    return archive


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", linkname: str = "") -> tuple:
    """One member for `make_tar`: a file with `data`, or a folder, link, device... by tar type."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    if kind in (tarfile.REGTYPE, tarfile.AREGTYPE):
        info.size = len(data)
        return info, data
    return info, None


def make_tar(
    path: Path, members: list[tuple], mode: str = "w:gz", tar_format: int = tarfile.PAX_FORMAT
) -> Path:
    """A tar archive of exactly `members` (from `tar_member`), in order: hostile archives for the tests."""
    with tarfile.open(path, mode, format=tar_format) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


# --- the split ----------------------------------------------------------------------------------------


def make_split(root: Path, n_photo: int = 6, n_label: int = 5, size: int = 28, seed: int = 0) -> Path:
    """A split folder with only the training domains (layout of data/split), random tiny images."""
    rng = np.random.default_rng(seed)
    rows = []
    domains = (
        ("train_photo", "photo", range(1, n_photo + 1)),
        ("train_label", "label", range(101, 101 + n_label)),
    )
    for subset, kind, ids in domains:
        (root / subset).mkdir(parents=True, exist_ok=True)
        for image_id in ids:
            if kind == "photo":
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            else:
                pixels = colorize(rng.integers(0, 19, (size, size)).astype(np.uint8))
            Image.fromarray(pixels).save(root / subset / f"{image_id}.png")
            rows.append((str(image_id), subset, kind, f"{subset}/{image_id}.png", size, size))
    columns = ["image_id", "subset", "kind", "path", "width", "height"]
    pd.DataFrame(rows, columns=columns).to_csv(root / "manifest.csv", index=False)
    return root


def make_val_split(root: Path, n: int = 3, size: int = 16, seed: int = 0) -> Path:
    """A split folder holding only val triples (photo, label map, mask) and their manifest rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for kind in ("photo", "label", "mask"):
        (root / "val" / kind).mkdir(parents=True)
    for index in range(1, n + 1):
        ids = np.kron(rng.integers(0, NUM_CLASSES, size=(size // 4, size // 4)), np.ones((4, 4))).astype(
            np.uint8
        )
        ids[0, 0] = 255  # one void pixel: must be ignored by every metric
        label = colorize(ids)
        photo = np.clip(label.astype(np.int16) // 2 + rng.integers(0, 64, size=label.shape), 0, 255).astype(
            np.uint8
        )
        for kind, pixels in (("photo", photo), ("label", label), ("mask", ids)):
            path = f"val/{kind}/{index}.png"
            Image.fromarray(pixels).save(root / path)
            rows.append(
                {
                    "image_id": str(index),
                    "subset": "val",
                    "kind": kind,
                    "path": path,
                    "width": size,
                    "height": size,
                }
            )
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


# --- checkpoints, params, processes ---------------------------------------------------------------------


def make_checkpoint(path: Path, variant: str = "cyclegan", seed: int = 0) -> Path:
    """A checkpoint with tiny, differently initialised G and F (what translate and evaluate need of it)."""
    generator = torch.Generator().manual_seed(seed)
    nets = {}
    for name in ("G", "F"):
        net = ResnetGenerator(TINY_GENERATOR)
        init_weights(net, generator, gain=0.5)  # large weights: outputs differ visibly between G and F
        nets[name] = net.state_dict()
    state = {
        "format": FORMAT,
        "variant": variant,
        "config": {"train": {"ngf": TINY_GENERATOR.ngf, "n_blocks": TINY_GENERATOR.n_blocks}, "switches": {}},
        "data": {"train_sha256": f"data-of-{variant}", "protocol": "disjoint"},
        "nets": nets,
        "step": 7,
    }
    save_torch(path, state)
    return path


def train_run(
    split_dir: Path,
    out_dir: Path,
    variant: str,
    switches: LossSwitches,
    cfg: TrainConfig,
    curves: Path | None = None,
    resume_dir: Path | None = None,
    recorder: Recorder = NOTHING,
    on_step=None,
) -> TrainResult:
    """`train_variant` of the run these describe (recorded by `recorder`: by default, nothing)."""
    run = TrainingRun(variant, switches, cfg, Path(split_dir), Path(out_dir), curves, resume_dir)
    return train_variant(run, recorder, on_step)


def write_params(path: Path, cfg: TrainConfig, variants: dict[str, LossSwitches]) -> Path:
    """params.yaml with `cfg` as the train section and `variants`; the train stage takes the seed
    from its --seed (params hold the `seeds:` list)."""
    train = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "seed"}
    params = {
        "train": train,
        "seeds": [cfg.seed],
        "variants": {name: dataclasses.asdict(s) for name, s in variants.items()},
    }
    path.write_text(yaml.safe_dump(params))
    return path


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(checkpoint)
    return {f"{net}.{k}": v for net, sd in state["nets"].items() for k, v in sd.items()}


# Runs the train stage in a real process that signals itself after step `kill_at`.
CHILD = """
import os, signal, sys
import stages.train as stage
from pipeline.cyclegan import loop as train

kill_at, signum = int(sys.argv[1]), int(sys.argv[2])

def on_step(step, losses):
    if step == kill_at:
        os.kill(os.getpid(), signum)

real = train.train_variant
stage.train_variant = lambda run, recorder: real(run, recorder, on_step=on_step)
sys.exit(stage.main(sys.argv[3:]))
"""


def run_child(kill_at: int, signum: int, stage_args: list[str]) -> subprocess.CompletedProcess:
    return run_script(CHILD, [str(kill_at), str(int(signum)), *stage_args])


# Runs the train stage in a real process that SIGKILLs itself halfway through its `save_at`-th torch.save.
KILLED_IN_SAVE = """
import os, signal, sys
import torch
import stages.train as stage

save_at, calls, real_save = int(sys.argv[1]), [0], torch.save

def save(obj, handle, *args, **kwargs):
    calls[0] += 1
    if calls[0] == save_at:
        handle.write(b"the first bytes of a checkpoint")
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, handle, *args, **kwargs)

torch.save = save
sys.exit(stage.main(sys.argv[2:]))
"""


def run_killed_in_save(save_at: int, stage_args: list[str]) -> subprocess.CompletedProcess:
    return run_script(KILLED_IN_SAVE, [str(save_at), *stage_args])


# Runs a stage's main (or the cyclegan command's) as on a disk that fills up: under a file size limit,
# writes past `limit` bytes fail with EFBIG (SIGXFSZ, which would kill the process instead, is ignored).
FILE_SIZE_LIMITED = """
import importlib, resource, signal, sys

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit, module = int(sys.argv[1]), importlib.import_module(sys.argv[2])
if sys.argv[2] == "stages.train":  # no MLflow store: its database alone is larger than the limit
    from pipeline.core.recording import NOTHING
    module.TrainRecorder = lambda *a, **k: NOTHING
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.exit(module.main(sys.argv[3:]))
"""


def run_file_size_limited(limit: int, module: str, args: list[str]) -> subprocess.CompletedProcess:
    return run_script(FILE_SIZE_LIMITED, [str(limit), module, *args])


def run_script(
    script: str, args: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -c script args...` in the repository root, with its output captured."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_project(destination: Path, keep_lock: bool = True, commit: bool = False) -> Path:
    """The repository's tracked and untracked-but-not-ignored files (no data) in a fresh git repository.

    `keep_lock=False` leaves out dvc.lock (a project that has never run); `commit` commits the copy
    (DVC experiments and the flow's git provenance need a commit).
    """
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    skipped = {"params.before-overrides.yaml"} | (set() if keep_lock else {"dvc.lock"})
    for raw in listed:
        relative = raw.decode()
        source = ROOT / relative
        if not relative or not source.is_file() or relative in skipped:
            continue
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=destination, check=True)
    if commit:
        subprocess.run([*git, "add", "-A"], cwd=destination, check=True)
        subprocess.run([*git, "commit", "-qm", "test snapshot"], cwd=destination, check=True)
    return destination


def poison_loss(monkeypatch, term: str, at_call: int, value: float) -> None:
    """Make the generator objective return `value` times `term` on its `at_call`-th call (1-based)."""
    import pipeline.cyclegan.step as trainer

    real, calls = trainer.generator_losses, {"n": 0}

    def poisoned(*args, **kwargs):
        losses, fakes = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == at_call:
            losses[term] = losses[term] * value
        return losses, fakes

    monkeypatch.setattr(trainer, "generator_losses", poisoned)


# --- what the report reads -----------------------------------------------------------------------------


def confusions_with_accuracy(accuracies: list[float], pixels: int = 20) -> np.ndarray:
    """Per-image confusion matrices ``(N, 19, 20)``: image i has `pixels` pixels of every class, a
    share `accuracies[i]` of them right and the rest predicted as the next class."""
    out = np.zeros((len(accuracies), NUM_CLASSES, NUM_CLASSES + 1), dtype=np.int64)
    for i, accuracy in enumerate(accuracies):
        right = round(pixels * accuracy)
        for c in range(NUM_CLASSES):
            out[i, c, c] = right
            out[i, c, (c + 1) % NUM_CLASSES] = pixels - right
    return out


CITYSCAPES_BLOCK = {"domains": {"A": "photo", "B": "label"}, "classes": "cityscapes", "paired_test": True}
FID_UNAVAILABLE = "FID Inception weights not in the torch hub cache"


def _report_directions(block: dict) -> list[str]:
    a, b = block["domains"]["A"], block["domains"]["B"]
    return [f"{b}2{a}", f"{a}2{b}"]


def _report_judged(block: dict) -> bool:
    return block["paired_test"] and block["classes"] == "cityscapes"


def _distribution_record(fid: float | None, directions: list[str], prefix: str = "") -> dict:
    """FID and KID keys of a metrics file (with `prefix` "floor/": of bounds.json): `fid` for the first
    direction, 10 more for the second, KID a thousandth of it; all None, with the reason, without `fid`."""
    record: dict = {}
    for offset, direction in enumerate(directions):
        value = None if fid is None else fid + 10 * offset
        record[f"{prefix}fid/{direction}"] = value
        record[f"{prefix}kid/{direction}/mean"] = None if value is None else value / 1000
        if not prefix:
            record[f"kid/{direction}/std"] = None if value is None else value / 10_000
    if fid is None:
        record[f"{prefix.replace('/', '_')}fid_unavailable"] = FID_UNAVAILABLE
    return record


def _report_bounds(block: dict, n_images: int, fid: float | None) -> tuple[dict[str, np.ndarray], dict]:
    """The bounds stage's arrays and JSON: floor (and with a judge ceiling) per-image scores, floor FID."""
    directions = _report_directions(block)
    arrays: dict[str, np.ndarray] = {}
    if _report_judged(block):
        for direction, low, high in zip(directions, (0.1, 0.05), (0.8, 1.0), strict=True):
            arrays[f"floor/{direction}"] = confusions_with_accuracy([low] * n_images)
            arrays[f"ceiling/{direction}"] = confusions_with_accuracy([high] * n_images)
    for direction in directions if block["paired_test"] else ():
        arrays[f"floor/ssim/{direction}"] = np.full(n_images, 0.05)
        arrays[f"floor/psnr/{direction}"] = np.full(n_images, 8.0)
    return arrays, {"n_images": n_images, **_distribution_record(fid, directions, prefix="floor/")}


def _report_run(block: dict, image_scores: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
    """One run's per-image arrays and the per-image metrics of its metrics file."""
    from pipeline.judge.metrics import segmentation_scores

    arrays: dict[str, np.ndarray] = {}
    record: dict = {}
    for direction in _report_directions(block):
        if _report_judged(block):
            arrays[direction] = confusions_with_accuracy(list(image_scores))
            scores = segmentation_scores(arrays[direction].sum(axis=0))
            record |= {f"fcn/{direction}/{s}": scores[s] for s in ("pixel_acc", "class_acc", "class_iou")}
        if block["paired_test"]:
            arrays[f"ssim/{direction}"], arrays[f"psnr/{direction}"] = image_scores, 10 + 20 * image_scores
            record[f"ssim/{direction}"] = float(arrays[f"ssim/{direction}"].mean())
            record[f"psnr/{direction}"] = float(arrays[f"psnr/{direction}"].mean())
    return arrays, record


def _report_pictures(root: Path, quality: dict[str, float], seeds: list[int], directions: list[str]) -> None:
    """Translations of the first seed (3 images per direction) and every run's loss curves."""
    for variant in quality:
        for direction in directions:
            folder = root / "translations" / f"{variant}-{seeds[0]}" / direction
            folder.mkdir(parents=True, exist_ok=True)
            for image_id in ("1", "2", "3"):
                Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(folder / f"{image_id}.png")
    plots = root / "plots" / "train"
    plots.mkdir(parents=True, exist_ok=True)
    for variant in quality:
        for seed in seeds:
            columns = {"step": [10, 20, 30], "epoch": [0, 0, 1], "loss_G": [3.0, 2.5, 2.0]}
            if variant != "cycle_only":
                columns["loss_D_Y"] = [0.5, 0.4, 0.3]
            pd.DataFrame(columns).to_csv(plots / f"{variant}-{seed}.csv", index=False)


def make_report_inputs(
    root: Path,
    quality: dict[str, float],
    seeds: list[int],
    n_images: int = 30,
    fid: float | dict[str, float | None] | None = None,
    dataset: dict | None = None,
) -> dict[str, Path]:
    """Everything the report stage reads, for variants of the given mean quality: metrics files,
    per-image arrays (image scores spread around the variant's quality, shifted per seed), the bounds,
    a val split, translations and loss curves.

    `dataset` is the split summary's ``dataset`` block without its directions (None: an old split
    without one, which is Cityscapes). What exists follows it: with Cityscapes classes and a paired test
    set, per-image confusion matrices (image accuracy = the image's score) and FCN scores; with a paired
    test set, per-image SSIM (= the score) and PSNR (10 + 20 x the score); always FID and KID. `fid` is
    every run's FID, or per variant: None makes FID and KID null with a reason, as offline. The floor's
    FID is null when `fid` is, else 300."""
    from pipeline.scoring.evaluate import save_confusions

    block = dataset or CITYSCAPES_BLOCK
    directions = _report_directions(block)
    rng = np.random.default_rng(0)
    spread = rng.uniform(-0.1, 0.1, n_images)
    ids = [str(i) for i in range(1, n_images + 1)]
    metrics, confusion = root / "metrics", root / "confusion"
    metrics.mkdir(parents=True, exist_ok=True)
    confusion.mkdir(parents=True, exist_ok=True)
    bound_arrays, bounds_record = _report_bounds(block, n_images, None if fid is None else 300.0)
    save_confusions(confusion / "bounds.npz", ids, bound_arrays)
    (metrics / "bounds.json").write_text(json.dumps(bounds_record))
    for variant, mean in quality.items():
        run_fid = fid.get(variant) if isinstance(fid, dict) else fid
        for seed in seeds:
            arrays, scores = _report_run(block, np.clip(mean + spread + 0.01 * seed, 0, 1))
            save_confusions(confusion / f"{variant}-{seed}.npz", ids, arrays)
            record = {"variant": variant, "seed": seed, "n_images": n_images, "mlflow_run_id": None}
            record |= scores | _distribution_record(run_fid, directions)
            record |= {
                "protocol": "disjoint",
                "steps": 8,
                "train": {"crop_size": 24},
                "machine": {"cpu": "test"},
            }
            (metrics / f"{variant}-{seed}.json").write_text(json.dumps(record))
    split = make_val_split(root / "split", n=3, size=16)
    if dataset is not None:
        (split / "summary.json").write_text(json.dumps({"dataset": {**dataset, "directions": directions}}))
    _report_pictures(root, quality, seeds, directions)
    return {
        "metrics": metrics,
        "confusion": confusion,
        "bounds": metrics / "bounds.json",
        "translations": root / "translations",
        "split": split,
        "train_plots": root / "plots" / "train",
    }


def tiny_judge_checkpoint(path: Path) -> Path:
    """A finished judge checkpoint holding an untrained, tiny FCN (what `load_judge` reads)."""
    model = FCNConfig(width=2)
    torch.save(
        {
            "kind": KIND,
            "format": JUDGE_FORMAT,
            "finished": True,
            "step": 1,
            "total_steps": 1,
            "model": {"width": model.width, "num_classes": model.num_classes},
            "net": FCN8s(model).state_dict(),
            "config": {"image_size": 16, "eval_batch_size": 4},
        },
        path,
    )
    return path


def make_full_split(root: Path) -> Path:
    """A split with training domains (6 photos, 5 label maps at 28 px) and 3 val triples (16 px), one
    manifest: what the bounds stage reads."""
    make_split(root / "train")
    make_val_split(root / "val_part")
    rows = []
    for part in ("train", "val_part"):
        manifest = pd.read_csv(root / part / "manifest.csv", dtype={"image_id": str})
        for row in manifest.itertuples():
            target = root / row.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(root / part / row.path, target)
        rows.append(manifest)
        shutil.rmtree(root / part)
    pd.concat(rows).to_csv(root / "manifest.csv", index=False)
    return root


# --- other datasets: a pix2pix-style paired one and a CycleGAN-style unpaired one -------------------------


def make_paired_dataset(root: Path, name: str = "facades", counts=None, size=(48, 24), seed: int = 0) -> Path:
    """``root/<name>/{train,val,test}/N.png``: random A|B pairs of `size` (no class label maps);
    returns ``root/<name>``."""
    counts = counts or {"train": 6, "val": 3, "test": 2}
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        folder = root / name / split
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(1, count + 1):
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
                folder / f"{index}.png"
            )
    return root / name


WORDNET = {"A": "n02381460", "B": "n02391049"}  # horse, zebra


def make_unpaired_dataset(
    root: Path, name: str = "horse2zebra", counts=None, sizes=None, seed: int = 0
) -> Path:
    """``root/<name>/{trainA,trainB,testA,testB}/<stem>.jpg`` as the CycleGAN repo's zips hold them: domains
    of other sizes, in images of other sizes (`sizes`: (width, height) per domain); returns the folder."""
    counts = counts or {"trainA": 5, "trainB": 7, "testA": 3, "testB": 4}
    sizes = sizes or {"A": (40, 40), "B": (36, 48)}
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        folder = root / name / split
        folder.mkdir(parents=True, exist_ok=True)
        width, height = sizes[split[-1]]
        for index in range(count):
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(
                folder / f"n0{(split[-1] == 'A' and 238) or 239}_{index}.jpg", quality=95
            )
    return root / name


def make_zip(folder: Path, archive: Path) -> Path:
    """`folder` (a dataset folder) as a zip holding ``<folder name>/...``, as the CycleGAN repo's are."""
    import zipfile

    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for path in sorted(folder.rglob("*")):
            zipped.write(path, path.relative_to(folder.parent).as_posix())
    return archive
