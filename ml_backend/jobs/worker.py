"""What an RQ worker runs: `rq worker --url $REDIS_URL -w rq.worker.SimpleWorker active-learning` (jobs in
the worker's process, which keeps the backbone loaded between them) with the backend's
environment (the same MODEL_DIR, on shared storage, and the same settings as the server).

Jobs of one project that change its rounds (everything but `records`) hold a Redis lock on the
project, so two workers never run two of them at once; `records` batches run in parallel.
"""

from __future__ import annotations

import logging
import time

from redis import Redis

from ml_backend.config import Settings
from ml_backend.state.database import StoreUnavailable
from ml_backend.jobs.runners import InProcessRunner, run_job
from ml_backend.services import Services

log = logging.getLogger(__name__)
_services: Services | None = None
_runner = None


def _context():
    global _services, _runner
    if _services is None:
        from ml_backend.logs import configure_logging
        from ml_backend.jobs.rq_runner import RedisRunner

        settings = Settings.from_env()
        configure_logging(settings.log_level, [settings.label_studio_api_key, settings.basic_auth_pass])
        _services = Services.create(settings)
        _runner = RedisRunner(_services.store, settings.redis_url)
    return _services, _runner


def perform(job_id: int) -> None:
    """Run the store's job `job_id`; while the store's database is unreachable, wait and try again
    (the job stays unfinished in the store, and Redis would otherwise file it as failed for good)."""
    while True:
        try:
            return _perform(job_id)
        except StoreUnavailable as exc:
            log.warning("job %s: %s; trying it again in %.0f s", job_id, exc, InProcessRunner.RETRY_SECONDS)
            time.sleep(InProcessRunner.RETRY_SECONDS)


def _perform(job_id: int) -> None:
    from ml_backend.jobs.loop import handle_job

    services, runner = _context()
    job = services.store.job(job_id)
    if job is None:
        log.error("job %s is not in the store at %s", job_id, services.settings.model_dir)
        return

    def handler(project, kind, payload):
        handle_job(services, runner, project, kind, payload)

    if job["kind"] == "records":
        run_job(services.store, handler, job_id)
        return
    redis = Redis.from_url(services.settings.redis_url)
    with redis.lock(f"al-project-lock-{job['project']}", timeout=6 * 3600, blocking_timeout=6 * 3600):
        run_job(services.store, handler, job_id)
