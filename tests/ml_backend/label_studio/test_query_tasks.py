"""Query tasks without a Label Studio: the calls publish_round makes, in order, against a recording
stand-in (the real server is in test_label_studio_loop.py; what a stand-in adds here is a server
that refuses the backend's key, which the community edition never does)."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from ml_backend.config import Settings
from ml_backend.label_studio.label_config import SHIPPED_CONFIG, parse_label_config
from ml_backend.label_studio.client import LabelStudioRefused
from ml_backend.label_studio.query_tasks import publish_round, query_key, query_score
from ml_backend.services import Services
from tests.ml_backend.sdk_checks import assert_valid_result


class RecordingLabelStudio:
    """Answers like Label Studio and records every call; `refuse` makes project updates a 403."""

    def __init__(self, tasks: list[dict], refuse: bool = False):
        self.listed, self.calls, self.refuse, self.next_id = tasks, [], refuse, 100

    def tasks(self, project, resolve_uri=True, query=None):
        """Data Manager queries as publish_round sends them: a query key prefix, or chosen ids."""
        self.calls.append(("list", query is not None))
        if query is None:
            return self.listed
        if "selectedItems" in query:
            return [t for t in self.listed if t["id"] in query["selectedItems"]["included"]]
        (item,) = query["filters"]["items"]
        return [t for t in self.listed if item["value"] in t["data"].get("query_key", "")]

    def tasks_by_id(self, project, ids, resolve_uri=True):
        return self.tasks(project, resolve_uri, {"selectedItems": {"all": False, "included": ids}})

    def retire_task(self, task):
        self.calls.append(("retire", task))

    def create_query_task(self, project, data):
        self.next_id += 1
        self.calls.append(("create", self.next_id, data))
        return self.next_id

    def find_prediction(self, task, version):
        self.calls.append(("find", task))
        return None

    def create_prediction(self, task, result, version, score):
        assert_valid_result(SHIPPED_CONFIG.read_text(), result)
        self.calls.append(("predict", task, [r["value"]["keypointlabels"] for r in result], version, score))
        return 1

    def prepare_queue(self, project, version, round_key):
        if self.refuse:
            raise LabelStudioRefused("forbidden", 403)
        self.calls.append(("prepare", version, round_key))
        return 1

    def post_notice(self, project, status):
        self.calls.append(("notice", status))

    def release_task(self, task, overlap):
        self.calls.append(("release", task))


@pytest.fixture
def services(tmp_path):
    services = Services.create(Settings(model_dir=tmp_path, backbone="tiny", resolution=64))
    config = SHIPPED_CONFIG.read_text()
    services.store.save_project(1, config, asdict(parse_label_config(config)))
    services.store.upsert_tasks(1, [(10, "/data/upload/1/a.png"), (11, "/data/upload/1/b.png")])
    for task in (10, 11):
        services.store.set_task_image(1, task, 480, 360, "ready")
    services.store.save_round(1, 0, None, [
        {"task": 11, "pixel": 7, "rank": 0, "region": "q0-11-7"},
        {"task": 10, "pixel": 3, "rank": 1, "region": "q0-10-3"},
        {"task": 11, "pixel": 9, "rank": 2, "region": "q0-11-9"}])
    return services


def listed(task, **data):
    return {"id": task, "data": {"image": f"/data/upload/1/{task}.png", **data}, "is_labeled": False}


def test_a_round_leaves_the_queue_first_and_enters_it_last_most_informative_first(services):
    ls = RecordingLabelStudio([listed(10), listed(11)])
    services.client = lambda project: ls
    publish_round(services, 1, 0)
    kinds = [c[0] for c in ls.calls]
    # query tasks made with their points, the project's version, then into the queue (image tasks left
    # it when a sync saw them); Label Studio is asked for the round's query tasks and the images only
    assert kinds == ["list", "list", "create", "predict", "create", "predict", "prepare", "release", "release",
                     "notice"]
    assert all(c[1] for c in ls.calls if c[0] == "list")  # never the whole project
    assert ("prepare", "p1-round-0", "p1-r0-t") in ls.calls  # the saved view: this round's query keys only
    assert ls.calls[-1] == ("notice", "round 0 is open: 3 points on 2 tasks. Press Label All Tasks.")
    creates = [c for c in ls.calls if c[0] == "create"]
    assert [c[2]["query_for_task"] for c in creates] == [11, 10]  # the image of the best query first
    assert creates[0][2]["query_points"] == 2 and creates[0][2]["query_key"] == query_key(1, 0, 11, 0)
    predicts = [c for c in ls.calls if c[0] == "predict"]
    assert [p[2] for p in predicts] == [[["Label me"], ["Label me"]], [["Label me"]]]  # never a class
    assert [p[4] for p in predicts] == [query_score(0, 3), query_score(1, 3)] == [0.0, 1 / 3]
    assert all(p[3] == "p1-round-0" for p in predicts)
    assert {q["holder"] for q in services.store.queries(1, 0)} == {101, 102}


def test_a_rerun_after_a_crash_reuses_the_query_tasks_it_made(services):
    made = listed(55, query_key=query_key(1, 0, 11, 0), query_round=0, query_for_task=11)
    ls = RecordingLabelStudio([listed(10), listed(11), made])
    services.client = lambda project: ls
    publish_round(services, 1, 0)
    assert [c[2]["query_for_task"] for c in ls.calls if c[0] == "create"] == [10]  # only the missing one
    assert ("find", 55) in ls.calls  # its prediction is looked for before one is made
    assert services.store.query_task(1, 55)["task"] == 11


def test_a_refused_key_says_what_to_change(services):
    ls = RecordingLabelStudio([listed(10), listed(11)], refuse=True)
    services.client = lambda project: ls
    with pytest.raises(RuntimeError, match="Uncertainty sampling"):
        publish_round(services, 1, 0)
    progress = services.progress.snapshot()["1"]
    assert progress["stage"] == "labeling queue not set up" and "p1-round-0" in progress["message"]
    assert not [c for c in ls.calls if c[0] == "release"]  # nothing entered the queue


def test_the_next_round_retires_the_last_rounds_query_tasks_and_only_them(services):
    ls = RecordingLabelStudio([listed(10), listed(11)])
    services.client = lambda project: ls
    publish_round(services, 1, 0)
    services.store.open_round(1, 0)
    round0 = sorted({q["holder"] for q in services.store.queries(1, 0)})
    services.store.complete_round(1, 0)
    services.store.save_round(1, 1, None, [{"task": 10, "pixel": 20, "rank": 0, "region": "q1-10-20"}])
    ls.calls.clear()
    publish_round(services, 1, 1)
    assert sorted(c[1] for c in ls.calls if c[0] == "retire") == round0  # not the image tasks 10 and 11
    assert [c[0] for c in ls.calls][:len(round0)] == ["retire"] * len(round0)  # before the new ones are made
