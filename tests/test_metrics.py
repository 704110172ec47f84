"""The digits data split, the metric's classifier and the quality metric (fd.metrics)."""
import numpy as np
import pytest
import torch

import fused_diffusion as fd
from fused_diffusion.zoo import classifier as clf
from fused_diffusion.zoo.data import load_digits_split, resize

SPLIT = load_digits_split()


def test_split_is_fixed_disjoint_and_scaled():
    assert SPLIT.train_images.shape == (1500, 1, 8, 8) and SPLIT.heldout_images.shape == (297, 1, 8, 8)
    assert SPLIT.train_images.min() == -1 and SPLIT.train_images.max() == 1
    again = load_digits_split()
    assert torch.equal(again.heldout_images, SPLIT.heldout_images)
    train = {tuple(x.flatten().tolist()) for x in SPLIT.train_images}
    overlap = sum(tuple(x.flatten().tolist()) in train for x in SPLIT.heldout_images)
    assert overlap <= 2, "held-out digits must not be train digits (sklearn's set has a couple of exact duplicates)"
    assert set(SPLIT.heldout_labels.tolist()) == set(range(10))


def test_upsampled_split_is_bilinear_and_area_returns_close_to_native():
    big = load_digits_split(16)
    assert big.train_images.shape == (1500, 1, 16, 16)
    expected = torch.nn.functional.interpolate(SPLIT.train_images[:5], size=(16, 16), mode="bilinear",
                                               align_corners=False)
    torch.testing.assert_close(big.train_images[:5], expected)
    # down again by area averaging: the original blurred by [1/8, 3/4, 1/8] per axis (edges replicated)
    kernel = torch.tensor([1 / 8, 3 / 4, 1 / 8])
    padded = torch.nn.functional.pad(SPLIT.train_images, [1, 1, 1, 1], mode="replicate")
    blurred = torch.nn.functional.conv2d(padded, (kernel[:, None] * kernel[None, :])[None, None])
    torch.testing.assert_close(resize(big.train_images, 8), blurred)
    with pytest.raises(ValueError, match="resolution"):
        load_digits_split(4)


def test_shipped_classifier_accuracy_is_at_least_97_percent_and_as_recorded():
    classifier, info = clf.load_classifier()
    accuracy = clf.accuracy(classifier, SPLIT.heldout_images, SPLIT.heldout_labels)
    assert accuracy >= 0.97
    assert accuracy == pytest.approx(info["heldout_accuracy"])


def test_random_shift_moves_images_by_at_most_one_pixel():
    images = torch.full((64, 1, 8, 8), -1.0)
    images[:, :, 3, 4] = 1
    shifted = clf.random_shift(images, torch.Generator().manual_seed(0))
    rows, cols = (shifted[:, 0] == 1).nonzero()[:, 1:].T
    assert len(rows) == 64 and set(rows.tolist()) == {2, 3, 4} and set(cols.tolist()) == {3, 4, 5}


def test_frechet_distance_matches_scipy_sqrtm():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(200, 12, generator=gen, dtype=torch.float64)
    b = torch.randn(150, 12, generator=gen, dtype=torch.float64) @ torch.randn(12, 12, generator=gen,
                                                                               dtype=torch.float64) + 0.3
    mu_a, mu_b = a.mean(0).numpy(), b.mean(0).numpy()
    cov_a, cov_b = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    covmean = scipy_linalg.sqrtm(cov_a @ cov_b).real
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean)
    assert fd.metrics.frechet_distance_of_features(a, b) == pytest.approx(expected, rel=1e-8)
    assert fd.metrics.frechet_distance_of_features(a, a) == pytest.approx(0, abs=1e-8)


def test_frechet_distance_is_small_between_heldout_halves_and_large_for_noise_or_blur():
    halves = fd.metrics.frechet_distance(SPLIT.heldout_images[:148], SPLIT.heldout_images[148:])
    train = fd.metrics.frechet_distance(SPLIT.train_images)
    noise = fd.metrics.frechet_distance(torch.randn(297, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    blur = fd.metrics.frechet_distance(torch.nn.functional.avg_pool2d(SPLIT.heldout_images, 3, 1, 1))
    assert train < halves < 25  # measured 5.9 and 15.1: the small-set bias of 148 vs 149 images
    assert noise > 100 and blur > 100  # measured 161 and 200
    # Not 1e-8 as for the random features above: these covariances are near-singular, and the square roots of their
    # ~1e-13 round-off eigenvalues add up to ~1e-6 (the sign depends on the BLAS build).
    assert fd.metrics.frechet_distance(SPLIT.heldout_images) == pytest.approx(0, abs=1e-4)


def test_classifier_scores_see_confidence_and_mode_collapse():
    confidence, entropy = fd.metrics.classifier_scores(SPLIT.train_images)
    assert confidence > 0.95 and entropy == pytest.approx(np.log(10), abs=0.01)
    threes = SPLIT.train_images[SPLIT.train_labels == 3]
    assert fd.metrics.classifier_scores(threes)[1] == pytest.approx(0, abs=1e-12)
    two_classes = SPLIT.train_images[(SPLIT.train_labels == 3) | (SPLIT.train_labels == 7)]
    assert fd.metrics.classifier_scores(two_classes)[1] == pytest.approx(np.log(2), abs=0.02)
    gray = torch.full((50, 1, 8, 8), -0.5)
    assert fd.metrics.classifier_scores(gray)[0] < confidence


def test_trajectory_error_is_the_mean_per_pixel_rms_distance():
    reference = torch.zeros(2, 1, 8, 8)
    images = torch.zeros(2, 1, 8, 8)
    images[0] = 0.5  # rms 0.5
    images[1, 0, 0, :4] = 4.0  # rms sqrt(4 * 16 / 64) = 1
    assert fd.metrics.trajectory_error(images, reference) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="same shape"):
        fd.metrics.trajectory_error(images, reference[:1])


def test_reference_solution_matches_the_exact_ode_solution_of_the_gaussian_mixture():
    gmm = fd.GaussianMixture.random(4, 16, seed=0).double()
    noise = torch.randn(8, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80
    x = fd.metrics.reference_solution(gmm, noise, 0.002, 80.0)
    exact = gmm.ode_solution(noise, 80.0)
    assert ((x - exact).norm() / exact.norm()).item() < 1e-5


def test_metrics_are_deterministic_and_accept_larger_images_and_any_device_dtype():
    images = SPLIT.heldout_images[:100].double()
    assert fd.metrics.evaluate(images) == fd.metrics.evaluate(images.clone())
    # 16x16 images are area-averaged to 8x8: nearest upsampling comes back exactly
    big = images.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3).half()
    assert fd.metrics.frechet_distance(big) == pytest.approx(fd.metrics.frechet_distance(images), rel=1e-6)


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(10, 8, 8), r"images must have shape \[N, 1, R, R\], got \(10, 8, 8\)"),
    (torch.zeros(10, 1, 4, 4), "images must be at least 8x8"),
    (torch.zeros(10, 1, 8, 8, device="meta"), "must hold data"),
    (torch.zeros(10, 3, 8, 8), r"\[N, 1, R, R\]"),
    (torch.zeros(1, 1, 8, 8), "at least 2 images, got 1"),
    (torch.full((4, 1, 8, 8), float("nan")), "finite"),
    (torch.zeros(4, 1, 8, 8, dtype=torch.int64), "floating-point"),
])
def test_bad_images_are_refused_by_name(bad, match):
    with pytest.raises(ValueError, match=match):
        fd.metrics.evaluate(bad)


def test_wrong_types_and_the_reference_are_named():
    import numpy as np

    with pytest.raises(TypeError, match="images must be a torch.Tensor, got numpy.ndarray"):
        fd.metrics.frechet_distance(np.zeros((4, 1, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"reference must have shape \[N, 1, R, R\], got \(4, 3, 8, 8\)"):
        fd.metrics.frechet_distance(torch.zeros(4, 1, 8, 8), reference=torch.zeros(4, 3, 8, 8))


def test_zoo_checks_device_and_dtype():
    with pytest.raises(TypeError, match="device must be a torch.device"):
        fd.zoo.digits(device=3.5)
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        fd.zoo.digits(dtype="float16")
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        fd.zoo.digits(dtype=torch.complex64)
