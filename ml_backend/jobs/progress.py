"""What each project's background work is doing, kept in the store so that every process sees it.

With REDIS_URL the work runs in RQ workers, other processes than the web server that answers
/health; so each job writes its progress to the store, one row per project and job: its stage with
its own counts, and its share of a piece of *work*. A round is one piece of work from the last
answer of the round before (or the connect) to its queries in Label Studio: the images whose
labeled pixels the head trains on, the images whose records are computed (in `records` batches
that workers run in parallel), and one last unit for selecting and publishing. Every job of the
round adds its share, so /health shows one count and one ETA for all of it, whichever job runs.
The ETA is the pace so far: elapsed x remaining / done, from the work's first step.

/health keeps apart what annotators wait for (the round's work, then the open round) and what runs
beside it (`BACKGROUND_KINDS`: the segmentation push, the answered regions), so neither hides
the other. Updates made outside a job (a webhook's "round 3 open", answered of asked) go to job 0.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from ml_backend.state.store import Store

log = logging.getLogger(__name__)

OUTSIDE_JOBS = 0
FINISHED = ("done", "failed")
BACKGROUND_KINDS = ("segment", "answers")
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
    """One piece of work from the rows of its jobs (newest first): their shares added up, of the
    work's size (a row outside any work: its own counts), with the newest stage and message. The
    ETA runs from the first job's start: a work done by a chain of jobs (the segmentation's batches)
    is paced over all of them, not over the newest one's few seconds."""
    newest = rows[0]
    if newest["work"]:  # jobs that report no share count the whole work themselves (the segmentation's)
        shares = [r["work_done"] for r in rows if r["work_done"] is not None]
        done, total = (sum(shares) if shares else newest["done"]), newest["work_total"]
    else:
        done, total = newest["done"], newest["total"]
    started = min((r["started"] for r in rows if r["started"] is not None), default=None)
    return {"stage": newest["stage"], "done": done, "total": total, "eta_s": _eta(done, total, started, now),
            "message": newest["message"],
            "updated": newest["updated"], "active": any(r["job"] != OUTSIDE_JOBS and r["status"] not in FINISHED
                                                         for r in rows)}


def _eta(done: int | None, total: int | None, started: float | None, now: float) -> float | None:
    """Seconds left at the pace so far."""
    if done and total and done < total and started is not None:
        return round((now - started) * (total - done) / done, 1)
    return None


def forget_finished(store: Store, project: int) -> None:
    """After a job of the project ends: forget the work whose jobs have all ended, except the newest
    of what annotators wait for and of each background kind, which /health keeps showing until
    something newer of the same kind happens."""
    rows = store.progress(project)
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["kind"] if row["kind"] in BACKGROUND_KINDS else "", []).append(row)
    stale = []
    for group in groups.values():
        works: dict[str, list[dict]] = {}
        for row in group:
            works.setdefault(_work(row), []).append(row)
        newest = _work(group[0])
        stale += [r["job"] for key, members in works.items() if key != newest
                  and all(r["status"] in FINISHED for r in members) for r in members]
    if stale:
        store.delete_progress(project, stale)


class Progress:
    def __init__(self, store: Store):
        self.store = store
        self._logged: dict[tuple[int, int], tuple] = {}  # (project, job) -> last (stage, count, tenth logged)
        self._lock = threading.Lock()

    def update(self, project: int, stage: str, done: int | None = None, total: int | None = None,
               message: str | None = None, work: tuple[str, int | None] | None = None,
               work_done: int | None = None) -> None:
        """`done` of `total` of this stage; `work`: (name, size) of the piece of work this job has a
        share of, and `work_done` its share done so far (both kept by later updates that omit them)."""
        job = _current_job.get()
        name, size = work or (None, None)
        self.store.set_progress(project, job, stage, done, total, message, name, size, work_done)
        share = self.store.work_share(project, job)  # the count of the whole work, as summarize adds it up
        if share["work"]:
            done = share["shares_done"] if share["shares_done"] is not None else share["done"]
            total = share["work_total"]
        eta_s = _eta(done, total, share["work_started"], time.time())
        tenth_now = done * 10 // total if total and done is not None else None
        with self._lock:  # a stage that repeats a count (a job's own steps in a work others count) logs it once
            last = self._logged.get((project, job))
            changed, moved = last is None or last[0] != stage, last is None or last[1] != done
            passed = tenth_now is not None and (changed or last[2] is None or tenth_now > last[2])
            self._logged[(project, job)] = (stage, done, tenth_now if passed or changed else last[2])
        tenth = moved and passed  # a tenth of the count passed since the last line (updates may skip counts)
        if changed or tenth or message:
            count = f" {done}/{total}" if total else ""
            eta = f", ETA {eta_s:.0f} s" if eta_s is not None else ""
            log.info("project %s: %s%s%s%s", project, stage, count, eta, f" ({message})" if message else "")

    def reporter(self, project: int, prefix: str, work: tuple[str, int | None] | None = None,
                 share: bool = False):
        """A callback (stage, done, total) for model/ code: "<prefix> <stage>"; with `share`, `done`
        is also this job's share of `work`. It passes a count on at each hundredth of its total
        (and the first and last): a round steps through 10,000 cached records in seconds, and each
        update writes a row and reads one (28 s of updates at 10,000 images and 1,250 jobs when an
        update read every job's row)."""
        last: dict[str, tuple] = {}

        def report(stage: str, done: int, total: int) -> None:
            step = (stage, done * 100 // total if total else done)
            if done not in (0, total) and last.get("step") == step:
                return
            last["step"] = step
            self.update(project, f"{prefix} {stage}", done, total, work=work, work_done=done if share else None)
        return report

    def snapshot(self) -> dict:
        """project -> what annotators wait for (the newest work outside BACKGROUND_KINDS: counts added
        up over its jobs, with an ETA, and its jobs) and, under "background", the newest of each
        background kind, for /health."""
        now, out = time.time(), {}
        by_project: dict[int, list[dict]] = {}
        for row in self.store.progress():
            by_project.setdefault(row["project"], []).append(row)
        for project, rows in by_project.items():
            main = [r for r in rows if r["kind"] not in BACKGROUND_KINDS]
            summary = _with_jobs(main, now) if main else {"stage": None, "done": None, "total": None, "eta_s": None,
                                                          "message": None, "active": False, "jobs": []}
            summary["background"] = {kind: _with_jobs(group, now) for kind in BACKGROUND_KINDS
                                     if (group := [r for r in rows if r["kind"] == kind])}
            out[str(project)] = summary
        return out


def _with_jobs(rows: list[dict], now: float) -> dict:
    """The newest work of `rows` (newest first), summarized with its jobs."""
    newest = _work(rows[0])
    mine = [r for r in rows if _work(r) == newest]
    summary = summarize(mine, now)
    summary["jobs"] = [{"job": r["job"], "kind": r["kind"], "status": r["status"], "stage": r["stage"],
                        "done": r["done"], "total": r["total"]}
                       for r in sorted(mine, key=lambda r: r["job"]) if r["job"] != OUTSIDE_JOBS]
    return summary
