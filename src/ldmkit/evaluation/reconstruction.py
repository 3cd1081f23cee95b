"""Per-image reconstruction metrics for images in [-1, 1]: PSNR and SSIM."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, (B,). ``data_range`` 2 = the span of [-1, 1].

    Identical images give +inf.
    """
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(dim=1)  # (B,)
    return (10.0 * torch.log10(data_range**2 / mse)).to(x.dtype)


def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    g = g / g.sum()
    return g[:, None] * g[None, :]  # (size, size), sums to 1


def ssim(
    x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, win_size: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per image, (B,).

    Gaussian 11x11 window (sigma 1.5), K1 = 0.01, K2 = 0.03, population (not sample) statistics,
    valid convolution only, mean of the SSIM map per channel then over channels; this equals
    skimage's ``structural_similarity(gaussian_weights=True, use_sample_covariance=False)``.
    Computed in float64 because E[x^2] - E[x]^2 cancels badly in float32.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim: expected two (B, C, H, W) tensors of the same shape, "
                         f"got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"ssim: images must be at least {win_size}x{win_size}, got {tuple(x.shape[-2:])}")
    c = x.shape[1]
    window = _gaussian_window(win_size, sigma, x.device).expand(c, 1, win_size, win_size)  # depthwise

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=c)  # (B, C, H-10, W-10), valid

    a, b = x.double(), y.double()
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.mean(dim=(1, 2, 3)).to(x.dtype)  # equal-size channels: mean of per-channel means
