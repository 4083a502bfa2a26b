"""Background jobs: `sync` (fetch tasks and images, run round 0) and `advance` (retrain, next round).

Every job is a row in the store before it runs, so a process that dies mid-job leaves a queued or
running row behind and the next start runs it again. Jobs of one kind for one project are not
stacked: while one is queued, submitting another returns it.

Without REDIS_URL one thread in the server process runs the jobs (the embedded default). With it,
jobs go to an RQ queue and `rq worker` processes run them (ml_backend.worker), on any machine that
shares MODEL_DIR.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from collections.abc import Callable

from ml_backend.store import Store

log = logging.getLogger(__name__)

JOB_KINDS = ("sync", "advance", "train")


class InProcessRunner:
    def __init__(self, store: Store, handler: Callable[[int, str], None]):
        self.store = store
        self.handler = handler  # (project, kind) -> None
        self._queue: queue.Queue[int] = queue.Queue()
        self._lock = threading.Lock()
        self.current: dict | None = None
        self._thread = threading.Thread(target=self._work, name="jobs", daemon=True)
        self._thread.start()

    def submit(self, project: int, kind: str) -> int:
        if kind not in JOB_KINDS:
            raise ValueError(f"unknown job kind {kind!r}")
        with self._lock:
            pending = self.store.pending_job(project, kind)
            if pending and pending["status"] == "queued":
                return int(pending["id"])
            job = self.store.add_job(project, kind)
        self._queue.put(job)
        return job

    def resume(self) -> list[int]:
        """Queue again what a previous process left unfinished."""
        jobs = [int(j["id"]) for j in self.store.interrupted_jobs()]
        for job in jobs:
            log.warning("re-running interrupted job %s", job)
            self._queue.put(job)
        return jobs

    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            run_job(self.store, self.handler, job_id, self)

    def idle(self) -> bool:
        return self._queue.empty() and self.current is None

    def describe(self) -> dict:
        return {"kind": "in-process", "queued": self._queue.qsize(), "running": self.current}


def run_job(store: Store, handler: Callable[[int, str], None], job_id: int, owner=None) -> None:
    job = store.job(job_id)
    if job is None or job["status"] in ("done", "failed"):
        return
    if owner is not None:
        owner.current = {"id": job_id, "project": job["project"], "kind": job["kind"]}
    store.start_job(job_id)
    try:
        handler(job["project"], job["kind"])
    except Exception as exc:  # a failed job is recorded and logged; the next trigger retries the work
        log.error("job %s (%s, project %s) failed: %s\n%s", job_id, job["kind"], job["project"], exc,
                  traceback.format_exc())
        store.finish_job(job_id, f"{type(exc).__name__}: {exc}")
    else:
        store.finish_job(job_id)
    finally:
        if owner is not None:
            owner.current = None
