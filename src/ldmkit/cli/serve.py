"""``ldmkit serve``: the parser and the command (the server itself is ``ldmkit.serve``)."""
from __future__ import annotations

import argparse
import os

from .argtypes import positive_int
from .convert import add_lora_arg, parse_lora

TOKEN_ENV = "LDMKIT_SERVE_TOKEN"


def add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="a web page and HTTP API for the given models (FastAPI + uvicorn)")
    p.add_argument("checkpoints", nargs="+", help="models to serve: anything `ldmkit sample` reads")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; others want --token)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--out", default="serve-out", help="folder of the result PNGs (the only files served)")
    p.add_argument("--token", default=None, help=f"require this token on every request (default ${TOKEN_ENV})")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    add_lora_arg(p)
    p.add_argument("--max-queue", type=positive_int, default=16, help="jobs queued or running (default 16)")
    p.add_argument("--max-size", type=positive_int, default=1024, help="output side limit in pixels (default 1024)")
    p.add_argument("--max-steps", type=positive_int, default=150)
    p.add_argument("--max-n", type=positive_int, default=8, help="images per request (default 8)")
    p.add_argument("--max-upload-mb", type=float, default=8.0, help="one uploaded image (default 8 MB)")
    p.add_argument("--previews", type=int, default=4, help="decoded previews per job (0: none; each costs a decode)")


def serve_command(args: argparse.Namespace) -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ValueError("ldmkit serve needs fastapi and uvicorn: pip install 'ldmkit[serve]'") from None
    from ..device import resolve_device
    from ..serve.inputs import ServeLimits
    from ..serve.server import serve

    if args.max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb: must be > 0, got {args.max_upload_mb}")
    limits = ServeLimits(max_size=args.max_size, max_steps=args.max_steps, max_n=args.max_n,
                         max_queue=args.max_queue, max_upload_bytes=int(args.max_upload_mb * 2**20),
                         previews=max(0, args.previews))
    serve(args.checkpoints, host=args.host, port=args.port, out=args.out,
          token=args.token or os.environ.get(TOKEN_ENV) or None, limits=limits,
          device=resolve_device(args.device), precision=args.precision, loras=[parse_lora(s) for s in args.lora])
