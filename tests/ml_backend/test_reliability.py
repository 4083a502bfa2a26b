"""Bad inputs and repeated, reordered deliveries: clear errors, skipped items, nothing lost."""

from __future__ import annotations

import io
import logging
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ml_backend.web.backend import ActiveLearningBackend
from ml_backend.config import Settings
from ml_backend.label_studio.label_config import SHIPPED_CONFIG
from ml_backend.label_studio.client import DownloadError, DownloadLimits, LabelStudioClient, LabelStudioUnavailable
from ml_backend.label_studio.images import decode_image
from ml_backend.label_studio.regions import RegionError
from ml_backend.services import Services
from tests.ml_backend.servers import ImageHost, drip, free_port, redirect_to, send_bytes
from tests.ml_backend.web.test_server import RecordingRunner, annotation_event, keypoint

CONFIG = SHIPPED_CONFIG.read_text()
CLASSES = ["Sky", "Building", "Road", "Car"]


def new_backend(directory: Path) -> ActiveLearningBackend:
    services = Services.create(Settings(model_dir=directory, backbone="tiny", resolution=64))
    backend = ActiveLearningBackend(services, RecordingRunner())
    backend.setup("7.1", CONFIG)
    return backend


@st.composite
def histories(draw):
    """Annotations with successive versions, some deleted, and tasks, some deleted."""
    messages = []
    for annotation in range(1, draw(st.integers(1, 4)) + 1):
        task = draw(st.integers(1, 3))
        versions = draw(st.integers(1, 3))
        for v in range(versions):
            result = [keypoint(f"r{annotation}-{k}", draw(st.floats(0, 100)), draw(st.floats(0, 100)),
                               draw(st.sampled_from(CLASSES))) for k in range(draw(st.integers(0, 3)))]
            action = "ANNOTATION_CREATED" if v == 0 else "ANNOTATION_UPDATED"
            messages.append(annotation_event(annotation, task, result, f"2026-01-01T00:00:0{v}Z", action))
        if draw(st.booleans()):
            messages.append({"action": "ANNOTATIONS_DELETED", "project": {"id": 7}, "annotations": [{"id": annotation}]})
    for task in range(1, 4):
        if draw(st.integers(0, 4)) == 0:
            messages.append({"action": "TASKS_DELETED", "project": {"id": 7}, "tasks": [{"id": task}]})
    return messages


def labeled_set(backend) -> list[tuple]:
    return sorted((r["task"], r["pixel"], r["class"], r["region"]) for r in backend.services.store.labels(7))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories(), data=st.data())
def test_duplicated_and_reordered_webhooks_end_in_the_clean_labeled_set(history, data):
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        clean, messy = new_backend(Path(a)), new_backend(Path(b))
        for message in history:
            clean.fit(message["action"], message)
        deliveries = history + data.draw(st.lists(st.sampled_from(history), max_size=6))  # repeats
        for message in data.draw(st.permutations(deliveries)):
            messy.fit(message["action"], message)
        assert labeled_set(messy) == labeled_set(clean)


def test_unreachable_label_studio_is_retried_with_backoff_and_reported(caplog):
    client = LabelStudioClient(f"http://127.0.0.1:{free_port()}", "not-a-real-key-0123", attempts=3, backoff=0.01)
    with caplog.at_level(logging.WARNING), pytest.raises(LabelStudioUnavailable, match="after 3 attempts"):
        client.tasks(1)
    assert caplog.text.count("retry") == 2 and "not-a-real-key-0123" not in caplog.text


def test_a_busy_label_studio_is_asked_as_often_as_the_client_says_not_more():
    """The SDK retries a 5xx twice by itself: inside the client's own 5 attempts that was 15 requests."""
    with ImageHost({"/api/projects/7/": send_bytes(b"busy", 503)}) as ls:
        with pytest.raises(LabelStudioUnavailable, match="3 attempts"):
            LabelStudioClient(ls.url, "key-0123456789", attempts=3, backoff=0.01).post_notice(7, "round 1 is open")
        assert [path for path, _ in ls.requests] == ["/api/projects/7/"] * 3


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_corrupt_and_huge_images():
    with pytest.raises(ValueError, match="not a readable image"):
        decode_image(b"\x89PNG\r\n\x1a\n this is not a picture")
    with pytest.raises(ValueError, match="not a readable image"):
        decode_image(b"")
    big = decode_image(_png(Image.new("RGB", (8000, 6000), (10, 200, 30))))  # 48 Mpx: resized later, fine
    assert big.size == (8000, 6000)
    with pytest.raises(ValueError, match="too large"):
        decode_image(_png(Image.new("1", (10000, 9000))))  # 90 Mpx: refused before decoding
    gray = decode_image(_png(Image.new("L", (30, 20), 7)))
    assert gray.mode == "RGB" and np.asarray(gray)[0, 0].tolist() == [7, 7, 7]


# downloads ---------------------------------------------------------------------------------------
def _client(label_studio_url: str, **limits) -> LabelStudioClient:
    return LabelStudioClient(label_studio_url, "key-0123456789", attempts=3, backoff=0.01,
                             downloads=DownloadLimits(**limits))


PNG = _png(Image.new("RGB", (30, 20), (200, 10, 10)))


def test_a_failing_file_is_its_own_error_and_only_label_studio_is_retried():
    with ImageHost({"/ok.png": send_bytes(PNG), "/gone.png": send_bytes(b"", 404),
                    "/busy.png": send_bytes(b"try later", 503), "/loop": redirect_to("/loop"),
                    "/local": redirect_to("file:///etc/passwd")}) as other, \
            ImageHost({"/busy.png": send_bytes(b"try later", 503)}) as ls:
        client = _client(ls.url)
        assert client.download(other.url + "/ok.png") == PNG
        for path, reason in [("/gone.png", "HTTP 404"), ("/busy.png", "HTTP 503"), ("/loop", "more than 5 redirects"),
                             ("/local", r"not http\(s\)")]:
            with pytest.raises(DownloadError, match=reason) as caught:
                client.download(other.url + path)
            assert other.url not in str(caught.value)  # the reason, not the address or the remote answer
        for bad in ("https://a..b/x.png", "http://[::1/x.png"):  # URLs the parser or IDNA refuse
            with pytest.raises(DownloadError, match="URL"):
                client.download(bad)
        assert sum(path == "/busy.png" for path, _ in other.requests) == 1  # another host: one attempt
        with pytest.raises(DownloadError, match="HTTP 503"):
            client.download("/busy.png")  # Label Studio's own host: retried, then this file fails
        assert len(ls.requests) == 3


def test_the_key_goes_to_label_studio_only_and_not_along_redirects():
    with ImageHost({"/img.png": send_bytes(PNG)}) as other:
        with ImageHost({"/data/upload/1/a.png": send_bytes(PNG),
                        "/data/upload/1/b.png": redirect_to(other.url + "/img.png")}) as ls:
            client = _client(ls.url)
            assert client.download("/data/upload/1/a.png") == PNG
            assert client.download("/data/upload/1/b.png") == PNG
            assert client.download(other.url + "/img.png") == PNG
    assert [h.get("Authorization") for _, h in ls.requests] == ["Token key-0123456789"] * 2
    assert [h.get("Authorization") for _, h in other.requests] == [None, None]


@pytest.mark.parametrize("headers_too", [False, True])
def test_a_dripping_download_releases_its_thread_by_the_deadline(headers_too):
    with ImageHost({"/slow.png": drip(0.2, headers_too)}) as host:
        client = _client(f"http://127.0.0.1:{free_port()}", timeout=1.5)
        start = time.monotonic()
        with pytest.raises(DownloadError, match="within 1.5 s"):
            client.download(host.url + "/slow.png")
        assert 1.4 < time.monotonic() - start < 2.0


def test_concurrent_downloads_are_capped_and_waiting_counts_against_the_deadline():
    with ImageHost({"/slow.png": drip(0.2)}) as host:
        client = _client(f"http://127.0.0.1:{free_port()}", timeout=1.0, concurrent=1)
        outcomes = []

        def fetch():
            try:
                client.download(host.url + "/slow.png")
            except DownloadError as exc:
                outcomes.append((str(exc), time.monotonic() - start))

        start = time.monotonic()
        threads = [threading.Thread(target=fetch, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        assert len(outcomes) == 2 and all(seconds < 1.6 for _, seconds in outcomes)
        assert len(host.requests) == 1  # the second waited for the slot until its own deadline


def test_a_file_over_the_size_cap_is_refused():
    with ImageHost({"/big.png": send_bytes(b"x" * 5000), "/big-no-length": _chunked(b"x" * 5000)}) as host:
        client = _client(f"http://127.0.0.1:{free_port()}", max_bytes=4096)
        for path in ("/big.png", "/big-no-length"):
            with pytest.raises(DownloadError, match="larger than"):
                client.download(host.url + path)


def _chunked(data: bytes):
    def answer(request):  # no Content-Length: the body ends when the connection does (HTTP/1.0)
        request.send_response(200)
        request.end_headers()
        request.wfile.write(data)
    return answer


# sizes ------------------------------------------------------------------------------------------
def test_a_brush_mask_larger_than_its_image_is_not_decoded(tmp_path):
    from ml_backend.label_studio.regions import brush_region, mask_from_brush

    backend = new_backend(tmp_path)
    store = backend.services.store
    store.upsert_tasks(7, [(5, "/data/upload/7/x.png")])
    store.set_task_image(7, 5, 48, 36, "ready")
    schema = backend.services.schema(7)
    fits = brush_region("fits", np.ones((36, 48), dtype=bool), 3, schema)
    oversized = brush_region("oversized", np.ones((400, 600), dtype=bool), 3, schema)  # declares 600x400
    out = backend.fit("ANNOTATION_CREATED", annotation_event(1, 5, [fits, oversized]))
    assert out["skipped_regions"] == ["region oversized: brush region of 600x400 on an image of 48x36"]
    assert {r["region"] for r in store.labels(7)} == {"fits"}
    # an image the backend has not fetched: the declared size is capped, and the RLE's header must agree
    header = list((20000 * 20000 * 4).to_bytes(4, "big"))
    with pytest.raises(RegionError, match="implausible size 20000x20000"):
        mask_from_brush({"rle": header + [0] * 8}, 20000, 20000)
    with pytest.raises(RegionError, match="declares 6400000 values, expected 100x100x4"):
        mask_from_brush({"rle": list((1000 * 1600 * 4).to_bytes(4, "big")) + [0] * 8}, 100, 100)


# jobs -------------------------------------------------------------------------------------------
def test_a_project_has_at_most_one_queued_job_of_a_kind(tmp_path):
    from ml_backend.jobs.runners import record_job
    from ml_backend.state.store import Store

    store = Store(tmp_path / "s.sqlite3")
    running, _ = record_job(store, 1, "train", None)
    store.start_job(running)
    queued = [record_job(store, 1, "train", None) for _ in range(5)]  # five requests while one runs
    assert queued[0][1] and {job for job, _ in queued} == {queued[0][0]} and not any(new for _, new in queued[1:])
    assert record_job(store, 2, "train", None)[1]  # another project has its own
    store.start_job(queued[0][0])
    assert record_job(store, 1, "train", None)[1]  # once it runs, a new request waits again


def test_a_training_request_with_nothing_labeled_since_the_last_head_ends_at_once(tmp_path):
    from ml_backend.state.labeled_set import labels_digest
    from ml_backend.jobs.loop import advance_project, labeled_since_last_head

    backend = new_backend(tmp_path)
    services, store, runner = backend.services, backend.services.store, backend.runner
    assert not labeled_since_last_head(store, 7)  # nothing labeled, no head
    backend.fit("ANNOTATION_CREATED", annotation_event(1, 5, [keypoint("k", 10.0, 20.0, "Road")]))
    assert labeled_since_last_head(store, 7)
    store.save_round(7, 0, None, [{"task": 5, "pixel": 99, "rank": 0, "region": "q0"}])
    store.open_round(7, 0)
    store.add_head(7, "head-1", 0, "/h1", 1, {}, labels_digest(store.labels(7)))
    assert not labeled_since_last_head(store, 7)
    submitted = list(runner.jobs)
    advance_project(services, runner, 7, force=True)  # would need Label Studio if it went on
    assert store.current_round(7)["status"] == "open" and [h["version"] for h in store.heads(7)] == ["head-1"]
    assert runner.jobs == submitted
    backend.fit("ANNOTATION_UPDATED", annotation_event(1, 5, [keypoint("k", 10.0, 20.0, "Car")], "2026-01-02T00:00:00Z",
                                                      "ANNOTATION_UPDATED"))
    assert labeled_since_last_head(store, 7)  # a changed class is new information


# webhooks ---------------------------------------------------------------------------------------
def test_an_undated_created_annotation_does_not_outrank_a_later_update(tmp_path):
    backend = new_backend(tmp_path)
    created = annotation_event(1, 5, [keypoint("k", 10.0, 20.0, "Road")])
    del created["annotation"]["updated_at"]
    updated = annotation_event(1, 5, [keypoint("k", 10.0, 20.0, "Car")], "2020-01-01T00:00:00Z", "ANNOTATION_UPDATED")
    assert backend.fit("ANNOTATION_CREATED", created)["annotations"] == ["applied"]
    assert backend.fit("ANNOTATION_UPDATED", updated)["annotations"] == ["applied"]
    car = backend.services.schema(7).class_index("Car")
    assert [r["class"] for r in backend.services.store.labels(7)] == [car]
    # a first version dated by created_at only is ordered by it
    created = annotation_event(2, 6, [keypoint("k", 10.0, 20.0, "Road")])
    created["annotation"]["created_at"] = created["annotation"].pop("updated_at").replace("01T", "05T")
    assert backend.fit("ANNOTATION_CREATED", created)["annotations"] == ["applied"]
    assert backend.fit("ANNOTATION_UPDATED", annotation_event(2, 6, [], "2026-01-02T00:00:00Z"))["annotations"] == ["stale"]
