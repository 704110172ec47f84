"""Sample quality on the shipped digits domain.

- `frechet_distance`: the Frechet distance between Gaussians fitted to classifier features of two image sets, by
  default generated samples against the 297 held-out digits. It is a digits-domain analogue of FID (same formula,
  a small digits classifier's 64-d hidden layer instead of Inception's pool3), not FID itself: its values are not
  comparable with published FIDs, and like FID it is biased upward for small sets, so compare sets of equal size.
- `classifier_scores`: the classifier's mean confidence (max softmax probability; low for blurry or ambiguous
  images) and the entropy of its predicted-class histogram (ln 10 = 2.303 when all ten classes are equally
  frequent; lower means mode collapse).
- `trajectory_error`: the per-pixel RMS distance to a reference solve of the same initial noise
  (`reference_solution`: 1000 model calls), i.e. how far a solver is from the ODE solution it approximates.

Everything is deterministic: the classifier runs in eval mode and nothing here draws random numbers.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import Tensor

from .sampling import sample_dpmpp_2m
from .schedules import get_sigmas_karras
from .checks import describe
from .solvers import check_input
from .zoo.classifier import DigitsClassifier, load_classifier
from .zoo.data import NATIVE_RESOLUTION, load_digits_split, resize

REFERENCE_CALLS = 1000


@functools.lru_cache(maxsize=None)
def digits_classifier() -> DigitsClassifier:
    """The shipped classifier (CPU, eval mode, no gradients); `load_classifier` also gives its held-out accuracy."""
    return load_classifier()[0]


def _as_images(images: Tensor, name: str = "images") -> Tensor:
    """Images [N, 1, R, R] (any R >= 8, any float dtype and device) -> float32 CPU 8x8, clamped to [-1, 1] as
    they would be displayed."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__module__}.{type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 1 or images.shape[2] != images.shape[3]:
        raise ValueError(f"{name} must have shape [N, 1, R, R], got {tuple(images.shape)}")
    if images.shape[2] < NATIVE_RESOLUTION:
        raise ValueError(f"{name} must be at least {NATIVE_RESOLUTION}x{NATIVE_RESOLUTION} (the digits' resolution), "
                         f"got {images.shape[2]}x{images.shape[3]}")
    if images.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 images, got {images.shape[0]}")
    if images.device.type == "meta":
        raise ValueError(f"{name} must hold data, got a tensor on the meta device")
    if not images.is_floating_point() or not torch.isfinite(images).all():
        raise ValueError(f"{name} must be finite floating-point values in [-1, 1]")
    # values outside [-1, 1] are clamped as displayed (a diverged sampler must still score, badly); but digits have
    # a black (-1) background, so a batch with no value below -0.25 is [0, 1] or [0, 255] pixels (an unclamped
    # sampler's few slightly negative values included), and one reaching far above 1 whose darkest tenth is no
    # background is [0, 255] pixels
    low, high = (float(v) for v in torch.aminmax(images))  # sync-ok: a metric reads its input once
    darkest_tenth = float(images.detach().float().flatten().kthvalue(max(1, images.numel() // 10)).values)
    if low > -0.25 or (high > 2 and darkest_tenth > -0.75):
        raise ValueError(f"{name} must be scaled to [-1, 1] as the model produces them (background -1), got values "
                         f"in [{low:g}, {high:g}]; for [0, 1] pixels pass images * 2 - 1, for [0, 255] images / 127.5 - 1")
    return resize(images.detach().float().cpu(), NATIVE_RESOLUTION).clamp(-1, 1)


def features(images: Tensor) -> Tensor:
    """The classifier's 64-d feature of each image, float64."""
    return features_of(images, "images")


def features_of(images: Tensor, name: str) -> Tensor:
    with torch.no_grad():
        return digits_classifier().features(_as_images(images, name)).double()


@functools.lru_cache(maxsize=None)
def heldout_features() -> Tensor:
    return features(load_digits_split().heldout_images)


def frechet_distance_of_features(a: Tensor, b: Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2), exactly, by symmetric
    eigendecompositions in float64; features [N, D] with N >= 2 each and one D. A distance: rounding below 0 is
    returned as 0."""
    for name, value in (("a", a), ("b", b)):
        if not isinstance(value, Tensor) or value.dim() != 2 or len(value) < 2 or not value.is_floating_point():
            raise ValueError(f"{name} must be real floating-point features [N, D] with N >= 2, got {describe(value)}")
        if not torch.isfinite(value).all():  # sync-ok: a metric reads its input once
            raise ValueError(f"{name} contains NaN or inf")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have one feature size, got {a.shape[1]} and {b.shape[1]}")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    evals, evecs = torch.linalg.eigh(cov_a)
    sqrt_a = evecs @ torch.diag(evals.clamp_min(0).sqrt()) @ evecs.T
    cross = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp_min(0).sqrt().sum()
    return max(0.0, float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross))


def frechet_distance(images: Tensor, reference: Tensor | None = None) -> float:
    """Frechet distance of classifier features between `images` and `reference` (default: the held-out digits)."""
    ref = heldout_features() if reference is None else features_of(reference, "reference")
    return frechet_distance_of_features(features(images), ref)


def classifier_scores(images: Tensor) -> tuple[float, float]:
    """(mean confidence, entropy in nats of the predicted-class histogram)."""
    with torch.no_grad():
        probs = digits_classifier()(_as_images(images)).softmax(1)
    histogram = torch.bincount(probs.argmax(1), minlength=10).double() / len(probs)
    entropy = -(histogram[histogram > 0] * histogram[histogram > 0].log()).sum()
    return probs.max(1).values.mean().item(), entropy.item()


def trajectory_error(images: Tensor, reference: Tensor) -> float:
    """Mean over samples of the per-pixel RMS distance between `images` and the reference solve of the same noise."""
    for name, value in (("images", images), ("reference", reference)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__module__}.{type(value).__name__}")
        if value.dim() < 2 or not len(value) or not value.is_floating_point():
            raise ValueError(f"{name} must be real floating-point samples [N, ...] with N >= 1, got {describe(value)}")
    if images.shape != reference.shape:
        raise ValueError(f"images and reference must have the same shape, got {tuple(images.shape)} and "
                         f"{tuple(reference.shape)}")
    diff = (images.detach().double() - reference.detach().double().to(images.device)).flatten(1)
    return diff.square().mean(1).sqrt().mean().item()


def reference_solution(denoiser: Callable[..., Tensor], noise: Tensor, sigma_min: float, sigma_max: float,
                       calls: int = REFERENCE_CALLS, rho: float = 7.0) -> Tensor:
    """The ODE solution from `noise` (already scaled by sigma_max) with `calls` model calls: DPM-Solver++(2M) on a
    Karras schedule, second order, so its error is far below any solver under test."""
    check_input(noise, "noise")
    sigmas = get_sigmas_karras(calls, sigma_min, sigma_max, rho, device=noise.device)
    return sample_dpmpp_2m(denoiser, noise, sigmas, disable=True)


def evaluate(images: Tensor, reference: Tensor | None = None) -> dict[str, float]:
    """{'fd', 'confidence', 'class_entropy'} and, given the reference solve of the same noise, 'trajectory_error'."""
    confidence, entropy = classifier_scores(images)
    result = {"fd": frechet_distance(images), "confidence": confidence, "class_entropy": entropy}
    if reference is not None:
        result["trajectory_error"] = trajectory_error(images, reference)
    return result
