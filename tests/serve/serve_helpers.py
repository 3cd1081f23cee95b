"""Helpers of the serve tests: a tiny class model, a pipeline that waits on a gate, a stdlib HTTP client."""
from __future__ import annotations

import base64
import io
import json
import threading
import time
import urllib.error
import urllib.request

import torch
from PIL import Image

from ldmkit.autoencoder import AutoencoderConfig
from ldmkit.diffusion import ScheduleConfig
from ldmkit.nn import ConditionerConfig, UNetConfig
from ldmkit.pipeline import Pipeline, PipelineConfig

CLASSES = ["zero", "one", "two", "three", "four"]


def tiny_class_pipe(randomise) -> Pipeline:
    torch.manual_seed(0)
    cfg = PipelineConfig(
        autoencoder=AutoencoderConfig(kind="kl", resolution=32, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                                      z_channels=3, embed_dim=3),
        unet=UNetConfig(in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(2,), num_heads=2, context_dim=16),
        conditioner=ConditionerConfig(kind="class", num_classes=5, embed_dim=16),
        diffusion=ScheduleConfig(timesteps=100), scale_factor=0.5, class_names=CLASSES)
    return randomise(Pipeline(cfg))


SHAPES = ["circle", "square", "triangle"]


def tiny_layout_pipe(randomise) -> Pipeline:
    """Layout-to-image: one token per box into cross-attention (box classes 1..3 = SHAPES)."""
    torch.manual_seed(2)
    cfg = PipelineConfig(
        autoencoder=AutoencoderConfig(kind="kl", resolution=32, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                                      z_channels=3, embed_dim=3),
        unet=UNetConfig(in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(2,), num_head_channels=16, use_spatial_transformer=True,
                        context_dim=16),
        conditioner=ConditionerConfig(kind="layout", num_classes=3, embed_dim=16, max_objects=3, coord_bins=8,
                                      n_layer=1, n_head=2, layout_tokens="object"),
        diffusion=ScheduleConfig(timesteps=100), scale_factor=0.5, class_names=SHAPES)
    return randomise(Pipeline(cfg))


class SlowPipe:
    """A pipeline whose calls wait for ``gate`` first: lets a test hold the worker busy."""

    def __init__(self, pipe: Pipeline, gate: threading.Event):
        self._pipe, self.gate = pipe, gate

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, *args, **kwargs):
        assert self.gate.wait(60), "gate never opened"
        return self._pipe(*args, **kwargs)


def call(url: str, method: str = "GET", body=None, headers=None, raw: bytes | None = None):
    """(status, parsed JSON or bytes, response headers) of one request."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers={
        **({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, payload, hdrs = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, payload, hdrs = e.code, e.read(), e.headers
    ctype = hdrs.get("content-type", "")
    return status, (json.loads(payload) if ctype.startswith("application/json") else payload), hdrs


def wait_done(base: str, job_id: str, timeout: float = 120, headers=None) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, job, _ = call(f"{base}/api/jobs/{job_id}", headers=headers)
        assert status == 200, job
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not finished in {timeout} s")


def png_b64(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
