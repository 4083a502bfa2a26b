"""The segmentation job against a real Label Studio 1.23.2: bulk imports, one batch a job."""

from __future__ import annotations

import io
from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
from PIL import Image

from ml_backend.label_studio import segmentations
from ml_backend.config import Settings
from ml_backend.label_studio.images import fetch_image
from ml_backend.label_studio.label_config import SHIPPED_CONFIG, parse_label_config
from ml_backend.services import Services
from tests.ml_backend.servers import ImageHost, send_bytes
from tests.ml_backend.web.test_server import RecordingRunner
from tests.ml_backend.state.test_versions import add_heads

CONFIG = SHIPPED_CONFIG.read_text()


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_segmentations_are_imported_in_batches_each_job_queueing_the_rest(ls, tmp_path, monkeypatch):
    monkeypatch.setattr(segmentations, "SEGMENT_BATCH", 2)
    with ImageHost({f"/{n}.png": send_bytes(png(n)) for n in range(5)} | {"/broken.png": send_bytes(b"no image")}) as host:
        project = ls.api("POST", "/api/projects", json={"title": "segments", "label_config": CONFIG}).json()["id"]
        ls.api("POST", f"/api/projects/{project}/import",
               json=[{"image": f"{host.url}/{n}.png"} for n in range(5)] + [{"image": f"{host.url}/broken.png"}])
        services = Services.create(Settings(model_dir=tmp_path, backbone="tiny", resolution=64, label_studio_url=ls.url,
                                            label_studio_api_key=ls.token))
        store = services.store
        store.save_project(project, CONFIG, asdict(parse_label_config(CONFIG)))
        tasks = ls.api("GET", f"/api/tasks?project={project}").json()["tasks"]
        store.upsert_tasks(project, [(t["id"], t["data"]["image"]) for t in tasks])
        for t in tasks:
            fetch_image(services, project, t["id"], t["data"]["image"])
    assert len(store.tasks(project, "ready")) == 5 and len(store.tasks(project, "failed")) == 1
    version = add_heads(SimpleNamespace(services=services), project, 1)[0]
    runner = RecordingRunner()
    counts = [segmentations.push_segmentations(services, project, runner) for _ in range(4)]
    assert counts == [2, 2, 1, 0]  # one batch a job ...
    assert runner.jobs == [(project, "segment")] * 2  # ... each queueing its continuation while some remain
    found = [p for p in ls.api("GET", f"/api/predictions/?project={project}").json() if p["model_version"] == version]
    ready = {row["task"] for row in store.tasks(project, "ready")}
    assert sorted(p["task"] for p in found) == sorted(ready)  # each image once, none for the broken one
    assert all(r["type"] == "brushlabels" and r["value"]["rle"] for p in found for r in p["result"])
