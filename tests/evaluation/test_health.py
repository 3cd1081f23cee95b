"""Sample health: latents off the range real data spans are flagged; real latents pass."""
import pytest
import torch

from ldmkit.config import load_config
from ldmkit.data import build_dataset
from ldmkit.evaluation.health import LatentRange, encode_all, fit_range, health_report, latent_statistics, real_images
from ldmkit.training.autoencoder_loop import AutoencoderRunConfig, train_autoencoder
from ldmkit.training.ldm_loop import LDMRunConfig, build_pipeline


def test_latent_statistics_closed_form():
    z = torch.zeros(2, 1, 2, 2)
    z[0, 0] = torch.tensor([[1.0, 3.0], [1.0, 3.0]])  # std 1; horizontal steps 2, 2, vertical 0, 0
    z[1, 0] = 5.0                                      # constant: std 0, roughness 0
    stats = latent_statistics(z)
    torch.testing.assert_close(stats[0], torch.tensor([1.0, (4.0 / 2) ** 0.5]))
    torch.testing.assert_close(stats[1], torch.tensor([0.0, 0.0]))


def test_range_is_min_max_and_margin_widens_it():
    real = torch.tensor([[[[0.0, 2.0], [0.0, 2.0]]], [[[0.0, 1.0], [0.0, 1.0]]]])  # spread 1, 0.5; rough 2^0.5, 0.5^0.5
    rng = LatentRange.fit(real)
    torch.testing.assert_close(rng.lo, torch.tensor([0.5, 0.5 ** 0.5]))
    torch.testing.assert_close(rng.hi, torch.tensor([1.0, 2 ** 0.5]))
    inside = torch.tensor([[[[0.0, 1.5], [0.0, 1.5]]]])   # spread 0.75, roughness sqrt(1.125)
    wide = torch.tensor([[[[0.0, 2.4], [0.0, 2.4]]]])     # spread 1.2: 0.4 widths above the top
    probe = torch.cat([inside, wide])
    assert rng.healthy(probe, margin=0.0).tolist() == [True, False]
    assert rng.healthy(probe, margin=0.5).tolist() == [True, True]
    assert rng.off_share(probe, margin=0.0) == 0.5


def test_blob_latents_flagged_real_latents_pass():
    g = torch.Generator().manual_seed(0)
    # real latents: smooth fields (low-resolution noise upsampled), as images encode to
    def smooth(n):
        low = torch.randn(n, 3, 4, 4, generator=g)
        return 0.8 * torch.nn.functional.interpolate(low, size=8, mode="bilinear", align_corners=False) - 0.5

    real, heldout = smooth(4096), smooth(2000)
    rng = LatentRange.fit(real)
    assert rng.off_share(heldout, margin=0.0) < 0.01  # ~ 2 * 2 / (N + 1) = 0.1 % expected
    assert rng.off_share(heldout) <= rng.off_share(heldout, margin=0.0)
    blobs = 2.5 * smooth(100)                                       # the same fields, 2.5x too strong
    noise = -0.5 + 0.6 * torch.randn(100, 3, 8, 8, generator=g)     # white noise of a plausible spread
    flat = torch.full((100, 3, 8, 8), -0.5)                         # no structure at all
    for bad in (blobs, noise, flat):
        assert rng.off_share(bad) == 1.0
    report = health_report(rng, torch.cat([heldout[:300], blobs]), heldout)
    assert report["off_manifold_share"] == pytest.approx(100 / 400)
    assert report["reference_n"] == 4096 and "outside" in report["rule"] and report["heldout_off_share"] < 0.01


def test_range_needs_real_latents_with_neighbours():
    with pytest.raises(ValueError, match="N >= 2"):
        LatentRange.fit(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="h >= 2"):
        LatentRange.fit(torch.randn(5, 3, 1, 4))


def test_tiny_pipeline_real_latents_pass_blob_latents_fail(tmp_path, one_thread):
    ae = train_autoencoder(load_config(AutoencoderRunConfig, "tiny/autoencoder",
                                       [f"train.out_dir={tmp_path / 'ae'}", "train.steps=2"]))
    cfg = load_config(LDMRunConfig, "tiny/ldm", [f"first_stage={ae}", "data.shapes_size=1280"])
    pipe = build_pipeline(cfg, [str(i) for i in range(18)]).eval()
    train, test = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "test")
    for sample in (False, True):  # modes against modes, posterior samples against posterior samples
        rng = fit_range(pipe, train, 1024, sample=sample)
        real = encode_all(pipe, real_images(test, 256), sample=sample)
        assert rng.off_share(real) <= 0.02
        g = torch.Generator().manual_seed(0)
        blobs = real.mean() + 3 * real.std() * torch.randn(real.shape, generator=g)  # full-frame noise
        assert rng.off_share(blobs) == 1.0
