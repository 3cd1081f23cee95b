"""A bounded FIFO of generation jobs, served one at a time by one worker thread.

One job runs at a time (a CPU gains nothing from two, and the memory stays that of one batch); at most
``max_queue`` jobs are queued or running, so a full queue answers 429 instead of growing. A queued job can be
cancelled at once (its slot is free immediately); a running one stops at its next sampler step.
"""
from __future__ import annotations

import io
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

TERMINAL = ("done", "failed", "cancelled")


class Cancelled(Exception):
    """Raised inside the sampler's callback to stop a running job."""


class QueueFull(Exception):
    pass


@dataclass
class Job:
    model: str
    kwargs: dict[str, Any]            # Pipeline.__call__ arguments (checked)
    settings: dict[str, Any]          # what the result PNGs record
    total: int                        # sampler steps
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    status: str = "queued"
    step: int = 0
    error: str | None = None
    images: list[str] = field(default_factory=list)  # file names in the output folder
    seeds: list[int] = field(default_factory=list)
    preview: bytes | None = None      # PNG of the latest decoded prediction
    previews: int = 0
    version: int = 0                  # bumped on every change: the event stream sends on change only
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def touch(self, **changes: Any) -> None:
        for k, v in changes.items():
            setattr(self, k, v)
        self.version += 1

    def public(self, position: int | None = None) -> dict[str, Any]:
        return {"id": self.id, "model": self.model, "status": self.status, "step": self.step, "total": self.total,
                "position": position, "error": self.error, "images": [f"files/{n}" for n in self.images],
                "seeds": self.seeds, "settings": self.settings, "preview": self.previews or None,
                "created": self.created, "started": self.started, "finished": self.finished}


def png_bytes(pil_image) -> bytes:
    buf = io.BytesIO()
    pil_image.save(buf, format="PNG")
    return buf.getvalue()


class JobQueue:
    """FIFO of :class:`Job`; ``run(job)`` does the work in the worker thread (raising :class:`Cancelled` stops it)."""

    def __init__(self, run: Callable[[Job], None], max_queue: int, keep: int = 200):
        self._run, self.max_queue, self.keep = run, max_queue, keep
        self._pending: deque[Job] = deque()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._cv = threading.Condition()
        self._running: Job | None = None
        self._stop = False
        self.completed = 0
        self._thread = threading.Thread(target=self._work, name="ldmkit-serve-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> int:
        """Queue ``job``; its position (0 = next). QueueFull when ``max_queue`` jobs are queued or running."""
        with self._cv:
            active = len(self._pending) + (self._running is not None)
            if active >= self.max_queue:
                raise QueueFull(f"the queue holds {active} jobs (limit {self.max_queue}): retry later")
            self._pending.append(job)
            self._jobs[job.id] = job
            self._forget_old()
            self._cv.notify()
            return len(self._pending) - 1 + (self._running is not None)

    def get(self, job_id: str) -> Job | None:
        with self._cv:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int | None:
        with self._cv:
            if job.status != "queued":
                return None
            return list(self._pending).index(job) + (self._running is not None) if job in self._pending else None

    def recent(self, n: int = 50) -> list[Job]:
        with self._cv:
            return list(self._jobs.values())[-n:][::-1]

    def cancel(self, job_id: str) -> Job | None:
        """A queued job leaves the queue now; a running one stops at its next step. None: unknown id."""
        with self._cv:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.status == "queued" and job in self._pending:
                self._pending.remove(job)
                job.touch(status="cancelled", finished=time.time())
            elif job.status == "running":
                job.cancel.set()
            return job

    def depth(self) -> int:
        with self._cv:
            return len(self._pending) + (self._running is not None)

    def close(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stop = True
            for job in self._pending:
                job.touch(status="cancelled", finished=time.time())
            self._pending.clear()
            if self._running is not None:
                self._running.cancel.set()
            self._cv.notify_all()
        self._thread.join(timeout)

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.status in TERMINAL]
        for job in finished[: max(0, len(self._jobs) - self.keep)]:
            del self._jobs[job.id]

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                job = self._running = self._pending.popleft()
                job.touch(status="running", started=time.time())
            try:
                self._run(job)
                status, error = ("cancelled", None) if job.cancel.is_set() else ("done", None)
            except Cancelled:
                status, error = "cancelled", None
            except Exception as e:  # a job's failure is reported on the job; the server goes on
                status, error = "failed", " ".join(f"{type(e).__name__}: {e}".split())[:500]
            with self._cv:
                job.touch(status=status, error=error, finished=time.time())
                self._running = None
                self.completed += 1
                self._forget_old()
