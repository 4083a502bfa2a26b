"""An annotator's interactive session in Label Studio, read as the click expander's `Prompt`.

With interactive preannotations on, each smart region the annotator places makes Label Studio call
/predict with every region of that session in `context.result`, oldest first: KeyPointLabels
points (`is_positive` false for an Alt-click, a negative point) and, when the labeling config has
one, RectangleLabels boxes. As in Label Studio's own SAM backend, the points and the box prompt
one object together; here the newest region's class names the object and only the regions of that
class join its prompt (a session that labels a car and then the road does not merge them). A point
without `is_positive` is positive, which is what a plain click sends. Coordinates are percent of
the image; a box is its top-left corner, width and height (a rotated box gives its axis-aligned
bounds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ml_backend.label_studio.label_config import LabelConfigError, LabelSchema
from model.expansion import Prompt


class ContextError(ValueError):
    """An interactive context the expander cannot act on; the message says why."""


@dataclass(frozen=True)
class ClickSession:
    cls: int
    points: tuple[tuple[float, float, bool], ...]  # (x %, y %, positive), oldest first
    box: tuple[float, float, float, float, float] | None  # (x %, y %, width %, height %, rotation in degrees)
    newest: str  # id of the region that triggered the call

    def prompt(self, width: int, height: int) -> Prompt:
        """The prompt in pixels of a width x height image."""
        points = tuple((min(height - 1, int(y / 100 * height)), min(width - 1, int(x / 100 * width)), positive)
                       for x, y, positive in self.points)
        if self.box is None:
            return Prompt(points)
        x, y, w, h, rotation = self.box
        left, top, w, h = x / 100 * width, y / 100 * height, w / 100 * width, h / 100 * height
        cos, sin = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
        xs = [left + dx * cos - dy * sin for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
        ys = [top + dx * sin + dy * cos for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
        box = (max(0.0, min(xs)), max(0.0, min(ys)), min(float(width), max(xs)), min(float(height), max(ys)))
        if box[0] >= box[2] or box[1] >= box[3]:
            raise ContextError(f"the box {self.box} (percent of the image) lies outside the image")
        return Prompt(points, box)


def _percent(value: dict, key: str, low: float = 0.0) -> float:
    try:
        number = float(value[key])
    except (KeyError, TypeError, ValueError):
        raise ContextError(f"a region's '{key}' is missing or not a number") from None
    if not (low <= number <= 100):
        raise ContextError(f"a region's '{key}' = {number} lies outside {low:g}-100 % of the image")
    return number


def click_session(result: list, schema: LabelSchema) -> ClickSession:
    controls = {kind: name for kind, name in (("keypointlabels", schema.keypoint_name),
                                              ("rectanglelabels", schema.rectangle_name)) if name}
    regions = [r for r in result if isinstance(r, dict) and r.get("type") in controls
               and r.get("from_name", controls[r["type"]]) == controls[r["type"]]]
    if not regions:
        raise ContextError("interactive context holds no keypoint click" +
                           (" or box" if schema.rectangle_name else ""))

    def class_of(region: dict) -> int:
        names = (region.get("value") or {}).get(region["type"]) or []
        if not names:
            raise ContextError("the click has no class: pick a label before clicking")
        try:
            return schema.class_index(names[0])
        except LabelConfigError as exc:
            raise ContextError(str(exc)) from None

    newest = regions[-1]
    cls = class_of(newest)
    points, box = [], None
    for region in regions:
        if class_of(region) != cls:
            continue
        value = region.get("value") or {}
        x, y = _percent(value, "x"), _percent(value, "y")
        if region["type"] == "keypointlabels":
            points.append((x, y, region.get("is_positive", True) is not False))
        else:
            rotation = float(value.get("rotation") or 0.0)
            box = (x, y, _percent(value, "width", low=1e-9), _percent(value, "height", low=1e-9), rotation)
    return ClickSession(cls, tuple(points), box, str(newest.get("id") or len(result)))
