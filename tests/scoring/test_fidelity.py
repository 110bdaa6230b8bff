"""Paired fidelity: per-image SSIM and PSNR are scikit-image's, on uint8 RGB with data_range 255."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline.core.errors import PipelineError
from pipeline.scoring.fidelity import PSNR_CAP_DB, pair_fidelity, paired_fidelity


def random_image(rng: np.random.Generator, height: int = 24, width: int = 32, low: int = 0, high: int = 256):
    return rng.integers(low, high, size=(height, width, 3), dtype=np.uint8)


def test_identical_images_score_ssim_one_and_the_capped_psnr():
    image = random_image(np.random.default_rng(0))
    result = paired_fidelity([image, image.copy()], [image, image])
    assert result.ssim.tolist() == [1.0, 1.0]
    assert result.psnr.tolist() == [PSNR_CAP_DB, PSNR_CAP_DB] and result.capped == 2
    assert (result.mean_ssim, result.mean_psnr, result.resized) == (1.0, PSNR_CAP_DB, 0)


def test_psnr_of_known_noise_matches_the_formula_by_hand():
    rng = np.random.default_rng(1)
    target = random_image(rng, low=10, high=246)  # ±10 of noise never clips
    noise = rng.integers(-10, 11, size=target.shape)
    translation = (target.astype(np.int64) + noise).astype(np.uint8)
    mse = float(np.mean(noise.astype(np.float64) ** 2))
    expected = 10 * math.log10(255**2 / mse)
    _, psnr = pair_fidelity(translation, target)
    assert psnr == pytest.approx(expected, abs=1e-10)
    assert 25 < psnr < 35  # ±10 uniform noise: MSE ~ 37, about 32 dB


def test_values_are_scikit_images_and_the_means_are_theirs():
    rng = np.random.default_rng(2)
    targets = [random_image(rng) for _ in range(4)]
    translations = [
        np.clip(t.astype(int) + rng.integers(-40, 41, t.shape), 0, 255).astype(np.uint8) for t in targets
    ]
    result = paired_fidelity(translations, targets)
    for index, (translation, target) in enumerate(zip(translations, targets, strict=True)):
        assert result.ssim[index] == structural_similarity(
            target, translation, channel_axis=-1, data_range=255
        )
        assert result.psnr[index] == peak_signal_noise_ratio(target, translation, data_range=255)
    assert result.mean_ssim == pytest.approx(np.mean(result.ssim)) and result.capped == 0
    assert result.mean_psnr == pytest.approx(np.mean(result.psnr))
    assert not result.ssim.flags.writeable


def test_a_translation_of_another_size_is_resized_bicubic_to_its_target():
    rng = np.random.default_rng(3)
    target = random_image(rng, 40, 60)
    small = random_image(rng, 20, 30)
    result = paired_fidelity([small, target], [target, target])
    resized = np.asarray(Image.fromarray(small).resize((60, 40), Image.Resampling.BICUBIC))
    assert result.resized == 1
    assert result.ssim[0] == structural_similarity(target, resized, channel_axis=-1, data_range=255)
    assert result.psnr[0] == peak_signal_noise_ratio(target, resized, data_range=255)
    with pytest.raises(ValueError, match="differ in size"):
        pair_fidelity(small, target)  # the one-pair function takes aligned images only


def test_files_score_like_their_pixels(tmp_path):
    rng = np.random.default_rng(4)
    targets, translations = [random_image(rng) for _ in range(2)], [random_image(rng) for _ in range(2)]
    paths = {}
    for kind, images in (("target", targets), ("translation", translations)):
        paths[kind] = []
        for index, pixels in enumerate(images):
            path = tmp_path / f"{kind}{index}.png"
            Image.fromarray(pixels).save(path)
            paths[kind].append(path)
    from_files = paired_fidelity(paths["translation"], [str(p) for p in paths["target"]])
    from_arrays = paired_fidelity(translations, targets)
    assert np.array_equal(from_files.ssim, from_arrays.ssim) and np.array_equal(
        from_files.psnr, from_arrays.psnr
    )


def test_bad_input_is_refused_in_one_line(tmp_path):
    image = random_image(np.random.default_rng(5))
    with pytest.raises(PipelineError, match="2 translations but 1 targets"):
        paired_fidelity([image, image], [image])
    with pytest.raises(PipelineError, match="no image pairs"):
        paired_fidelity([], [])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        paired_fidelity([image.astype(np.float32)], [image])
    with pytest.raises(PipelineError, match="too small for SSIM"):
        paired_fidelity([image[:5, :5]], [image[:5, :5]])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(PipelineError, match=r"cannot read image .*broken\.png"):
        paired_fidelity([broken], [image])
