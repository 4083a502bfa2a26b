import pytest

from ml_backend.store import Label, Store, parse_timestamp


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "state.sqlite3")
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


def test_heads_swap_atomically_and_jobs_survive_a_restart(tmp_path):
    s = Store(tmp_path / "s.db")
    s.add_head(1, "head-1", 0, "/h1", 3, {})
    s.add_head(1, "head-2", 1, "/h2", 9, {})
    assert s.current_head(1)["version"] == "head-2" and [h["version"] for h in s.heads(1)] == ["head-1", "head-2"]
    job = s.add_job(1, "advance")
    s.start_job(job)
    again = Store(tmp_path / "s.db")  # a new process
    assert [j["id"] for j in again.interrupted_jobs()] == [job]
    again.finish_job(job)
    assert again.interrupted_jobs() == []


def test_a_pin_wins_over_a_head_whose_training_started_before_it(tmp_path):
    """Issue 25: a head that finishes training after a pin made while it trained is kept, not made
    current; a training that starts after the pin makes its head current as before."""
    s = Store(tmp_path / "s.db")
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
