"""Scale-out: jobs on an RQ queue in Redis, run by `rq worker` processes (ml_backend.worker).

The store stays the record of every job (so nothing is lost if Redis is flushed); Redis only
carries the ids to the workers. On start, the server puts back on the queue any job the store
says is unfinished and that Redis no longer holds as queued or started.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job

from ml_backend.jobs import record_job
from ml_backend.store import Store

log = logging.getLogger(__name__)

QUEUE_NAME = "active-learning"
JOB_TIMEOUT = 6 * 3600


def rq_id(job: int) -> str:
    return f"al-job-{job}"


class RedisRunner:
    def __init__(self, store: Store, redis_url: str):
        self.store = store
        self.redis = Redis.from_url(redis_url)
        self.queue = Queue(QUEUE_NAME, connection=self.redis)

    def _enqueue(self, job: int, depends_on: Sequence[int] = ()) -> None:
        self.queue.enqueue("ml_backend.worker.perform", job, job_id=rq_id(job), job_timeout=JOB_TIMEOUT,
                           depends_on=[rq_id(d) for d in depends_on] or None, result_ttl=3600, failure_ttl=86400)

    def submit(self, project: int, kind: str, payload: dict | None = None, depends_on: Sequence[int] = ()) -> int:
        job, new = record_job(self.store, project, kind, payload)
        if new:
            self._enqueue(job, depends_on)
        return job

    def resume(self) -> list[int]:
        again = []
        for row in self.store.interrupted_jobs():
            try:
                status = Job.fetch(rq_id(row["id"]), connection=self.redis).get_status()
            except NoSuchJobError:
                status = None
            if status not in ("queued", "started", "deferred", "scheduled"):
                log.warning("re-queueing interrupted job %s (%s, project %s)", row["id"], row["kind"], row["project"])
                self._enqueue(int(row["id"]))
                again.append(int(row["id"]))
        return again

    def describe(self) -> dict:
        return {"kind": "redis", "queue": QUEUE_NAME, "queued": self.queue.count,
                "started": self.queue.started_job_registry.count, "workers": len(self.queue.connection.smembers(
                    "rq:workers")) if self.queue.connection else None}
