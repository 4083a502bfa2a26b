"""From stored labels to the training set: annotators' pixels, plus their clicks expanded to regions.

Priority: an annotator's own label on a pixel (keypoint or brush stroke) always wins; where
several annotations label one pixel the newest wins. A brush region claims every pixel it covers
and trains on at most REGION_PIXEL_CAP of them. A keypoint is expanded by the expander
(SAM, superpixel or none) when its confidence passes tau; the region joins the training set with
the click's class, subsampled to REGION_PIXEL_CAP pixels, the clicked pixel always included.
Pixels claimed by expansions of different classes, and not by an annotator, are left out.
Expansions are cached on disk by (image, click, expander) so each is computed once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from model.expansion import Expander, pixels_beyond_click, subsample

log = logging.getLogger(__name__)


class ExpansionCache:
    def __init__(self, directory: Path, expander: Expander):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        desc = {k: v for k, v in expander.describe().items() if "cache" not in k}
        self.tag = hashlib.sha1(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:12]
        self.expander = expander

    def region(self, task: int, pixel: int, image: Callable[[], np.ndarray]) -> np.ndarray:
        """Flat pixel indices of the click's region (the pixel alone when not confident). `image`
        gives the task's image, decoded only when the region is not cached yet."""
        path = self.directory / f"{task}_{pixel}_{self.tag}.npy"
        if path.exists():
            try:
                return np.load(path)
            except (OSError, ValueError):
                log.warning("recomputing unreadable expansion %s", path.name)
        picture = image()
        r = picture.shape[1]
        mask, _, _ = self.expander.region(picture, pixel // r, pixel % r)
        pixels = np.flatnonzero(mask).astype(np.int64)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, pixels)
        tmp.replace(path)
        return pixels


def labels_digest(rows: list[dict]) -> str:
    """A fingerprint of stored label rows (Store.labels): equal digests mean training would see the
    same pixels with the same classes again."""
    keys = sorted((r["task"], r["pixel"], r["class"], r["source"], r["region"], r["annotation"]) for r in rows)
    return hashlib.sha1(json.dumps(keys).encode()).hexdigest()


def build_labeled_set(rows: list[dict], load_image, expansions: ExpansionCache | None,
                      region_cap: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """task -> (pixels, classes), pixels sorted and unique. `rows` come from Store.labels (ordered so
    that a newer annotation's row for a pixel comes after an older one). A brush region's rows hold
    every pixel it covers, so that all of them are the annotator's (a reviewer painting over a
    click's region relabels the whole of it); it gives at most `region_cap` of the pixels it won."""
    annotator: dict[int, dict[int, tuple[int, str | None]]] = defaultdict(dict)  # pixel -> (class, brush region)
    for row in rows:
        annotator[row["task"]][row["pixel"]] = (row["class"], row.get("region") if row["source"] == "brush" else None)
    expanded: dict[int, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    if expansions is not None:
        for row in rows:
            if row["source"] != "keypoint":
                continue
            task, pixel, cls = row["task"], row["pixel"], row["class"]
            region = expansions.region(task, pixel, lambda: load_image(task))
            for p in pixels_beyond_click(region, pixel, region_cap, f"{task}:{pixel}"):
                expanded[task][int(p)].add(cls)
    out = {}
    for task in set(annotator) | set(expanded):
        own = annotator[task]
        strokes: dict[str, list[int]] = defaultdict(list)
        for p, (_, region) in own.items():
            if region is not None:
                strokes[region].append(p)
        trained = {p for p, (_, region) in own.items() if region is None}
        for region, pixels in strokes.items():
            trained.update(int(p) for p in subsample(np.array(sorted(pixels), dtype=np.int64), region_cap, region))
        merged = {p: next(iter(c)) for p, c in expanded[task].items() if len(c) == 1 and p not in own}
        merged.update({p: own[p][0] for p in trained})
        pixels = np.array(sorted(merged), dtype=np.int64)
        out[task] = (pixels, np.array([merged[p] for p in pixels], dtype=np.int64))
    return out
