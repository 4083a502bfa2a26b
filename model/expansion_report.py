"""How good are expanded clicks? Seeded random clicks on non-void pixels of a labeled split, with the
ground truth standing in for the annotator: for each threshold tau, the share of clicks expanded,
the purity of the expanded regions (pixels of the clicked class among the region's non-void
pixels) and the labeled pixels gained per click. Writes a table (markdown) and a PNG of clicks and
their regions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.datasets import IGNORE_INDEX, SegmentationDataset
from model.expansion import Expander


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


def threshold_table(stats: list[dict], taus: list[float]) -> list[dict]:
    conf = np.array([s["confidence"] for s in stats])
    size = np.array([s["size"] for s in stats])
    purity = np.array([s["purity"] for s in stats])
    rows = []
    for tau in taus:
        accepted = conf > tau
        rows.append({
            "tau": tau, "expanded": float(accepted.mean()),
            "purity": float(purity[accepted].mean()) if accepted.any() else float("nan"),
            "pixels_per_click": float(np.where(accepted, size, 1).mean()),
            "correct_pixels_per_click": float(np.where(accepted, size * purity, 1).mean()),
        })
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| tau | clicks expanded | purity of expanded regions | labeled pixels per click | correct pixels per click |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['tau']:.2f} | {r['expanded']:.1%} | {r['purity']:.1%} | {r['pixels_per_click']:.1f} | "
                     f"{r['correct_pixels_per_click']:.1f} |")
    return "\n".join(lines)


def draw_examples(dataset: SegmentationDataset, expander: Expander, stats: list[dict], resolution: int, path: Path,
                  images: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = sorted({s["image"] for s in stats})[:images]
    fig, axes = plt.subplots(1, len(chosen), figsize=(4 * len(chosen), 4.4))
    for ax, i in zip(np.atleast_1d(axes), chosen):
        image = dataset.image(i, resolution)
        overlay = image.astype(float) / 255
        for s in (s for s in stats if s["image"] == i):
            mask, conf, expanded = expander.region(image, s["row"], s["col"])
            color = np.array([0.1, 0.9, 0.2]) if expanded else np.array([0.9, 0.2, 0.1])
            overlay[mask] = 0.45 * overlay[mask] + 0.55 * color
            ax.plot(s["col"], s["row"], "o", ms=4, mec="white", mfc="cyan" if expanded else "red")
        ax.imshow(overlay)
        ax.set_title(f"{dataset.image_paths[i].name}", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{expander.name} expansion, tau={expander.tau}: green = expanded region, red = single pixel")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_report(dataset: SegmentationDataset, expander: Expander, clicks: int, taus: list[float], resolution: int,
               out: Path, seed: int = 0) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    stats = click_statistics(dataset, expander, clicks, resolution, seed)
    rows = threshold_table(stats, taus)
    (out / "expansion.json").write_text(json.dumps({"expander": expander.describe(), "clicks": clicks,
                                                    "resolution": resolution, "thresholds": rows}, indent=2))
    (out / "expansion.md").write_text(markdown(rows) + "\n")
    draw_examples(dataset, expander, stats, resolution, out / "expansion.png")
    return rows
