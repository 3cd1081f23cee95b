"""The benchmark's lockstep runner: sides take turns step by step, and each side's own running time is counted."""
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from perf_measure import Lockstep  # noqa: E402


def test_lockstep_alternates_steps_and_counts_only_own_time():
    log, lock = [], Lockstep(["a", "b"])

    def sampler(name: str, steps: int, seconds: float):
        def run() -> None:
            for i in range(steps):
                log.append((name, i))
                time.sleep(seconds)
                lock.turn(name)
        return run

    times = lock.run({"a": sampler("a", 4, 0.01), "b": sampler("b", 2, 0.2)})
    # a starts; turns alternate while both run; a finishes its last steps alone
    assert log == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("a", 3)]
    assert 0.04 <= times["a"] < 0.3  # 4 x 10 ms, without the 400 ms b slept meanwhile
    assert times["b"] >= 0.4


def test_lockstep_reraises_a_sides_error():
    lock = Lockstep(["a", "b"])

    def bad() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        lock.run({"a": bad, "b": lambda: lock.turn("b")})
