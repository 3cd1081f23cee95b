"""Evaluation during training: a small-N Frechet distance of the EMA model's samples every K steps.

The reference statistics are computed once (and cached on disk like ``ldmkit eval``'s); the samples use
their own per-image seeds, so evaluating never touches the training random state and resume stays exact.
"""
from __future__ import annotations

from ..data import DataConfig, build_dataset
from .features import build_extractor, extract
from .generation import SampleProtocol, condition_kind, guidance_record, sample_batch
from .metrics import feature_statistics, frechet_distance
from .reference import reference_statistics
from .report import fd_name


class PeriodicEval:
    def __init__(self, data: DataConfig, n: int, steps: int, guidance: float, extractor: str = "fmnist",
                 weights: str | None = None, batch_size: int = 100, device="cpu", log=print):
        self.n, self.steps, self.guidance, self.batch_size = n, steps, guidance, batch_size
        self.data, self.log = data, log
        self.fx = build_extractor(extractor, weights or None, device)
        self.ref = reference_statistics(data, "test", self.fx, batch_size=batch_size, log=log)
        self.name = fd_name(self.fx)
        self._test = None

    def __call__(self, pipe) -> dict[str, float]:
        kind = condition_kind(pipe)
        if kind == "data" and self._test is None:
            self._test = build_dataset(self.data, "test")
        proto = SampleProtocol("", self.n, 0, self.steps, "ddim", self.guidance, 0.0, self.batch_size,
                               kind if kind != "data" else f"data:{self.data.name}:test",
                               **guidance_record(pipe.guidance_settings()))
        batches = (sample_batch(pipe, proto, list(range(s, min(self.n, s + self.batch_size))), self._test)
                   for s in range(0, self.n, self.batch_size))
        mu, sigma = feature_statistics(extract(self.fx, batches, batch_size=self.batch_size))
        return {f"eval/{self.name}": frechet_distance(mu, sigma, self.ref["mu"], self.ref["sigma"])}
