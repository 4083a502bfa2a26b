"""What the features alone say about the classes: the head trained on every labeled pixel of a
fixed set of training images, scored on the evaluation split.

The simulation measures strategies on a few hundred clicks, where the picks and the features are
tangled; the probe holds the pixels fixed (all non-void pixels of `images` training images drawn
once from `image_seed`) so that two backbones, say pretrained and random weights, compare on their
features alone. Each head seed trains a fresh head on the same pixels. Written to the simulation's
folder, it shares that run's feature map cache.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.datasets import IGNORE_INDEX, SegmentationDataset
from model.features import REFERENCE_NOISE, DiffusionFeatureExtractor
from model.head import TrainConfig, train_head
from model.prediction import evaluate
from model.experiments.simulate import cached_sources

PROBE_FILE = "probe.json"


@dataclass(frozen=True)
class ProbeConfig:
    images: int = 10
    image_seed: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)
    # tens of thousands of pixels: the loop's 8 pixels a step and 50 epochs would take hours
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=256, max_epochs=10))
    map_cache_gb: float = 8.0

    def __post_init__(self):
        if self.images < 1 or not self.seeds:
            raise ValueError(f"--images must be at least 1 and --seeds name at least one seed, got {self.images} "
                             f"and {list(self.seeds)}")


def probe_images(available: int, images: int, seed: int) -> list[int]:
    """`images` distinct training images drawn with `seed`, in index order (all when fewer exist)."""
    if images < 1:
        raise ValueError(f"--images must be at least 1, got {images}")
    chosen = np.random.default_rng(seed).permutation(available)[:images]
    return sorted(int(i) for i in chosen)


def run_probe(extractor: DiffusionFeatureExtractor, train_set: SegmentationDataset, eval_set: SegmentationDataset,
              config: ProbeConfig, out: str | Path, backbone_fingerprint: dict | None,
              weights: str = "", progress: bool = True) -> dict:
    """Train one head per seed on the chosen images' labeled pixels, evaluate each; writes `out`/probe.json."""
    out = Path(out)
    r = extractor.config.resolution
    train_source, eval_source = cached_sources(extractor, (train_set, eval_set), out, backbone_fingerprint,
                                               config.map_cache_gb)
    indices = probe_images(len(train_set), config.images, config.image_seed)
    feats, labels = [], []
    for i in tqdm(indices, desc="probe: training pixels", unit="image", disable=not progress):
        truth = train_set.labels(i, r).ravel()
        pixels = np.flatnonzero(truth != IGNORE_INDEX)
        feats.append(train_source.maps(i, (REFERENCE_NOISE,))[0].at(pixels))
        labels.append(torch.as_tensor(truth[pixels], dtype=torch.long))
    x, y = torch.cat(feats), torch.cat(labels)
    runs = []
    for seed in tqdm(config.seeds, desc="probe: heads", unit="seed", disable=not progress):
        head, report = train_head(x, y, train_set.num_classes, TrainConfig(**{**asdict(config.train), "seed": seed}),
                                  IGNORE_INDEX)
        scores = evaluate(head, extractor, eval_set,
                          maps_for=lambda i: eval_source.maps(i, (REFERENCE_NOISE,))[0])
        runs.append({"seed": seed, **scores, "train": report.as_dict()})
    miou = [100 * run["miou"] for run in runs]
    result = {
        "backbone": backbone_fingerprint, "weights": weights, "features": asdict(extractor.config), "config": asdict(config),
        "dataset": train_set.name, "train_split": train_set.split, "eval_split": eval_set.split,
        "images": [train_set.image_paths[i].name for i in indices], "labeled_pixels": len(y),
        "feature_dim": x.shape[1], "class_names": list(train_set.class_names),
        "miou_mean": statistics.fmean(miou), "miou_std": float(np.std(miou)),
        "pixel_accuracy_mean": statistics.fmean(100 * run["pixel_accuracy"] for run in runs), "runs": runs,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / PROBE_FILE).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result
