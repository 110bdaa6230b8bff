"""URLs as they may be shown: no credentials, no query strings."""

from __future__ import annotations

import pytest

from pipeline.core.urls import redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:tok@host:8443/a.tar.gz?sig=1#frag", "https://***@host:8443/a.tar.gz?***"),
        ("http://token@host/x", "http://***@host/x"),
        (
            "https://bucket.s3.amazonaws.com/c.tar.gz?X-Amz-Signature=abc",
            "https://bucket.s3.amazonaws.com/c.tar.gz?***",
        ),
        ("postgresql://mlflow:pw@db:5432/mlflow", "postgresql://***@db:5432/mlflow"),
        ("http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/cityscapes.tar.gz", None),
        ("sqlite:////work/project/mlflow.db", None),
        ("/data/cityscapes.tar.gz", None),
        ("relative/folder", None),
        ("http://[::1/oops", "http://***"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == (url if shown is None else shown)


def test_redact_text_finds_every_url_in_a_message():
    message = "API request to http://a:b@h:5000/api/2.0/x?y=1 failed; see 'https://u:p@h2/p' (http://h3/?k=v)"
    assert (
        redact_text(message)
        == "API request to http://***@h:5000/api/2.0/x?*** failed; see 'https://***@h2/p' (http://h3/?***)"
    )
