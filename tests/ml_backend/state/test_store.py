"""The store, on both databases: every test that takes `store_location`, `open_store` or `store` runs
on a SQLite file and on a fresh database of a real PostgreSQL server (tests/conftest.py)."""

from contextlib import closing

import pytest

from ml_backend.state.store import Label, Store
from ml_backend.state.timestamps import parse_timestamp


@pytest.fixture
def store(open_store):
    s = open_store()
    s.upsert_tasks(1, [(10, "/a.png"), (11, "/b.png")])
    return s


def store_written_before(tmp_path, create: str, insert: str) -> Store:
    """A store whose file holds one table as an earlier version wrote it, opened by today's code."""
    import sqlite3

    with sqlite3.connect(tmp_path / "old.sqlite3") as db:
        db.execute(create)
        db.execute(insert)
    return Store(tmp_path / "old.sqlite3")


def pixels(store, project=1):
    return sorted((r["task"], r["pixel"], r["class"]) for r in store.labels(project))


def test_newer_version_replaces_older_and_stale_or_repeated_ones_change_nothing(store):
    v1 = [Label(10, "a", 5, 1, "keypoint")]
    v2 = [Label(10, "a", 6, 2, "keypoint")]
    assert store.apply_annotation(1, 100, 10, "2026-01-01T00:00:01Z", [], v1) == "applied"
    assert store.apply_annotation(1, 100, 10, "2026-01-01T00:00:02Z", [], v2) == "applied"
    assert store.apply_annotation(1, 100, 10, "2026-01-01T00:00:01Z", [], v1) == "stale"
    assert store.apply_annotation(1, 100, 10, "2026-01-01T00:00:02Z", [], v2) == "applied"  # repeat: same result
    assert pixels(store) == [(10, 6, 2)]


def test_deleted_annotations_stay_deleted(store):
    store.apply_annotation(1, 100, 10, "2026-01-01T00:00:01Z", [], [Label(10, "a", 5, 1, "keypoint")])
    store.delete_annotations(1, [100])
    assert pixels(store) == []
    assert store.apply_annotation(1, 100, 10, "2026-01-01T00:00:09Z", [], [Label(10, "a", 5, 1, "keypoint")]) == "deleted"
    store.delete_annotations(1, [200])  # deletion before creation (out of order)
    assert store.apply_annotation(1, 200, 11, "2026-01-01T00:00:01Z", [], [Label(11, "b", 1, 0, "keypoint")]) == "deleted"
    assert pixels(store) == []


def test_deleted_tasks_drop_out_of_the_labeled_set_but_keep_their_rows(store):
    store.apply_annotation(1, 100, 10, "2026-01-01T00:00:01Z", [], [Label(10, "a", 5, 1, "keypoint")])
    store.apply_annotation(1, 101, 11, "2026-01-01T00:00:01Z", [], [Label(11, "a", 7, 2, "keypoint")])
    store.delete_tasks(1, [10])
    assert pixels(store) == [(11, 7, 2)] and [t["task"] for t in store.tasks(1)] == [11]


def test_queries_are_answered_dismissed_or_open(store):
    """Answers arrive on query tasks (holders 100, 101, 102) and label the image tasks 10 and 11."""
    store.save_round(1, 0, None, [
        {"task": 10, "pixel": 5, "rank": 0, "region": "q0-10-5"},
        {"task": 10, "pixel": 9, "rank": 1, "region": "q0-10-9"},
        {"task": 11, "pixel": 3, "rank": 2, "region": "q0-11-3"}])
    assert store.round_progress(1, 0) == {"open": 3, "answered": 0, "dismissed": 0}
    assert len(store.unplaced_queries(1, 0)) == 3  # on no query task yet
    store.place_queries(1, 0, 10, [5, 9], holder=100)
    store.place_queries(1, 0, 11, [3], holder=101)
    store.open_round(1, 0)
    assert store.unplaced_queries(1, 0) == []
    # one point labeled, the other deleted by the annotator
    store.apply_annotation(1, 500, 10, "2026-01-01T00:00:01Z", [], [Label(10, "q0-10-5", 5, 1, "keypoint")],
                           holder=100)
    assert {(q["task"], q["pixel"]): q["status"] for q in store.queries(1, 0)} == {
        (10, 5): "answered", (10, 9): "dismissed", (11, 3): "open"}
    # submitted with the placeholder still on the point: open, and its query task is used up
    store.apply_annotation(1, 501, 11, "2026-01-01T00:00:01Z", [], [], holder=101, pending=["q0-11-3"])
    assert store.round_progress(1, 0)["open"] == 1 and [q["pixel"] for q in store.unplaced_queries(1, 0)] == [3]
    store.place_queries(1, 0, 11, [3], holder=102)  # a fresh query task
    assert store.unplaced_queries(1, 0) == [] and store.round_progress(1, 0)["open"] == 1
    store.apply_annotation(1, 502, 11, "2026-01-01T00:00:02Z", [], [], holder=102, cancelled=True)  # skipped
    assert store.round_progress(1, 0) == {"open": 0, "answered": 1, "dismissed": 2}
    store.delete_annotations(1, [502])  # the skip deleted: open again, on a query task Label Studio serves again
    assert store.round_progress(1, 0)["open"] == 1 and store.unplaced_queries(1, 0) == []
    # an answer whose point was moved still answers its query (matched by region id)
    store.apply_annotation(1, 503, 11, "2026-01-01T00:00:03Z", [], [Label(11, "q0-11-3", 4, 0, "keypoint")],
                           holder=102)
    assert store.round_progress(1, 0) == {"open": 0, "answered": 2, "dismissed": 1}
    store.delete_annotations(1, [500])  # deleting the answer reopens both queries of task 10's query task
    assert store.round_progress(1, 0)["open"] == 2
    assert store.query_task(1, 100) is None  # add_query_task records holders; place_queries alone does not
    store.add_query_task(1, 102, 0, 11, "p1-r0-t11-1")
    assert store.query_task(1, 102)["task"] == 11 and store.query_task(1, 11) is None


def test_heads_swap_atomically_and_jobs_survive_a_restart(store, open_store):
    s = store
    s.add_head(1, "head-1", 0, "/h1", 3, {})
    s.add_head(1, "head-2", 1, "/h2", 9, {})
    assert s.current_head(1)["version"] == "head-2" and [h["version"] for h in s.heads(1)] == ["head-1", "head-2"]
    job = s.add_job(1, "advance")
    s.start_job(job)
    again = open_store()  # a new process
    assert [j["id"] for j in again.interrupted_jobs()] == [job]
    again.finish_job(job)
    assert again.interrupted_jobs() == []


def test_a_pin_wins_over_a_head_whose_training_started_before_it(store):
    """Issue 25: a head that finishes training after a pin made while it trained is kept, not made
    current; a training that starts after the pin makes its head current as before."""
    s = store
    s.add_head(1, "head-1", 0, "/h1", 3, {})
    s.add_head(1, "head-2", 1, "/h2", 9, {})
    assert s.latest_pin(1) is None
    s.pin_head(1, "head-1")
    pinned_at = s.latest_pin(1)["pinned_at"]
    assert s.latest_pin(1) == {"version": "head-1", "pinned_at": pinned_at}
    assert s.add_head(1, "head-3", 2, "/h3", 12, {}, started=pinned_at - 1) is False
    assert s.current_head(1)["version"] == "head-1"
    assert [(h["version"], h["current"]) for h in s.heads(1)] == [("head-1", 1), ("head-2", 0), ("head-3", 0)]
    assert s.add_head(1, "head-4", 2, "/h4", 12, {}, started=pinned_at + 1) is True
    assert s.current_head(1)["version"] == "head-4" and s.latest_pin(1)["version"] == "head-1"


def test_an_old_store_gains_the_pin_time_of_its_heads(tmp_path):
    s = store_written_before(  # the heads table as it was before pinned_at
        tmp_path, "CREATE TABLE heads (project INTEGER NOT NULL, version TEXT NOT NULL, round INTEGER NOT NULL, "
        "path TEXT NOT NULL, labeled INTEGER NOT NULL, report TEXT NOT NULL, created REAL NOT NULL, "
        "current INTEGER NOT NULL DEFAULT 0, labels_digest TEXT, features TEXT, PRIMARY KEY (project, version))",
        "INSERT INTO heads VALUES (1, 'head-1', 0, '/h1', 3, '{}', 1.0, 1, 'abc', NULL)")
    assert s.current_head(1)["pinned_at"] is None and s.latest_pin(1) is None
    assert s.add_head(1, "head-2", 1, "/h2", 9, {}, started=2.0)  # never pinned: the new head is current
    assert s.pin_head(1, "head-1") and s.latest_pin(1)["version"] == "head-1"


def test_heads_remember_the_labels_they_saw_and_old_stores_gain_the_column(tmp_path):
    s = store_written_before(  # the heads table as it was before labels_digest
        tmp_path, "CREATE TABLE heads (project INTEGER NOT NULL, version TEXT NOT NULL, round INTEGER NOT NULL, "
        "path TEXT NOT NULL, labeled INTEGER NOT NULL, report TEXT NOT NULL, created REAL NOT NULL, "
        "current INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (project, version))",
        "INSERT INTO heads VALUES (1, 'head-1', 0, '/h1', 3, '{}', 1.0, 1)")
    assert s.current_head(1)["labels_digest"] is None
    s.add_head(1, "head-2", 1, "/h2", 9, {}, "abc123")
    assert s.current_head(1)["labels_digest"] == "abc123"


def test_every_other_write_reads_back_the_same_on_both_databases(store):
    """The methods no other test here covers, each written twice where a second write replaces the first."""
    store.save_project(1, "<View/>", {"classes": ["a"]})
    store.save_project(1, "<View2/>", {"classes": ["a", "b"]})
    assert store.project(1)["schema"] == {"classes": ["a", "b"]} and store.projects() == [1]
    assert store.set_overrides(1, {"BUDGET": 3}) and not store.set_overrides(1, {"BUDGET": 3})
    assert store.overrides(1) == {"BUDGET": 3} and store.project(1)["overrides"] == {"BUDGET": 3}
    assert store.save_credentials(1, "http://a", "t1") and not store.save_credentials(1, "http://a", "t1")
    assert store.save_credentials(1, "http://b", "t2") and store.credentials(1) == ("http://b", "t2")
    store.set_task_image(1, 10, 64, 48, "ready", digest="d")
    store.set_task_image(1, 11, None, None, "failed", "HTTP 404")
    assert [(t["task"], t["width"], t["digest"]) for t in store.tasks(1, "ready")] == [(10, 64, "d")]
    assert store.task(1, 11)["error"] == "HTTP 404" and store.upsert_tasks(1, [(11, "/c.png"), (12, "/d.png")]) == 1
    assert store.task(1, 11)["status"] == "pending"  # a new address: fetched again
    store.mark_reconciled(1, 90, "t1")
    store.mark_reconciled(1, 90, "t2")
    assert store.reconciled(1) == {90: "t2"}
    store.save_round(1, 0, None, [{"task": 10, "pixel": 5, "rank": 0, "region": "q0", "score": 0.5}], {"BUDGET": 3})
    store.save_round(1, 0, "p1-head-1", [{"task": 10, "pixel": 6, "rank": 0, "region": "q0"}], {"BUDGET": 4})
    store.place_queries(1, 0, 10, [6], holder=90)
    store.apply_annotation(1, 100, 10, "2026-01-01T00:00:01Z", [], [Label(10, "q0", 6, 1, "keypoint")], holder=90)
    assert store.queried_pixels(1) == {10: [6]} and store.annotation_count(1) == 1
    assert [(r["pixel"], r["class"]) for r in store.held_labels(1, 90)] == [(6, 1)]
    store.complete_round(1, 0, "closed")
    assert store.current_round(1)["status"] == "closed" and store.rounds(1)[0]["settings"] == {"BUDGET": 4}
    metrics = {"answered": 1, "dismissed": 0, "unanswered": 0, "point_agreement": 0.5, "point_pixels": 2,
               "region_agreement": None, "region_pixels": 0, "last_answer": 2.5}
    store.save_round_metrics(1, 0, metrics)
    store.save_round_metrics(1, 0, {**metrics, "point_agreement": 0.75})
    assert store.round_metrics(1)[0]["point_agreement"] == 0.75
    assert store.segmented_tasks(1, "p1-head-1") == set()
    store.mark_segmentation(1, 10, "p1-head-1", 2 ** 40)  # ids beyond 32 bits
    store.mark_segmentation(1, 11, "p1-head-1", 0)  # imported in bulk
    assert store.segmented_tasks(1, "p1-head-1") == {10, 11} and store.segmented_tasks(1, "p1-head-2") == set()
    failed, other = store.add_job(1, "segment", {"n": 1}), store.add_job(1, "sync")
    store.finish_job(failed, "NoCredentials: none")
    store.finish_job(other, "ValueError: no")
    assert [j["id"] for j in store.failed_for_credentials(1, ["NoCredentials"])] == [failed]
    store.mark_rerun(failed, 99)
    assert store.job(failed)["status"] == "rerun" and store.job(failed)["error"].endswith("(run again as job 99)")
    assert store.job(failed)["payload"] == {"n": 1} and [j["id"] for j in store.recent_jobs(1)] == [other]


def test_timestamps_are_normalised():
    assert parse_timestamp("2026-11-24T22:10:00.5+01:00") == "2026-11-24T21:10:00.500000Z"
    assert parse_timestamp("2026-11-24T22:10:00Z") < parse_timestamp("2026-11-24T22:10:00.000001Z")
    assert parse_timestamp(None) == parse_timestamp("") == ""  # undated: before every dated version
    for bad in ("garbage", "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"):  # the last two overflow in UTC
        with pytest.raises(ValueError):
            parse_timestamp(bad)


def test_versions_are_ordered_by_label_studio_timestamps_never_by_arrival(store):
    first = [Label(10, "a", 5, 1, "keypoint")]
    assert store.apply_annotation(1, 100, 10, None, [], first) == "applied"  # a CREATED without updated_at
    # an UPDATED stamped long before it arrives still replaces the undated version
    assert store.apply_annotation(1, 100, 10, "2020-01-01T00:00:00Z", [], [Label(10, "a", 6, 2, "keypoint")]) == "applied"
    assert store.apply_annotation(1, 100, 10, None, [], first) == "stale"  # undated never replaces dated
    assert pixels(store) == [(10, 6, 2)]
    # two annotations on one pixel at the same time: the higher annotation id counts as the newer
    store.apply_annotation(1, 202, 11, "2026-01-01T00:00:00Z", [], [Label(11, "b", 3, 4, "keypoint")])
    store.apply_annotation(1, 201, 11, "2026-01-01T00:00:00Z", [], [Label(11, "b", 3, 7, "keypoint")])
    assert [r["annotation"] for r in store.labels(1) if r["task"] == 11] == [201, 202]


def test_labels_record_the_round_they_answer_and_old_stores_gain_the_column(store, tmp_path):
    store.apply_annotation(1, 100, 10, "2026-01-01T00:00:01Z", [], [Label(10, "a", 5, 1, "brush")])
    store.save_round(1, 0, None, [{"task": 11, "pixel": 7, "rank": 0, "region": "q0"}])
    store.apply_annotation(1, 101, 11, "2026-01-01T00:00:01Z", [], [Label(11, "q0", 7, 2, "keypoint")])
    store.place_queries(1, 0, 11, [7], holder=99)  # round 0 reaches Label Studio
    store.apply_annotation(1, 102, 11, "2026-01-01T00:00:02Z", [], [Label(11, "q0", 7, 2, "keypoint")])
    assert {r["annotation"]: r["round"] for r in store.labels(1)} == {100: None, 101: None, 102: 0}

    migrated = store_written_before(  # the labels table as it was before the round column
        tmp_path, "CREATE TABLE labels (project INTEGER NOT NULL, task INTEGER NOT NULL, annotation INTEGER NOT NULL, "
        "region TEXT NOT NULL, pixel INTEGER NOT NULL, class INTEGER NOT NULL, source TEXT NOT NULL, "
        "PRIMARY KEY (project, annotation, region, pixel))", "INSERT INTO labels VALUES (1, 10, 100, 'a', 5, 1, 'keypoint')")
    migrated.apply_annotation(1, 100, 10, "2026-01-01T00:00:01Z", [], [Label(10, "a", 5, 1, "keypoint")])
    assert [(r["pixel"], r["round"]) for r in migrated.labels(1)] == [(5, None)]


def test_a_query_remembers_when_it_stopped_being_open(store):
    """The learning curve's last answer: set when a query is answered or dismissed, cleared when the
    answer is deleted, set again by the next answer."""
    store.save_round(1, 0, None, [{"task": 10, "pixel": 5, "rank": 0, "region": "q0-10-5"}])
    store.open_round(1, 0)
    assert store.last_closed(1, 0) is None
    store.apply_annotation(1, 100, 10, "2026-01-01T00:00:01Z", [], [Label(10, "q0-10-5", 5, 1, "keypoint")])
    answered = store.last_closed(1, 0)
    assert answered is not None and store.round_progress(1, 0)["answered"] == 1
    store.apply_annotation(1, 100, 10, "2026-01-01T00:00:02Z", [], [Label(10, "q0-10-5", 5, 2, "keypoint")])
    assert store.last_closed(1, 0) == answered  # still answered: the time it first was
    store.delete_annotations(1, [100])
    assert store.last_closed(1, 0) is None and store.round_progress(1, 0)["open"] == 1
    store.apply_annotation(1, 101, 10, "2026-01-01T00:00:03Z", [], [Label(10, "q0-10-5", 5, 2, "keypoint")])
    assert store.last_closed(1, 0) > answered
    assert [(a["pixel"], a["class"]) for a in store.answers(1, 0)] == [(5, 2)]


# The tables as the store wrote them before numbered migrations (ml_backend/state/store.py's SCHEMA up to issue
# 25, verbatim): the file an existing deployment has in MODEL_DIR.
UNVERSIONED_SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    project INTEGER PRIMARY KEY, label_config TEXT NOT NULL, schema TEXT NOT NULL, updated REAL NOT NULL,
    overrides TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS tasks (
    project INTEGER NOT NULL, task INTEGER NOT NULL, image_url TEXT NOT NULL,
    width INTEGER, height INTEGER, status TEXT NOT NULL DEFAULT 'pending', error TEXT, digest TEXT,
    deleted INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (project, task));
CREATE TABLE IF NOT EXISTS annotations (
    project INTEGER NOT NULL, annotation INTEGER NOT NULL, task INTEGER NOT NULL,
    updated_at TEXT NOT NULL, received REAL NOT NULL, deleted INTEGER NOT NULL DEFAULT 0,
    result TEXT NOT NULL, holder INTEGER, pending TEXT NOT NULL DEFAULT '[]', cancelled INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (project, annotation));
CREATE TABLE IF NOT EXISTS labels (
    project INTEGER NOT NULL, task INTEGER NOT NULL, annotation INTEGER NOT NULL, region TEXT NOT NULL,
    pixel INTEGER NOT NULL, class INTEGER NOT NULL, source TEXT NOT NULL, round INTEGER,
    PRIMARY KEY (project, annotation, region, pixel));
CREATE INDEX IF NOT EXISTS labels_by_task ON labels (project, task);
CREATE TABLE IF NOT EXISTS rounds (
    project INTEGER NOT NULL, round INTEGER NOT NULL, status TEXT NOT NULL, head_version TEXT,
    created REAL NOT NULL, pushed REAL, settings TEXT, PRIMARY KEY (project, round));
CREATE TABLE IF NOT EXISTS queries (
    project INTEGER NOT NULL, round INTEGER NOT NULL, task INTEGER NOT NULL, pixel INTEGER NOT NULL,
    rank INTEGER NOT NULL, score REAL, suggested INTEGER, region TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open', holder INTEGER, closed REAL, PRIMARY KEY (project, round, task, pixel));
CREATE TABLE IF NOT EXISTS round_metrics (
    project INTEGER NOT NULL, round INTEGER NOT NULL, answered INTEGER NOT NULL, dismissed INTEGER NOT NULL,
    unanswered INTEGER NOT NULL, point_agreement REAL, point_pixels INTEGER NOT NULL, region_agreement REAL,
    region_pixels INTEGER NOT NULL, last_answer REAL, recorded REAL NOT NULL, PRIMARY KEY (project, round));
CREATE TABLE IF NOT EXISTS query_tasks (
    project INTEGER NOT NULL, holder INTEGER NOT NULL, round INTEGER NOT NULL, task INTEGER NOT NULL,
    key TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (project, holder));
CREATE TABLE IF NOT EXISTS segmentations (
    project INTEGER NOT NULL, task INTEGER NOT NULL, version TEXT NOT NULL, prediction INTEGER,
    PRIMARY KEY (project, task, version));
CREATE TABLE IF NOT EXISTS heads (
    project INTEGER NOT NULL, version TEXT NOT NULL, round INTEGER NOT NULL, path TEXT NOT NULL,
    labeled INTEGER NOT NULL, report TEXT NOT NULL, created REAL NOT NULL, current INTEGER NOT NULL DEFAULT 0,
    labels_digest TEXT, features TEXT, pinned_at REAL, PRIMARY KEY (project, version));
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, project INTEGER NOT NULL, kind TEXT NOT NULL, payload TEXT,
    status TEXT NOT NULL, error TEXT, created REAL NOT NULL, started REAL, finished REAL);
CREATE TABLE IF NOT EXISTS progress (
    project INTEGER NOT NULL, job INTEGER NOT NULL, stage TEXT NOT NULL, done INTEGER, total INTEGER, message TEXT,
    work TEXT, work_total INTEGER, started REAL, updated REAL NOT NULL, work_done INTEGER, PRIMARY KEY (project, job));
CREATE TABLE IF NOT EXISTS credentials (
    project INTEGER PRIMARY KEY, url TEXT NOT NULL, token TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS reconciled (
    project INTEGER NOT NULL, task INTEGER NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (project, task));
"""
UNVERSIONED_ROWS = {  # one row in each of its tables
    "projects": (7, "<View/>", '{"classes": ["a", "b"]}', 1.5, '{"BUDGET": 3}'),
    "tasks": (7, 10, "/a.png", 64, 48, "ready", None, "d1", 0),
    "annotations": (7, 100, 10, "2026-01-01T00:00:02.000000Z", 2.5, 0, "[]", 90, "[]", 0),
    "labels": (7, 10, 100, "q0-10-5", 5, 1, "keypoint", 0),
    "rounds": (7, 0, "open", "p7-head-1", 3.0, 3.5, '{"BUDGET": 3}'),
    "queries": (7, 0, 10, 5, 0, 0.25, 1, "q0-10-5", "answered", 90, 4.0),
    "round_metrics": (7, 0, 1, 0, 0, 1.0, 1, None, 0, 4.0, 4.5),
    "query_tasks": (7, 90, 0, 10, "p7-r0-t10-1", 3.2),
    "segmentations": (7, 10, "p7-head-1", 555),
    "heads": (7, "p7-head-1", 0, "/h1", 1, '{"loss": 0.5}', 2.0, 1, "abc", '{"blocks": [5]}', 2.2),
    "jobs": (41, 7, "train", None, "done", None, 1.0, 1.1, 1.2),
    "progress": (7, 41, "training", 1, 2, "half", "round 0", 9, 1.0, 1.1, 4),
    "credentials": (7, "http://ls:8080", "secret-token", 1.0),
    "reconciled": (7, 90, "2026-01-01T00:00:03.000000Z"),
}


def test_a_store_written_before_numbered_migrations_opens_with_every_row(tmp_path):
    """A SQLite file written by the code before numbered migrations: opening it records migration 1
    and changes no row; it serves and takes writes as any store does, and opens again as it is."""
    import sqlite3

    from ml_backend.state.schema import MIGRATIONS

    path = tmp_path / "state.sqlite3"
    with closing(sqlite3.connect(path)) as db, db:
        db.executescript(UNVERSIONED_SCHEMA)
        for table, row in UNVERSIONED_ROWS.items():
            db.execute(f"INSERT INTO {table} VALUES ({','.join('?' * len(row))})", row)
    for _ in range(2):
        with closing(Store(path)) as store:
            assert {t: [tuple(r.values()) for r in store._all(f"SELECT * FROM {t}")] for t in UNVERSIONED_ROWS} == {
                t: [row] for t, row in UNVERSIONED_ROWS.items()}
            assert [r["version"] for r in store._all("SELECT version FROM schema_version")] == [len(MIGRATIONS)] == [1]
    with closing(Store(path)) as store:
        assert store.credentials(7) == ("http://ls:8080", "secret-token") and store.overrides(7) == {"BUDGET": 3}
        assert store.current_head(7)["features"] == {"blocks": [5]} and store.latest_pin(7)["pinned_at"] == 2.2
        assert store.apply_annotation(7, 100, 10, "2026-01-01T00:00:01Z", [], []) == "stale"
        assert store.round_progress(7, 0)["answered"] == 1 and store.add_job(7, "sync") == 42


def test_processes_that_open_a_new_store_at_once_migrate_it_once(open_store):
    import threading

    barrier, opened, errors = threading.Barrier(4), [], []

    def start():
        try:
            barrier.wait(timeout=60)
            opened.append(open_store())
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(barrier.parties)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(opened) == barrier.parties
    assert [r["version"] for r in opened[0]._all("SELECT version FROM schema_version")] == [1]


def test_a_database_a_newer_backend_migrated_is_refused(store, store_location):
    from ml_backend.state.schema import NewerDatabase

    with store.database.transaction() as db:
        db.execute("INSERT INTO schema_version (version, applied) VALUES (99, 0)")
    with pytest.raises(NewerDatabase, match="version 99"):
        Store(store_location)


def test_writers_at_once_end_where_writers_one_after_another_do(open_store):
    """Four writers with connections of their own, as in four processes, take each annotation at the
    same moment: three apply its versions 1, 2, 3 in three orders, one deletes every third annotation;
    then all four ask for the project's singleton job. One after another, in any order, they end with
    every third annotation deleted (no pixels), the others at version 3 (its pixel only), and one
    job; at once they must end the same (without the project's lock on PostgreSQL they did not, in
    six runs of six)."""
    import threading

    n = 150

    def apply(s, a, versions):
        for v in versions:
            s.apply_annotation(1, a, 10, f"2026-01-01T00:00:0{v}Z", [], [Label(10, f"r{a}", 100 * a + v, v, "keypoint")])

    def delete(s, a):
        if a % 3 == 0:
            s.delete_annotations(1, [a])

    writers = [lambda s, a: apply(s, a, (1, 2, 3)), lambda s, a: apply(s, a, (3, 2, 1)),
               lambda s, a: apply(s, a, (2, 3, 1)), delete]
    barrier, errors, jobs = threading.Barrier(len(writers)), [], []

    def run(write, s):
        try:
            for a in range(n):
                barrier.wait(timeout=60)
                write(s, a)
            barrier.wait(timeout=60)
            jobs.append(s.add_singleton_job(1, "train"))
        except Exception as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(w, open_store())) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    s = open_store()
    assert pixels(s) == sorted((10, 100 * a + 3, 3) for a in range(n) if a % 3)
    versions = s.annotation_versions(1)
    assert {a: v["deleted"] for a, v in versions.items()} == {a: int(a % 3 == 0) for a in range(n)}
    assert {v["updated_at"] for a, v in versions.items() if a % 3} == {"2026-01-01T00:00:03.000000Z"}
    assert sorted(new for _, new in jobs) == [False, False, False, True] and len({job for job, _ in jobs}) == 1
