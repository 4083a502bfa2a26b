"""A task's image: downloaded once, decoded, and kept at its original size and at the model's.

The sync stores every task's image (original and resized copies) and marks a task whose file
cannot be fetched or read failed, with the reason, so that the round goes on without it.
`original_image` serves /predict and clicks and never writes the store.
"""

from __future__ import annotations

import hashlib
import io
import logging

import numpy as np
from PIL import Image, UnidentifiedImageError

from ml_backend.services import Services
from model.preprocessing import MAX_IMAGE_PIXELS, resize_image

log = logging.getLogger(__name__)


def decode_image(data: bytes) -> Image.Image:
    """The file as an RGB image; a ValueError with a reason fit for /health, which anyone may read
    (Pillow's own message for an unknown format names the in-memory file object and its address)."""
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise ValueError(f"image of {image.width}x{image.height} pixels is too large")
        image.load()
    except UnidentifiedImageError:
        raise ValueError("not a readable image (not an image format Pillow knows, or a damaged file)") from None
    except (OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a readable image ({exc})") from None
    return image.convert("RGB")


class ImageUnavailable(ValueError):
    """A task's image that cannot be had right now; the message names the task."""


def fetch_image(services: Services, project: int, task: int, url: str) -> None:
    """Download, decode and store the task's image (original and model-resolution copies). A file
    that cannot be fetched or read marks this task failed, with the reason, and nothing else: the
    round goes on without it. Only Label Studio itself being unreachable fails the job."""
    files = services.files(project)
    try:
        if not url:
            raise ValueError(f"task has no '{services.schema(project).image_key}' field")
        image = decode_image(services.client(project).download(url))
    except ValueError as exc:  # DownloadError or an unreadable file
        log.warning("project %s task %s: image unusable, skipped: %s", project, task, exc)
        services.store.set_task_image(project, task, None, None, "failed", str(exc))
        return
    tmp = files.originals / f".{task}.tmp.png"
    image.save(tmp)
    tmp.replace(files.original_path(task))
    resized = resize_image(image, services.settings.resolution)
    files.save_image(task, resized)
    services.store.set_task_image(project, task, image.width, image.height, "ready",
                                  digest=hashlib.sha1(resized.tobytes()).hexdigest()[:20])


def original_image(services: Services, project: int, task: int, url: str | None = None) -> np.ndarray:
    """The task's image at its original size, for /predict and click expansion. It reads the store
    and never writes it: a task the sync has not fetched yet (or not seen at all) is downloaded
    into memory, from the stored URL when there is one, else from `url`, under the same limits as
    every download. Errors name the task; a download's reason is only logged for a URL the caller
    chose, so that /predict cannot be used to probe other hosts."""
    path = services.files(project).original_path(task)
    row = services.store.task(project, task)
    if row is not None and row["status"] == "ready" and path.exists():
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    if row is not None and row["status"] == "failed":
        raise ImageUnavailable(f"task {task}: its image is unusable: {row['error']}")
    try:
        return np.asarray(decode_image(services.client(project).download(row["image_url"] if row else url)))
    except ValueError as exc:
        log.warning("project %s task %s: image not available: %s", project, task, exc)
        reason = f": {exc}" if row else " (the backend's log says why)"
        raise ImageUnavailable(f"task {task}: its image could not be fetched{reason}") from None
