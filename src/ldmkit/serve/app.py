"""The HTTP API and the page. Errors are JSON ``{"error": "field: message", "field": field}`` with a 4xx status.

    GET    /                        the page (static/index.html)
    GET    /api/models              loaded models, what each takes, and the limits
    POST   /api/jobs                start a generation (GenerateRequest) -> 202 with the job
    GET    /api/jobs                recent jobs, newest first
    GET    /api/jobs/{id}           one job: status, step / total, queue position, result URLs
    GET    /api/jobs/{id}/events    the same as server-sent events, on every change, until it ends
    GET    /api/jobs/{id}/preview.png   the latest decoded preview
    DELETE /api/jobs/{id}           cancel (a queued job leaves the queue at once)
    GET    /files/{name}            a result PNG (only files of the output folder)

With a token, every request needs ``Authorization: Bearer TOKEN``, ``?token=TOKEN``, or the cookie that a request
with ``?token=`` sets (so the page opened as ``/?token=TOKEN`` loads its script, images and event streams).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import re
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from .. import __version__
from .inputs import GenerateRequest, RequestError, ServeLimits, call_arguments, settings_record
from .jobs import TERMINAL, Job, JobQueue, QueueFull
from .models import ModelEntry
from .runner import run_job

STATIC = Path(__file__).parent / "static"
COOKIE = "ldmkit_token"
RESULT_NAME = re.compile(r"^[0-9a-f]{16}_\d{2}_seed\d+\.png$")


def _error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse({"error": f"{field}: {message}", "field": field}, status_code=status)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = ".".join(loc) or "body"
    response = _error(422, field, first.get("msg", "invalid"))
    body = json.loads(response.body)
    body["errors"] = [{"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "message": e.get("msg")}
                      for e in errors]
    return JSONResponse(body, status_code=422)


def create_app(entries: list[ModelEntry], out_dir: str | Path, limits: ServeLimits = ServeLimits(),
               token: str | None = None) -> FastAPI:
    out_dir = Path(out_dir).resolve()
    models = {e.name: e for e in entries}
    queue = JobQueue(lambda job: run_job(job, models[job.model], out_dir, limits.previews), limits.max_queue,
                     limits.keep_jobs)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        queue.close()

    app = FastAPI(title="ldmkit", version=__version__, lifespan=lifespan,
                  description="Latent diffusion models: generate, inpaint, upscale; progress as server-sent events.")
    app.state.queue, app.state.models, app.state.limits = queue, models, limits

    @app.middleware("http")
    async def guard(request: Request, call_next):
        in_query = request.query_params.get("token", "")
        if token:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            given = given or in_query or request.cookies.get(COOKIE, "")
            if not hmac.compare_digest(given.encode(), token.encode()):
                return _error(401, "token", "missing or wrong: send Authorization: Bearer TOKEN (or ?token=TOKEN)")
        if request.method in ("POST", "PUT", "PATCH"):
            length = request.headers.get("content-length")
            if length is None or not length.isdigit():
                return _error(411, "body", "a Content-Length header is required")
            if int(length) > limits.max_body_bytes:
                return _error(413, "body", f"{length} bytes, over the limit {limits.max_body_bytes}")
        response = await call_next(request)
        if token and in_query:  # the page opened with ?token=: its scripts, images and event streams use the cookie
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError):
        return _validation_error(exc)

    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, exc: RequestError):
        return _error(exc.status, exc.field, exc.message)

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException):
        return JSONResponse({"error": str(exc.detail), "field": None}, status_code=exc.status_code)

    def job_or_404(job_id: str) -> Job:
        job = queue.get(job_id)
        if job is None:
            raise RequestError("id", f"no job {job_id!r}", 404)
        return job

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/models")
    async def list_models():
        return {"models": [e.capabilities() for e in models.values()], "limits": limits.public(),
                "version": __version__}

    @app.post("/api/jobs", status_code=202)
    async def submit(req: GenerateRequest):
        if req.model not in models:
            raise RequestError("model", f"unknown model {req.model!r} (loaded: {', '.join(models)})", 404)
        # decoding uploads and checking the inputs is CPU work: off the event loop
        kw = await asyncio.to_thread(call_arguments, req, models[req.model], limits)
        job = Job(model=req.model, kwargs=kw, settings=settings_record(req, kw), total=req.steps)
        try:
            position = queue.submit(job)
        except QueueFull as e:
            raise RequestError("queue", str(e), 429) from None
        return job.public(position)

    @app.get("/api/jobs")
    async def list_jobs():
        return {"jobs": [j.public(queue.position(j)) for j in queue.recent()], "queued": queue.depth(),
                "completed": queue.completed}

    @app.get("/api/jobs/{job_id}")
    async def status(job_id: str):
        job = job_or_404(job_id)
        return job.public(queue.position(job))

    @app.delete("/api/jobs/{job_id}")
    async def cancel(job_id: str):
        job = queue.cancel(job_id)
        if job is None:
            raise RequestError("id", f"no job {job_id!r}", 404)
        return job.public(queue.position(job))

    @app.get("/api/jobs/{job_id}/preview.png")
    async def preview(job_id: str):
        job = job_or_404(job_id)
        if job.preview is None:
            raise RequestError("preview", "none yet", 404)
        return Response(job.preview, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/api/jobs/{job_id}/events")
    async def events(job_id: str):
        job = job_or_404(job_id)

        async def stream():
            seen = None
            while True:
                state = (job.version, queue.position(job))
                if state != seen:
                    seen = state
                    yield f"data: {json.dumps(job.public(state[1]))}\n\n"
                    if job.status in TERMINAL:
                        return
                await asyncio.sleep(0.1)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/files/{name}")
    async def result_file(name: str):
        path = (out_dir / name).resolve()
        if not RESULT_NAME.match(name) or path.parent != out_dir or not path.is_file():
            raise RequestError("name", f"no result file {name!r}", 404)
        return FileResponse(path, media_type="image/png")

    return app
