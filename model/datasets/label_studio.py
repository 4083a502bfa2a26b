"""A Label Studio project's JSON export as a dataset: simulate the loop on what a team has labeled.

    export/label_config.xml   the project's labeling configuration (Settings > Labeling Interface > Code)
    export/train.json         the project's JSON export (Export > JSON); one file per split, e.g. val.json
    export/upload/            Label Studio's media/upload folder (copied or linked): uploaded images
    export/local-files/       the local-files document root (copied or linked): local-files storage

The classes are the labels of the configuration's BrushLabels and PolygonLabels controls, in
order. A task's ground truth is its last annotation that was not skipped: its brush (RLE) and
polygon regions painted in result order, a later region winning where two overlap; pixels that
no region covers are void. Keypoints and other region types are not dense labels and are left
out, as are tasks without an annotation. Images are squashed to the square, as the backend does.

The SDK's RLE decoder and configuration parser are imported inside the functions that use them:
they are pure (bytes or XML in, arrays or names out), but the SDK's package import loads its HTTP
client, which nothing else in model/ needs and only this adapter, when used, pays for (2 s).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
from PIL import Image
from skimage.draw import polygon2mask

from model.datasets.segmentation import IGNORE_INDEX, SegmentationDataset

log = logging.getLogger(__name__)

LAYOUT = "label_config.xml and <split>.json (a Label Studio JSON export), images in upload/ or local-files/"
PREPROCESS = "resize"
CONFIG = "label_config.xml"
DENSE_CONTROLS = ("BrushLabels", "PolygonLabels")


@dataclass(frozen=True)
class LabelControls:
    classes: tuple[str, ...]
    names: frozenset[str]  # from_name of the BrushLabels and PolygonLabels controls
    image_field: str  # the task data field with the image URL ("image" for value="$image")


@dataclass(frozen=True)
class TaskRegions:
    """One task's dense regions: what `paint` turns into its label map."""
    export: str
    task: int
    image: Path
    regions: tuple[dict, ...]

    def __str__(self) -> str:
        return f"task {self.task} of {self.export}"


def read_controls(root: Path) -> LabelControls:
    from label_studio_sdk.label_interface import LabelInterface

    path = root / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: save the project's labeling configuration there "
                                "(Settings > Labeling Interface > Code)")
    try:
        interface = LabelInterface(path.read_text())
    except Exception as exc:  # the SDK raises its own parse and validation errors
        raise ValueError(f"{path}: not a labeling configuration ({exc})") from None
    controls = [c for c in interface.controls if c.tag in DENSE_CONTROLS]
    if not controls:
        raise ValueError(f"{path}: no BrushLabels or PolygonLabels control, so no region can be a label map")
    classes = tuple(dict.fromkeys(label for c in controls for label in c.labels))
    if not classes:
        raise ValueError(f"{path}: the BrushLabels and PolygonLabels controls have no labels")
    image = interface.get_object(controls[0].to_name[0])
    return LabelControls(classes, frozenset(c.name for c in controls), image.value.lstrip("$"))


def image_file(root: Path, url: str, where: str) -> Path:
    """Where an image URL of the export lies under the export directory."""
    parsed = urlparse(url)
    if parsed.path.startswith("/data/upload/"):
        base, relative, place = root / "upload", unquote(parsed.path[len("/data/upload/"):]), "media/upload folder"
    elif parsed.path.startswith("/data/local-files/") and parse_qs(parsed.query).get("d"):
        base, relative, place = root / "local-files", parse_qs(parsed.query)["d"][0], "local-files document root"
    else:
        raise ValueError(f"{where}: image {url!r} is neither an upload (/data/upload/...) nor a local file "
                         f"(/data/local-files/?d=...); put such images in Label Studio storage first")
    path = (base / relative).resolve()
    if not path.is_relative_to(base.resolve()):
        raise ValueError(f"{where}: image {url!r} points outside {base}")
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image {url} expected at {path} (copy or link Label Studio's {place} "
                                f"to {base})")
    return path


def _region_class(region: dict, classes: tuple[str, ...], where: str) -> int:
    value = region.get("value") or {}
    names = value.get(region["type"]) or []
    if not names:
        raise ValueError(f"{where}: region {region.get('id')} has no label")
    if names[0] not in classes:
        raise ValueError(f"{where}: region {region.get('id')} is labeled {names[0]!r}, which is not a label of "
                         f"{CONFIG} ({', '.join(classes)})")
    return classes.index(names[0])


def brush_mask(value: dict, width: int, height: int, where: str) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle

    rle = value.get("rle")
    if not isinstance(rle, list) or not rle:
        raise ValueError(f"{where}: brush region without RLE data")
    try:
        rgba = decode_rle(rle)
    except Exception as exc:  # the decoder raises IndexError or ValueError on damaged data
        raise ValueError(f"{where}: brush RLE cannot be decoded ({exc})") from None
    if rgba.size != width * height * 4:
        raise ValueError(f"{where}: brush RLE holds {rgba.size} values, expected {width}x{height}x4")
    return rgba.reshape(height, width, 4)[:, :, 3] > 0


def polygon_mask(value: dict, width: int, height: int, where: str) -> np.ndarray:
    """The pixels whose centre lies inside the polygon (its points are in percent of the image size)."""
    points = value.get("points") or []
    if len(points) < 3:
        raise ValueError(f"{where}: polygon with {len(points)} points")
    try:
        rows_cols = np.array([(y / 100 * height - 0.5, x / 100 * width - 0.5) for x, y in points], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: polygon points must be [x, y] pairs in percent") from None
    return polygon2mask((height, width), rows_cols)


def paint(task: TaskRegions, classes: tuple[str, ...]) -> np.ndarray:
    """The task's label map at its image's size: regions in result order, void where none lies."""
    with Image.open(task.image) as im:
        width, height = im.size
    labels = np.full((height, width), IGNORE_INDEX, dtype=np.uint8)
    for region in task.regions:
        where = f"{task}, region {region.get('id')}"
        size = (region.get("original_width"), region.get("original_height"))
        if size != (width, height):
            raise ValueError(f"{where}: drawn on a {size[0]}x{size[1]} image, but {task.image} is {width}x{height}")
        draw = brush_mask if region["type"] == "brushlabels" else polygon_mask
        labels[draw(region["value"], width, height, where)] = _region_class(region, classes, where)
    return labels


def _ground_truth(task: dict) -> dict | None:
    kept = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    return kept[-1] if kept else None


def splits(root: Path) -> list[str]:
    return sorted(p.stem for p in root.glob("*.json"))


def recognizes(root: Path) -> bool:
    return (root / CONFIG).is_file() and bool(splits(root))


def load(root: Path, split: str, preprocess: str = PREPROCESS) -> SegmentationDataset:
    root = Path(root)
    export = root / f"{split}.json"
    if not export.is_file():
        raise FileNotFoundError(f"Label Studio split '{split}' needs the JSON export {export}; "
                                f"exports here: {', '.join(splits(root)) or 'none'}")
    controls = read_controls(root)
    try:
        tasks = json.loads(export.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{export}: not JSON ({exc})") from None
    if not isinstance(tasks, list):
        raise ValueError(f"{export}: expected Label Studio's JSON export, a list of tasks")
    images, sources, skipped_regions = [], [], 0
    for task in tasks:
        annotation = _ground_truth(task)
        if annotation is None:
            continue
        where = f"task {task.get('id')} of {export.name}"
        url = (task.get("data") or {}).get(controls.image_field)
        if not isinstance(url, str):
            raise ValueError(f"{where}: no image URL in data.{controls.image_field}")
        result = annotation.get("result") or []
        regions = tuple(r for r in result if r.get("type") in ("brushlabels", "polygonlabels")
                        and r.get("from_name") in controls.names)
        skipped_regions += len(result) - len(regions)
        for region in regions:
            _region_class(region, controls.classes, where)
        images.append(image_file(root, url, where))
        sources.append(TaskRegions(export.name, task.get("id"), images[-1], regions))
    if not images:
        raise ValueError(f"{export}: none of its {len(tasks)} tasks has an annotation")
    log.info("%s: %d of %d tasks annotated; %d regions that are not brush or polygon labels left out",
             export.name, len(images), len(tasks), skipped_regions)
    return SegmentationDataset("label-studio", split, images, sources, controls.classes, IGNORE_INDEX, preprocess,
                               partial(paint, classes=controls.classes))
