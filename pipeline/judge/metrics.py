"""Segmentation scores of the paper's "FCN score": pixel accuracy, class accuracy, class IoU.

One confusion matrix is accumulated over every image of a direction and scored once; the reference
evaluation (pix2pix ``scripts/eval_cityscapes``) accumulates one too. Rows are ground-truth classes,
columns predicted classes plus one extra column for "predicted void": a pixel the prediction could not
put in any of the 19 classes is wrong, never ignored. Void ground-truth pixels are ignored.

Where this differs from the reference: its ground truth is the official ``gtFine`` label ids at
1024x2048 with outputs upsampled to that size; here it is the archive's colour label maps decoded by
nearest colour at the evaluation size (the report lists these deviations beside its tables).
"""

from __future__ import annotations

import numpy as np

from pipeline.data.labels import NUM_CLASSES, VOID

SCORES = ("pixel_acc", "class_acc", "class_iou")  # the three FCN scores, in the paper's column order


def confusion_matrix(
    gt: np.ndarray, pred: np.ndarray, num_classes: int = NUM_CLASSES, ignore_index: int = VOID
) -> np.ndarray:
    """Count ``(gt class, predicted class)`` pixel pairs into an ``(n, n + 1)`` int64 matrix.

    Ground-truth pixels outside ``[0, num_classes)`` (``ignore_index`` and anything else) are
    skipped, like the reference's ``fast_hist``; predicted values outside that range land in the
    last column (predicted void), which counts against the gt class's accuracy and IoU. Matrices
    of several images add up.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt and prediction shapes differ: {gt.shape} vs {pred.shape}")
    gt = gt.reshape(-1).astype(np.int64)
    pred = pred.reshape(-1).astype(np.int64)
    # ignore_index is outside the class range for Cityscapes (255); it is named for readability and
    # in case a caller uses an in-range void id.
    keep = (gt >= 0) & (gt < num_classes) & (gt != ignore_index)
    gt, pred = gt[keep], pred[keep]
    pred = np.where((pred >= 0) & (pred < num_classes), pred, num_classes)
    counts = np.bincount(gt * (num_classes + 1) + pred, minlength=num_classes * (num_classes + 1))
    return counts.reshape(num_classes, num_classes + 1)


def segmentation_scores(cm: np.ndarray) -> dict:
    """Score an ``(n, n + 1)`` confusion matrix from `confusion_matrix`.

    Returns ``pixel_acc`` (correct / all scored pixels), ``class_acc`` (mean per-class recall) and
    ``class_iou`` (mean of TP / (TP + FP + FN)), both means over the classes present in the ground
    truth, plus ``per_class_acc`` and ``per_class_iou`` lists with ``None`` for absent classes.

    The reference takes ``nanmean`` over per-class values; a class absent from the ground truth is
    left out here explicitly (the reference's 1e-12 guard would score it 0 instead of NaN). On the
    full Cityscapes val set all 19 classes are present, so both agree.
    """
    cm = np.asarray(cm, dtype=np.int64)
    num_classes = cm.shape[0]
    if cm.ndim != 2 or cm.shape[1] != num_classes + 1:
        raise ValueError(f"expected an (n, n + 1) confusion matrix, got shape {cm.shape}")
    total = cm.sum()
    if total == 0:
        raise ValueError("the confusion matrix is empty: every ground-truth pixel was void")
    true_pos = np.diagonal(cm[:, :num_classes]).astype(np.float64)
    gt_pixels = cm.sum(axis=1).astype(np.float64)  # includes predicted void: a false negative
    pred_pixels = cm[:, :num_classes].sum(axis=0).astype(np.float64)
    present = gt_pixels > 0
    acc = np.full(num_classes, np.nan)
    iou = np.full(num_classes, np.nan)
    acc[present] = true_pos[present] / gt_pixels[present]
    iou[present] = true_pos[present] / (gt_pixels + pred_pixels - true_pos)[present]
    return {
        "pixel_acc": float(true_pos.sum() / total),
        "class_acc": float(np.nanmean(acc)),
        "class_iou": float(np.nanmean(iou)),
        "per_class_acc": [None if np.isnan(v) else float(v) for v in acc],
        "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
    }
