"""Segmentation metrics against answers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.labels import NUM_CLASSES, VOID, colorize, decode_label_map
from pipeline.judge.metrics import confusion_matrix, segmentation_scores


def test_perfect_prediction_scores_one():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, NUM_CLASSES, size=(2, 16, 16))
    gt[0, :4] = VOID
    scores = segmentation_scores(confusion_matrix(gt, gt))
    assert scores["pixel_acc"] == scores["class_acc"] == scores["class_iou"] == 1.0


def test_small_matrix_worked_by_hand():
    # Three classes. Pixel by pixel (gt -> pred):
    #   gt 0: 0, 0, 1, void  -> row 0 = [2, 1, 0 | 1]
    #   gt 1: 1, 0           -> row 1 = [1, 1, 0 | 0]
    #   gt 2: 2, 2           -> row 2 = [0, 0, 2 | 0]
    #   gt void (two pixels) -> ignored, whatever was predicted
    gt = np.array([0, 0, 0, 0, 1, 1, 2, 2, VOID, VOID])
    pred = np.array([0, 0, 1, VOID, 1, 0, 2, 2, 0, 1])
    cm = confusion_matrix(gt, pred, num_classes=3)
    assert cm.tolist() == [[2, 1, 0, 1], [1, 1, 0, 0], [0, 0, 2, 0]]
    scores = segmentation_scores(cm)
    # pixel acc: (2 + 1 + 2) correct of 8 scored pixels.
    assert scores["pixel_acc"] == pytest.approx(5 / 8)
    # class acc: 2/4, 1/2, 2/2 -> mean 2/3 (the predicted-void pixel is a miss for class 0).
    assert scores["per_class_acc"] == pytest.approx([0.5, 0.5, 1.0])
    assert scores["class_acc"] == pytest.approx(2 / 3)
    # IoU = TP / (row + col - TP): class 0: 2/(4+3-2) = 2/5; class 1: 1/(2+2-1) = 1/3; class 2: 2/2.
    assert scores["per_class_iou"] == pytest.approx([2 / 5, 1 / 3, 1.0])
    assert scores["class_iou"] == pytest.approx((2 / 5 + 1 / 3 + 1) / 3)


def test_classes_absent_from_gt_are_left_out_of_the_means():
    # Four classes, only 0 and 1 in the gt; one class-0 pixel predicted as class 3 (absent).
    gt = np.array([0, 0, 1, 1])
    pred = np.array([0, 3, 1, 1])
    scores = segmentation_scores(confusion_matrix(gt, pred, num_classes=4))
    assert scores["pixel_acc"] == pytest.approx(3 / 4)
    assert scores["per_class_acc"][2:] == [None, None]
    assert scores["per_class_iou"][2:] == [None, None]
    # class 0: acc 1/2, IoU 1/(2+1-1); class 1: acc 1, IoU 2/(2+2-2). Means over the two present.
    assert scores["class_acc"] == pytest.approx(0.75)
    assert scores["class_iou"] == pytest.approx(0.75)


def test_void_gt_is_ignored_and_predicted_void_is_wrong():
    gt = np.array([[0, 1], [VOID, VOID]])
    wrong_on_void = np.array([[0, 1], [5, 7]])
    assert segmentation_scores(confusion_matrix(gt, wrong_on_void))["pixel_acc"] == 1.0
    predicted_void = np.array([[0, VOID], [0, 0]])
    scores = segmentation_scores(confusion_matrix(gt, predicted_void))
    assert scores["pixel_acc"] == 0.5
    assert scores["per_class_iou"][1] == 0.0


def test_matrices_accumulate_over_images():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, NUM_CLASSES, size=(3, 8, 8))
    pred = rng.integers(0, NUM_CLASSES + 1, size=(3, 8, 8))
    whole = confusion_matrix(gt, pred)
    parts = sum(confusion_matrix(g, p) for g, p in zip(gt, pred, strict=True))
    assert whole.shape == (NUM_CLASSES, NUM_CLASSES + 1)
    assert np.array_equal(whole, parts)
    assert whole.sum() == gt.size


def test_colour_maps_of_the_masks_decode_to_pixel_acc_one():
    # The photo2label path: the val masks' own colour maps, decoded back, must score perfectly.
    rng = np.random.default_rng(2)
    mask = rng.integers(0, NUM_CLASSES, size=(16, 16)).astype(np.uint8)
    mask[:2] = VOID
    decoded = decode_label_map(colorize(mask))
    scores = segmentation_scores(confusion_matrix(mask, decoded))
    assert scores["pixel_acc"] == scores["class_iou"] == 1.0


def test_shape_mismatch_and_all_void_fail():
    with pytest.raises(ValueError, match="shapes differ"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="empty"):
        segmentation_scores(confusion_matrix(np.full((2, 2), VOID), np.zeros((2, 2))))
