"""Scale-out: jobs on an RQ queue in Redis, run by `rq worker` processes (ml_backend.jobs.worker).

The store stays the record of every job (so nothing is lost if Redis is flushed or comes back
empty); Redis only carries the ids to the workers. The server checks Redis every CHECK_INTERVAL
seconds (RedisRunner.watch) and, at start and whenever Redis answers again after an outage or is
another server (restarted between two checks), puts back on the queue every job the store says is
unfinished and that Redis does not hold. While Redis cannot be reached, whatever needs it raises
QueueUnavailable (a 503) within a few seconds, after the job it asked for is recorded.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job

from ml_backend.jobs.runners import QueueUnavailable, record_job
from ml_backend.state.store import Store

log = logging.getLogger(__name__)

QUEUE_NAME = "active-learning"
JOB_TIMEOUT = 6 * 3600
HELD = ("queued", "started", "deferred", "scheduled")  # Redis runs the job, or will
RECORDED = "what was asked is recorded in the store and will be queued when Redis returns"


def rq_id(job: int) -> str:
    return f"al-job-{job}"


def address(url: str) -> str:
    """The Redis URL as messages show it: without user, password or options."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


class RedisRunner:
    """Every call to Redis gives up after CONNECT_TIMEOUT / SOCKET_TIMEOUT seconds, so that a request
    never hangs on a Redis that went away. The RQ workers dequeue on their own connection (from
    `rq worker --url`), to which RQ gives a timeout longer than its blocking wait."""

    CHECK_INTERVAL = 5.0
    CONNECT_TIMEOUT = 2.0
    SOCKET_TIMEOUT = 3.0

    def __init__(self, store: Store, redis_url: str):
        self.store = store
        self.address = address(redis_url)
        self.redis = Redis.from_url(redis_url, socket_connect_timeout=self.CONNECT_TIMEOUT,
                                    socket_timeout=self.SOCKET_TIMEOUT)
        self.queue = Queue(QUEUE_NAME, connection=self.redis)
        self.outage: str | None = None
        self._server: str | None = None  # run_id of the Redis the store's jobs were last put back on
        self._state = threading.Lock()

    @contextmanager
    def _reachable(self, consequence: str) -> Iterator[None]:
        """Redis's connection errors and timeouts as QueueUnavailable; the first of an outage is logged."""
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError) as exc:
            with self._state:
                first = self.outage is None
                if first:  # /health shows it, without the address (that is behind auth, in /metrics)
                    self.outage = (f"Redis unreachable since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
                                   f"({type(exc).__name__}): requests that queue work answer 503; what they ask is "
                                   "recorded and queued when Redis returns")
            if first:
                log.error("Redis at %s unreachable: %s", self.address, exc)
            raise QueueUnavailable(f"Redis at {self.address} unreachable ({exc}); {consequence}") from None

    def _enqueue(self, job: int, depends_on: Sequence[int] = ()) -> None:
        self.queue.enqueue("ml_backend.jobs.worker.perform", job, job_id=rq_id(job), job_timeout=JOB_TIMEOUT,
                           depends_on=[rq_id(d) for d in depends_on] or None, result_ttl=3600, failure_ttl=86400)

    def _held(self, job: int) -> bool:
        try:
            return Job.fetch(rq_id(job), connection=self.redis).get_status() in HELD
        except NoSuchJobError:
            return False

    def submit(self, project: int, kind: str, payload: dict | None = None, depends_on: Sequence[int] = ()) -> int:
        job, new = record_job(self.store, project, kind, payload)
        with self._reachable(RECORDED):
            if new:
                self._enqueue(job, depends_on)
            elif not self._held(job):  # recorded while Redis was away, or lost with it: a trigger is never a no-op
                log.warning("job %s (%s, project %s) is queued in the store but not in Redis: queueing it", job,
                            kind, project)
                self._enqueue(job)
        return job

    def resume(self) -> list[int]:
        """Put back on the queue, in the order they were recorded, the jobs the store says are unfinished
        and Redis does not hold; a `select` waits again for its round's unfinished `records`. Under a
        lock in Redis, so that the server's processes (gunicorn runs several) queue each job once."""
        with self._reachable(RECORDED), self.redis.lock("al-requeue", timeout=60, blocking_timeout=30):
            rows = self.store.interrupted_jobs()
            again = [row for row in rows if not self._held(row["id"])]
            for row in again:
                log.warning("re-queueing interrupted job %s (%s, project %s)", row["id"], row["kind"], row["project"])
                self._enqueue(int(row["id"]), waits_for(row, rows))
        return [int(row["id"]) for row in again]

    def watch(self) -> None:
        """Put back what the store has unfinished now, then check Redis every CHECK_INTERVAL seconds on a
        daemon thread, and again when it returns: no request or restart is needed after an outage."""
        self._check()
        threading.Thread(target=self._watch, name="redis-watch", daemon=True).start()

    def _watch(self) -> None:
        while True:
            time.sleep(self.CHECK_INTERVAL)
            try:
                self._check()
            except Exception:  # the watch outlives any one failure (a store error, the lock held too long)
                log.exception("checking Redis at %s failed", self.address)

    def _check(self) -> None:
        try:
            with self._reachable(RECORDED):
                server = self.redis.info("server")["run_id"]
            if self.outage is None and server == self._server:
                return
            again = self.resume()
        except QueueUnavailable:
            return  # _reachable logged the outage
        with self._state:
            was_out, self.outage = self.outage, None
        known, self._server = self._server, server
        if was_out:
            log.warning("Redis back: re-queued %d jobs", len(again))
        elif known is not None:
            log.warning("Redis at %s restarted: re-queued %d jobs", self.address, len(again))

    def describe(self) -> dict:
        with self._reachable("the job queue cannot be read until it returns (work asked for meanwhile is recorded "
                             "in the store and queued then)"):
            return {"kind": "redis", "queue": QUEUE_NAME, "queued": self.queue.count,
                    "started": self.queue.started_job_registry.count,
                    "workers": len(self.redis.smembers("rq:workers"))}


def waits_for(row: dict, unfinished: list[dict]) -> list[int]:
    """What a requeued job must wait for: a `select`, its round's unfinished `records` (recorded before it)."""
    if row["kind"] != "select":
        return []
    round_index = json.loads(row["payload"])["round"]
    return [r["id"] for r in unfinished if r["kind"] == "records" and r["project"] == row["project"]
            and r["id"] < row["id"] and json.loads(r["payload"])["round"] == round_index]
