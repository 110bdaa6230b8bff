"""Image files as 8-bit RGB, every kind on purpose: EXIF orientation, 16-bit, palette, alpha, greyscale."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.core.errors import PipelineError
from pipeline.core.images import read_rgb
from tests.factories import make_bomb_image

ORIENTATION = 0x0112


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.arange(4 * 8 * 3, dtype=np.uint8).reshape(4, 8, 3)  # 4 high, 8 wide
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "rotate 90 degrees clockwise to show it": what phones write
    Image.fromarray(pixels).save(tmp_path / "phone.png", exif=exif)
    upright = np.asarray(Image.fromarray(pixels).transpose(Image.Transpose.ROTATE_270))
    assert read_rgb(tmp_path / "phone.png").shape == (8, 4, 3)
    assert np.array_equal(read_rgb(tmp_path / "phone.png"), upright)


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.array([[0, 257, 32896, 65535]], dtype=np.uint16)).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode in ("I", "I;16")
    assert read_rgb(tmp_path / "deep.png")[0].tolist() == [[0] * 3, [1] * 3, [128] * 3, [255] * 3]


def test_palette_transparency_and_alpha_are_composited_over_black(tmp_path):
    palette = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), mode="P")
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.save(tmp_path / "palette.png", transparency=0)
    assert read_rgb(tmp_path / "palette.png")[0].tolist() == [[0, 0, 0], [0, 0, 255]]

    rgba = np.array([[[200, 100, 50, 0], [200, 100, 50, 255], [200, 100, 50, 128]]], dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    assert read_rgb(tmp_path / "alpha.png")[0].tolist() == [[0, 0, 0], [200, 100, 50], [100, 50, 25]]

    grey_alpha = np.array([[[90, 0], [90, 255]]], dtype=np.uint8)
    Image.fromarray(grey_alpha, mode="LA").save(tmp_path / "la.png")
    assert read_rgb(tmp_path / "la.png")[0].tolist() == [[0, 0, 0], [90, 90, 90]]


def test_greyscale_and_cmyk_become_three_channels(tmp_path):
    Image.fromarray(np.array([[7, 250]], dtype=np.uint8), mode="L").save(tmp_path / "grey.png")
    assert read_rgb(tmp_path / "grey.png")[0].tolist() == [[7, 7, 7], [250, 250, 250]]
    Image.new("CMYK", (2, 1), (0, 0, 0, 0)).save(tmp_path / "print.jpg")
    assert read_rgb(tmp_path / "print.jpg").shape == (1, 2, 3)


def test_unreadable_files_are_named(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(PipelineError, match=r"cannot read image .*broken\.jpg"):
        read_rgb(tmp_path / "broken.jpg")
    with pytest.raises(PipelineError, match=r"cannot read image .*bomb\.png.*decompression bomb"):
        read_rgb(make_bomb_image(tmp_path / "bomb.png"))
