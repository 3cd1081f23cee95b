import math

import pytest
import torch
from torch import nn

from ldmkit.autoencoder import Autoencoder, AutoencoderConfig, AutoencoderLoss, AutoencoderLossConfig, LPIPS
from ldmkit.autoencoder import adaptive_weight, disc_factor
from ldmkit.config import ConfigError


def test_disc_factor_schedule():
    assert [disc_factor(s, 5, 0.7) for s in (0, 4, 5, 100)] == [0.0, 0.0, 0.7, 0.7]


def test_adaptive_weight_closed_form_and_clamp():
    w = nn.Parameter(torch.ones(2, 2))
    a = torch.tensor([[3.0, 0.0], [0.0, 4.0]])  # ||a|| = 5
    b = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # ||b|| = 2
    d = adaptive_weight((w * a).sum(), (w * b).sum(), w, disc_weight=0.5)
    assert math.isclose(d.item(), 0.5 * 5 / (2 + 1e-4), rel_tol=1e-6)
    assert not d.requires_grad
    clamped = adaptive_weight((w * a).sum(), (w * 0.0).sum(), w, disc_weight=1.0)  # 5 / 1e-4 > 1e4
    assert clamped.item() == 1e4


def test_adaptive_weight_matches_autograd_on_a_model():
    torch.manual_seed(0)
    model = Autoencoder(AutoencoderConfig(ch=8, ch_mult=(1, 2), num_res_blocks=1, resolution=32))
    loss = AutoencoderLoss(AutoencoderLossConfig(disc_start=0, disc_ndf=8), "kl", 3)
    x = torch.randn(2, 3, 32, 32)
    xrec, _, _ = model(x)
    nll = (x - xrec).abs().sum() / 2
    g = -loss.discriminator(xrec).mean()
    gn = torch.autograd.grad(nll, model.last_layer, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(g, model.last_layer, retain_graph=True)[0].norm()
    expected = (gn / (gg + 1e-4)).clamp(0, 1e4) * 0.5
    assert torch.allclose(adaptive_weight(nll, g, model.last_layer, 0.5), expected)


def counting_hook(module):
    calls = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_disc_start_gating_kl():
    torch.manual_seed(0)
    model = Autoencoder(AutoencoderConfig(ch=8, ch_mult=(1, 2), num_res_blocks=1, resolution=32))
    cfg = AutoencoderLossConfig(disc_start=5, kl_weight=1e-3, disc_ndf=8)
    loss = AutoencoderLoss(cfg, "kl", 3)
    calls = counting_hook(loss.discriminator)
    x = torch.randn(2, 3, 32, 32)
    xrec, kl, _ = model(x)

    total, log = loss.generator_loss(x, xrec, kl, model.last_layer, global_step=4)
    assert calls == [] and log["disc_factor"] == 0.0 and "g_loss" not in log
    expected = (x - xrec).abs().sum() / 2 + 1e-3 * kl
    assert torch.allclose(total, expected)

    total, log = loss.generator_loss(x, xrec, kl, model.last_layer, global_step=5)
    assert len(calls) == 1 and log["disc_factor"] == 1.0
    assert math.isclose(log["total_loss"], expected.item() + log["d_weight"] * log["g_loss"], rel_tol=1e-5)
    total.backward()


def test_vq_generator_loss_uses_mean_and_codebook_weight():
    x, xrec = torch.zeros(2, 3, 32, 32), torch.full((2, 3, 32, 32), 0.5)
    loss = AutoencoderLoss(AutoencoderLossConfig(rec_loss="l2", codebook_weight=2.0, disc_ndf=8), "vq", 3)
    total, log = loss.generator_loss(x, xrec, torch.tensor(0.1), torch.zeros(1), global_step=0)
    assert math.isclose(total.item(), 0.25 + 0.2, rel_tol=1e-6)
    assert math.isclose(log["codebook_loss"], 0.1, rel_tol=1e-6)


def test_generator_loss_without_grad_uses_zero_weight():
    loss = AutoencoderLoss(AutoencoderLossConfig(disc_start=0, disc_ndf=8), "kl", 3)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        total, log = loss.generator_loss(x, x + 0.1, torch.tensor(0.0), torch.zeros(1), global_step=10)
    assert log["d_weight"] == 0.0 and math.isclose(total.item(), 0.1 * 3 * 32 * 32, rel_tol=1e-4)


class ConstantD(nn.Module):
    """A 'discriminator' whose logit is the mean pixel: real/fake logits are known by construction."""

    def forward(self, x):
        return x.mean(dim=(1, 2, 3), keepdim=True)


@pytest.mark.parametrize("kind", ["hinge", "vanilla"])
def test_discriminator_loss_forms_and_factor(kind):
    loss = AutoencoderLoss(AutoencoderLossConfig(disc_loss=kind, disc_start=3, disc_factor=2.0), "kl", 3)
    loss.discriminator = ConstantD()
    x, xrec = torch.full((1, 3, 4, 4), 0.5), torch.full((1, 3, 4, 4), -2.0)
    real, fake = torch.tensor(0.5), torch.tensor(-2.0)
    if kind == "hinge":
        expected = 0.5 * (torch.relu(1 - real) + torch.relu(1 + fake))
    else:
        expected = 0.5 * (nn.functional.softplus(-real) + nn.functional.softplus(fake))
    before, _ = loss.discriminator_loss(x, xrec, global_step=2)
    after, log = loss.discriminator_loss(x, xrec, global_step=3)
    assert before.item() == 0.0
    assert math.isclose(after.item(), 2.0 * expected.item(), rel_tol=1e-6)
    assert log["logits_real"] == 0.5 and log["logits_fake"] == -2.0


def test_perceptual_weight_without_path_is_a_config_error():
    with pytest.raises(ConfigError, match=r"loss\.lpips_path.*loss\.perceptual_weight=0"):
        AutoencoderLoss(AutoencoderLossConfig(perceptual_weight=1.0), "kl", 3)


def test_perceptual_term_is_added_per_pixel(tmp_path):
    torch.manual_seed(0)
    lp = LPIPS()
    torch.save(lp.state_dict(), tmp_path / "lpips.pt")
    loss = AutoencoderLoss(AutoencoderLossConfig(perceptual_weight=1.0, lpips_path=str(tmp_path / "lpips.pt")), "kl", 1)
    assert isinstance(loss.perceptual_loss, LPIPS)
    x = torch.rand(2, 1, 32, 32)
    xrec = x.flip(-1)
    with torch.no_grad():
        total, log = loss.generator_loss(x, xrec, torch.tensor(0.0), torch.zeros(1), global_step=0)
        p = lp(x, xrec)
    expected = ((x - xrec).abs().sum() + (p * 32 * 32).sum()) / 2  # LPIPS broadcast over C*H*W pixels
    assert torch.allclose(total, expected, rtol=1e-5)
    assert math.isclose(log["p_loss"], p.mean().item(), rel_tol=1e-5)
