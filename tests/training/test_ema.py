"""The EMA of the trainable parameters: closed-form average, frozen weights shared (not copied), state round trip."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ldmkit.training.ema import EMA


def model_with_frozen_part() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    m[0].requires_grad_(False)  # e.g. a LoRA run's released weights
    return m


def test_trainable_parameters_follow_the_closed_form_and_frozen_ones_are_shared():
    m = model_with_frozen_part()
    ema = EMA(m, decay=0.5, warmup=False)
    assert ema.model[0].weight is m[0].weight and ema.model[2].weight is not m[2].weight
    start = m[2].weight.detach().clone()
    with torch.no_grad():
        m[2].weight.add_(1.0)
        m[1].running_mean.add_(3.0)
    ema.update(m)
    torch.testing.assert_close(ema.model[2].weight, start + 0.5)  # 0.5 start + 0.5 (start + 1)
    torch.testing.assert_close(ema.model[1].running_mean, m[1].running_mean)  # buffers are copied
    assert not ema.model[2].weight.requires_grad and m[2].weight.requires_grad


def test_state_holds_only_the_averaged_parameters_and_reads_old_full_states():
    m = model_with_frozen_part()
    ema = EMA(m, decay=0.9, warmup=False)
    ema.update(m)
    state = ema.state_dict()
    assert "0.weight" not in state["model"] and "2.weight" in state["model"] and "1.running_var" in state["model"]
    other = EMA(model_with_frozen_part(), decay=0.9)
    with torch.no_grad():
        other.model[2].weight.zero_()
    other.load_state_dict(state)
    torch.testing.assert_close(other.model[2].weight, ema.model[2].weight)
    assert other.num_updates == 1
    full = {"model": ema.model.state_dict(), "num_updates": 4, "decay": 0.9}  # written before the sharing
    other.load_state_dict(full)
    assert other.num_updates == 4
    with pytest.raises(RuntimeError, match="missing"):
        other.load_state_dict({"model": {"1.running_mean": torch.zeros(4)}, "num_updates": 0})
