"""CUDA parity of the UNet (runs where a GPU is present; skipped on CPU-only machines such as CI): the same
weights give the CPU float32 output on CUDA in float32, and close to it under bf16 autocast, forward and the
gradients of a training step."""
import pytest
import torch
import torch.nn.functional as F

from ldmkit.nn import UNetConfig, UNetModel

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _unet() -> UNetModel:
    torch.manual_seed(0)
    cfg = UNetConfig(in_channels=4, out_channels=4, model_channels=64, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(2,), num_heads=4, context_dim=32)
    net = UNetModel(cfg)
    with torch.no_grad():  # the zero-initialised output layer would hide everything
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net


def _step(net, x, t, ctx, target, autocast: bool):
    net.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, torch.bfloat16, enabled=autocast):
        out = net(x, t, context=ctx)
    F.mse_loss(out.float(), target).backward()
    return out.float().cpu(), {k: p.grad.float().cpu() for k, p in net.named_parameters()}


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_unet_cuda_matches_cpu(autocast):
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 7, 32, generator=g)
    t, target = torch.tensor([3, 700]), torch.randn(2, 4, 16, 16, generator=g)
    cpu = _unet()
    ref_out, ref_grads = _step(cpu, x, t, ctx, target, autocast=False)
    gpu = _unet().cuda()
    out, grads = _step(gpu, x.cuda(), t.cuda(), ctx.cuda(), target.cuda(), autocast=autocast)
    scale = ref_out.abs().max()
    tol = 0.03 if autocast else 1e-4  # bf16 rounding through the network; fp32: kernel order only
    assert (out - ref_out).abs().max() <= tol * scale
    for k, ref in ref_grads.items():
        assert (grads[k] - ref).abs().max() <= 5 * tol * ref.abs().max() + 1e-8, k
