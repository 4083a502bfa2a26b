"""What each answered click became, shown on the query task it was answered on.

The model trains on the region the expander grows from each labeled click (labeled_set.py), not
on the click alone: ten clicks can be a thousand training pixels. Once a query task's answers are
taken in, a job puts a prediction of version ANSWERED_VERSION on that task: one BrushLabels region
per labeled click, the expander's region at the image's size in the click's class, its text giving
how many training pixels it adds. A reviewer opening the task sees it beside the answer; one who
corrects it with the brush submits brush regions, which are annotators' labels and win over any
expansion on their pixels (labeled_set.py). A skip retires the task from the queue at once, so no
other annotator is served it, whatever the project's overlap.
"""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from ml_backend.label_studio.regions import brush_region
from ml_backend.services import Services
from model.expansion import pixels_beyond_click

log = logging.getLogger(__name__)

ANSWERED_VERSION = "expanded-clicks"


def show_answered_regions(services: Services, project: int, holder: int, skipped: bool = False) -> int:
    """Put (or replace) the expanded regions of query task `holder`'s answers on it; returns how many
    regions it shows. With `skipped`, take the task out of the labeling queue instead."""
    store, client = services.store, services.client(project)
    if skipped:
        client.retire_task(holder)
        log.info("project %s: query task %s skipped: out of the labeling queue, its points dismissed", project, holder)
        return 0
    held = store.query_task(project, holder)
    settings = services.settings_for(project)
    if held is None or settings.expander == "none":
        return 0
    task, schema, files = held["task"], services.schema(project), services.files(project)
    image_row = store.task(project, task)
    cache = services.expansions(project, settings)
    image = files.load_image(task)
    resolution = image.shape[0]
    regions = []
    for label in store.held_labels(project, holder):
        pixels = cache.region(task, label["pixel"], lambda: image)
        training = 1 + len(pixels_beyond_click(pixels, label["pixel"], settings.region_pixel_cap,
                                               f"{task}:{label['pixel']}"))
        mask = np.zeros(resolution * resolution, dtype=np.uint8)
        mask[pixels] = 255
        mask[label["pixel"]] = 255
        full = np.asarray(Image.fromarray(mask.reshape(resolution, resolution)).resize(
            (image_row["width"], image_row["height"]), Image.NEAREST)) > 0
        region = brush_region(f"expanded-{label['region']}", full, label["class"], schema)
        region["meta"] = {"text": [f"Grown from the click on {schema.classes[label['class']]}: "
                                   f"{training} training pixels"]}
        regions.append(region)
    if not regions:
        return 0
    existing = client.find_prediction(holder, ANSWERED_VERSION)
    if existing is None:
        client.create_prediction(holder, regions, ANSWERED_VERSION, None)
    else:
        client.update_prediction(existing, regions)
    log.info("project %s: query task %s shows the %d regions its answers became", project, holder, len(regions))
    return len(regions)
