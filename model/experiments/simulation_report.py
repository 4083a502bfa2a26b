"""What a simulation run leaves for people: a summary table and three pictures.

summary.md: mean +- std over seeds of the last round's mIoU per strategy. curves.png: mIoU against
the round per strategy with a +-1 std band (the paper's figure 2). selections.png: the pixels two
strategies selected on the same training images (figures 4 and 7). predictions.png: image, ground
truth and the final prediction on a few evaluation images.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from model.experiments.report_output import markdown_table, pyplot
from model.prediction import class_colors


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def summary_rows(rows: list[dict]) -> list[dict]:
    by_strategy: dict[str, dict[int, dict]] = defaultdict(dict)
    for row in rows:
        by_strategy[row["strategy"]][int(row["seed"])] = row  # rows are in round order: keep each seed's last
    out = []
    for strategy, seeds in by_strategy.items():
        miou = np.array([float(r["miou"]) for r in seeds.values()]) * 100
        acc = np.array([float(r["pixel_accuracy"]) for r in seeds.values()]) * 100
        labeled = np.array([float(r["labeled_pixels"]) for r in seeds.values()])
        rounds = {int(r["round"]) for r in seeds.values()}
        out.append({"strategy": strategy, "seeds": len(seeds), "round": max(rounds), "miou_mean": miou.mean(),
                    "miou_std": miou.std(), "acc_mean": acc.mean(), "labeled_mean": labeled.mean(),
                    "share_mean": float(np.mean([float(r["labeled_share"]) for r in seeds.values()]))})
    return sorted(out, key=lambda r: -r["miou_mean"])


def summary_markdown(rows: list[dict]) -> str:
    return markdown_table(
        ["strategy", "seeds", "round", "mIoU (%)", "pixel acc. (%)", "labeled pixels", "share of pixels"],
        [[r["strategy"], r["seeds"], r["round"], f"{r['miou_mean']:.2f} ± {r['miou_std']:.2f}", f"{r['acc_mean']:.1f}",
          f"{r['labeled_mean']:.0f}", f"{r['share_mean']:.5%}"] for r in rows])


def draw_curves(ax, rows: list[dict], title: str) -> None:
    """mIoU per round, mean over seeds with a +-1 std band, one line per strategy, on `ax`."""
    curves: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        curves[row["strategy"]][int(row["round"])].append(float(row["miou"]) * 100)
    for strategy, by_round in curves.items():
        rounds = sorted(by_round)
        mean = np.array([np.mean(by_round[r]) for r in rounds])
        std = np.array([np.std(by_round[r]) for r in rounds])
        ax.plot(rounds, mean, marker="o", ms=3, label=strategy)
        ax.fill_between(rounds, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("active learning round")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_curves(rows: list[dict], path: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    draw_curves(ax, rows, title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_selections(sim, path: Path, images: int = 4) -> None:
    """Pixels selected by (up to) the first two strategies, seed of the first run, all rounds."""
    plt = pyplot()
    strategies = sim.strategies[:2]
    seed = sim.config.seeds[0]
    picks = {}
    for s in strategies:
        state = json.loads(sim._state_path(s, seed).read_text())
        picks[s.name] = state["queries"]
    counts = defaultdict(int)
    for queries in picks.values():
        for _, i, _ in queries:
            counts[i] += 1
    chosen = sorted(counts, key=lambda i: -counts[i])[:images]
    r = sim.resolution
    fig, axes = plt.subplots(len(strategies), max(1, len(chosen)), figsize=(3.2 * max(1, len(chosen)),
                                                                             3.4 * len(strategies)), squeeze=False)
    for row, s in enumerate(strategies):
        for col, i in enumerate(chosen):
            ax = axes[row, col]
            ax.imshow(sim.train_set.image(i, r))
            pts = [(p, rnd) for rnd, img, p in picks[s.name] if img == i]
            if pts:
                p = np.array([q for q, _ in pts])
                ax.scatter(p % r, p // r, s=18, c="deepskyblue", edgecolors="white", linewidths=0.6)
            ax.set_title(f"{s.name}: {len(pts)} px", fontsize=8)
            ax.axis("off")
    fig.suptitle(f"selected pixels over all rounds (seed {seed})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_predictions(sim, head, path: Path, title: str, images: int = 3) -> None:
    plt = pyplot()
    r = sim.resolution
    colors = class_colors(sim.eval_set.num_classes)
    n = min(images, len(sim.eval_set))
    chosen = np.linspace(0, len(sim.eval_set) - 1, n).round().astype(int)  # spread: neighbours are near-duplicate frames
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n + 0.4), squeeze=False)
    for row, index in enumerate(chosen):
        truth = sim.eval_set.labels(index, r)
        shown = np.zeros((r, r, 3), dtype=np.uint8)
        known = truth != 255
        shown[known] = colors[truth[known]]
        pictures = [sim.eval_set.image(index, r), shown, colors[sim.prediction(head, index)]]
        for ax, picture, caption in zip(axes[row], pictures, [sim.eval_set.image_paths[index].name,
                                                             "ground truth (void black)", "prediction"]):
            ax.imshow(picture)
            ax.set_title(caption, fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(sim, final_heads: dict) -> str:
    rows = read_metrics(sim.out / "metrics.csv")
    table = summary_markdown(summary_rows(rows))
    (sim.out / "summary.md").write_text(table + "\n")
    backbone = (sim.fingerprint.get("backbone") or {}).get("name", "?")
    plot_curves(rows, sim.out / "curves.png",
                f"{sim.train_set.name}, backbone {backbone}, {sim.resolution}px, b={sim.budget}/round")
    plot_selections(sim, sim.out / "selections.png")
    first = final_heads.get((sim.strategies[0].name, sim.config.seeds[0]))
    if first is not None:
        plot_predictions(sim, first, sim.out / "predictions.png",
                         f"{sim.strategies[0].name}, seed {sim.config.seeds[0]}, after round {sim.config.rounds}")
    return table
