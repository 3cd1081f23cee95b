import math

import numpy as np
import pytest
import scipy.linalg
import torch

from ldmkit.evaluation.metrics import feature_statistics, frechet_distance, inception_score, kid, precision_recall


def sqrtm_frechet_reference(mu1, s1, mu2, s2):
    """The textbook formula with a general matrix square root, for comparison."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_feature_statistics_float64_unbiased():
    f = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    mu, sigma = feature_statistics(f)
    assert mu.dtype == sigma.dtype == np.float64
    x = f.double().numpy()
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, (x - x.mean(0)).T @ (x - x.mean(0)) / 49, rtol=1e-10)
    with pytest.raises(ValueError):
        feature_statistics(np.zeros(5))


def test_frechet_distance_matches_sqrtm_reference():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 64))
    b = 1.3 * rng.normal(size=(500, 64)) @ (np.eye(64) + 0.1 * rng.normal(size=(64, 64))) + 0.2
    mu1, s1 = feature_statistics(a)
    mu2, s2 = feature_statistics(b)
    ref = sqrtm_frechet_reference(mu1, s1, mu2, s2)
    assert ref > 1.0
    assert math.isclose(frechet_distance(mu1, s1, mu2, s2), ref, rel_tol=1e-6)


def test_frechet_distance_identical_sets_is_zero():
    mu, s = feature_statistics(np.random.default_rng(1).normal(size=(500, 64)))
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-8 * np.trace(s)


def test_frechet_distance_diagonal_gaussians_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)  # 7.25 + 4 + 1
    assert math.isclose(frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)), expected, rel_tol=1e-12)


def test_frechet_distance_singular_covariances():
    # Fewer samples than dimensions: rank-deficient covariances, still finite, real and >= 0.
    rng = np.random.default_rng(2)
    mu1, s1 = feature_statistics(rng.normal(size=(10, 32)))
    mu2, s2 = feature_statistics(rng.normal(size=(10, 32)))
    d = frechet_distance(mu1, s1, mu2, s2)
    assert math.isfinite(d) and d > 0
    # The 23 zero eigenvalues carry round-off of ~1e-16 whose square roots (~1e-8 each) add up.
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-6 * np.trace(s1)


def brute_force_mmd2_unbiased(x, y, degree=3, gamma=None, coef0=1.0):
    m, d = x.shape
    gamma = 1.0 / d if gamma is None else gamma
    k = lambda u, v: (gamma * float(np.dot(u, v)) + coef0) ** degree  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_exact_small_case():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(6, 3)), rng.normal(loc=0.5, size=(6, 3))
    # Subsets of the full size are permutations of the sets, and MMD^2 does not depend on order.
    mean, std = kid(x, y, subsets=3, subset_size=6)
    assert math.isclose(mean, brute_force_mmd2_unbiased(x, y), rel_tol=1e-12)
    assert std < 1e-12
    mean, _ = kid(x, y, subsets=1, subset_size=6, degree=2, gamma=0.7, coef0=0.5)
    assert math.isclose(mean, brute_force_mmd2_unbiased(x, y, degree=2, gamma=0.7, coef0=0.5), rel_tol=1e-12)


def test_kid_subset_size_clipped_to_smaller_set():
    rng = np.random.default_rng(4)
    y = rng.normal(size=(4, 3))
    x = np.repeat(rng.normal(size=(1, 3)), 9, axis=0)  # any 4 rows of x are the same 4 rows
    mean, _ = kid(x, y, subsets=2, subset_size=1000)
    assert math.isclose(mean, brute_force_mmd2_unbiased(x[:4], y), rel_tol=1e-12)


def test_kid_same_distribution_near_zero_and_unbiased():
    rng = np.random.default_rng(5)
    # Large pools, small subsets: subsets barely overlap, so their estimates are close to independent.
    a, b = rng.normal(size=(20_000, 8)), rng.normal(size=(20_000, 8))
    subsets = 100
    mean, std = kid(a, b, subsets=subsets, subset_size=100)
    assert abs(mean) < 3 * std / math.sqrt(subsets)
    # A single-subset estimate goes below zero for some seeds: the estimator is unbiased, not a squared norm.
    singles = [kid(a, b, subsets=1, subset_size=200, seed=s)[0] for s in range(10)]
    assert min(singles) < 0 < max(singles)


def test_kid_shifted_distributions_positive_and_seeded():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(600, 8)), rng.normal(loc=1.0, size=(600, 8))
    mean, std = kid(a, b, subsets=50, subset_size=200)
    assert mean > 10 * std / math.sqrt(50) and mean > 1.0
    assert kid(a, b, subsets=5, subset_size=100, seed=1) == kid(a, b, subsets=5, subset_size=100, seed=1)
    assert kid(torch.from_numpy(a), torch.from_numpy(b), subsets=5, subset_size=100) == \
        kid(a, b, subsets=5, subset_size=100)


def gaussians(n=1000, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


def test_precision_recall_identical_distributions_high():
    real, fake = gaussians()
    p, r = precision_recall(real, fake, k=3)
    assert p > 0.8 and r > 0.8


def test_precision_recall_mode_collapse():
    real, fake = gaussians()
    p, r = precision_recall(real, 0.1 * fake, k=3)
    assert p > 0.9 and r < 0.1


def test_precision_recall_far_away_is_zero():
    real, fake = gaussians()
    assert precision_recall(real, fake + 20.0, k=3) == (0.0, 0.0)


def test_precision_recall_batching_and_inputs_agree():
    real, fake = gaussians(n=300, seed=1)
    full = precision_recall(real, fake, k=5, batch_size=10_000)
    assert precision_recall(real, fake, k=5, batch_size=7) == full
    assert precision_recall(real.numpy(), fake.numpy(), k=5) == full


def test_precision_recall_brute_force_small():
    rng = np.random.default_rng(7)
    real, fake = rng.normal(size=(20, 2)), rng.normal(loc=0.7, size=(15, 2))

    def cover(points, centres, k):
        dc = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
        radii = np.sort(dc, axis=1)[:, k]  # column 0 is the point itself
        dp = np.linalg.norm(points[:, None] - centres[None], axis=-1)
        return float(np.mean((dp <= radii).any(axis=1)))

    p, r = precision_recall(real, fake, k=2, batch_size=4)
    assert math.isclose(p, cover(fake, real, 2)) and math.isclose(r, cover(real, fake, 2))
    with pytest.raises(ValueError):
        precision_recall(real, fake, k=15)


def test_inception_score_uniform_is_one():
    mean, std = inception_score(np.full((100, 7), 1 / 7), splits=10)
    assert math.isclose(mean, 1.0, rel_tol=1e-12) and std < 1e-12


def test_inception_score_even_one_hot_is_num_classes():
    c, splits = 5, 4
    probs = np.eye(c)[np.arange(c * splits * 3) % c]  # every split holds each class equally often
    mean, std = inception_score(torch.from_numpy(probs), splits=splits)
    assert math.isclose(mean, c, rel_tol=1e-12) and std < 1e-12


def test_inception_score_single_class_is_one():
    mean, _ = inception_score(np.eye(4)[np.zeros(20, dtype=int)], splits=2)
    assert math.isclose(mean, 1.0, rel_tol=1e-12)
