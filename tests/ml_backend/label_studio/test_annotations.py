"""Label Studio is the source of truth: what was annotated, changed, skipped or deleted while the
backend was not listening reaches the store, once, against a real Label Studio 1.23.2."""

from __future__ import annotations

import json
from dataclasses import asdict

import requests
from label_studio_sdk import LabelStudio

from ml_backend.web import payloads
from ml_backend.label_studio.annotations import reconcile, take_in
from ml_backend.config import Settings
from ml_backend.label_studio.label_config import SHIPPED_CONFIG, parse_label_config
from ml_backend.services import Services
from model.datasets import CAMVID_CLASSES
from tests.ml_backend.servers import start_backend, stop, wait_until
from tests.ml_backend.test_label_studio_loop import (B, BUDGET_FACTOR, N_IMAGES, answered_result, image_of,
                                                     import_camvid, metrics, model_version, predictions,
                                                     query_predictions, read_store, wait_for_open_round)
from tests.ml_backend.web.test_server import RecordingRunner, keypoint

CONFIG = SHIPPED_CONFIG.read_text()


def test_reconcile_takes_in_created_changed_deleted_and_vanished_annotations_once(ls, tmp_path):
    project = ls.api("POST", "/api/projects", json={"title": "reconcile", "label_config": CONFIG}).json()["id"]
    ls.api("POST", f"/api/projects/{project}/import", json=[{"image": f"http://127.0.0.1:9/{n}.png"} for n in "abc"])
    first, second, third = sorted(t["id"] for t in ls.api("GET", f"/api/tasks?project={project}").json()["tasks"])
    services = Services.create(Settings(model_dir=tmp_path, backbone="tiny", resolution=64, label_studio_url=ls.url,
                                        label_studio_api_key=ls.token))
    store, runner, schema = services.store, RecordingRunner(), parse_label_config(CONFIG)
    store.save_project(project, CONFIG, asdict(schema))
    client = services.client(project)

    def again() -> dict:
        return reconcile(services, runner, project, client.tasks(project))

    def classes() -> list[tuple[int, str]]:
        return sorted((r["task"], schema.classes[r["class"]]) for r in store.labels(project))

    assert again() == {"tasks_read": 0, "taken_in": 0, "deleted": 0}  # nothing annotated: nothing read
    made = ls.api("POST", f"/api/tasks/{first}/annotations/", json={"result": [keypoint("r1", 10, 20, "Sky")]}).json()
    assert again() == {"tasks_read": 1, "taken_in": 1, "deleted": 0}
    assert classes() == [(first, "Sky")]
    assert again() == {"tasks_read": 0, "taken_in": 0, "deleted": 0}  # unchanged since: not read again
    late = payloads.annotation(made, first)  # the webhook of that version, delivered late: nothing changes
    assert take_in(services, runner, project, [late], schema).outcomes == ["applied"] and classes() == [(first, "Sky")]

    ls.api("PATCH", f"/api/annotations/{made['id']}/", json={"result": [keypoint("r1", 10, 20, "Road")]})
    assert again() == {"tasks_read": 1, "taken_in": 1, "deleted": 0}  # a reviewer's correction
    assert classes() == [(first, "Road")]

    heard = ls.api("POST", f"/api/tasks/{second}/annotations/", json={"result": [keypoint("r2", 50, 50, "Car")]}).json()
    take_in(services, runner, project, [payloads.annotation(heard, second)], schema)  # its webhook came
    ls.api("DELETE", f"/api/annotations/{heard['id']}/")  # its deletion's did not
    skipped = ls.api("POST", f"/api/tasks/{third}/annotations/", json={"result": [], "was_cancelled": True}).json()
    assert again() == {"tasks_read": 2, "taken_in": 1, "deleted": 1}
    assert classes() == [(first, "Road")]
    assert store.annotation_versions(project)[skipped["id"]]["deleted"] == 0  # the skip is kept, as a skip
    assert store.annotation_versions(project)[heard["id"]]["deleted"] == 1  # a tombstone: a late webhook cannot revive it
    assert take_in(services, runner, project, [payloads.annotation(heard, second)], schema).outcomes == ["deleted"]

    ls.api("DELETE", f"/api/tasks/{first}/")  # a task deleted in Label Studio takes its annotations along
    assert again()["deleted"] == 1 and classes() == []


def test_answers_given_while_the_backend_was_down_count_and_the_next_round_comes(ls, camvid_root, tmp_path):
    """The backend connected through Label Studio's dialog (its /setup gives the address and token: no
    LABEL_STUDIO_API_KEY) is stopped; the team answers round 0, corrects one answer and skips one query
    task; the backend starts again, with no call from Label Studio, and round 1 opens from all of it."""
    model_dir = tmp_path / "model"
    env = {"LABEL_STUDIO_URL": "", "LABEL_STUDIO_API_KEY": "", "BUDGET_FACTOR": str(BUDGET_FACTOR), "EXPANDER": "none"}
    backend = start_backend(model_dir, env)
    port = int(backend.url.rsplit(":", 1)[1])
    try:
        project = ls.api("POST", "/api/projects", json={"title": "downtime", "label_config": CONFIG}).json()["id"]
        names = import_camvid(ls, project, camvid_root, N_IMAGES)
        ls.api("POST", "/api/ml", json={"project": project, "url": backend.url, "title": "m", "is_interactive": False})
        wait_for_open_round(ls, backend, project, 0, f"p{project}-round-0")
        stop(backend.process)

        client = LabelStudio(base_url=ls.url, api_key=ls.token)
        round0 = query_predictions(ls, project, f"p{project}-round-0")
        assert len(round0) >= 2 and sum(len(p["result"]) for p in round0) == B
        skipped, answered = round0[-1], round0[:-1]
        given = {}
        for p in answered:
            result = answered_result(p["result"], names[image_of(ls, p["task"])], camvid_root)
            given[p["task"]] = (client.annotations.create(id=p["task"], result=result).id, result)
        client.annotations.create(id=skipped["task"], result=[], was_cancelled=True)
        corrected_task, (corrected, result) = next((t, g) for t, g in given.items() if g[1])
        relabeled = [{**r, "value": {**r["value"], "keypointlabels": ["Pole"]}} for r in result]
        client.annotations.update(id=corrected, result=relabeled)  # a reviewer's correction, while still down
        given[corrected_task] = (corrected, relabeled)

        backend = start_backend(model_dir, env, port)  # the same address Label Studio knows; nobody calls /setup
        wait_for_open_round(ls, backend, project, 1, f"p{project}-head-1")
        status = metrics(backend)["projects"][str(project)]
        store = read_store(model_dir)
        points = sum(len(r) for _, r in given.values())
        assert len(store.labels(project)) == points  # every answer counted, once
        assert {CAMVID_CLASSES[r["class"]] for r in store.labels(project) if r["annotation"] == corrected} == {"Pole"}
        first = status["rounds"][0]
        assert (first["answered"], first["dismissed"]) == (points, B - points)  # void points and the skip
        assert store.current_head(project)["version"] == f"p{project}-head-1"
        assert len(query_predictions(ls, project, f"p{project}-head-1")) >= 1
        images = wait_until(lambda: (p := [x for x in predictions(ls, project, f"p{project}-head-1")
                                           if x["task"] in names]) and len(p) == N_IMAGES and p,
                            300, "head-1's segmentation of every image, pushed with the stored credentials")
        assert {p["task"] for p in images} == set(names)
        assert model_version(ls, project) == f"p{project}-head-1"
        seen = backend.log.read_text() + json.dumps(metrics(backend)) + requests.get(backend.url + "/health").text
        assert ls.token not in seen  # the stored token is used, never shown
    finally:
        stop(backend.process)


def fill_the_disk(store) -> None:
    """What a full disk does to SQLite, injected: the file may not grow by one page, and the free room
    left in the annotations' pages is taken by rows of a project that does not exist (-1), down to a
    few bytes, so that storing an annotation needs a page it cannot get: "database or disk is full"."""
    import contextlib
    import sqlite3

    with store.database.lock:
        db, n = store.database.connection, 0
        db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()['page_count']}")
        for size in (2000, 500, 100, 20, 1):
            with contextlib.suppress(sqlite3.OperationalError):
                while True:
                    n += 1
                    db.execute("INSERT INTO annotations (project, annotation, task, updated_at, received, result) "
                               "VALUES (-1, ?, 0, '', 0, ?)", (n, "x" * size))


def test_answers_refused_on_a_full_disk_count_once_it_can_write_again(ls, camvid_root, tmp_path):
    """The store's disk fills up (SQLite's own "database or disk is full", injected with max_page_count):
    every annotation webhook of round 0 gets a 503 that says nothing is lost; once there is room,
    the periodic reconciliation takes them all in and round 1 opens, with nobody doing anything."""
    import threading

    from flask import request
    from werkzeug.serving import make_server

    from ml_backend.web.server import create_app
    from tests.ml_backend.servers import free_port

    settings = Settings(model_dir=tmp_path / "model", backbone="tiny", resolution=64, candidates=500, local_k=10,
                        budget_factor=BUDGET_FACTOR, expander="none", label_studio_url=ls.url,
                        label_studio_api_key=ls.token, reconcile_seconds=2)
    app = create_app(settings)
    answered_webhooks = []

    @app.after_request
    def record(response):
        if request.path == "/webhook" and "ANNOTATION" in (request.get_json(silent=True) or {}).get("action", ""):
            answered_webhooks.append((response.status_code, (response.get_json(silent=True) or {}).get("error", "")))
        return response

    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    backend = type("Backend", (), {"url": f"http://127.0.0.1:{port}"})
    store = app.config["backend"].services.store
    try:
        project = ls.api("POST", "/api/projects", json={"title": "full disk", "label_config": CONFIG}).json()["id"]
        names = import_camvid(ls, project, camvid_root, N_IMAGES)
        ls.api("POST", "/api/ml", json={"project": project, "url": backend.url, "title": "m", "is_interactive": False})
        wait_for_open_round(ls, backend, project, 0, f"p{project}-round-0")
        fill_the_disk(store)
        client = LabelStudio(base_url=ls.url, api_key=ls.token)
        points = 0
        for p in query_predictions(ls, project, f"p{project}-round-0"):
            result = answered_result(p["result"], names[image_of(ls, p["task"])], camvid_root)
            client.annotations.create(id=p["task"], result=result)
            points += len(result)
        wait_until(lambda: len(answered_webhooks) == len(query_predictions(ls, project, f"p{project}-round-0")), 60,
                   "Label Studio's webhooks of every answer")
        refused = [error for status, error in answered_webhooks if status == 503]
        assert refused and all("disk is full" in e and "Nothing is lost" in e for e in refused), answered_webhooks
        assert {status for status, _ in answered_webhooks} <= {201, 503}
        assert len(store.labels(project)) < points
        assert metrics(backend)["projects"][str(project)]["round_status"] == "open"

        with store.database.lock:  # room again
            store.database.connection.execute("PRAGMA max_page_count = 1073741823")
            store.database.connection.execute("DELETE FROM annotations WHERE project=-1")
        wait_for_open_round(ls, backend, project, 1, f"p{project}-head-1")
        assert len(store.labels(project)) == points  # every answer, once
    finally:
        server.shutdown()
        # the app's threads outlive the test: its reading back every 2 s went on syncing this project
        # against the session's Label Studio until the session ended, logging into closed streams
        app.config["backend"].reconcile.seconds = 3600
