"""Label Studio regions <-> pixels at the model resolution.

Keypoints are stored by Label Studio in percent of the image size; the model works on the image
squashed to R x R, so a keypoint at (x%, y%) is pixel (floor(y/100 R), floor(x/100 R)) and a
query pixel is sent back at its centre. Brush regions travel as Label Studio's RLE of an RGBA
image of the original size. Region dicts are built here rather than with the SDK's
PredictionValue, which only wraps a list of such dicts; the tests check every one with the SDK's
LabelInterface.validate_prediction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from PIL import Image

from ml_backend.web.echo import cut
from ml_backend.label_studio.label_config import LabelConfigError, LabelSchema
from ml_backend.state.store import Label
from model.preprocessing import MAX_IMAGE_PIXELS

log = logging.getLogger(__name__)


class RegionError(ValueError):
    """One region of an annotation that cannot be used (the rest of the annotation still is)."""


def pixel_from_percent(x: float, y: float, resolution: int) -> int:
    if not (0 <= x <= 100 and 0 <= y <= 100):
        raise RegionError(f"keypoint at ({x}%, {y}%) lies outside the image")
    col = min(resolution - 1, int(x / 100 * resolution))
    row = min(resolution - 1, int(y / 100 * resolution))
    return row * resolution + col


def percent_from_pixel(pixel: int, resolution: int) -> tuple[float, float]:
    row, col = divmod(int(pixel), resolution)
    return (col + 0.5) / resolution * 100, (row + 0.5) / resolution * 100


QUERY_POINT_SIZE = 1.2  # keypoint size in percent of the image width: about 6 px on a 480 px frame


def query_region(region_id: str, pixel: int, resolution: int, schema: LabelSchema, width: int, height: int,
                 suggestion: str | None = None) -> dict:
    """A query point: it carries the placeholder label until an annotator gives it a class; the head's
    suggestion, if any, is region text (meta), never the label, so an untouched point is no answer."""
    x, y = percent_from_pixel(pixel, resolution)
    region = {
        "id": region_id, "from_name": schema.keypoint_name, "to_name": schema.image_name, "type": "keypointlabels",
        "original_width": width, "original_height": height, "image_rotation": 0,
        "value": {"x": x, "y": y, "width": QUERY_POINT_SIZE, "keypointlabels": [schema.placeholder]},
    }
    if suggestion:
        region["meta"] = {"text": [suggestion]}
    return region


def brush_region(region_id: str, mask: np.ndarray, cls: int, schema: LabelSchema, score: float | None = None,
                 from_name: str | None = None) -> dict:
    """A BrushLabels region of a boolean mask at the original image size."""
    h, w = mask.shape
    region = {
        "id": region_id, "from_name": from_name or schema.brush_name, "to_name": schema.image_name,
        "type": "brushlabels", "original_width": int(w), "original_height": int(h), "image_rotation": 0,
        "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [schema.classes[cls]]},
    }
    if score is not None:
        region["score"] = float(score)
    return region


def mask_from_brush(value: dict, width: int, height: int, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """The region's mask at its declared size. That size must be the task's image size when the
    backend has the image (Label Studio writes exactly that), and within the cap on images when it
    has not; the RLE's header must declare width x height x 4 values. Both are checked before
    anything is decoded, so a small payload cannot make the backend allocate gigabytes."""
    rle = value.get("rle")
    if not isinstance(rle, list) or not rle:
        raise RegionError("brush region without RLE data")
    if image_size is not None and (width, height) != tuple(image_size):
        raise RegionError(f"brush region of {width}x{height} on an image of {image_size[0]}x{image_size[1]}")
    if not (0 < width and 0 < height and width * height <= MAX_IMAGE_PIXELS):
        raise RegionError(f"brush region of implausible size {width}x{height}")
    try:
        header = bytes(rle[:4])
    except (TypeError, ValueError):
        raise RegionError("brush RLE must be a list of bytes (0-255)") from None
    declared = int.from_bytes(header, "big") if len(header) == 4 else None
    if declared != width * height * 4:
        raise RegionError(f"brush RLE declares {declared} values, expected {width}x{height}x4")
    try:
        flat = decode_rle(rle)
    except Exception as exc:  # the decoder raises IndexError/ValueError on damaged data
        raise RegionError(f"brush RLE cannot be decoded: {exc}") from None
    return flat.reshape(height, width, 4)[:, :, 3] > 0


def resize_mask(mask: np.ndarray, resolution: int) -> np.ndarray:
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((resolution, resolution), Image.NEAREST)) > 0


@dataclass
class ParsedAnnotation:
    labels: list[Label]
    problems: list[str]  # regions skipped, each with its reason
    pending: list[str]  # ids of keypoints submitted without a class (the placeholder): their queries stay open


def labels_from_result(result: list, schema: LabelSchema, task: int, resolution: int,
                       image_size: tuple[int, int] | None = None) -> ParsedAnnotation:
    """Labeled pixels of an annotation's regions. Keypoints give one pixel; a keypoint still carrying
    the placeholder (or no label) gives none and is reported as pending; annotators' brush strokes
    give every pixel they cover (the training set caps each region, labeled_set.py); brush regions
    an annotator accepted from a model prediction unchanged are not ground truth and are skipped. `image_size` (width, height):
    the task's image as the backend fetched it, when it has."""
    labels: list[Label] = []
    problems: list[str] = []
    pending: list[str] = []
    if not isinstance(result, list):
        return ParsedAnnotation([], ["annotation result is not a list"], [])
    for n, region in enumerate(result):
        if not isinstance(region, dict):
            problems.append(f"region {n} is not an object")
            continue
        rid = str(region.get("id") or f"r{n}")
        kind, value = region.get("type"), region.get("value") or {}
        if not isinstance(value, dict):
            problems.append(f"region {cut(rid)}: 'value' is not an object")
            continue
        try:
            if kind == "keypointlabels" and region.get("from_name") == schema.keypoint_name:
                if region.get("is_positive") is False:  # an Alt-click: a negative prompt for SAM, not a label
                    continue
                names = [n for n in value.get("keypointlabels") or [] if n != schema.placeholder]
                if not names:
                    pending.append(rid)
                    continue
                pixel = pixel_from_percent(float(value["x"]), float(value["y"]), resolution)
                labels.append(Label(task, rid, pixel, schema.class_index(names[0]), "keypoint"))
            elif kind == "brushlabels" and region.get("from_name") == schema.brush_name:
                if region.get("origin") == "prediction":
                    continue
                names = value.get("brushlabels") or []
                if not names:
                    raise RegionError("brush region without a class")
                cls = schema.class_index(names[0])
                mask = mask_from_brush(value, int(region.get("original_width", 0)), int(region.get("original_height", 0)),
                                       image_size)
                pixels = np.flatnonzero(resize_mask(mask, resolution))
                labels.extend(Label(task, rid, int(p), cls, "brush") for p in pixels)
        except (RegionError, LabelConfigError, KeyError, TypeError, ValueError, OverflowError) as exc:
            problems.append(f"region {cut(rid)}: {cut(str(exc), 300)}")
    for problem in problems:
        log.warning("task %s: skipped %s", task, problem)
    return ParsedAnnotation(labels, problems, pending)
