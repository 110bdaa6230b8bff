"""The Prefect table of a report's scores shows whatever metrics the dataset has."""

from pipeline.orchestration.records import scores_rows


def test_scores_rows_show_every_scalar_metric_of_any_dataset():
    document = {
        "variants": {
            "cyclegan": {
                "seeds": [0, 1],
                "fcn/label2photo/class_iou": {"mean": 0.1234, "ci95": [0.1, 0.15]},
                "fid/label2photo": {"mean": 81.25, "ci95": None},
                "kid/zebra2horse": {"mean": 0.0312, "bootstrap_ci95": [0.02, 0.04]},
                "ssim/label2photo": {"mean": None},  # offline or not computed: left out
                "per_class_iou": {"label2photo": [0.5, 0.1]},  # not a scalar score
            }
        }
    }
    (row,) = scores_rows(document)
    assert row == {
        "variant": "cyclegan",
        "seeds": "0,1",
        "fcn/label2photo/class_iou": "0.123 [0.100, 0.150]",
        "fid/label2photo": "81.250",
        "kid/zebra2horse": "0.031 [0.020, 0.040]",
    }
