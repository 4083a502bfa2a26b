"""Bad inputs and repeated, reordered deliveries: clear errors, skipped items, nothing lost."""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ml_backend.backend import ActiveLearningBackend
from ml_backend.config import Settings
from ml_backend.label_config import SHIPPED_CONFIG
from ml_backend.label_studio import LabelStudioClient, LabelStudioUnavailable
from ml_backend.loop import decode_image
from ml_backend.services import Services
from tests.ml_backend.servers import free_port
from tests.ml_backend.test_server import RecordingRunner, annotation_event, keypoint

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
