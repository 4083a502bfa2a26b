"""The current head's segmentation of every image task, computed once per head and task.

After each new head a background job segments every image task and imports the results into Label
Studio as predictions of the head's version, SEGMENT_BATCH tasks a call and a job, so that opening a
task and "Retrieve Predictions" are instant and a round's jobs never wait for all of it. `/predict`
answers from the same files (a query task gets its image's segmentation) and computes only what is
missing. A segmentation is Label Studio's BrushLabels RLE at the
image's original size, one region per class, scored by the head's mean confidence; beside it the
class map at the model's resolution is kept, which the learning curve compares with the answers.
Images are segmented by `model.prediction.segment_image`, as `python -m model segment` does with
an exported head.
"""

from __future__ import annotations

import json
import logging
import os
import threading

import numpy as np

from ml_backend.label_studio.images import original_image
from ml_backend.label_studio.regions import brush_region
from ml_backend.services import Services

log = logging.getLogger(__name__)


def segmentation(services: Services, project: int, task: int, head_row: dict, url: str | None = None) -> dict:
    """{"result", "score", "model_version"} of `head_row` on image task `task`, from the cache when it
    is there."""
    path = services.files(project).segmentation_path(head_row["version"], task).with_suffix(".json")
    if path.exists():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            log.warning("project %s: recomputing unreadable segmentation %s", project, path)
    return _compute(services, project, task, head_row, url)[0]


def class_map(services: Services, project: int, task: int, head_row: dict) -> np.ndarray:
    """The head's class of every pixel of the task's image at the model's resolution [R, R], from the
    cache when it is there (the learning curve compares it with the annotators' regions)."""
    path = services.files(project).segmentation_path(head_row["version"], task).with_suffix(".npy")
    if path.exists():
        try:
            return np.load(path)
        except (OSError, ValueError):
            log.warning("project %s: recomputing unreadable class map %s", project, path)
    return _compute(services, project, task, head_row)[1]


def _compute(services: Services, project: int, task: int, head_row: dict,
             url: str | None = None) -> tuple[dict, np.ndarray]:
    """Segment the image, and cache the Label Studio prediction and the class map."""
    version = head_row["version"]
    schema, engine = services.schema(project), services.engine
    head = engine.head(project, version, head_row["path"])
    seg = engine.segment(head, original_image(services, project, task, url))
    full = seg.full_size()
    prediction = {"result": [brush_region(f"seg-{c}", full == c, int(c), schema) for c in np.unique(full)],
                  "score": float(seg.confidence.mean()), "model_version": version}
    path = services.files(project).segmentation_path(version, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = f".{task}.{os.getpid()}.{threading.get_ident()}"  # concurrent /predict calls on one task each write their own
    tmp = path.with_name(f"{mine}.tmp.npy")
    np.save(tmp, seg.classes.astype(np.uint8))
    tmp.replace(path.with_suffix(".npy"))
    tmp = path.with_name(f"{mine}.tmp.json")
    tmp.write_text(json.dumps(prediction))
    tmp.replace(path.with_suffix(".json"))
    return prediction, seg.classes.astype(np.uint8)


SEGMENT_BATCH = 50  # image tasks a `segment` job segments and imports in one call before it yields


def push_segmentations(services: Services, project: int, runner=None) -> int:
    """Segment up to SEGMENT_BATCH image tasks that Label Studio lacks a segmentation of by the current
    head, and import them in one call (Label Studio's bulk prediction import); returns how many. When
    more remain, the job queues its own continuation, so that a round's jobs submitted meanwhile run
    before the rest of the segmentation. A newer head makes it stop: its own job follows."""
    store = services.store
    head_row = store.current_head(project)
    if head_row is None:
        return 0
    version = head_row["version"]
    tasks = store.tasks(project, "ready")
    done = store.segmented_tasks(project, version)
    todo = [row["task"] for row in tasks if row["task"] not in done]
    batch, predictions = todo[:SEGMENT_BATCH], []
    for n, task in enumerate(batch):
        try:
            predictions.append({"task": task, **segmentation(services, project, task, head_row)})
        except ValueError as exc:  # one unusable image never stops the others
            log.warning("project %s task %s: no segmentation: %s", project, task, exc)
            store.mark_segmentation(project, task, version, -1)  # never tried again for this head
        services.progress.update(project, f"segmenting tasks with {version}", len(tasks) - len(todo) + n + 1,
                                 len(tasks), work=(f"segmentation by {version}", len(tasks)))
    current = store.current_head(project)
    if current is None or current["version"] != version:
        log.info("project %s: %s is no longer the current head; its segmentations stop", project, version)
        return 0
    if predictions:
        services.client(project).import_predictions(project, predictions)
        for p in predictions:
            store.mark_segmentation(project, p["task"], version, 0)  # imported in bulk: Label Studio gives no ids
    left = len(todo) - len(batch)
    log.info("project %s: %d segmentations of %s imported into Label Studio, %d to go", project, len(predictions),
             version, left)
    if left and runner is not None:
        runner.submit(project, "segment")
    return len(predictions)
