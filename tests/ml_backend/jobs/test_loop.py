"""A round's steps in one process, without Label Studio: what each job reads and computes."""

from __future__ import annotations

import numpy as np

from ml_backend.jobs.loop import RoundContext, compute_records
from ml_backend.state.store import Label
from ml_backend.state.workspace import ProjectFiles
from tests.ml_backend.web.test_server import CONFIG, make_client


def ready_images(services, project: int, tasks=(1, 2, 3, 4), size: int = 64) -> None:
    """The project's tasks with random images downloaded and ready, as the sync leaves them."""
    files = services.files(project)
    rng = np.random.default_rng(0)
    for task in tasks:
        services.store.upsert_tasks(project, [(task, f"/data/upload/{project}/{task}.png")])
        files.save_image(task, rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        services.store.set_task_image(project, task, size, size, "ready", digest=f"d{task}")


def test_a_records_batch_builds_the_labeled_set_of_its_own_images_only(tmp_path, monkeypatch):
    """Four images, 1 and 3 labeled, records in batches: the batch [2, 3] decodes images 2 and 3 only
    (it decoded every labeled image of the project for each batch: 1,250 batches at 10,000 images),
    and writes the same records, keyed by the same labeled pixels, as a round that sees every image."""
    _, backend, _ = make_client(tmp_path, candidates=200, local_k=5, expander="superpixel")
    services = backend.services
    backend.setup("7.1", CONFIG)
    ready_images(services, 7)
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
