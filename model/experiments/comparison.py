"""Runs side by side: the same experiment under variants (pretrained or random weights, two
resolutions, ...), each a folder written by `simulate` and, optionally, `probe`.

comparison.md: the probe's mIoU per variant, then every strategy's last-round mean +- std per
variant. comparison.png: the learning curves, one panel per variant on a shared mIoU axis.
probes.png: each variant's probe mIoU (mean +- std over heads, every head a dot), in the given order
(checkpoints of one training run, say, from the first steps to the last).
"""

from __future__ import annotations

import json
from pathlib import Path

from model.experiments.probe import PROBE_FILE
from model.experiments.report_output import markdown_table, pyplot
from model.experiments.simulation_report import draw_curves, read_metrics, summary_rows


def parse_variant(text: str) -> tuple[str, Path]:
    """`label=folder`, as the command line takes it."""
    label, sep, folder = text.partition("=")
    if not sep or not label or not folder:
        raise ValueError(f"--run {text!r}: write it as label=folder, e.g. 'random weights=runs/camvid-random'")
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"--run {text!r}: {path} does not exist")
    if not (path / "metrics.csv").is_file() and not (path / PROBE_FILE).is_file():
        raise FileNotFoundError(f"--run {text!r}: {path} holds neither metrics.csv (simulate) nor {PROBE_FILE} (probe)")
    return label, path


def compare(variants: list[tuple[str, Path]], out: str | Path) -> tuple[str, list[Path]]:
    """Write comparison.md, and comparison.png and probes.png where there is something to draw, to
    `out`; returns the Markdown and the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts, written = [], []
    probes = [(label, json.loads((path / PROBE_FILE).read_text())) for label, path in variants
              if (path / PROBE_FILE).is_file()]
    if probes:
        parts.append(markdown_table(
            ["weights", "probe mIoU (%)", "pixel acc. (%)", "heads", "training images", "labeled pixels"],
            [[label, f"{p['miou_mean']:.2f} ± {p['miou_std']:.2f}", f"{p['pixel_accuracy_mean']:.1f}", len(p["runs"]),
              len(p["images"]), p["labeled_pixels"]] for label, p in probes]))
        plot_probes(probes, out / "probes.png")
        written.append(out / "probes.png")
    simulated = [(label, read_metrics(path / "metrics.csv")) for label, path in variants
                 if (path / "metrics.csv").is_file()]
    if simulated:
        parts.append(markdown_table(
            ["weights", "strategy", "seeds", "round", "mIoU (%)", "pixel acc. (%)", "labeled pixels"],
            [[label, r["strategy"], r["seeds"], r["round"], f"{r['miou_mean']:.2f} ± {r['miou_std']:.2f}",
              f"{r['acc_mean']:.1f}", f"{r['labeled_mean']:.0f}"]
             for label, rows in simulated for r in summary_rows(rows)]))
        plt = pyplot()
        fig, axes = plt.subplots(1, len(simulated), figsize=(6 * len(simulated), 4.5), sharey=True, squeeze=False)
        for ax, (label, rows) in zip(axes[0], simulated):
            draw_curves(ax, rows, label)
        fig.tight_layout()
        fig.savefig(out / "comparison.png", dpi=120)
        plt.close(fig)
        written.append(out / "comparison.png")
    text = "\n\n".join(parts) + "\n"
    (out / "comparison.md").write_text(text)
    return text, [out / "comparison.md", *written]


def plot_probes(probes: list[tuple[str, dict]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(probes) + 1.5), 4))
    for x, (_, p) in enumerate(probes):
        heads = [100 * run["miou"] for run in p["runs"]]
        ax.errorbar([x], [p["miou_mean"]], yerr=[p["miou_std"]], fmt="o", color="tab:blue", capsize=4)
        ax.scatter([x] * len(heads), heads, s=10, color="tab:gray", zorder=3)
        ax.annotate(f"{p['miou_mean']:.1f}", (x, p["miou_mean"]), textcoords="offset points", xytext=(8, -3),
                    fontsize=8)
    ax.set_xticks(range(len(probes)), [label for label, _ in probes], fontsize=8)
    ax.set_ylabel("probe mIoU (%)")
    first = probes[0][1]
    ax.set_title(f"head on every labeled pixel of {len(first['images'])} training images, mIoU on "
                 f"{first.get('eval_split', 'eval')}", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
