"""Protocol handlers through Flask's test client. Label Studio itself is not needed here: the job
runner only records what the handlers ask for (the integration tests run real jobs)."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from ml_backend.web.backend import ActiveLearningBackend
from ml_backend.config import Settings
from ml_backend.label_studio.label_config import SHIPPED_CONFIG
from ml_backend.web.server import create_app
from ml_backend.services import Services
from tests.ml_backend.sdk_checks import assert_valid_result
from tests.ml_backend.servers import ImageHost, free_port, send_bytes

CONFIG = SHIPPED_CONFIG.read_text()


class RecordingRunner:
    outage = None

    def __init__(self):
        self.jobs: list[tuple[int, str]] = []
        self.payloads: list[dict | None] = []

    def submit(self, project, kind, payload=None, depends_on=()):
        self.jobs.append((project, kind))
        self.payloads.append(payload)
        return len(self.jobs)

    def resume(self):
        return []

    def describe(self):
        return {"kind": "recording", "submitted": len(self.jobs)}


def make_client(tmp_path, **overrides):
    # Label Studio at a closed loopback port: /setup's credentials check finds nobody there, fast
    settings = Settings(**{"model_dir": tmp_path, "backbone": "tiny", "resolution": 64,
                           "label_studio_url": f"http://127.0.0.1:{free_port()}", "label_studio_api_key": "secret-key-123",
                           **overrides})
    services = Services.create(settings)
    runner = RecordingRunner()
    backend = ActiveLearningBackend(services, runner)
    app = create_app(settings, backend)
    return app.test_client(), backend, runner


def keypoint(rid, x, y, label):
    return {"id": rid, "from_name": "query", "to_name": "image", "type": "keypointlabels", "original_width": 480,
            "original_height": 360, "value": {"x": x, "y": y, "width": 0.6, "keypointlabels": [label] if label else []}}


def annotation_event(annotation_id, task, result, updated="2026-01-01T00:00:00Z", action="ANNOTATION_CREATED"):
    return {"action": action, "project": {"id": 7, "label_config": CONFIG},
            "annotation": {"id": annotation_id, "task": task, "result": result, "updated_at": updated},
            "task": {"id": task, "data": {"image": "/data/upload/7/x.png"}}}


def png_bytes(image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def client(tmp_path):
    return make_client(tmp_path)


def test_health_answers_without_credentials_and_the_rest_is_in_metrics(tmp_path):
    c, _, _ = make_client(tmp_path, basic_auth_user="ann", basic_auth_pass="pw-123",
                          label_studio_url="http://ls.internal:8080")
    r = c.get("/health")
    assert r.status_code == 200 and r.json["status"] == "UP" and r.json["ready"]
    assert r.json["model"] == {"backbone": "tiny", "pretrained": False, "weights": "random weights, not pretrained"}
    text = r.get_data(as_text=True)
    for private in ("secret-key-123", "pw-123", "ann", "ls.internal", str(tmp_path), "model_dir", "basic_auth",
                    "redis", "jobs"):
        assert private not in text
    m = c.get("/metrics", headers=auth_header("ann", "pw-123")).json
    assert m["settings"]["basic_auth_user"] == "ann" and m["settings"]["label_studio_api_key_set"]
    assert m["backbone"]["backbone"] == "tiny" and m["jobs"]["kind"] == "recording"
    assert "secret-key-123" not in json.dumps(m) and "pw-123" not in json.dumps(m)


def test_setup_validates_the_config_and_starts_a_sync(client):
    c, backend, runner = client
    r = c.post("/setup", json={"project": "7.1700000000", "schema": CONFIG, "hostname": "http://ls", "access_token": "t"})
    assert r.status_code == 200 and r.json == {"model_version": "none"}
    assert runner.jobs == [(7, "sync")]
    c.post("/setup", json={"project": "7.1700000000", "schema": CONFIG})
    assert runner.jobs == [(7, "sync")]  # Label Studio calls /setup often: syncs are throttled
    bad = CONFIG.replace("BrushLabels", "PolygonLabels")
    r = c.post("/setup", json={"project": "8.1", "schema": bad})
    assert r.status_code == 400 and "BrushLabels" in r.json["error"]


def test_extra_params_set_one_projects_settings_and_not_anothers(client):
    from ml_backend.config import PROJECT_SETTINGS

    c, backend, _ = client
    r = c.post("/setup", json={"project": "7.1", "schema": CONFIG, "extra_params": {"BUDGET": 5, "acquisition": "margin"}})
    assert r.status_code == 200, r.json
    assert c.post("/setup", json={"project": "8.1", "schema": CONFIG, "extra_params": None}).status_code == 200
    services = backend.services
    assert services.settings_for(7).acquisition == "margin" and services.settings_for(8).acquisition == "edald"
    engine = services.engine
    assert engine.round_config(services.settings_for(7), 20).budget == 5
    assert engine.round_config(services.settings_for(8), 20).budget == 2  # the environment's 0.1 x 20
    assert engine.round_config(services.settings_for(7), 20).acquisition == "margin"
    for view in (c.get("/metrics").json["projects"], c.get("/health").json["projects"]):
        assert view["7"]["overrides"] == {"BUDGET": 5, "ACQUISITION": "margin"} and view["8"]["overrides"] == {}
        assert (view["7"]["settings"]["BUDGET"], view["7"]["settings"]["ACQUISITION"]) == (5, "margin")
        assert (view["8"]["settings"]["BUDGET"], view["8"]["settings"]["ACQUISITION"]) == (0, "edald")
        assert set(view["7"]["settings"]) == set(PROJECT_SETTINGS) and view["7"]["stopping_hint"] is None


@pytest.mark.parametrize("extra,fragment", [
    ({"BUDGETT": 5}, "unknown setting 'BUDGETT'; a project may set BUDGET,"),
    ({"BACKBONE": "imagenet256"}, "BACKBONE is a per-backend setting"),
    ({"DEVICE": "cuda"}, "per-backend"), ({"BUDGET": "many"}, "BUDGET='many' is not a valid int"),
    ({"ACQUISITION": "edal"}, "ACQUISITION='edal'"), ({"EXPANDER": "sam"}, "EXPANDER=sam needs a SAM checkpoint"),
    # what Label Studio's Connect Model dialog sends: its textarea, as a string
    ("BUDGET=5", "Extra params are not JSON (Expecting value at line 1 column 1)"),
    ('{"BUDGET": 5,}', "not JSON (Expecting property name enclosed in double quotes at line 1 column 14)"),
    ("[5]", 'Extra params must be a JSON object of settings, such as {"BUDGET": 20}, not list'),
    ('"BUDGET"', "not str 'BUDGET'"), ("5", "not int 5"),
    ('{"BUDGETT": 5}', "unknown setting 'BUDGETT'"), ('{"BUDGET": -2}', "BUDGET=-2 must be 0"),
])
def test_bad_extra_params_are_refused_and_change_nothing(client, extra, fragment):
    c, backend, runner = client
    assert c.post("/setup", json={"project": "7.1", "schema": CONFIG, "extra_params": {"BUDGET": 3}}).status_code == 200
    r = c.post("/setup", json={"project": "7.1", "schema": CONFIG, "extra_params": extra})
    assert r.status_code == 400 and fragment in r.json["error"], r.json
    assert fragment in r.status  # the reason phrase, which is what Label Studio's model dialog shows
    assert backend.services.store.overrides(7) == {"BUDGET": 3} and backend.services.settings_for(7).budget == 3
    c.post("/setup", json={"project": "7.1", "schema": CONFIG, "extra_params": None})  # cleared in Label Studio
    assert backend.services.store.overrides(7) == {} and backend.services.settings_for(7).budget == 0


@pytest.mark.parametrize("body,fragment", [  # each accepted before, and then stopped every round
    ('{"BUDGET_FACTOR": "inf"}', "BUDGET_FACTOR='inf' is not a finite number"),
    ('{"BUDGET_FACTOR": 1e308}', "BUDGET_FACTOR=1e+308 must lie in (0, 100]"),
    ('{"BUDGET_FACTOR": 1e999}', "BUDGET_FACTOR=inf is not a finite number"),  # JSON's 1e999 is inf
    ('{"KEEP_GLOBAL": NaN}', "KEEP_GLOBAL=nan is not a finite number"),
    ('{"SEED": -1}', "SEED=-1 must lie in 0..4294967295"),
    ('{"SEED": 18446744073709551616}', "SEED=18446744073709551616 must lie in 0..4294967295"),
    ('{"CANDIDATES": 1099511627776}', "CANDIDATES=1099511627776: at most 2147483647"),
    ('{"BUDGET": "\u0661\u0662"}', "BUDGET='\u0661\u0662' is not a valid int"),  # Arabic-Indic 12
])
def test_extra_params_that_would_stop_every_round_are_refused_with_their_range(client, body, fragment):
    c, backend, _ = client
    raw = '{"project": "7.1", "schema": %s, "extra_params": %s}' % (json.dumps(CONFIG), body)  # 1e999 and NaN as sent
    r = c.post("/setup", data=raw, content_type="application/json")
    assert r.status_code == 400 and fragment in r.json["error"], r.json
    assert backend.services.store.overrides(7) == {}


@pytest.mark.parametrize("extra,budget", [
    ("", 0), ("  ", 0), ("{}", 0), (None, 0), ({}, 0), ('{"BUDGET": 3}', 3), ('{\n  "budget": 4\n}', 4), ({"BUDGET": 5}, 5)])
def test_extra_params_as_the_connect_dialog_sends_them(client, extra, budget):
    """Label Studio sends the dialog's Extra params textarea as a JSON string, "" when left empty."""
    c, backend, _ = client
    r = c.post("/setup", json={"project": "7.1", "schema": CONFIG, "extra_params": extra})
    assert r.status_code == 200, r.json
    assert backend.services.settings_for(7).budget == budget
    assert backend.services.store.overrides(7) == ({"BUDGET": budget} if budget else {})


def test_a_missing_checkpoint_is_not_ready_and_names_the_file_its_path_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    for name in ("BACKBONE", "DIFFUSION_CHECKPOINT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env()  # the default: MODEL_DIR/checkpoints/256x256_diffusion_uncond.pt
    c, _, _ = make_client(tmp_path, diffusion_checkpoint=settings.diffusion_checkpoint, backbone="imagenet256")
    r = c.post("/setup", json={"project": "1.1", "schema": CONFIG})
    expected = str(tmp_path / "checkpoints" / "256x256_diffusion_uncond.pt")
    url = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt"
    assert r.status_code == 400 and expected in r.json["error"] and url in r.json["error"]
    health = c.get("/health")
    assert health.status_code == 200  # Label Studio needs a 200 to connect
    assert health.json["status"] == "NOT_READY" and not health.json["ready"]
    assert health.json["model"]["pretrained"] is False and expected in health.json["todo"] and url in health.json["todo"]
    assert health.json["model"]["weights"].startswith("not there yet: the released 256x256_diffusion_uncond.pt")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "256x256_diffusion_uncond.pt").write_bytes(b"weights")  # the file at that path is enough
    model = c.get("/health").json["model"]
    assert c.get("/health").json["ready"] and model["pretrained"] and model["weights"].startswith("the released")


def test_a_tiny_checkpoint_from_pretrain_is_loaded_and_reported_as_pretrained(tmp_path, monkeypatch):
    import numpy as np
    import torch
    from PIL import Image

    from model.pretrain import PretrainConfig, Pretraining

    images = []
    for i in range(2):
        images.append(tmp_path / f"img{i}.png")
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(images[-1])
    trained = Pretraining(PretrainConfig("tiny", 32, steps=1, batch_size=1), images, "mine", tmp_path / "run").run()
    monkeypatch.setenv("BACKBONE", "tiny")
    monkeypatch.setenv("DIFFUSION_CHECKPOINT", str(trained))
    settings = Settings.from_env()
    c, backend, _ = make_client(tmp_path, backbone=settings.backbone, diffusion_checkpoint=settings.diffusion_checkpoint,
                                resolution=32, device="cpu")
    health = c.get("/health").json
    weights = "pretrained on mine (2 images, 1 step at 32 px), from scratch"
    assert health["ready"] and health["model"] == {"backbone": "tiny", "pretrained": True, "weights": weights}
    status = backend.services.engine.status()
    assert status["pretrained"] and status["weights"] == weights and status["checkpoint"] == str(trained)
    loaded = backend.services.engine.extractor().unet.state_dict()
    saved = torch.load(trained, weights_only=True)
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    trained.unlink()  # a configured file that is gone: not ready, and says what to do (never random weights)
    health = c.get("/health").json
    assert not health["ready"] and not health["model"]["pretrained"]
    assert str(trained) in health["todo"] and "python -m model pretrain --backbone tiny" in health["todo"]


@pytest.mark.parametrize("path,body,fragment", [
    ("/setup", "{not json", "not JSON (Expecting property name enclosed in double quotes at line 1 column 2)"),
    ("/predict", "not json", "not JSON (Expecting value at line 1 column 1)"),
    ("/webhook", b"\xff\xfe\x00", "not JSON (not Unicode text"),
    ("/setup", "[1, 2]", "object"),
    ("/setup", "{}", "project"),
    ("/predict", "{}", "tasks"),
    ("/predict", '{"tasks": [{"data": {}}]}', "id"),
    ("/predict", '{"tasks": [{"id": 1}], "project": "x.1"}', "project id"),
    ("/webhook", '{"project": {"id": 1}}', "action"),
    ("/webhook", '{"action": "ANNOTATIONS_DELETED", "project": {"id": 1}}', "annotations"),
    ("/webhook", '{"action": "ANNOTATION_CREATED", "project": {"id": 1}, "annotation": {"result": []}}', "id"),
    ("/train", "{}", "project"),
])
def test_malformed_requests_get_a_400_with_a_message(client, path, body, fragment):
    c, _, _ = client
    r = c.post(path, data=body, content_type="application/json")
    assert r.status_code == 400 and fragment in r.json["error"]


def click(task_id, value) -> dict:
    return {"tasks": [{"id": task_id, "data": {"image": "/data/upload/7/a.png"}}], "project": "7.1",
            "label_config": CONFIG, "params": {"context": {"result": [{"type": "keypointlabels", "value": value}]}}}


def webhook_with(action="ANNOTATION_CREATED", **annotation) -> dict:
    return {"action": action, "project": {"id": 7, "label_config": CONFIG},
            "annotation": {"id": 1, "task": 5, "result": [], "updated_at": "2026-01-01T00:00:00Z", **annotation}}


MALFORMED = [  # each answered 500 before it was checked at the edge
    ("/setup", "[" * 100_000, "JSON"),
    ("/setup", {"project": 10 ** 23, "schema": CONFIG}, "project id"),
    ("/setup", {"project": "100000000000000000000000.17", "schema": CONFIG}, "project id"),
    ("/setup", {"project": "7.1", "schema": {"View": 1}}, "'schema' must be a string"),
    ("/setup", {"project": "7.1", "schema": 5}, "'schema' must be a string"),
    ("/setup", {"project": "7.1", "schema": CONFIG, "hostname": 5, "access_token": "t"}, "'hostname'"),
    ("/predict", click("abc", {"x": 5, "y": 5, "keypointlabels": ["Road"]}), "task id"),
    ("/predict", click(1, "x=5,y=5"), "object 'value'"),
    ("/webhook", webhook_with(task="x"), "task id"),
    ("/webhook", webhook_with(task={}), "'task' object needs an 'id'"),
    ("/webhook", webhook_with(id="abc"), "annotation id"),
    ("/webhook", webhook_with(updated_at="0001-01-01T00:00:00+05:00"), "timestamp"),
    ("/webhook", {"action": "TASKS_DELETED", "project": {"id": 7}, "tasks": [{"id": "abc"}]}, "task's id"),
    ("/webhook", {"action": "ANNOTATIONS_DELETED", "project": {"id": 7}, "annotations": [{"id": "abc"}]}, "annotation's id"),
    ("/webhook", {"action": "PROJECT_UPDATED", "project": 7}, "'project' object"),
    ("/webhook", {"action": "START_TRAINING", "project": {"id": True}}, "project id"),
    ("/versions", "[1, 2]", "object"),
    ("/versions", {"project": [7]}, "project id"),
]


@pytest.mark.parametrize("path,body,fragment", MALFORMED, ids=[f"{p} {str(b)[:40]}" for p, b, _ in MALFORMED])
def test_malformed_inputs_get_a_400_that_names_the_field(client, path, body, fragment):
    c, _, _ = client
    c.post("/setup", json={"project": "7.1", "schema": CONFIG})
    r = c.post(path, **({"data": body, "content_type": "application/json"} if isinstance(body, str) else {"json": body}))
    assert r.status_code == 400 and fragment in r.json["error"], r.json


LONG_ID = "9" * 5000  # past int()'s 4,300 digits: a ValueError inside int(), answered 500 before
FOREIGN_DIGITS = "\u0662\u0660"  # Arabic-Indic 20: int() reads it, Label Studio never sends it
BAD_IDS = [
    ("post", "/setup", {"project": LONG_ID, "schema": CONFIG}, "project id"),
    ("post", "/setup", {"project": f"{LONG_ID}.1", "schema": CONFIG}, "project id"),
    ("post", "/predict", {"tasks": [{"id": LONG_ID}], "project": "7.1"}, "a task id"),
    ("post", "/webhook", webhook_with(id=LONG_ID), "an annotation id"),
    ("post", "/webhook", webhook_with(task=LONG_ID), "the annotation's task id"),
    ("post", "/webhook", {"action": "TASKS_DELETED", "project": {"id": 7}, "tasks": [{"id": LONG_ID}]}, "task's id"),
    ("post", "/train", {"project": LONG_ID}, "project id"),
    ("post", "/versions", {"project": LONG_ID}, "project id"),
    ("get", f"/versions?project={LONG_ID}", None, "project id"),
    ("get", "/versions?project=9223372036854775808", None, "project id"),  # 2^63
    ("post", "/versions/pin", {"version": "p7-head-1", "project": LONG_ID}, "project id"),
    ("post", "/versions/pin", {"version": f"p{LONG_ID}-head-1"}, "'version': 'p99999"),
    ("post", "/versions/pin", {"version": "p99999999999999999999-head-1"}, "not a positive 64-bit id"),
    ("post", "/versions/pin", {"version": "p9223372036854775808-head-1"}, "not a positive 64-bit id"),
    ("get", f"/metrics/{LONG_ID}/curve.png", None, "project id"),
    ("get", f"/metrics/{FOREIGN_DIGITS}/curve.png", None, "project id"),
    ("post", "/webhook", webhook_with(task=FOREIGN_DIGITS), "the annotation's task id"),
]


@pytest.mark.parametrize("method,path,body,fragment", BAD_IDS, ids=[f"{m} {p[:30]} {str(b)[:30]}" for m, p, b, _ in BAD_IDS])
def test_ids_past_64_bits_or_in_other_digits_get_a_400_that_names_the_field(client, method, path, body, fragment):
    c, backend, _ = client
    c.post("/setup", json={"project": "20.1", "schema": CONFIG})  # what "٢٠" would have been read as
    r = getattr(c, method)(path, **({"json": body} if body is not None else {}))
    assert r.status_code == 400 and fragment in r.json["error"], r.json
    assert len(r.json["error"]) < 300  # the id is quoted, not echoed whole


def test_a_megabyte_value_is_echoed_cut_in_answers_and_log(client, caplog):
    c, backend, _ = client
    c.post("/setup", json={"project": "7.1", "schema": CONFIG})
    huge = "x" * 2 ** 20
    answers = [
        (c.post("/versions/pin", json={"project": 7, "version": huge}), 404, "project 7 has no head 'xxx"),
        (c.post("/setup", json={"project": "7.1", "schema": CONFIG, "extra_params": {huge: 1}}), 400, "unknown setting"),
        (c.post("/setup", json={"project": "7.1", "schema": CONFIG, "extra_params": {"BUDGET": huge}}), 400,
         "BUDGET='xxx"),
        (c.post("/webhook", json=annotation_event(1, 5, [keypoint(huge, 10.0, 20.0, huge)])), 201, "unknown class"),
    ]
    for r, status, fragment in answers:
        assert r.status_code == status and fragment in r.get_data(as_text=True), r.get_data(as_text=True)[:200]
        assert len(r.get_data()) < 2_000
    assert caplog.text and len(caplog.text) < 10_000


@pytest.mark.parametrize("value", ["x=5", [5, 5]])
def test_an_unusable_region_is_skipped_and_the_rest_of_the_annotation_kept(client, value):
    c, backend, _ = client
    c.post("/setup", json={"project": "7.1", "schema": CONFIG})
    broken = {"id": "bad", "from_name": "query", "to_name": "image", "type": "keypointlabels", "value": value}
    r = c.post("/webhook", json=annotation_event(1, 5, [broken, keypoint("good", 10.0, 20.0, "Road")]))
    assert r.status_code == 201 and r.json["result"]["skipped_regions"] == ["region bad: 'value' is not an object"]
    assert [row["region"] for row in backend.services.store.labels(7)] == ["good"]


def test_a_body_over_the_size_cap_gets_a_413(tmp_path):
    c, _, _ = make_client(tmp_path, max_request_mb=1)
    body = json.dumps({"action": "X", "project": 1, "padding": "x" * 2 ** 20})
    r = c.post("/webhook", data=body, content_type="application/json")
    assert r.status_code == 413 and r.json["error"] == "the request body is over MAX_REQUEST_MB (1 MB)"
    assert c.post("/webhook", json={"action": "X", "project": 1}).status_code == 201


def chunked(c, path, body: bytes):
    """A body sent with Transfer-Encoding: chunked, no Content-Length, as a WSGI server that decodes
    chunks hands it on (werkzeug's own server and gunicorn set wsgi.input_terminated)."""
    import io

    return c.post(path, input_stream=io.BytesIO(body), content_type="application/json",
                  headers={"Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input_terminated": True})


def test_a_chunked_body_over_the_size_cap_gets_a_413_not_a_cut_body(tmp_path):
    c, _, _ = make_client(tmp_path, max_request_mb=1)
    big = json.dumps({"action": "X", "project": 1, "padding": "x" * 2 ** 21}).encode()
    for path in ("/webhook", "/versions"):
        r = chunked(c, path, big)  # was cut at 1 MB and answered 400 "must be JSON"
        assert r.status_code == 413 and r.json["error"] == "the request body is over MAX_REQUEST_MB (1 MB)", r.json
    r = chunked(c, "/webhook", json.dumps({"action": "X", "project": 1}).encode())
    assert r.status_code == 201 and r.json["status"] == "ignored"


def test_a_compressed_body_gets_a_415_that_says_so(client):
    import gzip

    c, _, _ = client
    body = gzip.compress(json.dumps({"action": "X", "project": 1}).encode())
    r = c.post("/webhook", data=body, content_type="application/json", headers={"Content-Encoding": "gzip"})
    assert r.status_code == 415 and "compressed request bodies (Content-Encoding: 'gzip')" in r.json["error"]
    assert c.get("/health", headers={"Content-Encoding": "gzip"}).status_code == 200


def config_with(*extra: str, replacing: str = "Sky") -> str:
    """The shipped config with the class `replacing` swapped for `extra` classes, in every control."""
    labels = "".join(f'<Label value="{name}"/>' for name in extra)
    return CONFIG.replace(f'<Label value="{replacing}" background="#808080"/>', labels)


def test_a_label_config_beyond_the_documented_size_is_refused_before_it_costs(client):
    c, backend, _ = client
    r = c.post("/setup", json={"project": "7.1", "schema": config_with(*[f"c{i}" for i in range(1000)])})
    assert r.status_code == 400 and "defines 1,010 classes; this backend takes at most 1,000" in r.json["error"]
    padded = CONFIG.replace("<View>", "<View><!--" + "x" * 2 ** 20 + "-->")
    r = c.post("/setup", json={"project": "7.1", "schema": padded})
    assert r.status_code == 400 and "this backend reads at most 1,048,576" in r.json["error"], r.json["error"][:200]
    assert backend.services.store.project(7) is None


def test_messages_list_at_most_20_classes_whatever_the_config_defines(client, caplog):
    c, _, _ = client
    many = config_with(*[f"class-{i:03d}" for i in range(990)])  # 1,000 classes with the shipped ones
    assert c.post("/setup", json={"project": "7.1", "schema": many}).status_code == 200
    event = annotation_event(1, 5, [keypoint(f"k{n}", 10.0, 20.0, "Dragon") for n in range(50)])
    event["project"]["label_config"] = many
    r = c.post("/webhook", json=event)
    skipped = r.json["result"]["skipped_regions"]
    assert len(skipped) == 50 and skipped[0].endswith("class-019 ... and 980 more"), skipped[0]
    assert len(r.get_data()) < 50_000 and len(caplog.text) < 100_000  # each listed every class before


@pytest.mark.parametrize("labels,fragment", [
    (("Sky", "Sky"), "the class 'Sky' appears twice in KeyPointLabels: class names must be unique"),
    (("Caf\u00e9", "Cafe\u0301"), "appears twice in KeyPointLabels (as 'Café', in another Unicode form)"),
    (("Sky", " "), "has a <Label> with an empty value: every class needs a name"),
])
def test_duplicate_and_empty_class_names_are_refused_naming_them(client, labels, fragment):
    c, _, _ = client
    r = c.post("/setup", json={"project": "7.1", "schema": config_with(*labels)})
    assert r.status_code == 400 and fragment in r.json["error"], r.json


def test_a_class_name_in_another_unicode_form_is_the_configs_class(client):
    c, backend, _ = client
    nfc_config = config_with("Caf\u00e9")  # class 0, as a config typed on most systems holds it
    assert c.post("/setup", json={"project": "7.1", "schema": nfc_config}).status_code == 200
    event = annotation_event(1, 5, [keypoint("k", 10.0, 20.0, "Cafe\u0301")])  # the same name, decomposed (NFD)
    event["project"]["label_config"] = nfc_config
    r = c.post("/webhook", json=event)
    assert r.json["result"]["skipped_regions"] == [] and [lb["class"] for lb in backend.services.store.labels(7)] == [0]


def test_unknown_webhook_actions_are_acknowledged_and_ignored(client):
    c, _, runner = client
    r = c.post("/webhook", json={"action": "LABEL_LINK_CREATED", "project": {"id": 1}})
    assert r.status_code == 201 and r.json["status"] == "ignored" and runner.jobs == []


def test_annotation_webhooks_become_labeled_pixels(client):
    c, backend, _ = client
    c.post("/setup", json={"project": "7.1", "schema": CONFIG})
    result = [keypoint("a", 10.0, 20.0, "Road"), keypoint("b", 150.0, 20.0, "Road"),
              keypoint("c", 50.0, 50.0, "Dragon"), keypoint("d", 60.0, 60.0, None)]
    r = c.post("/webhook", json=annotation_event(1, 5, result))
    assert r.status_code == 201 and r.json["result"]["annotations"] == ["applied"]
    skipped = r.json["result"]["skipped_regions"]
    assert len(skipped) == 2 and any("outside" in s for s in skipped) and any("Dragon" in s for s in skipped)
    assert r.json["result"]["pending_regions"] == ["d"]  # no class yet: its query stays open
    labels = backend.services.store.labels(7)
    assert [(lb["task"], lb["pixel"], lb["class"]) for lb in labels] == [(5, 12 * 64 + 6, 3)]


def test_answers_that_arrive_before_their_round_opens_still_advance_it(client):
    from ml_backend.jobs.loop import advance_when_answered

    c, backend, runner = client
    c.post("/setup", json={"project": "7.1", "schema": CONFIG})
    store = backend.services.store
    store.upsert_tasks(7, [(5, "/data/upload/7/x.png")])
    store.save_round(7, 0, None, [{"task": 5, "pixel": 12 * 64 + 6, "rank": 0, "region": "q0-5"}])
    store.place_queries(7, 0, 5, [12 * 64 + 6], holder=99)  # in Label Studio, round not open yet
    r = c.post("/webhook", json=annotation_event(1, 5, [keypoint("q0-5", 10.0, 20.0, "Road")]))
    assert r.json["result"]["advance"] is False and runner.jobs == [(7, "sync")]
    store.open_round(7, 0)  # what push_round does next, and then it checks again:
    assert advance_when_answered(backend.services, runner, 7) and runner.jobs[-1] == (7, "advance")


def test_start_training_train_endpoint_and_new_tasks_queue_jobs(client):
    c, _, runner = client
    c.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}})
    c.post("/train", json={"project": "3.17"})
    c.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": 3}, "tasks": [{"id": 1}]})
    assert runner.jobs == [(3, "train"), (3, "train"), (3, "sync")]
    own = [{"id": 5, "data": {"image": "/a.png", "query_key": "p3-r1-t1-0"}}]  # the backend's own query tasks
    r = c.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": 3}, "tasks": own})
    assert r.json["status"] == "ignored" and runner.jobs == [(3, "train"), (3, "train"), (3, "sync")]
    c.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": 3}, "tasks": own + [{"id": 6, "data": {}}]})
    assert runner.jobs[-1] == (3, "sync")  # with a task of the team's among them: a sync


def test_predict_before_any_head_returns_no_regions(client, caplog):
    caplog.set_level(logging.INFO)
    c, _, _ = client
    c.post("/setup", json={"project": "7.1", "schema": CONFIG})
    r = c.post("/predict", json={"tasks": [{"id": 1, "data": {"image": "/x.png"}}, {"id": 2, "data": {}}],
                                 "project": "7.1", "label_config": CONFIG})
    assert r.status_code == 200
    assert r.json["results"] == []  # nothing Label Studio would store as a prediction
    assert "no head has been trained" in caplog.text


def test_interactive_click_without_class_is_refused(client):
    c, _, _ = client
    r = c.post("/predict", json={"tasks": [{"id": 1, "data": {}}], "project": "7.1", "label_config": CONFIG,
                                 "params": {"context": {"result": [keypoint("k", 5, 5, None)]}}})
    assert r.status_code == 400 and "class" in r.json["error"]


def test_versions_and_metrics(client):
    c, _, _ = client
    empty = {"versions": [], "current": {}, "pinned": {}, "heads": []}
    assert c.get("/versions").json == empty and c.post("/versions", json={"project": "7.1"}).json == empty
    m = c.get("/metrics").json
    assert set(m) == {"uptime_s", "backbone", "jobs", "settings", "projects", "heads", "recent_jobs",
                      "label_studio_calls"}
    assert m["label_studio_calls"] == {}
    c.post("/setup", json={"project": "7.1", "schema": CONFIG})  # asks Label Studio once (nobody answers here)
    assert c.get("/metrics").json["label_studio_calls"] == {"read project N": 1}


def auth_header(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_guards_everything_but_health(tmp_path):
    c, _, _ = make_client(tmp_path, basic_auth_user="ann", basic_auth_pass="pw-123")
    assert c.get("/health").status_code == 200
    for method, path in [("post", "/setup"), ("post", "/predict"), ("post", "/webhook"), ("get", "/metrics"),
                         ("get", "/versions"), ("post", "/train"), ("post", "/versions/pin"),
                         ("get", "/metrics/7/curve.png")]:
        assert getattr(c, method)(path, json={}).status_code == 401
    assert c.get("/metrics", headers=auth_header("ann", "wrong")).status_code == 401
    assert c.get("/metrics", headers=auth_header("ann", "pw-123")).status_code == 200
    assert "pw-123" not in json.dumps(c.get("/health").json)


def test_basic_auth_with_characters_beyond_ascii(tmp_path):
    c, _, _ = make_client(tmp_path, basic_auth_user="zoë", basic_auth_pass="pässwörd-✓")
    assert c.get("/metrics", headers=auth_header("zoë", "pässwörd-✓")).status_code == 200
    for user, password in [("zoe", "pässwörd-✓"), ("zoë", "passwort"), ("ann", "pw"), ("", "")]:
        assert c.get("/metrics", headers=auth_header(user, password)).status_code == 401


def test_an_anonymous_setup_cannot_re_point_a_project(tmp_path):
    c, backend, _ = make_client(tmp_path, label_studio_api_key="")
    services = backend.services
    c.post("/setup", json={"project": "7.1", "schema": CONFIG, "hostname": "http://ls.example:8080",
                           "access_token": "real-token"})
    assert services.client(7).url == "http://ls.example:8080"  # the first address a project gets is kept
    r = c.post("/setup", json={"project": "7.1", "schema": CONFIG, "hostname": "http://attacker.example",
                               "access_token": "other-token"})
    assert r.status_code == 200 and services.client(7).url == "http://ls.example:8080"
    health = c.get("/health").json
    assert "BASIC_AUTH_USER" in health["refused_credentials"]["7"]
    assert "attacker.example" not in json.dumps(health) and "ls.example" not in json.dumps(health)
    c.post("/setup", json={"project": "7.1", "schema": CONFIG, "hostname": "http://ls.example:8080/",
                           "access_token": "real-token"})  # the same ones again: fine, the refusal is cleared
    assert "refused_credentials" not in c.get("/health").json


def test_setup_credentials_outlive_the_process_and_rerun_the_jobs_that_failed_for_want_of_them(tmp_path):
    from ml_backend.jobs.runners import run_job

    c, backend, runner = make_client(tmp_path, label_studio_api_key="")
    store = backend.services.store
    c.post("/setup", json={"project": "7.1", "schema": CONFIG})  # no address or token: jobs cannot reach it
    failed = store.add_job(7, "segment")
    run_job(store, lambda project, kind, payload: backend.services.client(project), failed)
    assert store.job(failed)["status"] == "failed" and store.job(failed)["error"].startswith("NoCredentials:")
    unrelated = store.add_job(7, "answers", {"holder": 9})
    store.finish_job(unrelated, "LabelStudioUnavailable: Label Studio did not answer")
    runner.jobs.clear()
    host, token = f"http://127.0.0.1:{free_port()}", "token-0123456789abcdef"
    setup = {"project": "7.1", "schema": CONFIG, "hostname": host, "access_token": token}
    assert c.post("/setup", json=setup).status_code == 200
    assert runner.jobs == [(7, "segment")]  # the job that lacked them runs again; the other failure is not theirs
    assert store.job(failed)["status"] == "rerun" and store.job(unrelated)["status"] == "failed"
    c.post("/setup", json=setup)
    assert runner.jobs == [(7, "segment")]  # once
    restarted = Services.create(backend.services.settings)  # a new process, or an RQ worker on the same store
    assert restarted.client(7).url == host
    for path in ("/metrics", "/health", "/versions"):
        assert token not in c.get(path).get_data(as_text=True)
    assert token not in store.project(7).__repr__()


def test_an_authenticated_setup_may_change_the_address_and_a_configured_key_always_wins(tmp_path):
    c, backend, _ = make_client(tmp_path / "a", label_studio_api_key="", basic_auth_user="ann", basic_auth_pass="pw")
    for host in ("http://old.example", "http://new.example"):
        c.post("/setup", headers=auth_header("ann", "pw"), json={"project": "7.1", "schema": CONFIG, "hostname": host,
                                                                 "access_token": "t"})
    assert backend.services.client(7).url == "http://new.example"
    c, backend, _ = make_client(tmp_path / "b", label_studio_url="http://configured.example")
    c.post("/setup", json={"project": "7.1", "schema": CONFIG, "hostname": "http://other.example", "access_token": "t"})
    assert backend.services.client(7).url == "http://configured.example"


def test_a_click_on_a_task_outside_the_store_leaves_the_store_unchanged(tmp_path):
    from PIL import Image

    image = Image.new("RGB", (80, 60), (20, 20, 200))
    image.paste((200, 30, 30), (0, 30, 80, 60))  # two flat halves: a clear superpixel
    with ImageHost({"/img.png": send_bytes(png_bytes(image))}) as host:
        c, backend, _ = make_client(tmp_path, superpixel_tau=0.0)
        c.post("/setup", json={"project": "7.1", "schema": CONFIG})
        store = backend.services.store
        before = (store.tasks(7), store.task(7, 7777))
        body = click(7777, {"x": 50.0, "y": 75.0, "keypointlabels": ["Road"]})
        body["tasks"][0]["data"]["image"] = host.url + "/img.png"
        r = c.post("/predict", json=body)
        assert r.status_code == 200 and len(r.json["results"][0]["result"]) == 1
        body["tasks"][0]["data"]["image"] = host.url + "/missing.png"  # a made-up task whose URL answers 404
        r = c.post("/predict", json=body)
        assert r.status_code == 422 and "task 7777" in r.json["error"]
        assert "404" not in r.json["error"] and host.url not in r.json["error"]  # no probing through errors
        assert (store.tasks(7), store.task(7, 7777)) == before == ([], None)
        assert not backend.services.files(7).original_path(7777).exists()


def test_health_gives_a_failed_images_reason_without_object_reprs(client):
    from ml_backend.label_studio.images import fetch_image

    c, backend, _ = client
    c.post("/setup", json={"project": "7.1", "schema": CONFIG})
    with ImageHost({"/notes.png": send_bytes(b"plain text, not an image")}) as host:
        backend.services.store.upsert_tasks(7, [(3, host.url + "/notes.png")])
        fetch_image(backend.services, 7, 3, host.url + "/notes.png")
    (failed,) = c.get("/health").json["failed_tasks"]["7"]
    assert failed == {"task": 3, "error": "not a readable image (not an image format Pillow knows, or a damaged file)"}


def test_interactive_click_returns_the_expanded_region_in_the_clicks_class(tmp_path, camvid_root):
    import numpy as np
    from label_studio_sdk.converter.brush import decode_rle
    from PIL import Image

    c, backend, _ = make_client(tmp_path, superpixel_tau=0.0)
    c.post("/setup", json={"project": "7.1", "schema": CONFIG})
    store, files = backend.services.store, backend.services.files(7)
    original = Image.open(sorted((camvid_root / "val").glob("*.png"))[0]).convert("RGB")
    original.save(files.original_path(1))
    store.upsert_tasks(7, [(1, "/data/upload/7/a.png")])
    store.set_task_image(7, 1, 480, 360, "ready")
    body = {"tasks": [{"id": 1, "data": {"image": "/data/upload/7/a.png"}}], "project": "7.1", "label_config": CONFIG,
            "params": {"context": {"result": [keypoint("k", 50.0, 85.0, "Road")]}}}
    r = c.post("/predict", json=body)
    assert r.status_code == 200
    result = r.json["results"][0]
    assert result["model_version"] == "expander-superpixel" and len(result["result"]) == 1
    assert_valid_result(CONFIG, result["result"])
    region = result["result"][0]
    assert region["type"] == "brushlabels" and region["from_name"] == "mask" and region["value"]["brushlabels"] == ["Road"]
    mask = decode_rle(region["value"]["rle"]).reshape(360, 480, 4)[:, :, 3] > 0
    truth = np.asarray(Image.open(camvid_root / "valannot" / sorted((camvid_root / "val").glob("*.png"))[0].name))
    assert mask[int(0.85 * 360), 240] and mask.sum() > 1000 and (truth[mask & (truth != 11)] == 3).mean() > 0.95
    assert c.get("/metrics").json["backbone"]["expander"]["name"] == "superpixel"
    c.post("/setup", json={"project": "7.1", "schema": CONFIG, "extra_params": {"SUPERPIXEL_TAU": 1.0}})
    r = c.post("/predict", json=body)  # the project's tau: nothing passes, no region, just the confidence
    assert r.json["results"][0]["result"] == [] and 0 <= r.json["results"][0]["score"] <= 1


def camvid_click_project(tmp_path, camvid_root, **overrides):
    """A client whose project 7 has one task (1): CamVid val's first image, 480 x 360, a street."""
    from PIL import Image

    c, backend, runner = make_client(tmp_path, **overrides)
    c.post("/setup", json={"project": "7.1", "schema": CONFIG})
    store, files = backend.services.store, backend.services.files(7)
    Image.open(sorted((camvid_root / "val").glob("*.png"))[0]).convert("RGB").save(files.original_path(1))
    store.upsert_tasks(7, [(1, "/data/upload/7/a.png")])
    store.set_task_image(7, 1, 480, 360, "ready")
    return c, backend


def click_body(*regions):
    return {"tasks": [{"id": 1, "data": {"image": "/data/upload/7/a.png"}}], "project": "7.1", "label_config": CONFIG,
            "params": {"context": {"result": list(regions)}}}


def negative(region):
    return {**region, "is_positive": False}


def rectangle(rid, x, y, width, height, label, rotation=0.0):
    return {"id": rid, "from_name": "box", "to_name": "image", "type": "rectanglelabels", "original_width": 480,
            "original_height": 360, "value": {"x": x, "y": y, "width": width, "height": height,
                                              "rotation": rotation, "rectanglelabels": [label]}}


def answered_mask(response):
    from label_studio_sdk.converter.brush import decode_rle

    regions = response.json["results"][0]["result"]
    assert len(regions) == 1, response.json
    return decode_rle(regions[0]["value"]["rle"]).reshape(360, 480, 4)[:, :, 3] > 0


def test_a_click_session_prompts_with_its_points_negatives_and_box(tmp_path, camvid_root):
    """Label Studio sends every region of the session: later clicks of the class refine the region,
    Alt-clicks take away, a box bounds it, and a click of another class starts another object."""
    c, _ = camvid_click_project(tmp_path, camvid_root)
    road = keypoint("k1", 50.0, 85.0, "Road")  # the middle of the road
    right = keypoint("k2", 80.0, 75.0, "Road")  # the road's right lane, a segment of its own
    first = answered_mask(c.post("/predict", json=click_body(road)))
    both = answered_mask(c.post("/predict", json=click_body(road, right)))
    assert first[306, 240] and not first[270, 384] and both[270, 384] and (both & first).sum() == first.sum()
    assert both.sum() > first.sum() + 1000
    alt_click = negative(keypoint("k3", 85.0, 80.0, "Road"))  # inside the right lane
    taken = answered_mask(c.post("/predict", json=click_body(road, right, alt_click)))
    assert taken[270, 384] and not taken[288, 408] and taken.sum() == first.sum() + 1  # the right lane less its click
    boxed = answered_mask(c.post("/predict", json=click_body(road, rectangle("r1", 40.0, 70.0, 20.0, 30.0, "Road"))))
    rows, cols = boxed.nonzero()
    assert boxed[306, 240] and rows.min() >= 252 and 192 <= cols.min() and cols.max() < 288
    assert boxed.sum() < first.sum()
    other = c.post("/predict", json=click_body(road, keypoint("k4", 80.0, 60.0, "Car")))  # a dark car: below tau
    assert other.status_code == 200 and other.json["results"][0]["result"] == []
    for bad, message in [(click_body(keypoint("k5", 50.0, 85.0, None)), "pick a label"),
                         (click_body(keypoint("k6", 150.0, 85.0, "Road")), "outside"),
                         (click_body(rectangle("r2", 100.0, 50.0, 5.0, 5.0, "Road")), "outside the image"),
                         (click_body({"type": "choices", "value": {}}), "no keypoint click or box")]:
        r = c.post("/predict", json=bad)
        assert r.status_code == 400 and message in r.json["error"], r.json


def _click_in_a_fresh_backend(settings) -> dict:
    """Another process, as a second gunicorn worker: a new backend on the same MODEL_DIR answers a click."""
    backend = ActiveLearningBackend(Services.create(settings), RecordingRunner())
    body = click_body(keypoint("k1", 50.0, 85.0, "Road"))
    answer = backend.predict(body["tasks"], body["params"]["context"], project_uid="7.1", label_config=CONFIG)
    return {"answer": answer, "expander": backend.services.engine.expander().describe()}


def test_a_click_in_another_process_reads_the_prefetched_work_from_disk(tmp_path, camvid_root):
    import multiprocessing as mp

    from ml_backend.jobs.loop import prefetch_expansions

    c, backend = camvid_click_project(tmp_path, camvid_root)
    prefetch_expansions(backend.services, 7, [1])  # what the round's push does, in an RQ worker
    assert backend.services.engine.expander().cache.computed == 1
    with mp.get_context("spawn").Pool(1) as pool:
        there = pool.apply(_click_in_a_fresh_backend, (backend.services.settings,))
    cache = there["expander"]["cache"]
    assert cache["computed"] == 0 and cache["disk_hits"] == 1
    assert cache["directory"].startswith(str(tmp_path / "embeddings"))
    here = c.post("/predict", json=click_body(keypoint("k1", 50.0, 85.0, "Road"))).json["results"][0]
    assert there["answer"][0]["result"] == here["result"] and len(here["result"]) == 1


def answer_json(status: int, body: dict, cookie: str | None = None):
    def answer(request):
        data = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        if cookie:
            request.send_header("Set-Cookie", cookie)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)
    return answer


LEGACY_OFF = "Authentication token no longer valid: legacy token authentication has been disabled for this organization"


def test_a_setup_whose_token_label_studio_refuses_says_what_to_do_and_logs_no_header(tmp_path, caplog):
    """What a default Label Studio 1.23 answers to the legacy token /setup carries (a real one in
    test_connect_dialog.py), here from a stand-in that also sets a session cookie."""
    from ml_backend.label_studio.client import LabelStudioClient, LabelStudioRefused

    refuse = answer_json(401, {"detail": LEGACY_OFF}, cookie="sessionid=s3cr3t-session-id; Path=/")
    caplog.set_level(logging.DEBUG)
    routes = {"/api/projects/7/": refuse}
    with ImageHost(routes) as ls:
        c, backend, runner = make_client(tmp_path, label_studio_api_key="")
        setup = {"project": "7.1", "schema": CONFIG, "hostname": ls.url, "access_token": "legacy-token-abc"}
        r = c.post("/setup", json=setup)
        assert r.status_code == 400 and LEGACY_OFF in r.json["error"], r.json
        for fragment in ("Personal Access Token", "LABEL_STUDIO_API_KEY", "Legacy Tokens", ls.url):
            assert fragment in r.status  # the reason phrase: what the Connect Model dialog shows
        assert runner.jobs == [] and backend.services.store.project(7) is None  # nothing set up on refused keys
        assert LEGACY_OFF in c.get("/health").json["refused_by_label_studio"]["7"]
        with pytest.raises(LabelStudioRefused) as refused:  # what a job meets: the same words, no headers
            LabelStudioClient(ls.url, "legacy-token-abc", backoff=0.01).prepare_queue(7, "v", "p7-r0-t")
        assert refused.value.status_code == 401 and LEGACY_OFF in str(refused.value)
        assert "sessionid" not in str(refused.value)
        routes["/api/projects/7/"] = answer_json(200, {"id": 7, "title": "p"})  # legacy tokens turned on
        ls.requests.clear()
        r = c.post("/setup", json=setup)
        assert r.status_code == 200, r.json
        assert [path for path, _ in ls.requests] == ["/api/projects/7/"]  # one cheap call
    assert "refused_by_label_studio" not in c.get("/health").json and runner.jobs == [(7, "sync")]
    logged = caplog.text.lower()
    assert LEGACY_OFF.lower() in logged
    for secret in ("sessionid", "s3cr3t", "set-cookie", "legacy-token-abc"):
        assert secret not in logged


def test_a_setup_against_a_label_studio_without_the_project_names_the_address(tmp_path):
    with ImageHost({}) as other:  # answers 404 to everything: another server than the project's
        c, backend, runner = make_client(tmp_path, label_studio_url=other.url)
        r = c.post("/setup", json={"project": "7.1", "schema": CONFIG})
    assert r.status_code == 400 and f"Label Studio at {other.url} does not know project 7" in r.status
    assert "LABEL_STUDIO_URL" in r.json["error"] and runner.jobs == []
