import math

import torch

from ldmkit.autoencoder import Autoencoder, AutoencoderConfig, DiagonalGaussian, KLRegularizer, VQRegularizer


def test_kl_matches_closed_form_on_hand_built_moments():
    mean = torch.tensor([1.0, 2.0, 0.0, -0.5]).view(1, 4, 1, 1)
    logvar = torch.tensor([0.0, math.log(2.0), -1.0, 40.0]).view(1, 4, 1, 1)  # 40 is clamped to 20
    post = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    terms = [1 + 1 - 1 - 0, 4 + 2 - 1 - math.log(2), 0 + math.exp(-1) - 1 + 1, 0.25 + math.exp(20) - 1 - 20]
    expected = 0.5 * sum(terms)
    assert torch.allclose(post.kl(), torch.tensor([expected]), rtol=1e-6)
    assert torch.equal(post.mode(), mean)
    assert post.logvar.max().item() == 20.0


def test_kl_regularizer_loss_sums_chw_and_averages_batch():
    torch.manual_seed(0)
    h = torch.randn(3, 4, 5, 5)
    z, loss, info = KLRegularizer()(h, sample=False)
    mean, logvar = h[:, :2], h[:, 2:]
    per_sample = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))
    assert torch.allclose(loss, per_sample.mean())
    assert torch.equal(z, mean)
    g = torch.Generator().manual_seed(3)
    z_s = KLRegularizer()(h, generator=g)[0]
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(z_s, mean + (0.5 * logvar).exp() * noise)


def hand_quantizer() -> VQRegularizer:
    vq = VQRegularizer(n_embed=4, embed_dim=2, beta=0.25)
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]))
    return vq


def test_vq_indices_usage_perplexity_and_legacy_loss():
    vq = hand_quantizer()
    # 2x2 latent of one image: positions near codes 0, 0, 1, 2; code 3 unused.
    h = torch.tensor([[0.1, 0.0], [-0.1, 0.1], [0.9, 0.0], [0.0, 1.2]]).t().reshape(1, 2, 2, 2)
    zq, loss, info = vq(h)
    assert info["indices"].tolist() == [[[0, 0], [1, 2]]]
    expected_zq = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).t().reshape(1, 2, 2, 2)
    assert torch.allclose(zq, expected_zq)
    assert math.isclose(info["usage"].item(), 0.75)
    assert math.isclose(info["perplexity"].item(), 2**1.5, rel_tol=1e-5)  # probs (1/2, 1/4, 1/4, 0)
    mse = ((expected_zq - h) ** 2).mean()
    assert torch.allclose(loss, (1 + 0.25) * mse)


def test_vq_loss_gradients_follow_legacy_placement():
    vq = hand_quantizer()
    h = torch.tensor([[0.1, 0.0], [0.9, 0.1]]).t().reshape(1, 2, 1, 2).requires_grad_(True)
    _, loss, _ = vq(h)
    loss.backward()
    zq = torch.tensor([[0.0, 0.0], [1.0, 0.0]]).t().reshape(1, 2, 1, 2)
    # commitment term (weight 1) pulls h; codebook term (weight beta) pulls the used codes.
    assert torch.allclose(h.grad, 2 * (h.detach() - zq) / h.numel())
    grad_code1 = vq.embedding.weight.grad[1]
    assert torch.allclose(grad_code1, 0.25 * 2 * (torch.tensor([1.0, 0.0]) - torch.tensor([0.9, 0.1])) / h.numel())


def test_vq_straight_through_reaches_encoder_from_reconstruction_only():
    torch.manual_seed(0)
    model = Autoencoder(AutoencoderConfig(kind="vq", ch=8, ch_mult=(1, 2), num_res_blocks=1, resolution=16, n_embed=16))
    x = torch.randn(2, 3, 16, 16)
    xrec, _, _ = model(x)
    (xrec - x).abs().mean().backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quant_conv.weight.grad.abs().sum() > 0
    assert model.quantize.embedding.weight.grad is None  # reconstruction alone never moves the codebook
