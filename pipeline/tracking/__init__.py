"""The recording layer: MLflow runs, parents, tags, process liveness. It records how results came about
and decides none of them: computing code never imports it (entry points hand it a `Recorder`), so it is
in no DVC stage's code deps (tests/dvc_graph.py)."""
