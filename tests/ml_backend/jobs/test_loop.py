"""A round's steps in one process, without Label Studio: what each job reads and computes."""

from __future__ import annotations

import numpy as np

from ml_backend.jobs.loop import RoundContext, compute_records
from ml_backend.state.store import Label
from ml_backend.state.workspace import ProjectFiles
from tests.ml_backend.web.test_server import CONFIG, make_client


def test_a_records_batch_builds_the_labeled_set_of_its_own_images_only(tmp_path, monkeypatch):
    """Four images, 1 and 3 labeled, records in batches: the batch [2, 3] decodes images 2 and 3 only
    (it decoded every labeled image of the project for each batch: 1,250 batches at 10,000 images),
    and writes the same records, keyed by the same labeled pixels, as a round that sees every image."""
    _, backend, _ = make_client(tmp_path, candidates=200, local_k=5, expander="superpixel")
    services = backend.services
    backend.setup("7.1", CONFIG)
    files = services.files(7)
    rng = np.random.default_rng(0)
    for task in (1, 2, 3, 4):
        services.store.upsert_tasks(7, [(task, f"/data/upload/7/{task}.png")])
        files.save_image(task, rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        services.store.set_task_image(7, task, 64, 64, "ready", digest=f"d{task}")
    services.store.apply_annotation(7, 1, 1, "2026-01-01T00:00:00Z", [], [Label(1, "a", 100, 2, "keypoint")])
    services.store.apply_annotation(7, 2, 3, "2026-01-01T00:00:00Z", [], [Label(3, "b", 900, 3, "keypoint")])
    loaded = []
    load_image = ProjectFiles.load_image
    monkeypatch.setattr(ProjectFiles, "load_image", lambda self, task: (loaded.append(task), load_image(self, task))[1])

    compute_records(services, 7, [2, 3], round_index=1)
    assert sorted(set(loaded)) == [2, 3]
    whole = RoundContext(services, 7)
    assert whole.config == RoundContext(services, 7, only={2}).config  # the budget counts all four images
    assert [whole.has_record(t) for t in (1, 2, 3, 4)] == [False, True, True, False]
    assert 900 in whole.pixels[whole.index[3]] and whole.index[2] not in whole.pixels
    loaded.clear()
    compute_records(services, 7, [4], round_index=1)
    assert set(loaded) == {4} and RoundContext(services, 7).has_record(4)
