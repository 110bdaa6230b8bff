"""The report tests' shared fixture: plots replaced by a 1x1 PNG, for tests about everything but the
plots."""

import pytest
from PIL import Image

from pipeline.report import figures
from tests.report.builder import PLOTS


@pytest.fixture
def fast_plots(monkeypatch):
    def tiny(*args):
        Image.new("RGB", (1, 1)).save(args[-1])
        return True

    for name in PLOTS:
        monkeypatch.setattr(figures, name, tiny)
