"""train.max_minutes counts training only: periodic evaluation and sample grids are left out of the budget
and of the logged time (a clock that only evaluation advances shows it without timing anything)."""
import json
import time

import pytest

from ldmkit.config import load_config
from ldmkit.training import ldm_loop
from ldmkit.training.run import TimeBudget


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_time_budget_excludes_what_it_is_told(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    budget = TimeBudget(1.0)
    clock.now += 50
    budget.exclude(30)
    assert budget.elapsed() == pytest.approx(20) and not budget.spent()
    clock.now += 41
    assert budget.spent()


def test_periodic_eval_does_not_spend_the_training_budget(tmp_path, monkeypatch, one_thread):
    from ldmkit.training.autoencoder_loop import AutoencoderRunConfig, train_autoencoder

    ae = train_autoencoder(load_config(AutoencoderRunConfig, "tiny/autoencoder",
                                       [f"train.out_dir={tmp_path / 'ae'}", "train.steps=1"]))
    clock = FakeClock()
    monkeypatch.setattr(time, "perf_counter", clock)

    class SlowEval:  # each evaluation "takes" 100 s on the clock; training steps take none
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, pipe):
            clock.now += 100
            return {"eval/FD-fake": 1.0}

    monkeypatch.setattr(ldm_loop, "PeriodicEval", SlowEval)
    cfg = load_config(ldm_loop.LDMRunConfig, "tiny/ldm", [f"train.out_dir={tmp_path / 'ldm'}", f"first_stage={ae}",
                                                          "train.steps=4", "train.max_minutes=1", "train.eval_every=1",
                                                          "train.sample_every=100"])
    ldm_loop.train_ldm(cfg)
    events = [json.loads(line) for line in (tmp_path / "ldm" / "events.jsonl").read_text().splitlines()]
    # 400 s of evaluation against a 60 s budget: all 4 steps still run, and the logged time stays ~0
    assert max(e["step"] for e in events) == 4
    assert all(e["time"] < 1 for e in events)
