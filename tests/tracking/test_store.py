"""The MLflow store: which one a command uses, and where its artifacts go."""

from pipeline.core.urls import redact_url
from pipeline.tracking import store


def test_tracking_uri_defaults_to_the_sqlite_file_of_the_project_it_runs_in(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # found upwards, as dvc finds its repo
    assert store.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:secret@mlflow:5000/?token=x")
    assert store.tracking_uri() == "http://user:secret@mlflow:5000/?token=x"
    assert redact_url(store.tracking_uri()) == "http://***@mlflow:5000/?***"


def test_artifacts_go_beside_the_sqlite_file(tmp_path):
    assert store._local_artifact_root(f"sqlite:///{tmp_path}/x.db") == (tmp_path / "mlartifacts").as_uri()
    assert store._local_artifact_root("http://server:5000") is None
