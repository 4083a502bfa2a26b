"""What a click became, on the query task it was answered on, and a reviewer's brush correcting it:
from the webhook to the labeled set, against a recording stand-in for Label Studio's calls (the
real pages are in test_labeling_page.py)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ml_backend.label_studio.answered_regions import ANSWERED_VERSION, show_answered_regions
from ml_backend.state.labeled_set import build_labeled_set
from ml_backend.label_studio.regions import mask_from_brush, percent_from_pixel, resize_mask
from tests.ml_backend.sdk_checks import assert_valid_result
from tests.ml_backend.web.test_server import CONFIG, annotation_event, keypoint, make_client

R, HOLDER, IMAGE_TASK = 64, 101, 10


class RecordingLabelStudio:
    def __init__(self):
        self.predictions: dict[int, tuple[int, str, list]] = {}
        self.retired: list[int] = []

    def find_prediction(self, task, version):
        return next((i for i, (t, v, _) in self.predictions.items() if (t, v) == (task, version)), None)

    def create_prediction(self, task, result, version, score):
        assert_valid_result(CONFIG, result)
        self.predictions[len(self.predictions) + 1] = (task, version, result)
        return len(self.predictions)

    def update_prediction(self, prediction, result):
        assert_valid_result(CONFIG, result)
        task, version, _ = self.predictions[prediction]
        self.predictions[prediction] = (task, version, result)

    def retire_task(self, task):
        self.retired.append(task)


def project_with_a_query(tmp_path):
    client, backend, runner = make_client(tmp_path, resolution=R, expander="superpixel")
    services = backend.services
    backend.setup("7.1", CONFIG)
    image = np.zeros((96, 128, 3), dtype=np.uint8)  # 128 x 96 original: two halves, road below, sky above
    image[:48] = (120, 170, 230)
    image[48:] = (90, 60, 110)
    services.store.upsert_tasks(7, [(IMAGE_TASK, "/data/upload/7/a.png")])
    services.files(7).save_image(IMAGE_TASK, np.asarray(Image.fromarray(image).resize((R, R))))
    services.store.set_task_image(7, IMAGE_TASK, 128, 96, "ready", digest="a")
    pixel = 48 * R + 20  # in the lower half
    services.store.save_round(7, 0, None, [{"task": IMAGE_TASK, "pixel": pixel, "rank": 0, "region": "q0-10-x"}])
    services.store.add_query_task(7, HOLDER, 0, IMAGE_TASK, "p7-r0-t10-0")
    services.store.place_queries(7, 0, IMAGE_TASK, [pixel], HOLDER)
    services.store.open_round(7, 0)
    ls = RecordingLabelStudio()
    services.client = lambda project: ls
    return client, backend, runner, ls, pixel


def test_a_query_tasks_answers_show_their_regions_and_a_reviewers_brush_corrects_them(tmp_path):
    client, backend, runner, ls, pixel = project_with_a_query(tmp_path)
    services = backend.services
    x, y = percent_from_pixel(pixel, R)
    r = client.post("/webhook", json=annotation_event(1, HOLDER, [keypoint("q0-10-x", x, y, "Road")]))
    assert r.status_code == 201 and (7, "answers") in runner.jobs
    assert runner.payloads[runner.jobs.index((7, "answers"))] == {"holder": HOLDER, "skipped": False}

    assert show_answered_regions(services, 7, HOLDER) == 1
    ((task, version, result),) = ls.predictions.values()
    assert (task, version) == (HOLDER, ANSWERED_VERSION)
    (region,) = result
    assert region["value"]["brushlabels"] == ["Road"] and region["id"] == "expanded-q0-10-x"
    shown = resize_mask(mask_from_brush(region["value"], 128, 96), R)
    expected = services.expansions(7, services.settings_for(7)).region(
        IMAGE_TASK, pixel, lambda: services.files(7).load_image(IMAGE_TASK))
    assert set(np.flatnonzero(shown)) == set(expected.tolist()) | {pixel}
    assert shown[:R // 2].sum() == 0 and shown[R // 2:].sum() > 200  # the lower half only: the road, not the sky
    assert region["meta"]["text"] == [f"Grown from the click on Road: {min(256, len(expected))} training pixels"]
    show_answered_regions(services, 7, HOLDER)  # again (an updated answer): replaced, not added
    assert len(ls.predictions) == 1

    # the reviewer takes the shown region, recolours it as Pavement with the brush and submits
    corrected = {**region, "id": "fix-1", "origin": "prediction-changed",
                 "value": {**region["value"], "brushlabels": ["Pavement"]}}
    r = client.post("/webhook", json=annotation_event(2, HOLDER, [corrected], updated="2026-01-02T00:00:00Z"))
    assert r.status_code == 201, r.json
    labeled = build_labeled_set(services.store.labels(7), services.files(7).load_image,
                                services.expansions(7, services.settings_for(7)), 256)
    pixels, classes = labeled[IMAGE_TASK]
    got = dict(zip(pixels.tolist(), classes.tolist()))
    pavement = services.schema(7).class_index("Pavement")
    assert set(got.values()) == {pavement}  # nothing of the region keeps the click's Road, its pixel included
    assert len(got) == 256 and set(got) <= set(np.flatnonzero(shown).tolist())  # REGION_PIXEL_CAP of the stroke


def test_a_skip_retires_the_query_task_so_nobody_else_is_served_it(tmp_path):
    client, backend, runner, ls, _ = project_with_a_query(tmp_path)
    event = annotation_event(3, HOLDER, [])
    event["annotation"]["was_cancelled"] = True
    assert client.post("/webhook", json=event).status_code == 201
    payload = runner.payloads[runner.jobs.index((7, "answers"))]
    assert payload == {"holder": HOLDER, "skipped": True}
    assert show_answered_regions(backend.services, 7, **payload) == 0
    assert ls.retired == [HOLDER] and ls.predictions == {}
    assert backend.services.store.round_progress(7, 0) == {"open": 0, "answered": 0, "dismissed": 1}
