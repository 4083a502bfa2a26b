"""The whole loop against a real Label Studio 1.23.2: connect, round 0, answers by webhook, retrain,
round 1, segmentation and interactive clicks. The backend runs the tiny backbone at 64x64."""

from __future__ import annotations

import time

import numpy as np
import pytest
import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

from ml_backend.label_config import SHIPPED_CONFIG
from ml_backend.label_studio import QUERY_VIEW_TITLE, LabelStudioClient
from model.datasets import CAMVID_CLASSES
from tests.ml_backend.servers import (ImageHost, drip, label_studio_server, redirect_to, send_bytes, start_backend, stop,
                                     wait_until)

N_IMAGES, BUDGET_FACTOR = 8, 0.5
B = round(N_IMAGES * BUDGET_FACTOR)


@pytest.fixture(scope="module")
def ls(tmp_path_factory):
    with label_studio_server(tmp_path_factory.mktemp("label-studio")) as server:
        yield server


def import_camvid(ls, project: int, root, count: int) -> dict[int, str]:
    names = sorted(p.name for p in (root / "val").glob("*.png"))[:count]
    files = [(f"file{i}", (n, open(root / "val" / n, "rb"), "image/png")) for i, n in enumerate(names)]
    ls.api("POST", f"/api/projects/{project}/import", files=files)
    tasks = ls.api("GET", f"/api/tasks?project={project}&page_size=100").json()["tasks"]
    # uploads are stored as "<prefix>-<original name>"
    return {t["id"]: t["data"]["image"].rsplit("/", 1)[1].split("-", 1)[1] for t in tasks}


def predictions(ls, project: int, version: str) -> list[dict]:
    return [p for p in ls.api("GET", f"/api/predictions/?project={project}").json() if p["model_version"] == version]


def keypoints(preds: list[dict]) -> list[tuple[int, float, float]]:
    return [(p["task"], r["value"]["x"], r["value"]["y"]) for p in preds for r in p["result"]
            if r["type"] == "keypointlabels"]


def answer_with_ground_truth(client: LabelStudio, preds: list[dict], names: dict[int, str], root) -> int:
    """Annotate like a careful annotator: the true class at each keypoint; void points are removed."""
    answered = 0
    for p in preds:
        truth = np.asarray(Image.open(root / "valannot" / names[p["task"]]))
        h, w = truth.shape
        result = []
        for r in p["result"]:
            v = r["value"]
            cls = int(truth[min(h - 1, int(v["y"] / 100 * h)), min(w - 1, int(v["x"] / 100 * w))])
            if cls == 11:
                continue
            result.append({**r, "value": {**v, "keypointlabels": [CAMVID_CLASSES[cls]]}})
            answered += 1
        client.annotations.create(id=p["task"], result=result)
    return answered


def test_active_learning_loop_with_real_label_studio(ls, camvid_root, tmp_path):
    backend = start_backend(tmp_path / "model", {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token,
                                                 "BUDGET_FACTOR": str(BUDGET_FACTOR)})
    try:
        config = SHIPPED_CONFIG.read_text()
        project = ls.api("POST", "/api/projects", json={"title": "eDALD loop", "label_config": config}).json()["id"]
        names = import_camvid(ls, project, camvid_root, N_IMAGES)
        ml = ls.api("POST", "/api/ml", json={"project": project, "url": backend.url, "title": "two-stage eDALD",
                                              "is_interactive": True}).json()

        round0 = wait_until(lambda: (p := predictions(ls, project, "round-0")) and len(keypoints(p)) == B and p,
                            300, "round-0 queries in Label Studio")
        points0 = keypoints(round0)
        assert len(set(points0)) == B and all(0 < x < 100 and 0 < y < 100 for _, x, y in points0)
        # the round is shown (model version, saved view) right after its predictions are pushed
        wait_until(lambda: ls.api("GET", f"/api/projects/{project}").json()["model_version"] == "round-0",
                   60, "project model version round-0")
        wait_until(lambda: any(v["data"].get("title") == QUERY_VIEW_TITLE
                               for v in ls.api("GET", f"/api/dm/views/?project={project}").json()),
                   60, "the saved view of open queries")

        client = LabelStudio(base_url=ls.url, api_key=ls.token)
        answered = answer_with_ground_truth(client, round0, names, camvid_root)

        round1 = wait_until(lambda: (p := predictions(ls, project, "round-1")) and len(keypoints(p)) == B and p,
                            300, "round-1 queries after retraining")
        points1 = keypoints(round1)
        assert len(set(points1)) == B and not set(points1) & set(points0)  # new pixels
        assert all(r["value"]["keypointlabels"] for p in round1 for r in p["result"])  # the head suggests classes
        assert "head-1" in requests.get(backend.url + "/versions", timeout=10).json()["versions"]
        status = requests.get(backend.url + "/metrics", timeout=10).json()["projects"][str(project)]
        assert status["annotations"] == len(round0) and status["labeled_pixels"] >= answered
        assert status["round"] == 1 and status["model_version"] == "head-1"

        # segmentation as Label Studio asks for it: RLE masks of the original image size
        task = ls.api("GET", f"/api/tasks/{round0[0]['task']}").json()
        r = requests.post(backend.url + "/predict", timeout=120, json={
            "tasks": [task], "project": f"{project}.0", "label_config": config, "params": {"context": None}})
        assert r.status_code == 200, r.text
        result = r.json()["results"][0]
        assert result["model_version"] == "head-1" and 0 < result["score"] <= 1
        covered = np.zeros((360, 480), dtype=int)
        for region in result["result"]:
            assert region["type"] == "brushlabels" and region["value"]["brushlabels"][0] in CAMVID_CLASSES
            assert (region["original_width"], region["original_height"]) == (480, 360)
            covered += decode_rle(region["value"]["rle"]).reshape(360, 480, 4)[:, :, 3] > 0
        assert (covered == 1).all()  # every pixel gets exactly one class

        # an interactive click through Label Studio comes back as a brush region (or nothing below tau)
        click = {"id": "c1", "from_name": "query", "to_name": "image", "type": "keypointlabels",
                 "original_width": 480, "original_height": 360, "image_rotation": 0,
                 "value": {"x": 50.0, "y": 85.0, "width": 0.6, "keypointlabels": ["Road"]}}
        data = ls.api("POST", f"/api/ml/{ml['id']}/interactive-annotating",
                      json={"task": task["id"], "context": {"result": [click]}}).json()["data"]
        assert data["model_version"] == "expander-superpixel"
        for region in data["result"]:
            mask = decode_rle(region["value"]["rle"]).reshape(360, 480, 4)[:, :, 3] > 0
            assert region["value"]["brushlabels"] == ["Road"] and mask[int(0.85 * 360), 240]

        # a personal access token works as well as the legacy token
        pat = ls.api("POST", "/api/token/").json()["token"]
        with_pat = LabelStudioClient(ls.url, pat)
        assert {t["id"] for t in with_pat.tasks(project)} == set(names)
        assert with_pat.download(task["data"]["image"])[:8] == b"\x89PNG\r\n\x1a\n"
        assert ls.token not in backend.log.read_text() and pat not in backend.log.read_text()
    finally:
        stop(backend.process)


def health_stage(backend) -> str:
    try:
        progress = requests.get(backend.url + "/health", timeout=2).json()["progress"]
    except (requests.RequestException, ValueError, KeyError):
        return ""
    return " ".join(p.get("stage") or "" for p in progress.values())


def read_store(model_dir):
    from ml_backend.store import Store

    return Store(model_dir / "state.sqlite3")


def test_kill_9_during_a_round_and_during_training_loses_nothing(ls, camvid_root, tmp_path):
    """The backend dies mid-job twice; each restart finds every label, serves the last good head and
    reruns the interrupted job."""
    import signal

    model_dir = tmp_path / "model"
    env = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token, "BUDGET_FACTOR": str(BUDGET_FACTOR),
           "RESOLUTION": "128", "CANDIDATES": "2000", "EXPANDER": "none"}
    backend = start_backend(model_dir, env)
    port = int(backend.url.rsplit(":", 1)[1])
    try:
        project = ls.api("POST", "/api/projects", json={"title": "crash test", "label_config": SHIPPED_CONFIG.read_text()}).json()["id"]
        names = import_camvid(ls, project, camvid_root, N_IMAGES)
        ls.api("POST", "/api/ml", json={"project": project, "url": backend.url, "title": "m", "is_interactive": False})

        wait_until(lambda: "per-image features" in health_stage(backend), 300, "round 0 under way", 0.1)
        stop(backend.process, signal.SIGKILL)
        assert predictions(ls, project, "round-0") == []  # died before pushing
        assert any(j["status"] == "running" for j in read_store(model_dir).interrupted_jobs())

        backend = start_backend(model_dir, env, port)  # same address: Label Studio keeps calling it
        round0 = wait_until(lambda: (p := predictions(ls, project, "round-0")) and len(keypoints(p)) == B and p,
                            300, "round 0 after the restart")
        client = LabelStudio(base_url=ls.url, api_key=ls.token)
        answered = answer_with_ground_truth(client, round0, names, camvid_root)
        wait_until(lambda: (p := predictions(ls, project, "round-1")) and len(keypoints(p)) == B and p, 300, "round 1")
        labeled_before = len(read_store(model_dir).labels(project))
        assert labeled_before == answered and read_store(model_dir).current_head(project)["version"] == "head-1"

        answered += answer_with_ground_truth(client, predictions(ls, project, "round-1"), names, camvid_root)
        wait_until(lambda: "training" in health_stage(backend), 300, "training of head-2", 0.05)
        stop(backend.process, signal.SIGKILL)
        store = read_store(model_dir)
        assert len(store.labels(project)) == answered  # every labeled pixel is there
        assert store.current_head(project)["version"] == "head-1"  # the last good model version serves

        backend = start_backend(model_dir, env, port)
        task = ls.api("GET", f"/api/tasks/{round0[0]['task']}").json()
        r = requests.post(backend.url + "/predict", timeout=120, json={
            "tasks": [task], "project": f"{project}.0", "label_config": SHIPPED_CONFIG.read_text()})
        assert r.json()["results"][0]["model_version"] in ("head-1", "head-2")
        wait_until(lambda: predictions(ls, project, "round-2"), 300, "round 2: the interrupted job reran")
        wait_until(lambda: not read_store(model_dir).interrupted_jobs(), 300, "the rerun jobs to finish")
        store = read_store(model_dir)
        assert store.current_head(project)["version"] == "head-2" and len(store.labels(project)) == answered
    finally:
        stop(backend.process)


def round0_by_image(ls, project, names) -> set[tuple[str, float, float]]:
    return {(names[t], x, y) for t, x, y in keypoints(predictions(ls, project, "round-0"))}


def test_two_rq_workers_select_the_same_round_as_the_in_process_runner(ls, camvid_root, tmp_path, redis_server):
    import subprocess

    from tests.conftest import REPO

    config = SHIPPED_CONFIG.read_text()
    base = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token, "BUDGET_FACTOR": str(BUDGET_FACTOR),
            "RECORDS_BATCH": "2"}
    results = {}
    for mode in ("in-process", "redis"):
        model_dir = tmp_path / mode / "model"
        env = dict(base, **({"REDIS_URL": redis_server} if mode == "redis" else {}))
        backend = start_backend(model_dir, env)
        workers = []
        if mode == "redis":
            for n in range(2):
                log = open(tmp_path / mode / f"worker{n}.log", "w")
                workers.append(subprocess.Popen(
                    [str(REPO / ".venv" / "bin" / "rq") if (REPO / ".venv" / "bin" / "rq").exists() else "rq", "worker",
                     "--url", redis_server, "-w", "rq.worker.SimpleWorker", "active-learning"],
                    cwd=REPO, env=backend.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        try:
            project = ls.api("POST", "/api/projects", json={"title": f"rq {mode}", "label_config": config}).json()["id"]
            names = import_camvid(ls, project, camvid_root, N_IMAGES)
            ls.api("POST", "/api/ml", json={"project": project, "url": backend.url, "title": mode})
            wait_until(lambda: len(keypoints(predictions(ls, project, "round-0"))) == B, 300, f"round 0 ({mode})")
            results[mode] = round0_by_image(ls, project, names)
            if mode == "redis":
                assert requests.get(backend.url + "/metrics", timeout=5).json()["jobs"]["kind"] == "redis"
                jobs = wait_until(lambda: (j := read_store(model_dir).recent_jobs(50)) and all(
                    x["status"] in ("done", "failed") for x in j) and j, 120, "the round's jobs to finish")
                assert {"sync", "records", "select"} <= {j["kind"] for j in jobs}
                assert [j for j in jobs if j["status"] != "done"] == []
                assert sum(j["kind"] == "records" for j in jobs) == N_IMAGES // 2
                for n in range(2):  # both workers took part
                    assert "Job OK" in (tmp_path / mode / f"worker{n}.log").read_text()
        finally:
            for w in workers:
                stop(w)
            stop(backend.process)
    assert len(results["redis"]) == B and results["redis"] == results["in-process"]


def test_bad_images_fail_only_their_tasks_and_repeated_training_gives_one_head(ls, camvid_root, tmp_path):
    """Five image hosts that misbehave do not stop round 0; /health names each failed task and why.
    Then five START_TRAINING webhooks and one /train, sent while the first trains, give one head."""
    routes = {"/gone.png": send_bytes(b"", 404), "/busy.png": send_bytes(b"", 503), "/loop": redirect_to("/loop"),
              "/local": redirect_to("file:///etc/passwd"), "/slow.png": drip(0.5)}
    with ImageHost(routes) as host:
        backend = start_backend(tmp_path / "model", {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token,
                                                     "BUDGET_FACTOR": str(BUDGET_FACTOR), "DOWNLOAD_TIMEOUT": "3",
                                                     "AUTO_ADVANCE": "false", "EXPANDER": "none"})
        try:
            config = SHIPPED_CONFIG.read_text()
            project = ls.api("POST", "/api/projects", json={"title": "bad images", "label_config": config}).json()["id"]
            names = import_camvid(ls, project, camvid_root, N_IMAGES)
            ls.api("POST", f"/api/projects/{project}/import", json=[{"image": host.url + path} for path in routes])
            ml = ls.api("POST", "/api/ml", json={"project": project, "url": backend.url, "title": "m"}).json()

            round0 = wait_until(lambda: (p := predictions(ls, project, "round-0")) and len(keypoints(p)) == B and p,
                                300, "round 0 without the bad images")
            assert {p["task"] for p in round0} <= set(names)
            failed = requests.get(backend.url + "/health", timeout=5).json()["failed_tasks"][str(project)]
            reasons = sorted(f["error"] for f in failed)
            assert reasons == ["HTTP 404", "HTTP 503", "more than 5 redirects", "no complete answer within 3 s",
                               "redirected to an address that is not http(s)"]
            assert sum(path == "/busy.png" for path, _ in host.requests) == 1  # not Label Studio: no retries

            answered = answer_with_ground_truth(LabelStudio(base_url=ls.url, api_key=ls.token), round0, names,
                                                camvid_root)
            metrics = lambda: requests.get(backend.url + "/metrics", timeout=5).json()  # noqa: E731
            wait_until(lambda: metrics()["projects"][str(project)]["labeled_pixels"] >= answered, 60, "the answers")
            for n in range(6):
                if n < 5:
                    ls.api("POST", f"/api/ml/{ml['id']}/train")  # START_TRAINING webhook
                else:
                    requests.post(backend.url + "/train", json={"project": project}, timeout=10)
                time.sleep(0.3)
            wait_until(lambda: predictions(ls, project, "round-1"), 300, "round 1")
            store = read_store(tmp_path / "model")
            wait_until(lambda: not store.interrupted_jobs(), 300, "every job to finish")
            assert [h["version"] for h in store.heads(project)] == ["head-1"]
            jobs = store.recent_jobs(100)
            assert [j["payload"] for j in jobs if j["kind"] == "select"] == [
                '{"round": 1, "head": "head-1"}', '{"round": 0, "head": null}']
            assert all(j["status"] == "done" for j in jobs)
        finally:
            stop(backend.process)
