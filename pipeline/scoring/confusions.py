"""Per-image confusion matrices: what every FCN score and its bootstrap are computed from.

One ``(19, 20)`` matrix per val image (rows: the ground truth's train classes; columns: the prediction,
the last one void), so the report can resample images (`pipeline.scoring.bootstrap`); summed over the
images they are the one confusion matrix of a score (`pipeline.judge.metrics`). The judge's are made
by `pipeline.judge.segment.judge_confusions`; the colour label maps' here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from pipeline.core.fileio import atomic_file
from pipeline.core.images import read_mask, read_rgb, resize_to
from pipeline.core.progress import progress
from pipeline.data.labels import NUM_CLASSES, decode_label_map
from pipeline.judge.metrics import confusion_matrix


def decoded_confusions(
    label_maps: Sequence[str | os.PathLike | np.ndarray], mask_paths: Sequence[str | os.PathLike]
) -> np.ndarray:
    """Per-image confusion matrices ``(N, 19, 20)`` of colour label maps (files or uint8 arrays), each
    decoded to class ids by nearest colour and scored against its class-id mask (the FCN score of G)."""
    out = np.zeros((len(label_maps), NUM_CLASSES, NUM_CLASSES + 1), dtype=np.int64)
    pairs = zip(label_maps, mask_paths, strict=True)
    for index, (label_map, mask) in enumerate(
        progress(pairs, total=len(out), desc="photo2label", unit="img")
    ):
        gt = read_mask(mask)
        rgb = label_map if isinstance(label_map, np.ndarray) else read_rgb(label_map)
        # Nearest, not bilinear: blending two class colours would invent a third class.
        out[index] = confusion_matrix(
            gt, decode_label_map(resize_to(rgb, gt.shape, Image.Resampling.NEAREST))
        )
    return out


def save_confusions(
    path: str | os.PathLike, image_ids: Sequence[str], confusions: dict[str, np.ndarray]
) -> None:
    """Per-image matrices by name (a direction, or `floor/<direction>`...) with their val ids, atomically, as
    one .npz."""
    with atomic_file(path, "wb") as handle:
        np.savez_compressed(handle, image_ids=np.asarray(image_ids, dtype=str), **confusions)
