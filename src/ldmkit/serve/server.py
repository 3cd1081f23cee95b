"""Load the checkpoints once, and run the app with uvicorn (in the foreground, or on a thread for tests and the
load benchmark, on a socket the caller may bind to port 0)."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import uvicorn

from .app import create_app
from .inputs import ServeLimits
from .models import ModelEntry, unique_names

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def load_entries(checkpoints: list[str], device: str = "cpu", precision: str = "fp32",
                 loras: list[tuple[str, float]] = ()) -> list[ModelEntry]:
    """Each checkpoint loaded once (anything ``ldmkit sample`` reads); ``loras`` applied to every model."""
    from ..convert.loader import load_pipeline_any

    entries = []
    for name, path in zip(unique_names(checkpoints), checkpoints):
        pipe = load_pipeline_any(path, device=device, precision=precision)
        applied = [pipe.load_lora(p, scale) for p, scale in loras]
        entries.append(ModelEntry(name, pipe, str(path), applied))
    return entries


class BackgroundServer:
    """The app on a daemon thread, bound to ``host`` (port 0: any free port); ``url`` once it is up."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def serve(checkpoints: list[str], host: str = "127.0.0.1", port: int = 8000, out: str | Path = "serve-out",
          token: str | None = None, limits: ServeLimits = ServeLimits(), device: str = "cpu",
          precision: str = "fp32", loras: list[tuple[str, float]] = ()) -> None:
    if host not in LOOPBACK and not token:
        print(f"warning: serving on {host} without a token: anyone who reaches the port can use the models "
              "(pass --token or set LDMKIT_SERVE_TOKEN)")
    entries = load_entries(checkpoints, device, precision, loras)
    app = create_app(entries, out, limits, token)
    print(f"ldmkit serve: {', '.join(e.name for e in entries)} on http://{host}:{port}/"
          + (" (token required)" if token else "") + f"; results in {Path(out).resolve()}")
    uvicorn.run(app, host=host, port=port, log_level="warning")
