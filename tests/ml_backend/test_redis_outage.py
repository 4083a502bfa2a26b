"""Redis down, then back empty (issue 25): whatever needs the job queue answers 503 with the reason,
nothing asked for is lost (the store records every job before it is queued), and the web process
puts the store's unfinished jobs back on the queue by itself once Redis returns. A real
redis-server, stopped and started again empty on the same port; the backend's Flask app in this
process over a RedisRunner (Label Studio is not needed: /setup's credentials check finds nobody at a
closed port, and no job runs here but in the `rq worker` test)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rq import Queue
from rq.job import Job

from ml_backend.config import Settings
from ml_backend.jobs.runners import QueueUnavailable
from ml_backend.label_studio.label_config import SHIPPED_CONFIG
from ml_backend.jobs.rq_runner import HELD, QUEUE_NAME, RedisRunner, rq_id
from ml_backend.web.server import create_app
from ml_backend.state.store import Store
from tests.conftest import REPO
from tests.ml_backend.servers import free_port, wait_until
from tests.ml_backend.web.test_server import keypoint

CONFIG = SHIPPED_CONFIG.read_text()


def redis_app(tmp_path, redis_url: str):
    settings = Settings(model_dir=tmp_path / "model", backbone="tiny", resolution=64,
                        label_studio_url=f"http://127.0.0.1:{free_port()}", label_studio_api_key="k",
                        redis_url=redis_url)
    app = create_app(settings)
    return app.test_client(), app.config["backend"]


def status(runner: RedisRunner, job: int) -> str | None:
    from rq.exceptions import NoSuchJobError

    try:
        return Job.fetch(rq_id(job), connection=runner.redis).get_status()
    except NoSuchJobError:
        return None


def answers(annotation_id: int, holder: int, region: str, x: float, y: float) -> dict:
    return {"id": annotation_id, "task": holder, "result": [keypoint(region, x, y, "Road")],
            "updated_at": "2026-01-01T00:00:00Z"}


def test_while_redis_is_down_requests_get_a_503_with_the_reason_and_what_they_ask_is_queued_when_it_returns(
        tmp_path, redis_server, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(RedisRunner, "CHECK_INTERVAL", 0.5)
    c, backend = redis_app(tmp_path, redis_server.url)
    runner, store = backend.runner, backend.services.store
    other = RedisRunner(store, redis_server.url)  # a second gunicorn process of the same server
    other.watch()
    assert c.post("/setup", json={"project": "7.1", "schema": CONFIG}).status_code == 200
    # a round planned before the outage: two batches of records (one done), and the select that waits for them
    batches = [runner.submit(7, "records", {"round": 1, "tasks": [t]}) for t in (5, 6)]
    select = runner.submit(7, "select", {"round": 1, "head": None}, depends_on=batches)
    store.start_job(batches[0])
    store.finish_job(batches[0])
    # round 0 open in Label Studio: tasks 5 and 6 each queried once, on query tasks 99 and 100
    store.upsert_tasks(7, [(5, "/data/upload/7/a.png"), (6, "/data/upload/7/b.png")])
    store.save_round(7, 0, None, [{"task": 5, "pixel": 12 * 64 + 6, "rank": 0, "region": "q0-5"},
                                  {"task": 6, "pixel": 32 * 64 + 32, "rank": 1, "region": "q0-6"}])
    for holder, task, pixel in ((99, 5, 12 * 64 + 6), (100, 6, 32 * 64 + 32)):
        store.add_query_task(7, holder, 0, task, f"p7-r0-t{task}")
        store.place_queries(7, 0, task, [pixel], holder=holder)
    store.open_round(7, 0)
    store.add_head(7, "p7-head-1", 0, str(tmp_path / "p7-head-1.pt"), 1, {})
    assert all(status(runner, j) in HELD for j in [r["id"] for r in store.interrupted_jobs()])

    redis_server.stop()
    down = f"Redis at {redis_server.url} unreachable"
    recorded = "what was asked is recorded in the store and will be queued when Redis returns"
    asks = [("START_TRAINING", lambda: c.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 7}})),
            ("/train", lambda: c.post("/train", json={"project": "7.1"})),  # the train job recorded just before
            ("TASKS_CREATED", lambda: c.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": 7},
                                                               "tasks": [{"id": 7}]})),  # the sync of /setup
            ("/setup", lambda: c.post("/setup", json={"project": "8.1", "schema": CONFIG,
                                                      "hostname": f"http://127.0.0.1:{free_port()}",
                                                      "access_token": "t"})),
            ("annotations", lambda: c.post("/webhook", json={
                "action": "ANNOTATIONS_CREATED", "project": {"id": 7, "label_config": CONFIG},
                "annotation": [answers(1, 99, "q0-5", 10.0, 20.0), answers(2, 100, "q0-6", 50.0, 50.0)]})),
            ("/versions/pin", lambda: c.post("/versions/pin", json={"version": "p7-head-1"}))]
    for what, ask in asks:
        started = time.perf_counter()
        r = ask()
        assert r.status_code == 503 and down in r.json["error"] and recorded in r.json["error"], (what, r.json)
        assert down in r.status and recorded in r.status, what  # the reason phrase: what Label Studio shows
        assert time.perf_counter() - started < 1, what
    r = c.get("/metrics")
    assert r.status_code == 503 and down in r.json["error"] and "cannot be read" in r.status
    health = c.get("/health")
    assert health.status_code == 200 and health.json["status"] == "UP"
    assert health.json["job_queue"].startswith("Redis unreachable since ") and "503" in health.json["job_queue"]
    assert str(redis_server.port) not in health.json["job_queue"]  # the address is behind auth, in /metrics
    assert c.get("/versions").status_code == 200  # what needs no queue still works
    # nothing lost: both annotations stored, every job they and the other requests asked for recorded
    assert sorted((lb["task"], lb["pixel"]) for lb in store.labels(7)) == [(5, 12 * 64 + 6), (6, 32 * 64 + 32)]
    assert store.current_head(7)["version"] == "p7-head-1" and store.project(8) is not None
    unfinished = store.interrupted_jobs()
    asked = [(r["project"], r["kind"]) for r in unfinished if r["id"] > select]
    assert asked == [(7, "train"), (8, "sync"), (7, "answers"), (7, "answers"), (7, "advance"), (7, "pin")]

    wait_until(lambda: other.outage is not None, 5, "the other process's watch to see the outage", 0.05)
    redis_server.start()  # empty, on the same port; no request from here on
    back = time.perf_counter()
    wait_until(lambda: all(status(runner, r["id"]) in HELD for r in unfinished), 10, "the store's jobs in Redis", 0.05)
    requeued_in = time.perf_counter() - back
    print(f"requeued {len(unfinished)} jobs {requeued_in:.2f} s after Redis returned "
          f"(CHECK_INTERVAL {RedisRunner.CHECK_INTERVAL} s)")
    assert requeued_in < RedisRunner.CHECK_INTERVAL + 1.5
    assert status(runner, batches[0]) is None  # done in the store: not queued again
    waiting = Job.fetch(rq_id(select), connection=runner.redis)
    assert waiting.get_status() == "deferred" and waiting.dependency_ids == [rq_id(batches[1])]
    ids = Queue(QUEUE_NAME, connection=runner.redis).job_ids
    assert len(ids) == len(set(ids)) == len(unfinished) - 1  # each once, though two processes watch
    wait_until(lambda: runner.outage is None and other.outage is None, 5, "both watches to see Redis back", 0.05)
    assert "job_queue" not in c.get("/health").json and c.get("/metrics").json["jobs"]["queued"] == len(ids)
    logged = [r.getMessage() for r in caplog.records]
    assert len([m for m in logged if m.startswith(f"Redis at {redis_server.url} unreachable:")]) == 2  # once each
    assert logged.count(f"Redis back: re-queued {len(unfinished)} jobs") == 1
    assert logged.count("Redis back: re-queued 0 jobs") == 1
    r = c.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": 7}, "tasks": [{"id": 7}]})
    assert r.status_code == 201 and status(runner, r.json["result"]["job"]) == "queued"


def test_a_trigger_after_redis_came_back_queues_the_job_the_store_holds(tmp_path, redis_server, monkeypatch, caplog):
    """Before the watch sees Redis again (here: never), a second request for a job of which a project
    has one waiting finds it missing in Redis and queues it: no request is a no-op."""
    monkeypatch.setattr(RedisRunner, "CHECK_INTERVAL", 3600.0)
    c, backend = redis_app(tmp_path, redis_server.url)
    redis_server.stop()
    train = {"action": "START_TRAINING", "project": {"id": 3}}
    assert c.post("/webhook", json=train).status_code == 503
    job = backend.services.store.queued_job(3, "train")["id"]
    redis_server.start()
    r = c.post("/webhook", json=train)
    assert r.status_code == 201 and r.json["result"]["job"] == job and status(backend.runner, job) == "queued"
    assert f"job {job} (train, project 3) is queued in the store but not in Redis: queueing it" in caplog.text


def test_a_redis_that_never_answers_gets_a_503_within_the_socket_timeout(tmp_path):
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        runner = RedisRunner(Store(tmp_path / "store.db"), f"redis://:secret@127.0.0.1:{silent.getsockname()[1]}/0")
        started = time.perf_counter()
        with pytest.raises(QueueUnavailable) as unavailable:
            runner.submit(3, "train")
        waited = time.perf_counter() - started
    assert RedisRunner.SOCKET_TIMEOUT - 0.1 < waited < RedisRunner.SOCKET_TIMEOUT + 1
    assert "Timeout" in str(unavailable.value) and "secret" not in str(unavailable.value)
    assert runner.store.queued_job(3, "train") is not None


@pytest.mark.slow
def test_an_idle_rq_worker_outlives_the_outage_and_runs_what_the_server_queued_again(tmp_path, redis_server,
                                                                                     monkeypatch):
    """rq 3.0's worker retries its blocking dequeue while Redis is away (waiting 1, 2, 4 ... s, at
    most 60 s), so an idle worker needs no restart. (One that was running a job when Redis went away
    exits at the job's end: docker-compose.yml restarts it, see docs/reliability.md.)"""
    monkeypatch.setattr(RedisRunner, "CHECK_INTERVAL", 0.5)
    c, backend = redis_app(tmp_path, redis_server.url)
    env = {**os.environ, "MODEL_DIR": str(tmp_path / "model"), "BACKBONE": "tiny", "RESOLUTION": "64",
           "REDIS_URL": redis_server.url}
    with open(tmp_path / "worker.log", "w") as log:
        worker = subprocess.Popen([str(Path(sys.executable).parent / "rq"), "worker", "--url", redis_server.url,
                                   "-w", "rq.worker.SimpleWorker", QUEUE_NAME], cwd=REPO, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: backend.runner.redis.scard("rq:workers") == 1, 30, "the worker", 0.1)
        redis_server.stop()
        with pytest.raises(QueueUnavailable):  # a pin on a project without heads: a job that ends at once
            backend.runner.submit(7, "pin")
        job = backend.services.store.queued_job(7, "pin")["id"]
        time.sleep(3)
        assert worker.poll() is None
        redis_server.start()
        back = time.perf_counter()
        wait_until(lambda: backend.services.store.job(job)["status"] == "done", 60, "the pin job run by the worker",
                   0.1)
        print(f"the idle worker ran the requeued job {time.perf_counter() - back:.1f} s after Redis returned")
        assert worker.poll() is None
    finally:
        worker.terminate()
        worker.wait(10)
    assert "could not connect to Redis instance" in (tmp_path / "worker.log").read_text()
