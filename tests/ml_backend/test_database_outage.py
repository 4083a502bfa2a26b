"""The store's PostgreSQL down, then back (issue 26): requests that need the store get a 503 with the
reason within seconds (not a 500 after the pool's 30 s), /health stays a 200 and says so, the job
thread and the reading-back thread outlive the outage, and a job the outage interrupted runs again.
A real PostgreSQL of the test's own, stopped as a crash would stop it and started again on its
cluster; the backend's Flask app in this process, without Label Studio credentials (its jobs end at
once, failed for want of them: what is measured here is that they run)."""

from __future__ import annotations

import logging
import time

import pytest

from ml_backend.__main__ import main
from ml_backend.config import Settings
from ml_backend.state.database import PostgreSQL, StoreUnavailable
from ml_backend.jobs.runners import InProcessRunner, run_job
from ml_backend.label_studio.label_config import SHIPPED_CONFIG
from ml_backend.web.server import create_app
from ml_backend.state.store import Store
from tests.conftest import started_postgres
from tests.ml_backend.servers import free_port, wait_until
from tests.ml_backend.web.test_server import annotation_event, keypoint

CONFIG = SHIPPED_CONFIG.read_text()


@pytest.fixture
def postgres():
    server = started_postgres()
    yield server
    server.stop()


def test_while_the_database_is_down_requests_get_a_503_and_the_threads_live_on(tmp_path, postgres, monkeypatch,
                                                                              caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(PostgreSQL, "CONNECT_SECONDS", 2.0)
    monkeypatch.setattr(InProcessRunner, "ADOPT_INTERVAL", 0.2)
    monkeypatch.setattr(InProcessRunner, "RETRY_SECONDS", 0.5)
    settings = Settings(model_dir=tmp_path / "model", backbone="tiny", resolution=64,
                        label_studio_url=f"http://127.0.0.1:{free_port()}", label_studio_api_key="",
                        database_url=postgres.url(), reconcile_seconds=0.3)
    app = create_app(settings)
    c, backend = app.test_client(), app.config["backend"]
    store, runner = backend.services.store, backend.runner
    assert c.post("/setup", json={"project": "7.1", "schema": CONFIG}).status_code == 200
    wait_until(runner.idle, 30, "the setup's jobs to end", 0.1)
    # round 0 open: task 5 queried once, on query task 99
    store.upsert_tasks(7, [(5, "/data/upload/7/a.png")])
    store.save_round(7, 0, None, [{"task": 5, "pixel": 12 * 64 + 6, "rank": 0, "region": "q0-5"}])
    store.add_query_task(7, 99, 0, 5, "p7-r0-t5")
    store.place_queries(7, 0, 5, [12 * 64 + 6], holder=99)
    store.open_round(7, 0)
    event = annotation_event(1, 99, [keypoint("q0-5", 10.0, 20.0, "Road")])

    postgres.halt()
    started = time.perf_counter()
    r = c.post("/webhook", json=event)
    took = time.perf_counter() - started
    assert r.status_code == 503, r.json
    assert f"PostgreSQL database (127.0.0.1:{postgres.port}/postgres) gave no connection within 2 s" in r.json["error"]
    assert "Nothing is lost" in r.json["error"] and "gave no connection" in r.status  # the reason phrase
    assert took < 2 + 3, took
    assert c.get("/metrics").status_code == 503
    health = c.get("/health")
    assert health.status_code == 200 and health.json["status"] == "UP" and "projects" not in health.json
    assert "gave no connection" in health.json["store"] and "503" in health.json["store"]
    time.sleep(1.5)  # several looks for other processes' jobs, several reading-back ticks: both fail
    assert runner._thread.is_alive()
    logged = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert len([m for m in logged if m.startswith("cannot look for jobs recorded by other processes")]) == 1
    assert len([m for m in logged if m.startswith("reconciliation with Label Studio not queued")]) == 1

    postgres.resume()
    back = time.perf_counter()
    r = c.post("/webhook", json=event)
    print(f"503 after {took:.2f} s (CONNECT_SECONDS 2); the first request after the restart answered "
          f"{r.status_code} after {time.perf_counter() - back:.2f} s")
    assert r.status_code in (200, 201), r.json
    assert [(lb["task"], lb["pixel"]) for lb in store.labels(7)] == [(5, 12 * 64 + 6)]
    assert "store" not in c.get("/health").json
    # the thread that lived through the outage runs what the answer asked for
    wait_until(lambda: all(store.job(j["id"])["status"] in ("done", "failed") for j in store.recent_jobs(20)), 60,
               "the answer's jobs to run", 0.2)
    assert runner._thread.is_alive() and store.recent_jobs(20)
    wait_until(lambda: "reconciliation queued again" in [r.getMessage() for r in caplog.records], 5,
               "the reading back to see the store again", 0.1)
    assert "the store answers again: looking for other processes' jobs" in [r.getMessage() for r in caplog.records]
    backend.reconcile.seconds = runner.ADOPT_INTERVAL = 3600  # the app's threads outlive the test: they go
    time.sleep(0.6)  # quiet once their current wait ends, and its pool, closed, retries the removed server no more
    store.close()


def test_a_job_the_database_interrupted_stays_unfinished_and_runs_again(tmp_path, monkeypatch, capsys):
    store = Store(tmp_path / "state.sqlite3")
    job = store.add_job(7, "train", {})
    calls = []

    def handler(project, kind, payload):
        calls.append(kind)
        if len(calls) == 1:
            raise StoreUnavailable("the store's PostgreSQL database (db:5432/x) closed the connection")

    with pytest.raises(StoreUnavailable):
        run_job(store, handler, job)
    assert store.job(job)["status"] == "running"  # not failed: no trigger would ever run it again
    run_job(store, handler, job)
    assert store.job(job)["status"] == "done" and calls == ["train", "train"]
    port = free_port()
    with pytest.raises(StoreUnavailable, match="cannot be reached"):
        PostgreSQL(f"postgresql://postgres@127.0.0.1:{port}/none")
    # the backend and its command line, started without their database, stop with its reason
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{port}/none")
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "model"))
    monkeypatch.setenv("BACKBONE", "tiny")
    for argv in ([], ["heads", "list", "--project", "7"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"database (127.0.0.1:{port}/none) cannot be reached" in err and "Connection refused" in err
