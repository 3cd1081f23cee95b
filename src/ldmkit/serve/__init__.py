"""``ldmkit serve``: the loaded models behind an HTTP API (FastAPI) and one static web page.

- ``models``: what each loaded pipeline takes (its conditioning, class names, sizes), as the page shows it;
- ``inputs``: the request schema, the limits, and decoding uploads into ``Pipeline.__call__`` arguments;
- ``jobs``: one worker thread serving a bounded FIFO queue (progress, previews, cancel);
- ``app``: the routes, the token check and the JSON error shape; ``server`` runs it with uvicorn.
"""
from .inputs import ServeLimits

__all__ = ["ServeLimits"]
