"""Reading a project's labeling configuration: which controls the backend writes to and the classes.

The backend needs an Image, a KeyPointLabels control on it (queries and clicks) and a BrushLabels
control on it (regions) with the same labels; class i is the i-th label, in config order. The
KeyPointLabels control also holds the placeholder label "Label me" that every query point carries
until an annotator gives it its class: it is no class, so an untouched point is never ground truth.
A RectangleLabels control on the image is optional: its boxes prompt the click expander (SAM takes
a box as Label Studio's own SAM backend does), so its labels must be among the classes.

Class names are compared in Unicode NFC, so that a name typed in another normalisation (a browser's
NFD "é") is the config's class; the config's own spelling is what the backend writes back. A config
is at most MAX_CONFIG_BYTES and MAX_CLASSES classes: parsing grows with its size (300,000 labels
took 14.7 s and 760 MB), and far below these sizes no annotator could pick a class.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from label_studio_sdk.label_interface import LabelInterface
from lxml import etree

from ml_backend.web.echo import names, quote

SHIPPED_CONFIG = Path(__file__).with_name("label_config.xml")
QUERY_PLACEHOLDER = "Label me"
MAX_CONFIG_BYTES = 2 ** 20
MAX_CLASSES = 1000


class LabelConfigError(ValueError):
    """The project's labeling configuration cannot drive this backend."""


@dataclass(frozen=True)
class LabelSchema:
    image_name: str  # the Image tag's name (to_name of every region)
    image_key: str  # the task data field holding the image URL ("image" for value="$image")
    keypoint_name: str
    brush_name: str
    classes: tuple[str, ...]
    smart_keypoints: bool
    rectangle_name: str | None = None  # the optional box prompt
    placeholder: str = QUERY_PLACEHOLDER  # the KeyPointLabels label of an unanswered query point

    @cached_property
    def _index(self) -> dict[str, int]:
        return {nfc(name): i for i, name in enumerate(self.classes)}

    def class_index(self, name: str) -> int:
        key = nfc(name) if isinstance(name, str) else name
        if key == nfc(self.placeholder):
            raise LabelConfigError(f"'{self.placeholder}' is the query placeholder, not a class: pick the pixel's class")
        try:
            return self._index[key]
        except (KeyError, TypeError):
            raise LabelConfigError(f"unknown class {quote(name)}; the config defines {names(self.classes)}") from None


def nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def _label_values(xml: str, tag: str, name: str) -> list[str]:
    """Every <Label value> of the control as written, in order: the SDK keeps one label per value, so
    a name given twice reaches it once."""
    control = next(c for c in etree.fromstring(xml).iter(tag) if c.get("name") == name)
    return [label.get("value", "") for label in control.iter("Label")]


def parse_label_config(xml: str | None) -> LabelSchema:
    """The schema of a project's config, read with the SDK's LabelInterface (tags, names, labels);
    the checks are the backend's own: which controls it needs and how their labels must agree."""
    if not xml or not xml.strip():
        raise LabelConfigError("the project has no labeling configuration; use ml_backend/label_studio/label_config.xml")
    if len(xml.encode()) > MAX_CONFIG_BYTES:
        raise LabelConfigError(f"the labeling configuration is {len(xml.encode()):,} bytes; this backend reads at most "
                               f"{MAX_CONFIG_BYTES:,} (and {MAX_CLASSES:,} classes)")
    try:
        interface = LabelInterface(xml)
    except Exception as exc:  # the SDK raises lxml's and its own syntax errors
        raise LabelConfigError(f"the labeling configuration is not valid XML: {exc}") from None
    images = {obj.name: obj for obj in interface.objects if obj.tag == "Image" and obj.name}
    if not images:
        raise LabelConfigError("the labeling configuration has no <Image name=... value=\"$...\"/> tag")
    on_image = [c for c in interface.controls if any(name in images for name in c.to_name)]
    keypoints = [c for c in on_image if c.tag == "KeyPointLabels"]
    brushes = [c for c in on_image if c.tag == "BrushLabels"]
    missing = []
    if not keypoints:
        missing.append("a <KeyPointLabels> control whose toName is the image (the backend's queries)")
    if not brushes:
        missing.append("a <BrushLabels> control whose toName is the image (expanded regions and predictions)")
    if missing:
        raise LabelConfigError("the labeling configuration lacks " + " and ".join(missing)
                               + "; see ml_backend/label_studio/label_config.xml")
    kp = keypoints[0]
    image_name = next(name for name in kp.to_name if name in images)
    brush = next((b for b in brushes if image_name in b.to_name), None)
    if brush is None:
        raise LabelConfigError("KeyPointLabels and BrushLabels must label the same <Image>")
    kp_labels, brush_labels = list(kp.labels), list(brush.labels)
    if QUERY_PLACEHOLDER not in kp_labels:
        raise LabelConfigError(
            f"KeyPointLabels '{kp.name}' lacks the query placeholder label: add "
            f"<Label value=\"{QUERY_PLACEHOLDER}\" background=\"#FF00FF\"/> as its first label (query points carry it "
            f"until an annotator gives them a class); see ml_backend/label_studio/label_config.xml")
    if QUERY_PLACEHOLDER in brush_labels:
        raise LabelConfigError(f"'{QUERY_PLACEHOLDER}' is the query placeholder, not a class: remove it from BrushLabels")
    kp_labels = [label for label in kp_labels if label != QUERY_PLACEHOLDER]
    if not kp_labels:
        raise LabelConfigError(f"KeyPointLabels '{kp.name}' has no class <Label value=...> children")
    if kp_labels != brush_labels:
        only_kp = sorted(set(kp_labels) - set(brush_labels))
        only_brush = sorted(set(brush_labels) - set(kp_labels))
        detail = []
        if only_kp:
            detail.append(f"only in KeyPointLabels: {names(only_kp)}")
        if only_brush:
            detail.append(f"only in BrushLabels: {names(only_brush)}")
        if not detail:
            detail.append("same labels in a different order")
        raise LabelConfigError("KeyPointLabels and BrushLabels need the same labels in the same order ("
                               + "; ".join(detail) + ")")
    if len(kp_labels) > MAX_CLASSES:
        raise LabelConfigError(f"the labeling configuration defines {len(kp_labels):,} classes; this backend takes at "
                               f"most {MAX_CLASSES:,}")
    written = _label_values(xml, "KeyPointLabels", kp.name)
    if any(not label.strip() for label in written):
        raise LabelConfigError(f"KeyPointLabels '{kp.name}' has a <Label> with an empty value: every class needs a name")
    seen: dict[str, str] = {}
    for label in written:
        if nfc(label) in seen:
            same = "" if seen[nfc(label)] == label else f" (as {quote(seen[nfc(label)])}, in another Unicode form)"
            raise LabelConfigError(f"the class {quote(label)} appears twice in KeyPointLabels{same}: class names must "
                                   "be unique")
        seen[nfc(label)] = label
    image = images[image_name]
    rectangle = next((r for r in on_image if r.tag == "RectangleLabels" and image_name in r.to_name), None)
    if rectangle is not None:
        unknown = [label for label in rectangle.labels if label not in kp_labels]
        if unknown:
            raise LabelConfigError(f"RectangleLabels '{rectangle.name}' has labels that are not classes: "
                                   f"{names(unknown)} (its boxes prompt the click expander; use the labels of "
                                   "KeyPointLabels)")
    value = image.value or ""
    if not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(f"<Image name='{image.name}'> needs value=\"$field\" naming the task's image field")
    return LabelSchema(
        image_name=image.name, image_key=value[1:], keypoint_name=kp.name, brush_name=brush.name,
        classes=tuple(kp_labels), smart_keypoints=kp.attr.get("smart", "").lower() in ("true", "1"),
        rectangle_name=rectangle.name if rectangle is not None else None,
    )
