import math

import numpy as np
import pytest
import torch

from ldmkit.evaluation.reconstruction import psnr, ssim


def test_psnr_of_known_mse_and_identical():
    x = torch.zeros(2, 3, 8, 8)
    y = x.clone()
    y[0] += 0.1  # MSE 0.01 over a range of 2 -> 10*log10(4/0.01)
    out = psnr(x, y)
    assert out.shape == (2,)
    assert math.isclose(out[0].item(), 10 * math.log10(400), rel_tol=1e-6)
    assert math.isinf(out[1].item())
    assert math.isclose(psnr(x[:1], y[:1], data_range=1.0).item(), 20.0, rel_tol=1e-6)


def test_ssim_identical_is_one_and_noise_lowers_it():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=x.dtype))
    s = ssim(x, x + 0.5 * torch.randn_like(x))
    assert s.shape == (2,) and (s < 0.9).all()


def test_ssim_matches_scipy_gaussian_reference():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (2, 3, 24, 20))
    b = np.clip(a + 0.3 * rng.standard_normal(a.shape), -1, 1)
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    expected = []
    for i in range(2):
        per_channel = []
        for ch in range(3):
            # truncate 3.5 * sigma 1.5 -> radius 5: the 11x11 window; crop the 5 border pixels (= valid conv).
            f = lambda t: ndimage.gaussian_filter(t, sigma=1.5, truncate=3.5)[5:-5, 5:-5]
            x, y = a[i, ch], b[i, ch]
            mx, my = f(x), f(y)
            vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
            m = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
            per_channel.append(m.mean())
        expected.append(np.mean(per_channel))
    out = ssim(torch.from_numpy(a), torch.from_numpy(b))
    assert np.allclose(out.numpy(), expected, atol=1e-10)


def test_ssim_matches_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, (3, 20, 20))
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), -1, 1)
    ref = metrics.structural_similarity(a, b, data_range=2.0, channel_axis=0, gaussian_weights=True,
                                        sigma=1.5, use_sample_covariance=False)
    out = ssim(torch.from_numpy(a)[None], torch.from_numpy(b)[None])
    assert math.isclose(out.item(), ref, rel_tol=1e-6)


def test_ssim_rejects_small_images():
    with pytest.raises(ValueError, match="11x11"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
