"""How good are expanded clicks? Seeded random clicks on non-void pixels of a labeled split, with the
ground truth standing in for the annotator. For each expander and threshold tau: the share of
clicks expanded, the purity of the expanded regions (pixels of the clicked class among the
region's non-void pixels), the labeled pixels per click and the training pixels per click (a
region gives training at most `region_cap` pixels, so a 5,000-pixel sky segment counts 256).
Expanders are compared by purity at equal training pixels per click: raising tau trades pixels for
purity, so purity alone would favour whichever expander grows least. For superpixel expanders
also the segmentation's boundary recall against the ground truth's label edges and its time per
image. Writes the tables (markdown, JSON) and a PNG of clicks, regions and segment boundaries."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from model.datasets import IGNORE_INDEX, SegmentationDataset
from model.expansion import Expander, SuperpixelExpander
from model.experiments.report_output import markdown_table, pyplot

EQUAL_PIXELS = (50, 100, 150, 200)  # training pixels per click at which expanders are compared


def label_edges(labels: np.ndarray) -> np.ndarray:
    """Pixels on either side of a change between two classes (void edges do not count)."""
    edges = np.zeros(labels.shape, dtype=bool)
    known = labels != IGNORE_INDEX
    for axis in (0, 1):
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        change = (labels[tuple(a)] != labels[tuple(b)]) & known[tuple(a)] & known[tuple(b)]
        edges[tuple(a)] |= change
        edges[tuple(b)] |= change
    return edges


def boundary_recall(segments: np.ndarray, labels: np.ndarray, tolerance: int = 2) -> tuple[int, int]:
    """(found, total): ground-truth edge pixels within `tolerance` pixels of a segment boundary."""
    from skimage.segmentation import find_boundaries

    near = ndimage.binary_dilation(find_boundaries(segments, mode="thick"), iterations=tolerance)
    edges = label_edges(labels)
    return int(near[edges].sum()), int(edges.sum())


def image_statistics(dataset: SegmentationDataset, expander: SuperpixelExpander, resolution: int,
                     progress: bool = True) -> dict:
    """Segments per image, boundary recall over all edge pixels, median seconds per segmentation."""
    found = total = 0
    counts, seconds = [], []
    for i in tqdm(range(len(dataset)), desc=f"{expander.method} images", disable=not progress):
        image, labels = dataset.image(i, resolution), dataset.labels(i, resolution)
        t = time.perf_counter()
        segments, _ = expander.segments(image)
        seconds.append(time.perf_counter() - t)
        f, n = boundary_recall(segments, labels)
        found, total = found + f, total + n
        counts.append(len(np.unique(segments)))
    return {"segments_per_image": float(np.mean(counts)), "boundary_recall": found / max(total, 1),
            "seconds_per_image": float(np.median(seconds))}


def click_statistics(dataset: SegmentationDataset, expander: Expander, clicks: int, resolution: int,
                     seed: int = 0, progress: bool = True) -> list[dict]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, len(dataset), clicks)
    loaded: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    out = []
    for i in tqdm(images, desc="clicks", disable=not progress):
        i = int(i)
        if i not in loaded:
            loaded[i] = (dataset.image(i, resolution), dataset.labels(i, resolution))
        image, labels = loaded[i]
        ys, xs = np.nonzero(labels != IGNORE_INDEX)
        k = int(rng.integers(len(ys)))
        row, col = int(ys[k]), int(xs[k])
        e = expander.expand(image, row, col)
        known = e.mask & (labels != IGNORE_INDEX)
        out.append({"image": i, "row": row, "col": col, "confidence": e.confidence,
                    "size": int(e.mask.sum()), "purity": float((labels[known] == labels[row, col]).mean())})
    return out


def _operating_point(conf: np.ndarray, size: np.ndarray, purity: np.ndarray, region_cap: int,
                     accepted: np.ndarray) -> dict:
    return {
        "expanded": float(accepted.mean()),
        "purity": float(purity[accepted].mean()) if accepted.any() else float("nan"),
        "pixels_per_click": float(np.where(accepted, size, 1).mean()),
        "training_pixels_per_click": float(np.where(accepted, np.minimum(size, region_cap), 1).mean()),
    }


def threshold_table(stats: list[dict], taus: list[float], region_cap: int) -> list[dict]:
    conf, size, purity = (np.array([s[k] for s in stats]) for k in ("confidence", "size", "purity"))
    return [{"tau": tau, **_operating_point(conf, size, purity, region_cap, conf > tau)} for tau in taus]


def purity_at_equal_pixels(stats: list[dict], region_cap: int, targets=EQUAL_PIXELS) -> dict[int, float]:
    """Purity at the threshold whose training pixels per click come closest to each target (NaN when
    no threshold comes within 10%)."""
    conf, size, purity = (np.array([s[k] for s in stats]) for k in ("confidence", "size", "purity"))
    points = [_operating_point(conf, size, purity, region_cap, conf > t)
              for t in np.concatenate([[-np.inf], np.unique(conf)])]
    out = {}
    for target in targets:
        best = min(points, key=lambda p: abs(p["training_pixels_per_click"] - target))
        out[target] = best["purity"] if abs(best["training_pixels_per_click"] - target) <= 0.1 * target else math.nan
    return out


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1%}"


def markdown(reports: list[dict]) -> str:
    """The comparison (when there are superpixel statistics) and the threshold table of every expander."""
    parts = []
    compared = [r for r in reports if "images" in r]
    if compared:
        targets = list(compared[0]["equal_pixels"])
        parts.append(markdown_table(
            ["segmentation", "segments per image", "boundary recall", "time per image",
             *(f"purity at {t} training px/click" for t in targets)],
            [[r["label"], f"{r['images']['segments_per_image']:.0f}", f"{r['images']['boundary_recall']:.1%}",
              f"{r['images']['seconds_per_image']:.3f} s", *(_percent(r["equal_pixels"][t]) for t in targets)]
             for r in compared]) + "\n")
    parts.append(markdown_table(
        ["expander", "tau", "clicks expanded", "purity of expanded regions", "labeled pixels per click",
         "training pixels per click"],
        [[r["label"], f"{t['tau']:.2f}", f"{t['expanded']:.1%}", _percent(t["purity"]), f"{t['pixels_per_click']:.1f}",
          f"{t['training_pixels_per_click']:.1f}"] for r in reports for t in r["thresholds"]]))
    return "\n".join(parts)


def label(expander: Expander) -> str:
    return expander.method if isinstance(expander, SuperpixelExpander) else expander.name


def draw_examples(dataset: SegmentationDataset, expanders: list[Expander], stats: list[list[dict]], resolution: int,
                  path: Path, images: int = 3, clicks_per_image: int = 6) -> None:
    """One row per image, one column per expander: segment boundaries (yellow) and the region of each
    of the image's first clicks, green when expanded, red when it stays a single pixel."""
    from skimage.segmentation import find_boundaries

    plt = pyplot()

    clicked = sorted({s["image"] for s in stats[0]})
    chosen = clicked[::max(1, len(clicked) // images)][:images]  # spread over the split
    fig, axes = plt.subplots(len(chosen), len(expanders), figsize=(4.2 * len(expanders), 4.4 * len(chosen)),
                             squeeze=False)
    for row, i in enumerate(chosen):
        image = dataset.image(i, resolution)
        for col, (expander, clicks) in enumerate(zip(expanders, stats)):
            ax = axes[row, col]
            overlay = image.astype(float) / 255
            if isinstance(expander, SuperpixelExpander):
                overlay[find_boundaries(expander.segments(image)[0], mode="inner")] = (1.0, 0.9, 0.1)
            for s in [s for s in clicks if s["image"] == i][:clicks_per_image]:
                mask, _, expanded = expander.region(image, s["row"], s["col"])
                color = np.array([0.1, 0.9, 0.2]) if expanded else np.array([0.9, 0.2, 0.1])
                overlay[mask] = 0.4 * overlay[mask] + 0.6 * color
                ax.plot(s["col"], s["row"], "o", ms=4, mec="white", mfc="cyan" if expanded else "red")
            ax.imshow(overlay)
            ax.set_title(f"{label(expander)}: {dataset.image_paths[i].name}", fontsize=9)
            ax.axis("off")
    taus = ", ".join(sorted({f"{e.tau:g}" for e in expanders}))
    fig.suptitle(f"clicks expanded at tau = {taus}: yellow = segment boundaries, green = expanded region, "
                 "red = single pixel")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run_report(dataset: SegmentationDataset, expanders: list[Expander], clicks: int, taus: list[float],
               resolution: int, out: Path, seed: int = 0, region_cap: int = 256) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    reports, all_stats = [], []
    for expander in expanders:
        report = {"label": label(expander), "expander": expander.describe()}
        if isinstance(expander, SuperpixelExpander):
            report["images"] = image_statistics(dataset, expander, resolution)
        stats = click_statistics(dataset, expander, clicks, resolution, seed)
        report["thresholds"] = threshold_table(stats, taus, region_cap)
        report["equal_pixels"] = purity_at_equal_pixels(stats, region_cap)
        reports.append(report)
        all_stats.append(stats)
    summary = {"clicks": clicks, "resolution": resolution, "region_cap": region_cap, "expanders": reports}
    (out / "expansion.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "expansion.md").write_text(markdown(reports) + "\n")
    draw_examples(dataset, expanders, all_stats, resolution, out / "expansion.png")
    return reports
