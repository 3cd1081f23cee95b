import math

import torch

from ldmkit.nn import timestep_embedding


def test_cos_first_then_sin_hand_values():
    # dim 4 -> half 2, frequencies [1, 10000**(-1/2) = 0.01]
    emb = timestep_embedding(torch.tensor([0.0, 1.0, 2.5]), 4)
    expected = torch.tensor([
        [1.0, 1.0, 0.0, 0.0],
        [math.cos(1.0), math.cos(0.01), math.sin(1.0), math.sin(0.01)],
        [math.cos(2.5), math.cos(0.025), math.sin(2.5), math.sin(0.025)],
    ])
    assert emb.shape == (3, 4) and emb.dtype == torch.float32
    torch.testing.assert_close(emb, expected, atol=1e-6, rtol=0)


def test_closed_form_general_dim_and_max_period():
    t = torch.tensor([3, 17, 999])  # integer timesteps work too
    dim, half = 10, 5
    emb = timestep_embedding(t, dim, max_period=100)
    freqs = torch.tensor([100 ** (-i / half) for i in range(half)])
    args = t.float()[:, None] * freqs
    torch.testing.assert_close(emb[:, :half], torch.cos(args), atol=1e-5, rtol=0)
    torch.testing.assert_close(emb[:, half:], torch.sin(args), atol=1e-5, rtol=0)


def test_odd_dim_pads_a_zero_column():
    emb = timestep_embedding(torch.tensor([5.0, 7.0]), 5)
    assert emb.shape == (2, 5)
    assert torch.all(emb[:, -1] == 0)
    torch.testing.assert_close(emb[:, :4], timestep_embedding(torch.tensor([5.0, 7.0]), 4))
