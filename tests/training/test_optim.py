"""The trainers' Adam / AdamW: fused where PyTorch has the kernel, same maths and state as the plain loop."""
import torch
from torch import nn

from ldmkit.training.optim import adam


def _run(opt_factory, steps: int = 3) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 2))
    model[0].bias.requires_grad_(False)  # a frozen parameter: skipped by both
    opt = opt_factory(model.parameters())
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        model(torch.randn(4, 6, generator=g)).square().mean().backward()
        opt.step()
    return model, opt


def test_fused_on_cpu_and_same_update_as_the_loop():
    fused_model, fused_opt = _run(lambda p: adam(p, lr=1e-2, weight_decay=0.1))
    assert fused_opt.defaults["fused"] is True
    loop_model, _ = _run(lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1))
    for a, b in zip(fused_model.parameters(), loop_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    plain_model, plain_opt = _run(lambda p: adam(p, lr=1e-2, betas=(0.5, 0.9), decoupled=False))
    assert isinstance(plain_opt, torch.optim.Adam) and not isinstance(plain_opt, torch.optim.AdamW)
    ref_model, _ = _run(lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.5, 0.9)))
    for a, b in zip(plain_model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_state_dict_loads_across_fused_and_loop():
    """Checkpoints of runs made before the fused kernel resume (and the other way round)."""
    model, fused = _run(lambda p: adam(p, lr=1e-2))
    loop = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loop.load_state_dict(fused.state_dict())
    fused2 = adam(model.parameters(), lr=1e-2)
    fused2.load_state_dict(loop.state_dict())
    for k, v in fused.state.items():
        torch.testing.assert_close(fused2.state[k]["exp_avg_sq"], v["exp_avg_sq"], rtol=0, atol=0)
