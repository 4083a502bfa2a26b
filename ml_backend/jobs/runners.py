"""Background jobs.

Kinds: `sync` (fetch tasks and images; start round 0), `advance` (next round once the open one is
answered), `train` (next round now: START_TRAINING), the two steps a round fans out into:
`records` (per-image features and local herding for a batch of images) and `select` (global
herding, uncertainty, push), which waits for the round's `records` jobs; `push` (open queries onto
query tasks), `segment` (the current head's segmentation of every task, to Label Studio), `answers`
(what a query task's answered clicks became, shown on it; a skipped one leaves the queue) and `pin`
(a head pinned by hand: close the open round, select and publish one with that head).

Every job is a row in the store before it runs, so a process that dies mid-job leaves a queued or
running row behind and the next start runs it again. `sync`, `advance`, `train`, `push`, `segment`
and `pin` are not stacked: a project has at most one of each waiting to start (submitting another
returns it), and a `train` with nothing labeled since the last head ends at once, so repeated
training requests give one head.

Without REDIS_URL one thread in the server process runs the jobs in submission order (the
embedded default); with it, jobs go to an RQ queue (ml_backend.jobs.rq_runner) and `rq worker` processes on
any machine sharing MODEL_DIR run them, `records` batches in parallel.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Protocol

from ml_backend.state.database import StoreUnavailable
from ml_backend.jobs.outage_log import OutageLog
from ml_backend.jobs.progress import forget_finished, job_scope
from ml_backend.state.store import Store

log = logging.getLogger(__name__)

JOB_KINDS = ("sync", "advance", "train", "records", "select", "push", "segment", "answers", "pin")
SINGLETON_KINDS = ("sync", "advance", "train", "push", "segment", "pin")

Handler = Callable[[int, str, dict], None]  # (project, kind, payload)


class QueueUnavailable(RuntimeError):
    """The job queue (Redis) cannot be reached: a 503 whose message says why and that the work asked
    for is recorded in the store (every job is, before it is queued) and is queued when it returns."""


class Runner(Protocol):
    outage: str | None  # why jobs cannot be queued now (shown by /health), None while they can

    def submit(self, project: int, kind: str, payload: dict | None = None,
               depends_on: Sequence[int] = ()) -> int: ...

    def resume(self) -> list[int]: ...

    def describe(self) -> dict: ...


def record_job(store: Store, project: int, kind: str, payload: dict | None) -> tuple[int, bool]:
    """The job's row: a new one, or (for singleton kinds) the one already queued. (id, is_new)"""
    if kind not in JOB_KINDS:
        raise ValueError(f"unknown job kind {kind!r}")
    if kind in SINGLETON_KINDS:
        return store.add_singleton_job(project, kind, payload)
    return store.add_job(project, kind, payload), True


CREDENTIAL_ERRORS = ("NoCredentials", "LabelStudioRefused")  # what new Label Studio credentials can mend


def rerun_for_credentials(store: Store, runner: Runner, project: int) -> list[int]:
    """Run again, in their order, the project's jobs that failed for want of Label Studio credentials
    (or because Label Studio refused the old ones): called when /setup brings new ones, so that no
    project stays stopped for it."""
    again = []
    for row in store.failed_for_credentials(project, CREDENTIAL_ERRORS):
        job = runner.submit(project, row["kind"], row["payload"])
        store.mark_rerun(row["id"], job)
        log.info("project %s: job %s (%s) failed for want of credentials; running it again as job %s", project,
                 row["id"], row["kind"], job)
        again.append(job)
    return again


def run_job(store: Store, handler: Handler, job_id: int, owner=None) -> None:
    job = store.job(job_id)
    if job is None or job["status"] in ("done", "failed"):
        return
    if owner is not None:
        owner.current = {"id": job_id, "project": job["project"], "kind": job["kind"]}
    store.start_job(job_id)
    try:
        with job_scope(job_id):
            handler(job["project"], job["kind"], job["payload"])
    except StoreUnavailable:  # not the job's fault: it stays unfinished, for the runner to run again
        raise
    except Exception as exc:  # a failed job is recorded and logged; the next trigger retries the work
        log.error("job %s (%s, project %s) failed: %s\n%s", job_id, job["kind"], job["project"], exc,
                  traceback.format_exc())
        store.finish_job(job_id, f"{type(exc).__name__}: {exc}")
        # /health shows the reason where it shows the work (a refused token says what to change)
        store.set_progress(job["project"], job_id, f"{job['kind']} failed", None, None, str(exc)[:1000])
    else:
        store.finish_job(job_id)
    finally:
        forget_finished(store, job["project"])
        if owner is not None:
            owner.current = None


class InProcessRunner:
    """One worker thread, jobs in submission order (which also honours `depends_on`). A job another
    process recorded in the store (`python -m ml_backend heads pin` without REDIS_URL) is picked up
    within ADOPT_INTERVAL seconds."""

    ADOPT_INTERVAL = 2.0
    RETRY_SECONDS = 10.0
    outage = None

    def __init__(self, store: Store, handler: Handler | None = None):
        self.store = store
        self.handler = handler
        self._queue: queue.Queue[int] = queue.Queue()
        self._lock = threading.Lock()
        self._known: set[int] = set()  # every job this runner has queued
        self.current: dict | None = None
        self._adopt_log = OutageLog(log, "cannot look for jobs recorded by other processes",
                                    "the store answers again: looking for other processes' jobs")
        self._thread = threading.Thread(target=self._work, name="jobs", daemon=True)
        self._thread.start()

    def _put(self, job: int) -> None:
        self._known.add(job)
        self._queue.put(job)

    def submit(self, project: int, kind: str, payload: dict | None = None, depends_on: Sequence[int] = ()) -> int:
        with self._lock:
            job, new = record_job(self.store, project, kind, payload)
            if new:
                self._put(job)
        return job

    def resume(self) -> list[int]:
        """Queue again what a previous process left unfinished, in the original order."""
        jobs = [int(j["id"]) for j in self.store.interrupted_jobs()]
        with self._lock:
            for job in jobs:
                log.warning("re-running interrupted job %s", job)
                self._put(job)
        return jobs

    def _adopt(self) -> None:
        with self._lock:
            for row in self.store.interrupted_jobs():
                if row["status"] == "queued" and row["id"] not in self._known:
                    log.info("job %s (%s, project %s) was recorded by another process: running it", row["id"],
                             row["kind"], row["project"])
                    self._put(int(row["id"]))

    def _work(self) -> None:
        while True:
            try:
                job_id = self._queue.get(timeout=self.ADOPT_INTERVAL)
            except queue.Empty:
                try:
                    self._adopt()
                except Exception as exc:  # the store unreachable: the thread lives on and looks again
                    self._adopt_log.failed(exc)
                else:
                    self._adopt_log.succeeded()
                continue
            try:
                run_job(self.store, self.handler, job_id, self)
            except Exception as exc:  # the store failed (a full disk, its database down): the job stays unfinished
                if isinstance(exc, StoreUnavailable):
                    log.warning("job %s stopped: %s; trying it again in %.0f s", job_id, exc, self.RETRY_SECONDS)
                else:
                    log.exception("job %s could not be recorded; trying it again in %.0f s", job_id,
                                  self.RETRY_SECONDS)
                self.current = None
                time.sleep(self.RETRY_SECONDS)
                self._queue.put(job_id)

    def idle(self) -> bool:
        return self._queue.empty() and self.current is None

    def describe(self) -> dict:
        return {"kind": "in-process", "queued": self._queue.qsize(), "running": self.current}


class StoreRunner:
    """Records jobs in the store only, for the server's in-process runner to pick up: what the
    command line uses without REDIS_URL."""

    outage = None

    def __init__(self, store: Store):
        self.store = store

    def submit(self, project: int, kind: str, payload: dict | None = None, depends_on: Sequence[int] = ()) -> int:
        return record_job(self.store, project, kind, payload)[0]

    def resume(self) -> list[int]:
        return []

    def describe(self) -> dict:
        return {"kind": "store"}
