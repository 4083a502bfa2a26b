"""What each project's background work is doing, kept in the store so that every process sees it.

With REDIS_URL the work runs in RQ workers, other processes than the web server that answers
/health; so each job writes its progress to the store, one row per project and job: its stage,
and how many images (or tasks) of it are done, of how many. The jobs that share one piece of work,
the `records` batches of a round that workers run in parallel, each carry the work's name and its
size (the round's images, known when the round was planned), and /health adds their counts up:
it counts the round's images, not its batches, from the first batch on. The ETA is the pace so
far: elapsed x remaining / done. Updates made outside a job (a webhook's "round 3 open", answered
of asked) go to job 0.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from ml_backend.store import Store

log = logging.getLogger(__name__)

OUTSIDE_JOBS = 0
FINISHED = ("done", "failed")
_current_job: ContextVar[int] = ContextVar("progress_job", default=OUTSIDE_JOBS)


@contextmanager
def job_scope(job: int) -> Iterator[None]:
    """Progress reported inside this block belongs to `job`."""
    token = _current_job.set(job)
    try:
        yield
    finally:
        _current_job.reset(token)


def _work(row: dict) -> str:
    return row["work"] or f"job-{row['job']}"


def summarize(rows: list[dict], now: float) -> dict:
    """One piece of work from the rows of its jobs (newest first): their counts added up, of the
    work's size, with the newest stage and message."""
    newest = rows[0]
    done = sum(r["done"] or 0 for r in rows) if any(r["done"] is not None for r in rows) else None
    total = newest["work_total"] if newest["work"] else newest["total"]
    started = min((r["started"] for r in rows if r["started"] is not None), default=None)
    eta = None
    if done and total and done < total and started is not None:
        eta = round((now - started) * (total - done) / done, 1)
    return {"stage": newest["stage"], "done": done, "total": total, "eta_s": eta, "message": newest["message"],
            "updated": newest["updated"], "active": any(r["job"] != OUTSIDE_JOBS and r["status"] not in FINISHED
                                                         for r in rows)}


def forget_finished(store: Store, project: int) -> None:
    """After a job of the project ends: forget the work whose jobs have all ended, except the newest,
    which /health keeps showing until something newer happens."""
    rows = store.progress(project)
    if not rows:
        return
    works: dict[str, list[dict]] = {}
    for row in rows:
        works.setdefault(_work(row), []).append(row)
    newest = _work(rows[0])
    stale = [r["job"] for key, group in works.items() if key != newest
             and all(r["status"] in FINISHED for r in group) for r in group]
    if stale:
        store.delete_progress(project, stale)


class Progress:
    def __init__(self, store: Store):
        self.store = store
        self._logged: dict[tuple[int, int], str] = {}  # (project, job) -> the last stage this process logged
        self._lock = threading.Lock()

    def update(self, project: int, stage: str, done: int | None = None, total: int | None = None,
               message: str | None = None, work: tuple[str, int] | None = None) -> None:
        """`work`: (name, size) of the piece of work this job has a share of (`total` of its `size` items)."""
        job = _current_job.get()
        self.store.set_progress(project, job, stage, done, total, message, *(work or (None, None)))
        rows = self.store.progress(project)
        mine = next(r for r in rows if r["job"] == job)
        summary = summarize([r for r in rows if _work(r) == _work(mine)], time.time())
        with self._lock:
            changed = self._logged.get((project, job)) != stage
            self._logged[(project, job)] = stage
        done, total = summary["done"], summary["total"]
        tenth = total and done is not None and (done == total or (total >= 10 and done % max(1, total // 10) == 0))
        if changed or tenth or message:
            count = f" {done}/{total}" if total else ""
            eta = f", ETA {summary['eta_s']:.0f} s" if summary["eta_s"] is not None else ""
            log.info("project %s: %s%s%s%s", project, stage, count, eta, f" ({message})" if message else "")

    def reporter(self, project: int, prefix: str):
        """A callback (stage, done, total) for model/ code: "<prefix> <stage>"."""
        return lambda stage, done, total: self.update(project, f"{prefix} {stage}", done, total)

    def snapshot(self) -> dict:
        """project -> its newest work (counts added up over its jobs, with an ETA) and the jobs
        running or done for it so far, for /health."""
        now, out = time.time(), {}
        by_project: dict[int, list[dict]] = {}
        for row in self.store.progress():
            by_project.setdefault(row["project"], []).append(row)
        for project, rows in by_project.items():
            newest = _work(rows[0])
            mine = [r for r in rows if _work(r) == newest]
            summary = summarize(mine, now)
            summary["jobs"] = [{"job": r["job"], "kind": r["kind"], "status": r["status"], "stage": r["stage"],
                                "done": r["done"], "total": r["total"]}
                               for r in sorted(mine, key=lambda r: r["job"]) if r["job"] != OUTSIDE_JOBS]
            out[str(project)] = summary
        return out
