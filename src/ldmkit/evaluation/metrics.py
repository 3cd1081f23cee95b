"""Distribution metrics for generative models, computed on precomputed features or class probabilities.

- :func:`feature_statistics` and :func:`frechet_distance`: FID (Heusel et al. 2017, "GANs Trained by a Two
  Time-Scale Update Rule Converge to a Local Nash Equilibrium").
- :func:`kid`: Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs").
- :func:`precision_recall`: improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and
  Recall Metric for Assessing Generative Models").
- :func:`inception_score`: Inception Score (Salimans et al. 2016, "Improved Techniques for Training GANs").

All functions are pure; statistics are computed in float64. Inputs may be numpy arrays or torch tensors.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.special import xlogy

ArrayLike = np.ndarray | torch.Tensor


def _as_float64_matrix(x: ArrayLike, name: str) -> np.ndarray:
    """``x`` as a 2-D float64 numpy array, (N, D)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    out = np.asarray(x, dtype=np.float64)
    if out.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (N, D) array, got shape {out.shape}")
    return out


def _as_float64_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    """``x`` as a 2-D float64 torch tensor, (N, D); a tensor stays on its device."""
    out = x.detach().double() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))
    if out.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D (N, D) array, got shape {tuple(out.shape)}")
    return out


def feature_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64, as used by FID (Heusel 2017)."""
    f = _as_float64_matrix(features, "feature_statistics")
    if f.shape[0] < 2:
        raise ValueError(f"feature_statistics: need at least 2 samples for a covariance, got {f.shape[0]}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (FID, Heusel et al. 2017).

    d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)).
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    s1, s2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"frechet_distance: means must be 1-D of equal shape, got {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"frechet_distance: covariances must be ({d}, {d}), got {s1.shape} and {s2.shape}")
    # Tr sqrt(S1 S2) without a general (non-symmetric) matrix square root such as scipy.linalg.sqrtm:
    # S1 S2 = sqrt(S1) (sqrt(S1) S2) has the same characteristic polynomial as (sqrt(S1) S2) sqrt(S1)
    # (XY and YX share eigenvalues for square X, Y, whether or not they are invertible), and
    # M = sqrt(S1) S2 sqrt(S1) is symmetric positive semi-definite. So Tr sqrt(S1 S2) = sum_i sqrt(lambda_i(M)).
    # Symmetric eigendecompositions (eigh) are backward stable and real: no complex parts from round-off
    # to discard, no iteration that stalls on singular covariances (fewer samples than dimensions), and
    # eigenvalues that round-off pushes slightly below 0 are clipped to 0.
    w1, v1 = np.linalg.eigh((s1 + s1.T) / 2)
    sqrt_s1 = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T
    m = sqrt_s1 @ s2 @ sqrt_s1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def features_fd(fake: ArrayLike, real: ArrayLike) -> float:
    """The Frechet distance between two feature sets (N, D): their statistics, then :func:`frechet_distance`."""
    return frechet_distance(*feature_statistics(fake), *feature_statistics(real))


def _polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> np.ndarray:
    return (gamma * (x @ y.T) + coef0) ** degree


def kid(
    feats_a: ArrayLike,
    feats_b: ArrayLike,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): mean and std of the unbiased MMD^2 over subsets.

    Kernel k(x, y) = (gamma x.y + coef0)^degree, gamma = 1 / D by default. Each of ``subsets`` rounds draws
    m = min(subset_size, N_a, N_b) rows from each set without replacement (numpy generator seeded by
    ``seed``) and computes the unbiased estimator

        MMD^2_u = sum_{i != j} k(a_i, a_j) / (m(m-1)) + sum_{i != j} k(b_i, b_j) / (m(m-1))
                  - 2 sum_{i, j} k(a_i, b_j) / m^2,

    which can be negative when the two distributions are equal. The std is over subsets (ddof 0).
    """
    a = _as_float64_matrix(feats_a, "kid feats_a")
    b = _as_float64_matrix(feats_b, "kid feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"kid: feature dimensions differ, {a.shape[1]} and {b.shape[1]}")
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError(f"kid: need subsets of at least 2 samples, got {m}")
    if subsets < 1:
        raise ValueError(f"kid: subsets must be >= 1, got {subsets}")
    g = 1.0 / a.shape[1] if gamma is None else gamma
    rng = np.random.default_rng(seed)
    mmds = np.empty(subsets)
    for s in range(subsets):
        x = a[rng.choice(a.shape[0], m, replace=False)]
        y = b[rng.choice(b.shape[0], m, replace=False)]
        k_xx = _polynomial_kernel(x, x, degree, g, coef0)
        k_yy = _polynomial_kernel(y, y, degree, g, coef0)
        k_xy = _polynomial_kernel(x, y, degree, g, coef0)
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        mmds[s] = within - 2.0 * k_xy.mean()
    return float(mmds.mean()), float(mmds.std())


def _knn_radii(x: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Distance of each row of x to its k-th nearest other row, (N,); distances in chunks of rows."""
    # The (k+1)-th smallest distance in a row skips the point itself (distance 0).
    return torch.cat([torch.cdist(c, x).kthvalue(k + 1, dim=1).values for c in x.split(batch_size)])


def _coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, batch_size: int) -> float:
    """Share of points inside at least one closed ball (centres[i], radii[i]); distances in chunks of rows."""
    inside = sum(int((torch.cdist(c, centres) <= radii).any(dim=1).sum()) for c in points.split(batch_size))
    return inside / points.shape[0]


def precision_recall(
    real: ArrayLike, fake: ArrayLike, k: int = 3, batch_size: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifold estimates.

    Each real point gets a ball whose radius is the distance to its k-th nearest real neighbour (itself
    excluded); precision = share of fake points inside at least one real ball. Recall is the same with the
    roles swapped: share of real points inside at least one fake ball (radii from fake k-NN distances).
    Pairwise distances are computed ``batch_size`` rows at a time, so memory is O(batch_size * N): 10k x 10k
    features fit easily. Tensors stay on their device.
    """
    r = _as_float64_tensor(real, "precision_recall real")
    f = _as_float64_tensor(fake, "precision_recall fake").to(r.device)
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"precision_recall: feature dimensions differ, {r.shape[1]} and {f.shape[1]}")
    if not 1 <= k < min(r.shape[0], f.shape[0]):
        raise ValueError(f"precision_recall: need 1 <= k < number of samples in each set, got k={k} "
                         f"with {r.shape[0]} real and {f.shape[0]} fake")
    precision = _coverage(f, r, _knn_radii(r, k, batch_size), batch_size)
    recall = _coverage(r, f, _knn_radii(f, k, batch_size), batch_size)
    return precision, recall


def inception_score(probs: ArrayLike, splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), mean and std (ddof 0) over splits.

    ``probs`` (N, C) are class probabilities p(y|x), one row per sample; the rows are cut into ``splits``
    contiguous, near-equal parts, and p(y) is the mean prediction within each part. 0 log 0 counts as 0.
    """
    p = _as_float64_matrix(probs, "inception_score")
    if np.any(p < 0):
        raise ValueError("inception_score: probabilities must be non-negative")
    if not 1 <= splits <= p.shape[0]:
        raise ValueError(f"inception_score: need 1 <= splits <= N={p.shape[0]}, got {splits}")
    scores = []
    for part in np.array_split(p, splits):
        p_y = part.mean(axis=0, keepdims=True)
        kl = (xlogy(part, part) - xlogy(part, p_y)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
