import numpy as np
import pytest
from scipy import stats

from pipeline.judge.metrics import segmentation_scores
from pipeline.scoring.bootstrap import (
    batch_scores,
    percentile_interval,
    resample_counts,
    resampled_scores,
    seed_summary,
)
from tests.factories import confusions_with_accuracy


def test_batch_scores_equal_the_single_matrix_scores():
    rng = np.random.default_rng(0)
    cms = rng.integers(0, 50, size=(7, 19, 20))
    cms[3, 5] = 0  # a class absent from one matrix's ground truth: left out of its class means
    batch = batch_scores(cms)
    for i, cm in enumerate(cms):
        one = segmentation_scores(cm)
        for name in ("pixel_acc", "class_acc", "class_iou"):
            assert batch[name][i] == pytest.approx(one[name], rel=1e-12)


def test_each_resample_draws_every_image_count_times():
    counts = resample_counts(500, 1000, seed=0)
    assert counts.shape == (1000, 500) and (counts.sum(axis=1) == 500).all()
    assert np.array_equal(counts, resample_counts(500, 1000, seed=0))
    # Drawing each image once reproduces the plain score.
    per_image = confusions_with_accuracy(list(np.linspace(0.2, 0.8, 10)))
    once = resampled_scores(per_image, np.ones((1, 10), dtype=np.int64))
    assert once["pixel_acc"][0] == pytest.approx(segmentation_scores(per_image.sum(axis=0))["pixel_acc"])


def test_the_bootstrap_interval_shrinks_with_more_images():
    narrow = resampled_scores(confusions_with_accuracy([0.3, 0.7] * 250), resample_counts(500, 1000, 0))
    wide = resampled_scores(confusions_with_accuracy([0.3, 0.7] * 5), resample_counts(10, 1000, 0))
    width = [np.subtract(*percentile_interval(s["pixel_acc"])[::-1]) for s in (narrow, wide)]
    assert width[0] < width[1] / 4


def test_seed_summary_is_the_t_interval():
    values = [0.50, 0.56, 0.47, 0.53]
    summary = seed_summary(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert summary["ci95"] == [pytest.approx(low), pytest.approx(high)]
    assert summary["std"] == pytest.approx(np.std(values, ddof=1))
    assert seed_summary([0.5]) == {"mean": 0.5, "std": None, "ci95": None}
