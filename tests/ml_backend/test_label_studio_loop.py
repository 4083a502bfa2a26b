"""The whole loop against a real Label Studio 1.23.2: connect, round 0, answers by webhook, retrain,
round 1, segmentation and interactive clicks. The backend runs the tiny backbone at 64x64."""

from __future__ import annotations

import json
import time

import numpy as np
import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

from ml_backend.label_studio.label_config import SHIPPED_CONFIG
from ml_backend.label_studio.client import QUERY_VIEW_TITLE, LabelStudioClient
from model.datasets import CAMVID_CLASSES
from tests.ml_backend.sdk_checks import assert_valid_result
from tests.ml_backend.servers import ImageHost, drip, redirect_to, send_bytes, start_backend, stop, wait_until

N_IMAGES, BUDGET_FACTOR = 8, 0.5
B = round(N_IMAGES * BUDGET_FACTOR)


def import_camvid(ls, project: int, root, count: int) -> dict[int, str]:
    names = sorted(p.name for p in (root / "val").glob("*.png"))[:count]
    files = [(f"file{i}", (n, open(root / "val" / n, "rb"), "image/png")) for i, n in enumerate(names)]
    ls.api("POST", f"/api/projects/{project}/import", files=files)
    tasks = ls.api("GET", f"/api/tasks?project={project}&page_size=100").json()["tasks"]
    # uploads are stored as "<prefix>-<original name>"
    return {t["id"]: t["data"]["image"].rsplit("/", 1)[1].split("-", 1)[1] for t in tasks}


def predictions(ls, project: int, version: str) -> list[dict]:
    """The project's predictions of `version`, each checked by the SDK against the shipped config."""
    found = [p for p in ls.api("GET", f"/api/predictions/?project={project}").json() if p["model_version"] == version]
    for p in found:
        assert_valid_result(SHIPPED_CONFIG.read_text(), p["result"])
    return found


def query_predictions(ls, project: int, version: str) -> list[dict]:
    """The predictions of `version` that hold query points (the others are segmentations)."""
    return [p for p in predictions(ls, project, version) if keypoints([p])]


def keypoints(preds: list[dict]) -> list[tuple[int, float, float]]:
    return [(p["task"], r["value"]["x"], r["value"]["y"]) for p in preds for r in p["result"]
            if r["type"] == "keypointlabels"]


def image_of(ls, task: int) -> int:
    """The image task a query task asks about."""
    return int(ls.api("GET", f"/api/tasks/{task}").json()["data"]["query_for_task"])


def true_class(root, name: str, value: dict) -> int:
    truth = np.asarray(Image.open(root / "valannot" / name))
    h, w = truth.shape
    return int(truth[min(h - 1, int(value["y"] / 100 * h)), min(w - 1, int(value["x"] / 100 * w))])


def answered_result(regions: list[dict], name: str, root, keep_placeholder: set[str] = frozenset()) -> list[dict]:
    """What a careful annotator submits: the true class on each point, void points deleted; points in
    `keep_placeholder` left untouched."""
    result = []
    for r in regions:
        if r["id"] in keep_placeholder:
            result.append(r)
            continue
        cls = true_class(root, name, r["value"])
        if cls != 11:
            result.append({**r, "value": {**r["value"], "keypointlabels": [CAMVID_CLASSES[cls]]}})
    return result


def answer_with_ground_truth(client: LabelStudio, ls, preds: list[dict], names: dict[int, str], root) -> int:
    """Answer each query task of `preds` (predictions on query tasks) from the ground truth."""
    answered = 0
    for p in preds:
        result = answered_result(p["result"], names[image_of(ls, p["task"])], root)
        client.annotations.create(id=p["task"], result=result)
        answered += len(result)
    return answered


def model_version(ls, project: int) -> str:
    return ls.api("GET", f"/api/projects/{project}").json()["model_version"]


def next_task(ls, project: int) -> dict | None:
    """What "Label All Tasks" shows the annotator next (None: the queue is empty)."""
    r = requests.get(f"{ls.url}/api/projects/{project}/next", headers=ls.headers, timeout=60)
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    return r.json()


def metrics(backend) -> dict:
    """The backend's /metrics: its settings and jobs, and per project its round, queries and labels."""
    return requests.get(backend.url + "/metrics", timeout=30).json()


def wait_for_open_round(ls, backend, project: int, round_index: int, version: str, seconds: float = 300) -> None:
    """Until the round is open: Label Studio shows `version` as soon as the queue's settings are saved,
    a moment before the backend puts the query tasks in the queue and opens the round."""
    def is_open():
        status = metrics(backend)["projects"].get(str(project)) or {}
        return status.get("round") == round_index and status.get("round_status") == "open" \
            and model_version(ls, project) == version
    wait_until(is_open, seconds, f"round {round_index} open in Label Studio's queue as {version}")


def open_queries(backend, project: int) -> int:
    status = metrics(backend)["projects"][str(project)]
    return (status["queries"] or {}).get("open", 0) if status["round_status"] == "open" else 0


def work_the_queue(ls, backend, project: int, names: dict[int, str], root,
                   keep_placeholder_once: bool = False) -> list[dict]:
    """An annotator pressing "Label All Tasks" until the round has no open query, answering every task
    served. A point submitted with the placeholder comes back on a new task a moment later, so an
    empty queue while queries are open means: press again shortly. With `keep_placeholder_once`,
    the first point of the first task is submitted untouched."""
    served = []
    while True:
        task = wait_until(lambda: next_task(ls, project) or not open_queries(backend, project), 60,
                          "the next open query in the queue, or the round's end")
        if task is True:  # no task and no open query: the round is answered
            return served
        assert len(served) < 50, "the queue does not empty"
        (prediction,) = task["predictions"]  # exactly the round's query prediction is shown
        keep = {prediction["result"][0]["id"]} if keep_placeholder_once and not served else set()
        result = answered_result(prediction["result"], names[int(task["data"]["query_for_task"])], root, keep)
        ls.api("POST", f"/api/tasks/{task['id']}/annotations/", json={"result": result})
        served.append({**task, "kept": keep, "submitted": result})


def test_label_all_tasks_serves_exactly_the_open_queries_round_after_round(ls, camvid_root, tmp_path):
    """An annotator who only ever presses "Label All Tasks" meets every query of each round, most
    informative first, including an image annotated in the round before; a point left with the
    placeholder comes back on a new task; deleted points never come back."""
    n_images, budget = 4, 6
    backend = start_backend(tmp_path / "model", {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token,
                                                 "BUDGET": str(budget), "EXPANDER": "none"})
    try:
        config = SHIPPED_CONFIG.read_text()
        project = ls.api("POST", "/api/projects", json={"title": "queue", "label_config": config}).json()["id"]
        names = import_camvid(ls, project, camvid_root, n_images)
        ls.api("POST", "/api/ml", json={"project": project, "url": backend.url, "title": "two-stage eDALD"})
        settings = ls.api("GET", f"/api/projects/{project}").json()
        round0 = f"p{project}-round-0"
        wait_for_open_round(ls, backend, project, 0, round0)
        settings = ls.api("GET", f"/api/projects/{project}").json()
        assert settings["sampling"] == "Uncertainty sampling" and settings["show_collab_predictions"]
        assert settings["show_instruction"] and "Label me" in settings["expert_instruction"]
        assert not settings["start_training_on_annotation_update"] and settings["skip_queue"] == "IGNORE_SKIPPED"
        assert f"Active learning now: round 0 is open: {budget} points" in settings["description"]
        wait_until(lambda: any(v["data"].get("title") == QUERY_VIEW_TITLE
                               and f"p{project}-r0-t" in json.dumps(v["data"]["filters"])
                               for v in ls.api("GET", f"/api/dm/views/?project={project}").json()),
                   60, "the saved view of the round's open query tasks")

        asked0 = query_predictions(ls, project, round0)
        assert len(keypoints(asked0)) == budget
        served0 = work_the_queue(ls, backend, project, names, camvid_root, keep_placeholder_once=True)
        kept = served0[0]["kept"]
        first_pass = [t for t in served0 if t["id"] in {p["task"] for p in asked0}]
        # every query task of the round, lowest score (most informative) first, and nothing else
        assert sorted(t["id"] for t in first_pass) == sorted(p["task"] for p in asked0)
        scores = [t["predictions"][0]["score"] for t in first_pass]
        assert scores == sorted(scores) and 0 <= scores[0] < 1 and len(set(scores)) == len(scores)
        print("round 0 query tasks and scores:", [(t["id"], t["data"]["query_for_task"], s) for t, s in zip(first_pass, scores)])
        assert all(r["value"]["keypointlabels"] == ["Label me"] for t in served0 for r in t["predictions"][0]["result"])
        # the point left with the placeholder came back, alone, on a new task of the same image
        (again,) = [t for t in served0 if t["id"] not in {p["task"] for p in asked0}]
        assert [r["id"] for r in again["predictions"][0]["result"]] == list(kept)
        assert again["data"]["query_for_task"] == served0[0]["data"]["query_for_task"]
        assert metrics(backend)["projects"][str(project)]["round"] in (0, 1)

        # round 1: a new head, a new queue, and the image tasks got its segmentation unasked
        head1 = f"p{project}-head-1"
        wait_for_open_round(ls, backend, project, 1, head1)
        asked1 = wait_until(lambda: (p := query_predictions(ls, project, head1)) and len(keypoints(p)) == budget and p,
                            60, "round 1's query tasks")
        query_tasks1 = {p["task"] for p in asked1}
        wait_until(lambda: {p["task"] for p in predictions(ls, project, head1)} >= set(names), 300,
                   "the head's segmentation on every image task")
        served1 = work_the_queue(ls, backend, project, names, camvid_root)
        assert {t["id"] for t in served1} == query_tasks1
        scores1 = [t["predictions"][0]["score"] for t in served1]
        assert scores1 == sorted(scores1)
        print("round 1 query tasks and scores:", [(t["id"], t["data"]["query_for_task"], s) for t, s in zip(served1, scores1)])
        annotated0 = {int(t["data"]["query_for_task"]) for t in served0}
        assert annotated0 & {int(t["data"]["query_for_task"]) for t in served1}  # an image labeled in round 0
        points0 = {(int(t["data"]["query_for_task"]), r["value"]["x"], r["value"]["y"])
                   for t in served0 for r in t["predictions"][0]["result"]}
        points1 = {(int(t["data"]["query_for_task"]), r["value"]["x"], r["value"]["y"])
                   for t in served1 for r in t["predictions"][0]["result"]}
        assert not points0 & points1  # answered, void and deleted points are never asked again
        for image in names:  # a segmentation of the head's version on each image task
            (seg,) = [p for p in predictions(ls, project, head1) if p["task"] == image]
            assert {r["type"] for r in seg["result"]} == {"brushlabels"} and 0 < seg["score"] <= 1
        assert '"POST /predict' not in backend.log.read_text()  # nobody had to ask for them

        # segmentation and clicks as Label Studio asks for them
        task = ls.api("GET", f"/api/tasks/{served0[0]['data']['query_for_task']}").json()
        r = requests.post(backend.url + "/predict", timeout=120, json={
            "tasks": [task], "project": f"{project}.0", "label_config": config, "params": {"context": None}})
        assert r.status_code == 200, r.text
        result = r.json()["results"][0]
        assert_valid_result(config, result["result"])
        assert result["model_version"] in (head1, f"p{project}-head-2") and 0 < result["score"] <= 1
        covered = np.zeros((360, 480), dtype=int)
        for region in result["result"]:
            assert region["type"] == "brushlabels" and region["value"]["brushlabels"][0] in CAMVID_CLASSES
            assert (region["original_width"], region["original_height"]) == (480, 360)
            covered += decode_rle(region["value"]["rle"]).reshape(360, 480, 4)[:, :, 3] > 0
        assert (covered == 1).all()  # every pixel gets exactly one class
        assert "head-1" in " ".join(requests.get(backend.url + "/versions", timeout=10).json()["versions"])

        # a personal access token works as well as the legacy token
        pat = ls.api("POST", "/api/token/").json()["token"]
        with_pat = LabelStudioClient(ls.url, pat)
        assert set(names) <= {t["id"] for t in with_pat.tasks(project)}
        assert with_pat.download(task["data"]["image"])[:8] == b"\x89PNG\r\n\x1a\n"
        assert ls.token not in backend.log.read_text() and pat not in backend.log.read_text()
    finally:
        stop(backend.process)


def test_interactive_click_on_a_query_task_expands_in_its_image(ls, camvid_root, tmp_path):
    backend = start_backend(tmp_path / "model", {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token,
                                                 "BUDGET": "2"})
    try:
        project = ls.api("POST", "/api/projects", json={"title": "clicks", "label_config": SHIPPED_CONFIG.read_text()}
                         ).json()["id"]
        import_camvid(ls, project, camvid_root, 2)
        ml = ls.api("POST", "/api/ml", json={"project": project, "url": backend.url, "title": "m",
                                              "is_interactive": True}).json()
        wait_for_open_round(ls, backend, project, 0, f"p{project}-round-0")
        task = wait_until(lambda: next_task(ls, project), 60, "round 0's first query task")
        assert "query_key" in task["data"]  # the queue serves query tasks only
        click = {"id": "c1", "from_name": "query", "to_name": "image", "type": "keypointlabels",
                 "original_width": 480, "original_height": 360, "image_rotation": 0,
                 "value": {"x": 50.0, "y": 85.0, "width": 0.6, "keypointlabels": ["Road"]}}
        answer = ls.api("POST", f"/api/ml/{ml['id']}/interactive-annotating",
                        json={"task": task["id"], "context": {"result": [click]}}).json()
        data = answer["data"]
        assert data is not None, answer
        assert data["model_version"] == "expander-superpixel"
        for region in data["result"]:
            mask = decode_rle(region["value"]["rle"]).reshape(360, 480, 4)[:, :, 3] > 0
            assert region["value"]["brushlabels"] == ["Road"] and mask[int(0.85 * 360), 240]
        store = read_store(tmp_path / "model")
        assert store.task(project, task["id"]) is None  # the query task never became an image of the loop
    finally:
        stop(backend.process)


def health_stage(backend) -> str:
    try:
        progress = requests.get(backend.url + "/health", timeout=2).json()["progress"]
    except (requests.RequestException, ValueError, KeyError):
        return ""
    return " ".join(p.get("stage") or "" for p in progress.values())


def read_store(model_dir):
    from ml_backend.state.store import Store

    return Store(model_dir / "state.sqlite3")


def test_kill_9_during_a_round_and_during_training_loses_nothing(ls, camvid_root, tmp_path):
    """The backend dies mid-job twice; each restart finds every label, serves the last good head and
    reruns the interrupted job."""
    import signal

    model_dir = tmp_path / "model"
    env = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token, "BUDGET_FACTOR": str(BUDGET_FACTOR),
           "EXPANDER": "none"}
    paused = "tests.ml_backend.paused_backend"  # a pause before each image's record and each training
    backend = start_backend(model_dir, env, module=paused)
    port = int(backend.url.rsplit(":", 1)[1])
    try:
        project = ls.api("POST", "/api/projects",
                         json={"title": "crash test", "label_config": SHIPPED_CONFIG.read_text()}).json()["id"]
        names = import_camvid(ls, project, camvid_root, N_IMAGES)
        ls.api("POST", "/api/ml", json={"project": project, "url": backend.url, "title": "m", "is_interactive": False})

        wait_until(lambda: "features and local herding" in health_stage(backend), 300, "round 0 under way", 0.1)
        stop(backend.process, signal.SIGKILL)
        assert predictions(ls, project, f"p{project}-round-0") == []  # died before pushing
        assert any(j["status"] == "running" for j in read_store(model_dir).interrupted_jobs())

        backend = start_backend(model_dir, env, port, module=paused)  # same address: Label Studio keeps calling it
        round0 = wait_until(lambda: (p := query_predictions(ls, project, f"p{project}-round-0")) and len(keypoints(p)) == B and p,
                            300, "round 0 after the restart")
        client = LabelStudio(base_url=ls.url, api_key=ls.token)
        answered = answer_with_ground_truth(client, ls, round0, names, camvid_root)
        wait_until(lambda: (p := query_predictions(ls, project, f"p{project}-head-1")) and len(keypoints(p)) == B and p,
                   300, "round 1")
        labeled_before = len(read_store(model_dir).labels(project))
        assert labeled_before == answered and read_store(model_dir).current_head(project)["version"] == f"p{project}-head-1"

        answered += answer_with_ground_truth(client, ls, query_predictions(ls, project, f"p{project}-head-1"), names,
                                            camvid_root)
        wait_until(lambda: "training" in health_stage(backend), 300, "training of head-2", 0.05)
        stop(backend.process, signal.SIGKILL)
        store = read_store(model_dir)
        assert len(store.labels(project)) == answered  # every labeled pixel is there
        assert store.current_head(project)["version"] == f"p{project}-head-1"  # the last good model version serves

        backend = start_backend(model_dir, env, port)
        task = ls.api("GET", f"/api/tasks/{round0[0]['task']}").json()
        r = requests.post(backend.url + "/predict", timeout=120, json={
            "tasks": [task], "project": f"{project}.0", "label_config": SHIPPED_CONFIG.read_text()})
        assert r.json()["results"][0]["model_version"] in (f"p{project}-head-1", f"p{project}-head-2")
        wait_until(lambda: query_predictions(ls, project, f"p{project}-head-2"), 300, "round 2: the interrupted job reran")
        wait_until(lambda: not read_store(model_dir).interrupted_jobs(), 300, "the rerun jobs to finish")
        store = read_store(model_dir)
        assert store.current_head(project)["version"] == f"p{project}-head-2" and len(store.labels(project)) == answered
    finally:
        stop(backend.process)


def round0_by_image(ls, project, names) -> set[tuple[str, float, float]]:
    return {(names[image_of(ls, t)], x, y) for t, x, y in keypoints(predictions(ls, project, f"p{project}-round-0"))}


class HealthWatch:
    """Polls the backend's /health in a thread and keeps every progress it shows for a project."""

    def __init__(self, backend, project: int, interval: float = 0.05):
        import threading

        self.seen: list[dict] = []
        self._stop = threading.Event()

        def watch():
            while not self._stop.is_set():
                try:
                    progress = requests.get(backend.url + "/health", timeout=5).json()["progress"].get(str(project))
                except (requests.RequestException, ValueError, KeyError):
                    progress = None
                if progress and (not self.seen or progress != self.seen[-1]):
                    self.seen.append(progress)
                self._stop.wait(interval)

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()

    def stop(self) -> list[dict]:
        self._stop.set()
        self._thread.join(10)
        return self.seen


def test_two_rq_workers_select_the_same_round_as_the_in_process_runner(ls, camvid_root, tmp_path, redis_server,
                                                                      postgres_url):
    """...and the web process's /health shows the workers' progress, in images of the whole round. The
    scaled-out backend shares only what machines would: Redis, the PostgreSQL store and MODEL_DIR; each
    worker runs in a working directory of its own."""
    import subprocess
    from contextlib import closing

    from ml_backend.state.store import Store
    from tests.conftest import REPO

    config = SHIPPED_CONFIG.read_text()
    base = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token, "BUDGET_FACTOR": str(BUDGET_FACTOR),
            "RECORDS_BATCH": "2"}
    results = {}
    for mode in ("in-process", "redis"):
        model_dir = tmp_path / mode / "model"
        env = dict(base, **({"REDIS_URL": redis_server.url, "DATABASE_URL": postgres_url} if mode == "redis" else {}))
        backend = start_backend(model_dir, env)
        workers = []
        if mode == "redis":
            for n in range(2):
                log = open(tmp_path / mode / f"worker{n}.log", "w")
                (cwd := tmp_path / mode / f"worker{n}").mkdir()
                workers.append(subprocess.Popen(
                    [str(REPO / ".venv" / "bin" / "rq") if (REPO / ".venv" / "bin" / "rq").exists() else "rq", "worker",
                     "--url", redis_server.url, "--path", str(REPO), "-w", "rq.worker.SimpleWorker", "active-learning"],
                    cwd=cwd, env=backend.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        try:
            project = ls.api("POST", "/api/projects", json={"title": f"rq {mode}", "label_config": config}).json()["id"]
            names = import_camvid(ls, project, camvid_root, N_IMAGES)
            watch = HealthWatch(backend, project)
            ls.api("POST", "/api/ml", json={"project": project, "url": backend.url, "title": mode})
            wait_until(lambda: len(keypoints(predictions(ls, project, f"p{project}-round-0"))) == B, 300, f"round 0 ({mode})")
            seen = watch.stop()
            results[mode] = round0_by_image(ls, project, names)
            records = [p for p in seen if p["stage"] == "round 0: features and local herding"]
            print(mode, "progress seen in /health:", list(dict.fromkeys((p["stage"], p["done"], p["total"]) for p in seen)))
            # the round's work: its images, whatever batch of RECORDS_BATCH=2 is running, and one unit for
            # selecting and publishing, with an ETA while under way
            assert records and {p["total"] for p in records} == {N_IMAGES + 1}
            assert any(0 < p["done"] < N_IMAGES and p["eta_s"] is not None for p in records)
            assert not any("features features" in p["stage"] for p in seen)
            if mode == "redis":
                # the web process ran none of it: what it showed came from the workers through the store
                assert "features and local herding" not in backend.log.read_text()
                assert any("features and local herding" in (tmp_path / mode / f"worker{n}.log").read_text()
                           for n in range(2))
                assert metrics(backend)["jobs"]["kind"] == "redis"
                assert not (model_dir / "state.sqlite3").exists()  # every process used the PostgreSQL store
                assert all(list((tmp_path / mode / f"worker{n}").iterdir()) == [] for n in range(2))
                with closing(Store(postgres_url)) as store:
                    jobs = wait_until(lambda: (j := store.recent_jobs(50)) and all(
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

            round0 = wait_until(lambda: (p := query_predictions(ls, project, f"p{project}-round-0"))
                                and len(keypoints(p)) == B and p, 300, "round 0 without the bad images")
            assert {image_of(ls, p["task"]) for p in round0} <= set(names)
            failed = requests.get(backend.url + "/health", timeout=5).json()["failed_tasks"][str(project)]
            reasons = sorted(f["error"] for f in failed)
            assert reasons == ["HTTP 404", "HTTP 503", "more than 5 redirects", "no complete answer within 3 s",
                               "redirected to an address that is not http(s)"]
            assert sum(path == "/busy.png" for path, _ in host.requests) == 1  # not Label Studio: no retries

            answered = answer_with_ground_truth(LabelStudio(base_url=ls.url, api_key=ls.token), ls, round0, names,
                                                camvid_root)
            wait_until(lambda: metrics(backend)["projects"][str(project)]["labeled_pixels"] >= answered, 60, "the answers")
            for n in range(6):
                if n < 5:
                    ls.api("POST", f"/api/ml/{ml['id']}/train")  # START_TRAINING webhook
                else:
                    requests.post(backend.url + "/train", json={"project": project}, timeout=10)
                time.sleep(0.3)
            wait_until(lambda: query_predictions(ls, project, f"p{project}-head-1"), 300, "round 1")
            store = read_store(tmp_path / "model")
            wait_until(lambda: not store.interrupted_jobs(), 300, "every job to finish")
            assert [h["version"] for h in store.heads(project)] == [f"p{project}-head-1"]
            jobs = store.recent_jobs(100)
            selects = [json.loads(j["payload"]) for j in jobs if j["kind"] == "select"]
            assert [(s["round"], s["head"]) for s in selects] == [(1, f"p{project}-head-1"), (0, None)]
            assert all(j["status"] == "done" for j in jobs)
        finally:
            stop(backend.process)
