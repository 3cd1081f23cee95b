"""Super-resolution degradations: bicubic parity with Pillow, seeded BSR-lite, LowResDataset."""
import numpy as np
import pytest
import torch
from PIL import Image

from ldmkit.config import ConfigError
from ldmkit.data import DataConfig, LowResDataset, Shapes, bicubic_downsample, bsr_degrade
from ldmkit.data.degradation import gaussian_blur, jpeg


def test_bicubic_of_constant_is_constant_and_shapes():
    x = torch.full((2, 3, 32, 24), 0.3)
    y = bicubic_downsample(x, 4)
    assert y.shape == (2, 3, 8, 6)
    assert torch.allclose(y, torch.full_like(y, 0.3), atol=1e-6)
    assert torch.equal(bicubic_downsample(x, 1), x)
    with pytest.raises(ConfigError, match="factor: image size 32x24 is not divisible by 5"):
        bicubic_downsample(x, 5)


def test_bicubic_matches_pillow_antialiased_resize():
    a = np.random.default_rng(0).uniform(-0.8, 0.8, (32, 48)).astype(np.float32)
    ref = np.asarray(Image.fromarray(a).resize((12, 8), Image.BICUBIC))  # Pillow's "F" mode keeps floats
    out = bicubic_downsample(torch.from_numpy(a)[None, None], 4)[0, 0].numpy()
    assert np.abs(out - ref).max() < 1e-5


def test_gaussian_blur_preserves_constants_and_mean():
    x = torch.full((1, 2, 16, 16), -0.25)
    assert torch.allclose(gaussian_blur(x, 1.5), x, atol=1e-6)
    impulse = torch.zeros(1, 1, 17, 17)
    impulse[0, 0, 8, 8] = 1.0
    blurred = gaussian_blur(impulse, 1.0)
    assert abs(blurred.sum().item() - 1.0) < 1e-5 and blurred.argmax().item() == 8 * 17 + 8


def test_bsr_seeded_reproducible_and_seeds_differ():
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    a = bsr_degrade(x, 4, torch.Generator().manual_seed(0))
    b = bsr_degrade(x, 4, torch.Generator().manual_seed(0))
    c = bsr_degrade(x, 4, torch.Generator().manual_seed(1))
    assert a.shape == (3, 3, 8, 8) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    grey = bsr_degrade(x[:, :1], 2, torch.Generator().manual_seed(0), jpeg_prob=1.0)
    assert grey.shape == (3, 1, 16, 16)


def test_bsr_noise_level_on_a_constant_image():
    # blur and resampling keep a constant image constant, so what is left is the added noise
    x = torch.zeros(6, 3, 64, 64)
    y = bsr_degrade(x, 4, torch.Generator().manual_seed(3), jpeg_prob=0.0)
    std = y.flatten(1).std(dim=1)
    assert (y.flatten(1).mean(dim=1).abs() < 0.02).all()
    assert (std > 0.7 * 2 / 255).all() and (std < 1.2 * 50 / 255).all()
    assert std.max() > 1.5 * std.min()  # the level is drawn per image


def test_jpeg_round_trip_is_close_for_smooth_images():
    ramp = torch.linspace(-1, 1, 32).expand(3, 32, 32).contiguous()
    out = jpeg(ramp, 95)
    assert out.shape == ramp.shape and (out - ramp).abs().mean() < 0.02
    assert jpeg(ramp[:1], 30).shape == (1, 32, 32)


@pytest.mark.parametrize("degradation", ["bicubic", "bsr"])
def test_low_res_dataset(degradation):
    base = Shapes(DataConfig(image_size=16, shapes_size=4))
    ds = LowResDataset(base, factor=4, degradation=degradation, seed=2)
    item = ds[1]
    assert item["low_res"].shape == (3, 4, 4) and torch.equal(item["image"], base[1]["image"])
    assert torch.equal(LowResDataset(base, 4, degradation, seed=2)[1]["low_res"], item["low_res"])
    assert torch.equal(ds[-3]["low_res"], item["low_res"])
    if degradation == "bicubic":
        assert torch.equal(item["low_res"], bicubic_downsample(base[1]["image"][None], 4)[0])
    else:
        assert not torch.equal(LowResDataset(base, 4, "bsr", seed=3)[1]["low_res"], item["low_res"])
    with pytest.raises(ConfigError, match="degradation: expected one of bicubic, bsr"):
        LowResDataset(base, 4, "gaussian")
