"""Measuring helpers of benchmarks/perf_vs_diffusers.py: interleaved timing, FLOP counts, the machine's matmul
peak and the peak resident memory of a process."""
from __future__ import annotations

import resource
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


def time_interleaved(fns: dict[str, Callable[[], Any]], warmup: int, reps: int) -> dict[str, list[float]]:
    """Seconds per call of each function, ``reps`` times after ``warmup`` untimed calls.

    The functions take turns (A B, then B A, ...) so a slow phase of a shared machine hits both sides alike and
    neither always runs right after the other's allocations.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(reps):
        for k in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


class Lockstep:
    """Runs functions in threads that take turns: each runs until it calls ``turn(name)`` (e.g. at the end of every
    sampler step), then waits while the others run one turn each. Only one computes at a time, so each keeps the
    whole machine, and a slow phase of a shared machine (seconds to minutes here) hits all sides alike instead of
    whichever whole sample it fell on. ``run`` returns each function's own running time, waits excluded."""

    def __init__(self, names: list[str]):
        self.names, self.current, self.done = names, names[0], set()
        self.cond = threading.Condition()
        self.active = {n: 0.0 for n in names}
        self.resumed: dict[str, float] = {}

    def _hand_over(self, me: str) -> None:  # with self.cond held
        order = self.names[self.names.index(me) + 1:] + self.names[:self.names.index(me) + 1]
        self.current = next((n for n in order if n not in self.done), me)
        self.cond.notify_all()

    def turn(self, me: str) -> None:
        self.active[me] += time.perf_counter() - self.resumed[me]
        with self.cond:
            self._hand_over(me)
            self.cond.wait_for(lambda: self.current == me)
        self.resumed[me] = time.perf_counter()

    def run(self, fns: dict[str, Callable[[], Any]]) -> dict[str, float]:
        errors: list[BaseException] = []

        def worker(name: str, fn: Callable[[], Any]) -> None:
            with self.cond:
                self.cond.wait_for(lambda: self.current == name)
            self.resumed[name] = time.perf_counter()
            try:
                fn()
            except BaseException as e:  # re-raised in the caller's thread
                errors.append(e)
            finally:
                self.active[name] += time.perf_counter() - self.resumed[name]
                with self.cond:
                    self.done.add(name)
                    self._hand_over(name)

        threads = [threading.Thread(target=worker, args=(n, fns[n])) for n in self.names]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]
        return dict(self.active)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# FlopCounterMode passes the shapes of tensor arguments.
def _sdpa_cpu(query, key, value, *args, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward(grad_out, query, key, value, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode knows the CUDA attention kernels only; the CPU flash kernel does the same matmuls.
CPU_ATTENTION = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
                 aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward}


def flops_by_op(fn: Callable[[], Any]) -> dict[str, int]:
    """FLOPs of one call per aten operator name (matmuls, convolutions and attention; elementwise work counts 0,
    as is usual for MFU)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        fn()
    return {op.__name__.split(".")[0]: n for op, n in counter.get_flop_counts()["Global"].items()}


def count_flops(fn: Callable[[], Any]) -> int:
    """Total FLOPs of one call (see ``flops_by_op``)."""
    return sum(flops_by_op(fn).values())


def sync(device: torch.device) -> None:
    """Wait for an accelerator's queued work, so a timer around a call measures the call."""
    if device.type != "cpu":
        torch.accelerator.synchronize()


def matmul_peak(dtype: torch.dtype, n: int, reps: int, device: torch.device) -> float:
    """Best FLOP/s of an n x n x n matmul in ``dtype`` over ``reps`` timed calls (after one warm-up): the
    machine's practical peak, against which MFU is reported."""
    a, b = torch.randn(n, n).to(device, dtype), torch.randn(n, n).to(device, dtype)

    def mm() -> None:
        a @ b
        sync(device)

    best = min(time_interleaved({"mm": mm}, 1, reps)["mm"])
    return 2 * n**3 / best


# ------------------------------------------------------------------------------------------------ memory
def _status_kib(field: str) -> int | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def reset_peak_rss() -> str:
    """Reset the kernel's high-water mark of resident memory to the current RSS; returns the method used to read
    peaks afterwards: "VmHWM" (Linux /proc/self/clear_refs) or "ru_maxrss" (a delta of the lifetime peak, which
    hides any step peak below an earlier, higher one)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM"
    except OSError:
        return "ru_maxrss"


def rss_mib() -> float:
    kib = _status_kib("VmRSS")
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def peak_rss_mib(method: str) -> float:
    kib = _status_kib("VmHWM") if method == "VmHWM" else None
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024
