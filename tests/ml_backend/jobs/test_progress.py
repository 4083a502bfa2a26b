"""Progress lives in the store: every process sees every job's, counted in images, with an ETA (on
SQLite and on PostgreSQL). The same with real RQ workers is in test_label_studio_loop.py (two
workers, the web process's /health)."""

from __future__ import annotations

import logging
import time

from ml_backend.jobs.progress import Progress, forget_finished, job_scope
from ml_backend.state.store import Label
from tests.ml_backend.jobs.test_loop import ready_images
from tests.ml_backend.web.test_server import CONFIG, make_client


STAGE, WORK = "round 3: features and local herding", ("round 3 records", 20)


def test_batches_of_one_round_add_up_to_its_images_in_any_process(open_store, caplog):
    """The 20 images of a round in batches of 8, 8 and 4, run by two processes: /health counts 20
    images from the first batch on (the issue: 539 s in, it showed 7 of 8 with 12 images to go)."""
    caplog.set_level(logging.INFO, "ml_backend.jobs.progress")
    web, worker_a, worker_b = Progress(open_store()), Progress(open_store()), Progress(open_store())
    store = worker_a.store
    jobs = [store.add_job(7, "records", {"round": 3}) for _ in range(3)]
    store.start_job(jobs[0])
    with job_scope(jobs[0]):
        worker_a.update(7, STAGE, 0, 8, work=WORK, work_done=0)
        time.sleep(0.2)
        for n in range(1, 8):
            worker_a.update(7, STAGE, n, 8, work=WORK, work_done=n)
    seen = web.snapshot()["7"]
    assert (seen["stage"], seen["done"], seen["total"]) == (STAGE, 7, 20)
    assert seen["eta_s"] is not None and seen["eta_s"] > 0 and seen["active"]
    assert [(j["job"], j["kind"], j["status"], j["done"], j["total"]) for j in seen["jobs"]] == [
        (jobs[0], "records", "running", 7, 8)]
    with job_scope(jobs[0]):
        worker_a.update(7, STAGE, 8, 8, work=WORK, work_done=8)
    store.finish_job(jobs[0])
    store.start_job(jobs[1])
    with job_scope(jobs[1]):  # the other worker takes the next batch
        worker_b.update(7, STAGE, 3, 8, work=WORK, work_done=3)
    seen = web.snapshot()["7"]
    assert (seen["done"], seen["total"]) == (11, 20)
    assert [(j["job"], j["status"]) for j in seen["jobs"]] == [(jobs[0], "done"), (jobs[1], "running")]
    logged = [r.getMessage() for r in caplog.records]
    assert "project 7: round 3: features and local herding 0/20" in logged
    assert any(m.startswith("project 7: round 3: features and local herding 2/20, ETA") for m in logged)
    assert any(m.startswith("project 7: round 3: features and local herding 8/20, ETA") for m in logged)
    assert not any("/8" in m for m in logged)  # never the batch's own count


def test_a_finished_piece_of_work_is_forgotten_once_something_newer_happens(open_store):
    progress = Progress(open_store())
    store = progress.store
    job = store.add_job(7, "records", {"round": 0})
    store.start_job(job)
    with job_scope(job):
        progress.update(7, "round 0: features and local herding", 2, 2, work=("round 0 records", 2), work_done=2)
    store.finish_job(job)
    forget_finished(store, 7)
    seen = progress.snapshot()["7"]
    assert (seen["done"], seen["total"], seen["eta_s"], seen["active"]) == (2, 2, None, False)
    progress.update(7, "round 0 open", 1, 4)  # a webhook, outside any job
    forget_finished(store, 7)
    assert [r["job"] for r in store.progress(7)] == [0]
    assert progress.snapshot()["7"]["stage"] == "round 0 open"


def test_training_stages_are_named_once_and_records_are_planned_in_images(tmp_path):
    """plan_round on four small images, one labeled: the stage reads "training features" (it read
    "training features features"), the head records its features, and each batch of RECORDS_BATCH
    knows the round's work: 1 labeled image, 3 records (the labeled image got its record while
    training), 1 to select and publish."""
    from ml_backend.jobs.loop import plan_round

    _, backend, runner = make_client(tmp_path, records_batch=2, candidates=200, local_k=5, expander="none")
    services = backend.services
    backend.setup("7.1", CONFIG)
    ready_images(services, 7)
    services.store.apply_annotation(7, 1, 1, "2026-01-01T00:00:00Z", [],
                                    [Label(1, "a", 100, 2, "keypoint"), Label(1, "b", 900, 3, "keypoint")])
    stages = []
    set_progress = services.store.set_progress
    services.store.set_progress = lambda *args: (stages.append(args[2]), set_progress(*args))
    runner.jobs.clear()
    plan_round(services, runner, 7, 1, train=True)
    assert "training features" in stages and not any("features features" in s for s in stages)
    head = services.store.current_head(7)
    assert head["version"] == "p7-head-1" and head["features"]["backbone"] == "tiny"
    assert head["features"]["config"]["resolution"] == 64
    assert runner.jobs == [(7, "records"), (7, "records"), (7, "select")]
    # the round's work: 1 labeled image to train on, 3 records, 1 for selecting and publishing
    assert runner.payloads[-3:] == [{"round": 1, "tasks": [2, 3], "work_total": 5},
                                    {"round": 1, "tasks": [4], "work_total": 5},
                                    {"round": 1, "head": "p7-head-1", "work_total": 5}]
    seen = services.progress.snapshot()["7"]
    assert (seen["stage"], seen["done"], seen["total"]) == ("round 1 queued", 1, 5) and seen["eta_s"] is not None


def test_one_count_for_the_whole_round_and_the_segmentation_beside_it(open_store):
    """From the last answer to the queries: training on 2 images, records of 3 in two jobs, selecting
    and publishing: 6 units whichever job runs, while a segmentation job of the last head runs beside
    it and never takes the round's place (the issue: the stage flipped between the two)."""
    progress = Progress(open_store())
    store = progress.store
    advance, records_a, records_b, select, segment = (store.add_job(7, kind) for kind in
                                                       ("advance", "records", "records", "select", "segment"))
    work = ("round 2", 6)

    def run(job, *updates):
        store.start_job(job)
        with job_scope(job):
            for args, kw in updates:
                progress.update(7, *args, **kw)

    def seen():
        s = progress.snapshot()["7"]
        return s["stage"], s["done"], s["total"]

    run(advance, (("listing tasks",), {"work": ("round 2", None), "work_done": 0}))
    assert seen() == ("listing tasks", 0, None)
    run(segment, (("segmenting tasks with p7-head-1", 3, 40), {}))
    assert seen() == ("listing tasks", 0, None)  # the segmentation is beside the round, not in its place
    assert progress.snapshot()["7"]["background"]["segment"]["done"] == 3
    with job_scope(advance):
        progress.update(7, "loading backbone", work=work)
        progress.update(7, "training features", 1, 2, work=work, work_done=1)
        time.sleep(0.05)
        progress.update(7, "training features", 2, 2, work=work, work_done=2)
        progress.update(7, "training head")
    assert seen() == ("training head", 2, 6) and progress.snapshot()["7"]["eta_s"] > 0
    store.finish_job(advance)
    run(records_a, (("round 2: features and local herding", 2, 2), {"work": work, "work_done": 2}))
    run(records_b, (("round 2: features and local herding", 1, 1), {"work": work, "work_done": 1}))
    run(segment, (("segmenting tasks with p7-head-1", 30, 40), {}))
    assert seen() == ("round 2: features and local herding", 5, 6)
    run(select, (("round 2: global herding", 0, 1), {"work": work}), (("round 2 open",), {"work_done": 1}))
    assert seen() == ("round 2 open", 6, 6) and progress.snapshot()["7"]["eta_s"] is None
    assert [j["kind"] for j in progress.snapshot()["7"]["jobs"]] == ["advance", "records", "records", "select"]
    for job in (records_a, records_b, select, segment):
        store.finish_job(job)
    forget_finished(store, 7)  # the newest of each side stays shown
    snapshot = progress.snapshot()["7"]
    assert snapshot["stage"] == "round 2 open" and snapshot["background"]["segment"]["done"] == 30


def test_a_segmentation_in_batches_is_paced_from_its_first_batch(open_store):
    """The segmentation runs as a chain of jobs of 50 tasks each: its ETA is the pace since the first
    (10,000 tasks at N = 10,000 showed "2901/10000, ETA 0 s", the newest batch's few seconds)."""
    progress = Progress(open_store())
    store = progress.store
    work = ("segmentation by p7-head-1", 100)
    first = store.add_job(7, "segment")
    store.start_job(first)
    with job_scope(first):
        progress.update(7, "segmenting tasks with p7-head-1", 50, 100, work=work)
    store.finish_job(first)
    time.sleep(1.0)
    second = store.add_job(7, "segment")
    store.start_job(second)
    with job_scope(second):
        progress.update(7, "segmenting tasks with p7-head-1", 60, 100, work=work)
    seen = progress.snapshot()["7"]["background"]["segment"]
    assert (seen["done"], seen["total"]) == (60, 100)
    assert seen["eta_s"] >= 1.0 * 40 / 60  # paced over both jobs: at least 1 s for 60, so 40 more take 0.67 s+


def test_a_count_that_does_not_move_is_logged_once(open_store, caplog):
    """A select job steps through 10,000 cached records while the round's count stays where the
    records jobs left it: it logged "round 0: local 10000/10001" 10,000 times."""
    caplog.set_level(logging.INFO, "ml_backend.jobs.progress")
    progress = Progress(open_store())
    store = progress.store
    work = ("round 0", 11)
    records, select = store.add_job(7, "records"), store.add_job(7, "select")
    store.start_job(records)
    with job_scope(records):
        progress.update(7, "round 0: features and local herding", 10, 10, work=work, work_done=10)
    store.start_job(select)
    with job_scope(select):
        for n in range(1, 101):
            progress.update(7, "round 0: local", n, 100, work=work)
    logged = [r.getMessage() for r in caplog.records if "round 0: local " in r.getMessage()]
    assert len(logged) == 1 and logged[0].startswith("project 7: round 0: local 10/11")


def test_a_model_loop_reports_each_hundredth_and_every_tenth_is_logged(open_store, caplog):
    """At 10,000 images the select job's pass over cached records made 10,000 updates, each reading
    every job's progress: 28 s of a round (1,250 records jobs)."""
    caplog.set_level(logging.INFO, "ml_backend.jobs.progress")
    progress = Progress(open_store())
    store = progress.store
    writes = []
    set_progress = store.set_progress
    store.set_progress = lambda *a, **k: (writes.append(a[3]), set_progress(*a, **k))
    select = store.add_job(7, "select")
    store.start_job(select)
    report = progress.reporter(7, "round 1:")
    with job_scope(select):
        for n in range(1, 10_001):
            report("local", n, 10_000)
    assert len(writes) == 101 and writes[0] == 1 and writes[-1] == 10_000  # the first, each hundredth, the last
    assert progress.snapshot()["7"]["done"] == 10_000
    logged = [r.getMessage() for r in caplog.records if "round 1: local" in r.getMessage()]
    assert [m.split()[5].rstrip(",") for m in logged] == ["1/10000"] + [f"{k * 1000}/10000" for k in range(1, 11)]


def test_an_update_reads_its_works_count_in_one_row_whatever_its_jobs(open_store, caplog):
    """30 records jobs share a round's work of 60 images: each update reads one summed row, not every
    job's progress (1,250 rows an update at 10,000 images: 2.5 ms against 0.2 ms)."""
    caplog.set_level(logging.INFO, "ml_backend.jobs.progress")
    progress = Progress(open_store())
    store = progress.store
    jobs = [store.add_job(7, "records") for _ in range(30)]
    for job in jobs[:-1]:
        store.start_job(job)
        with job_scope(job):
            progress.update(7, STAGE, 2, 2, work=("round 3", 60), work_done=2)
    store.start_job(jobs[-1])
    store.progress = None  # every job's rows: not read by an update
    with job_scope(jobs[-1]):
        progress.update(7, STAGE, 1, 2, work=("round 3", 60), work_done=1)
        progress.update(7, STAGE, 2, 2, work_done=2)
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"project 7: {STAGE}")]
    assert logged[-1] == f"project 7: {STAGE} 60/60" and any(m.startswith(f"project 7: {STAGE} 59/60, ETA") for m in logged)
