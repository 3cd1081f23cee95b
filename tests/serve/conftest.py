"""Tiny models behind a real server on loopback (uvicorn on a thread, port 0)."""
from __future__ import annotations

import pytest

from ldmkit.serve import ServeLimits
from ldmkit.serve.app import create_app
from ldmkit.serve.models import ModelEntry
from ldmkit.serve.server import BackgroundServer
from serve_helpers import SlowPipe, tiny_class_pipe, tiny_layout_pipe


@pytest.fixture
def models(tiny_sd, randomised):
    """A class-conditional model and a tiny Stable Diffusion 1.x (CLIP text encoder, 512 px by default)."""
    return {"cls": tiny_class_pipe(randomised), "text": tiny_sd("1", seed=1), "layout": tiny_layout_pipe(randomised)}


@pytest.fixture
def serve(models, tmp_path):
    """serve(token=None, gate=None, **limits) -> a started server of the two tiny models (stopped afterwards)."""
    started = []

    def make(token=None, gate=None, **limit_fields):
        entries = [ModelEntry("cls", SlowPipe(models["cls"], gate) if gate else models["cls"], "tiny"),
                   ModelEntry("text", models["text"], "tiny-sd"), ModelEntry("layout", models["layout"], "tiny")]
        limits = ServeLimits(**{"previews": 2, **limit_fields})
        srv = BackgroundServer(create_app(entries, tmp_path / "out", limits, token)).__enter__()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.__exit__(None, None, None)
