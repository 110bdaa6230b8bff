"""Cityscapes colour label maps <-> train ids, from the official label table.

Every label map, real (JPEG, so its colours are slightly off) or generated, decodes the same way:
each pixel takes the nearest colour (Euclidean, RGB) in the full Cityscapes table and that label's
train id; labels outside the 19 train classes become void (255). Where two labels share a colour the
train class wins (pole over polegroup, car over license plate).
"""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as CITYSCAPES_LABELS

VOID = 255
NUM_CLASSES = 19


def _build_tables() -> tuple[np.ndarray, np.ndarray, list[str]]:
    by_colour: dict[tuple[int, int, int], int] = {}
    for label in CITYSCAPES_LABELS:
        train_id = label.trainId if 0 <= label.trainId < NUM_CLASSES else VOID
        previous = by_colour.get(label.color)
        # A shared colour keeps the train class (polegroup -> pole, license plate -> car).
        if previous is None or previous == VOID:
            by_colour[label.color] = train_id
    colours = np.array(list(by_colour), dtype=np.int32)
    train_ids = np.array(list(by_colour.values()), dtype=np.uint8)
    names = [""] * NUM_CLASSES
    for label in CITYSCAPES_LABELS:
        if 0 <= label.trainId < NUM_CLASSES:
            names[label.trainId] = label.name
    return colours, train_ids, names


PALETTE_COLOURS, PALETTE_TRAIN_IDS, CLASS_NAMES = _build_tables()

# The colour each train id is drawn with; void is drawn black.
TRAIN_ID_COLOURS = np.zeros((256, 3), dtype=np.uint8)
for _colour, _train_id in zip(PALETTE_COLOURS, PALETTE_TRAIN_IDS, strict=True):
    if _train_id != VOID:
        TRAIN_ID_COLOURS[_train_id] = _colour


def decode_label_map(rgb: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """Map an ``(H, W, 3)`` uint8 colour label map to ``(H, W)`` uint8 train ids (255 = void).

    Vectorised: squared distances to every table colour, argmin; processed in chunks of pixels so
    memory stays bounded for large images. Ties go to the first table entry, and the table holds each
    colour once (train class kept), so exact colours decode exactly.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    flat = rgb.reshape(-1, 3).astype(np.int32)
    out = np.empty(flat.shape[0], dtype=np.uint8)
    for start in range(0, flat.shape[0], chunk):
        block = flat[start : start + chunk]
        dist = ((block[:, None, :] - PALETTE_COLOURS[None, :, :]) ** 2).sum(axis=2)
        out[start : start + chunk] = PALETTE_TRAIN_IDS[dist.argmin(axis=1)]
    return out.reshape(rgb.shape[:2])


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """Draw ``(H, W)`` train ids as an ``(H, W, 3)`` uint8 colour label map (void black)."""
    return TRAIN_ID_COLOURS[train_ids]
