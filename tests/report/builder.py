"""Building a report from what `tests.factories.make_report_inputs` wrote."""

from pathlib import Path

from pipeline.report.build import ReportPaths, build_report

PLOTS = (  # every figure function of the report, which `fast_plots` replaces
    "plot_fcn_scores",
    "plot_per_class_iou",
    "plot_fidelity",
    "plot_distribution",
    "plot_losses",
    "plot_samples",
)


def build(inputs: dict, out: Path, variants, seeds, **kwargs) -> ReportPaths:
    """`build_report` over the factory's folders."""
    return build_report(
        list(variants),
        list(seeds),
        inputs["metrics"],
        inputs["confusion"],
        inputs["bounds"],
        inputs["translations"],
        inputs["split"],
        inputs["train_plots"],
        out,
        **kwargs,
    )
