"""What a team running one backend for several projects needs, against a real Label Studio 1.23.2:
per-project settings from the model's "Extra params", heads pinned and rolled back (seen from
/versions, from the project's model version and from the predictions that follow), a head exported
and run offline, and the learning curve. The backend runs the tiny backbone at 64x64."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

from ml_backend.label_studio.label_config import SHIPPED_CONFIG
from ml_backend.state.learning_curve import draw_curve
from model.head_export import ExportedHead
from tests.conftest import REPO
from tests.ml_backend.servers import start_backend, stop, wait_until
from tests.ml_backend.test_label_studio_loop import (answer_with_ground_truth, import_camvid, keypoints,
                                                     metrics, model_version, next_task, predictions, read_store)
from tests.ml_backend.state.test_learning_curve import series_from_metrics

CONFIG = SHIPPED_CONFIG.read_text()


def round_queries(ls, project: int, round_index: int) -> list[dict]:
    """The query predictions on the query tasks of one round."""
    tasks = ls.api("GET", f"/api/tasks?project={project}&page_size=1000").json()["tasks"]
    holders = {t["id"] for t in tasks if t["data"].get("query_round") == round_index}
    return [p for p in ls.api("GET", f"/api/predictions/?project={project}").json()
            if p["task"] in holders and keypoints([p])]


def wait_for_round(ls, project: int, round_index: int, version: str, budget: int) -> list[dict]:
    """The round's query predictions once all `budget` points are in Label Studio under `version`."""
    def ready():
        preds = round_queries(ls, project, round_index)
        return len(keypoints(preds)) == budget and model_version(ls, project) == version and preds
    preds = wait_until(ready, 300, f"round {round_index} of project {project} as {version}")
    assert {p["model_version"] for p in preds} == {version}
    return preds


def test_extra_params_set_one_projects_budget_and_acquisition_and_not_anothers(ls, camvid_root, tmp_path):
    backend = start_backend(tmp_path / "model", {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token,
                                                 "BUDGET": "2", "EXPANDER": "none"})
    try:
        client = LabelStudio(base_url=ls.url, api_key=ls.token)
        projects, names = {}, {}
        for key, extra in (("A", {"BUDGET": 3, "ACQUISITION": "entropy"}), ("B", None)):
            projects[key] = ls.api("POST", "/api/projects", json={"title": f"settings {key}", "label_config": CONFIG}
                                   ).json()["id"]
            names[key] = import_camvid(ls, projects[key], camvid_root, 4)
            ml = ls.api("POST", "/api/ml", json={"project": projects[key], "url": backend.url, "title": f"m{key}",
                                                 "extra_params": extra}).json()
            if key == "A":
                ml_a = ml
        a, b = projects["A"], projects["B"]

        # a bad setting: Label Studio refuses to save it and shows why; the project keeps its settings
        for extra, fragment in (({"BUDGETT": 1}, "unknown setting 'BUDGETT'; a project may set BUDGET"),
                                ({"RESOLUTION": 128}, "RESOLUTION is a per-backend setting"),
                                ({"ACQUISITION": "edal"}, "ACQUISITION='edal'")):
            r = requests.patch(f"{ls.url}/api/ml/{ml_a['id']}", headers=ls.headers, timeout=60, json={
                "url": backend.url, "project": a, "title": "mA", "extra_params": extra})
            assert r.status_code == 400 and fragment in r.text, r.text
        assert ls.api("GET", f"/api/ml/{ml_a['id']}").json()["extra_params"] == {"BUDGET": 3, "ACQUISITION": "entropy"}
        view = metrics(backend)["projects"]
        assert view[str(a)]["overrides"] == {"BUDGET": 3, "ACQUISITION": "entropy"} and view[str(b)]["overrides"] == {}

        round0 = {key: wait_for_round(ls, projects[key], 0, f"p{projects[key]}-round-0", budget)
                  for key, budget in (("A", 3), ("B", 2))}
        for key in ("A", "B"):
            answer_with_ground_truth(client, ls, round0[key], names[key], camvid_root)
        round1 = {key: wait_for_round(ls, projects[key], 1, f"p{projects[key]}-head-1", budget)
                  for key, budget in (("A", 3), ("B", 2))}
        assert len(keypoints(round1["A"])) == 3 and len(keypoints(round1["B"])) == 2
        view = metrics(backend)["projects"]
        chosen = {key: [(r["round"], r["settings"]["BUDGET"], r["settings"]["ACQUISITION"]) for r in
                        view[str(projects[key])]["rounds"]] for key in ("A", "B")}
        assert chosen == {"A": [(0, 3, "entropy"), (1, 3, "entropy")], "B": [(0, 2, "edald"), (1, 2, "edald")]}
        health = requests.get(backend.url + "/health", timeout=10).json()["projects"]
        assert health[str(a)]["settings"]["ACQUISITION"] == "entropy" and health[str(b)]["settings"]["BUDGET"] == 2
    finally:
        stop(backend.process)


def segmentation_classes(prediction: dict, classes: tuple[str, ...]) -> np.ndarray:
    """A pushed segmentation (one brush region per class) as a class map at the image's size."""
    regions = prediction["result"]
    h, w = regions[0]["original_height"], regions[0]["original_width"]
    out = np.full((h, w), 255, dtype=np.uint8)
    for region in regions:
        mask = decode_rle(region["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 0
        out[mask] = classes.index(region["value"]["brushlabels"][0])
    assert (out != 255).all()
    return out


def test_pin_roll_back_and_forward_export_and_the_learning_curve(ls, camvid_root, tmp_path):
    budget = 3
    backend = start_backend(tmp_path / "model", {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token,
                                                 "BUDGET": str(budget)})
    try:
        client = LabelStudio(base_url=ls.url, api_key=ls.token)
        project = ls.api("POST", "/api/projects", json={"title": "versions", "label_config": CONFIG}).json()["id"]
        names = import_camvid(ls, project, camvid_root, 4)
        ls.api("POST", "/api/ml", json={"project": project, "url": backend.url, "title": "m"})
        head = [f"p{project}-head-{n}" for n in range(4)]  # head[1], head[2], head[3]
        answer_with_ground_truth(client, ls, wait_for_round(ls, project, 0, f"p{project}-round-0", budget), names,
                                 camvid_root)
        answer_with_ground_truth(client, ls, wait_for_round(ls, project, 1, head[1], budget), names, camvid_root)
        round2 = wait_for_round(ls, project, 2, head[2], budget)
        labeled = metrics(backend)["projects"][str(project)]["labeled_pixels"]

        # roll back: head-1 serves at once, and Label Studio shows it with a round it chose
        r = requests.post(backend.url + "/versions/pin", json={"version": head[1]}, timeout=10)
        assert r.status_code == 202, r.text
        versions = requests.get(backend.url + "/versions", timeout=10).json()
        assert versions["current"] == {str(project): head[1]} and versions["versions"] == head[1:3]
        assert requests.post(backend.url + "/setup", json={"project": project, "schema": CONFIG},
                             timeout=10).json()["model_version"] == head[1]
        round3 = wait_for_round(ls, project, 3, head[1], budget)
        served = wait_until(lambda: next_task(ls, project), 60, "round 3's query tasks in the queue")
        assert served["data"]["query_round"] == 3 and [p["model_version"] for p in served["predictions"]] == [head[1]]
        for p in round2:  # the closed round's query tasks left the queue; their points are never asked again
            assert ls.api("GET", f"/api/tasks/{p['task']}").json()["is_labeled"]
        assert not {(t, x, y) for t, x, y in keypoints(round3)} & {(t, x, y) for t, x, y in keypoints(round2)}
        image_task = sorted(names)[0]
        task = ls.api("GET", f"/api/tasks/{image_task}").json()
        r = requests.post(backend.url + "/predict", timeout=120, json={"tasks": [task], "project": f"{project}.0",
                                                                        "label_config": CONFIG})
        assert r.json()["results"][0]["model_version"] == head[1]
        segmented = wait_until(lambda: {p["task"]: p for p in predictions(ls, project, head[1])
                                        if not keypoints([p]) and p["task"] in names}.get(image_task), 300,
                               "head-1's segmentation of the image task")
        assert metrics(backend)["projects"][str(project)]["labeled_pixels"] == labeled  # no label lost

        # the exported head segments the image offline exactly as the backend did
        env = {**backend.env, "PYTHONPATH": str(REPO)}
        exported = tmp_path / "head-1.pt"
        run = subprocess.run([sys.executable, "-m", "ml_backend", "heads", "export", head[1], "--out", str(exported)],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        images = tmp_path / "images"
        images.mkdir()
        Image.open(camvid_root / "val" / names[image_task]).save(images / "street.png")
        out = tmp_path / "segmented"
        run = subprocess.run([sys.executable, "-m", "model", "segment", "--head", str(exported), "--images",
                              str(images), "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr
        offline = np.asarray(Image.open(out / "labels" / "street.png"))
        pushed = segmentation_classes(segmented, ExportedHead.load(exported).classes)
        assert offline.shape == (360, 480) and np.array_equal(offline, pushed)
        print("exported head overlay:", out / "overlays" / "street.png")

        # forward again: head-2 is current and Label Studio shows it; the next answers train head-3 on everything
        assert requests.post(backend.url + "/versions/pin", json={"project": project, "version": head[2]},
                             timeout=10).status_code == 202
        round4 = wait_for_round(ls, project, 4, head[2], budget)
        answered = answer_with_ground_truth(client, ls, round4, names, camvid_root)
        wait_for_round(ls, project, 5, head[3], budget)
        wait_until(lambda: metrics(backend)["projects"][str(project)]["round_status"] == "open", 60, "round 5 open")
        heads = {h["version"]: h for h in metrics(backend)["heads"][str(project)]}
        assert heads[head[3]]["current"] and heads[head[3]]["report"]["labeled_pixels"] >= labeled + answered

        # the learning curve: agreement where a head chose the round, the next head, the wait, a PNG of the same
        rounds = metrics(backend)["projects"][str(project)]["rounds"]
        print("learning curve:", [(r["round"], r["status"], r["chosen_by"], r["answered"], r["point_agreement"],
                                   r["region_agreement"], r["seconds_to_next_round"]) for r in rounds])
        assert [(r["round"], r["status"], r["chosen_by"]) for r in rounds] == [
            (0, "complete", None), (1, "complete", head[1]), (2, "closed", head[2]), (3, "closed", head[1]),
            (4, "complete", head[2]), (5, "open", head[3])]
        for r in (rounds[1], rounds[4]):
            assert 0 <= r["point_agreement"] <= 1 and r["point_pixels"] == r["answered"] > 0
            assert 0 <= r["region_agreement"] <= 1 and r["region_pixels"] >= r["point_pixels"]
        assert rounds[0]["point_agreement"] is None and rounds[2]["answered"] == 0
        assert [r["next_head"]["version"] if r["next_head"] else None for r in rounds] == [
            head[1], head[2], None, None, head[3], None]
        assert all(r["seconds_to_next_round"] > 0 for r in (rounds[0], rounds[1], rounds[4]))
        png = requests.get(f"{backend.url}/metrics/{project}/curve.png", timeout=30)
        assert png.content == draw_curve(series_from_metrics(rounds), 0.9,
                                         f"project {project}: learning curve without ground truth")
        (tmp_path / "curve.png").write_bytes(png.content)
        print("learning curve PNG:", tmp_path / "curve.png")
        assert read_store(tmp_path / "model").current_head(project)["version"] == head[3]
    finally:
        stop(backend.process)
    assert os.path.getsize(tmp_path / "curve.png") > 10_000
