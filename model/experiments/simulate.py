"""Offline active learning with the ground truth as the annotator (an oracle).

Each strategy and seed replays R rounds: select b pixels with `run_round` (the same code the
backend runs), label them from the ground truth (void pixels cannot be labeled: a query there is
spent without a label, as it would be for an annotator), optionally expand each click to a region,
retrain the head on everything labeled and evaluate it on the evaluation split.

Strategy names: `random`; any acquisition alone (`entropy`, `margin`, `edald`, ...: one stage over
all candidate pixels); `herding` and `coreset` (coverage alone); `two-stage-<acquisition>` (MaxHerding
then uncertainty) and `coreset-<acquisition>`. Round 0 has no head: strategies with an acquisition
start from herding there, as the reference does (random stays random).

Feature noise is seeded independently of the run seed, so feature maps are cached once and shared
by every strategy and seed; the run seed drives candidates, herding bandwidth subsamples, head
initialisation and every random choice.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.acquisition import METHODS, get_acquisition
from model.datasets import IGNORE_INDEX, SegmentationDataset
from model.expansion import Expander, pixels_beyond_click
from model.feature_cache import FeatureMapCache
from model.features import REFERENCE_NOISE, DiffusionFeatureExtractor, ImageFeatureSource
from model.head import SegmentationHead, TrainConfig, train_head
from model.prediction import evaluate, segment
from model.selection import RecordCache, RoundConfig, budget_for, current_records, run_round

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Strategy:
    name: str
    coverage: str | None
    acquisition: str | None


def parse_strategy(name: str) -> Strategy:
    if name == "random":
        return Strategy(name, None, "random")
    if name in ("herding", "coreset"):
        return Strategy(name, name, None)
    for prefix, coverage in (("two-stage-", "herding"), ("coreset-", "coreset")):
        if name.startswith(prefix) and name[len(prefix):] in METHODS:
            return Strategy(name, coverage, name[len(prefix):])
    if name in METHODS:
        return Strategy(name, None, name)
    raise ValueError(f"unknown strategy {name!r}: use random, herding, coreset, an acquisition ({', '.join(METHODS)}), "
                     f"two-stage-<acquisition> or coreset-<acquisition>")


@dataclass
class SimulationConfig:
    strategies: list[str]
    seeds: list[int]
    rounds: int = 10
    budget_factor: float = 0.1
    candidates: int = 10_000
    local_k: int = 50
    local_sketch_dim: int | None = None  # sketched local herding (None: exact)
    keep_global: float = 0.5
    switch_after: int | None = None  # the paper's late switch: after this many rounds ...
    switch_to: str = "margin"  # ... use this acquisition alone
    region_cap: int = 256
    train: TrainConfig = field(default_factory=TrainConfig)
    map_cache_gb: float = 8.0


def _round_strategy(strategy: Strategy, config: SimulationConfig, round_index: int) -> Strategy:
    if config.switch_after is not None and round_index >= config.switch_after:
        return Strategy(f"{strategy.name}->{config.switch_to}", None, config.switch_to)
    return strategy


def queried_by_image(queries: list[tuple[int, int, int]]) -> dict[int, np.ndarray]:
    """Every pixel queried so far, by image, from (round, image, pixel) triples: never asked again."""
    out: dict[int, list[int]] = {}
    for _, i, p in queries:
        out.setdefault(i, []).append(p)
    return {i: np.unique(np.array(px, dtype=np.int64)) for i, px in out.items()}


def oracle_label(labeled: dict[int, dict[int, int]], queries: list[tuple[int, int]],
                 truth: Callable[[int], np.ndarray], image: Callable[[int], np.ndarray], resolution: int,
                 expander: Expander | None, region_cap: int) -> int:
    """The ground truth answers (image, pixel) queries into `labeled` (image -> {pixel: class}), each
    click expanded as the backend expands it; a void pixel gets no label. `truth(i)` is image i's flat
    label map. Returns how many queries got a label."""
    answered = 0
    for i, p in queries:
        cls = int(truth(i)[p])
        if cls == IGNORE_INDEX:
            continue
        answered += 1
        image_labels = labeled.setdefault(i, {})
        image_labels[p] = cls
        if expander is not None:
            mask, _, expanded = expander.region(image(i), p // resolution, p % resolution)
            if expanded:
                for q in pixels_beyond_click(np.flatnonzero(mask), p, region_cap, f"{i}:{p}").tolist():
                    image_labels.setdefault(q, cls)
    return answered


def cached_sources(extractor: DiffusionFeatureExtractor, datasets: Sequence[SegmentationDataset], out: Path,
                   backbone_fingerprint: dict | None, cache_gb: float) -> list[ImageFeatureSource]:
    """One feature source per dataset, sharing the map cache in `out`/cache/maps (a budget of 0: none).
    The cache is keyed by the backbone's file and the feature settings, so the runs written to one
    folder (the simulation's strategies and seeds, the probe) compute each image's maps once."""
    fingerprint = {"backbone": backbone_fingerprint, "features": asdict(extractor.config)}
    budget = int(cache_gb * 2**30)
    cache = FeatureMapCache(Path(out) / "cache" / "maps", fingerprint, budget) if budget > 0 else None
    r = extractor.config.resolution
    return [ImageFeatureSource(extractor, lambda i, d=d: d.image(i, r), [d.key(i) for i in range(len(d))], cache)
            for d in datasets]


class Simulation:
    def __init__(self, config: SimulationConfig, train_set: SegmentationDataset, eval_set: SegmentationDataset,
                 extractor: DiffusionFeatureExtractor, out: Path, expander: Expander | None = None,
                 backbone_fingerprint: dict | None = None, progress: bool = True):
        self.config, self.train_set, self.eval_set = config, train_set, eval_set
        self.extractor, self.out, self.expander, self.progress = extractor, Path(out), expander, progress
        self.resolution = extractor.config.resolution
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "state").mkdir(exist_ok=True)
        self.strategies = [parse_strategy(s) for s in config.strategies]
        self.fingerprint = {"backbone": backbone_fingerprint, "features": asdict(extractor.config)}
        self.train_source, self.eval_source = cached_sources(extractor, (train_set, eval_set), self.out,
                                                             backbone_fingerprint, config.map_cache_gb)
        self._truth: dict[int, np.ndarray] = {}
        self.budget = budget_for(len(train_set), config.budget_factor)
        self.total_pixels = len(train_set) * self.resolution ** 2

    # pieces ---------------------------------------------------------------------------------------
    def truth(self, i: int) -> np.ndarray:
        if i not in self._truth:
            self._truth[i] = self.train_set.labels(i, self.resolution).ravel()
        return self._truth[i]

    def records(self, strategy: Strategy, seed: int) -> RecordCache:
        fp = {**self.fingerprint, "seed": seed, "coverage": strategy.coverage or "herding",
              "candidates": self.config.candidates, "local_k": self.config.local_k,
              "local_sketch_dim": self.config.local_sketch_dim}
        tag = json.dumps(fp, sort_keys=True, default=str)
        return RecordCache(fp, self.out / "cache" / "records" / hashlib.sha1(tag.encode()).hexdigest()[:16])

    def round_config(self, strategy: Strategy, seed: int) -> RoundConfig:
        c = self.config
        return RoundConfig(budget=self.budget, candidates=c.candidates, local_k=c.local_k, keep_global=c.keep_global,
                           coverage=strategy.coverage, acquisition=strategy.acquisition, seed=seed,
                           local_sketch_dim=c.local_sketch_dim, device=str(self.extractor.device))

    def train(self, labeled: dict[int, dict[int, int]], strategy: Strategy, seed: int) -> SegmentationHead:
        feats, classes = [], []
        for i in sorted(labeled):
            pixels = np.array(sorted(labeled[i]), dtype=np.int64)
            feats.append(self.train_source.maps(i, (REFERENCE_NOISE,))[0].at(pixels))
            classes.append(torch.tensor([labeled[i][p] for p in pixels], dtype=torch.long))
        dropout = get_acquisition(strategy.acquisition).head_dropout if strategy.acquisition else 0.0
        cfg = TrainConfig(**{**asdict(self.config.train), "seed": seed, "mc_dropout": dropout})
        head, _ = train_head(torch.cat(feats), torch.cat(classes), self.train_set.num_classes, cfg, IGNORE_INDEX)
        return head

    def label(self, labeled: dict[int, dict[int, int]], queries: list[tuple[int, int]]) -> int:
        """The oracle answers; returns how many queries got a label (void ones cannot)."""
        r = self.resolution
        return oracle_label(labeled, queries, self.truth, lambda i: self.train_set.image(i, r), r, self.expander,
                            self.config.region_cap)

    # state ----------------------------------------------------------------------------------------
    def _state_path(self, strategy: Strategy, seed: int) -> Path:
        return self.out / "state" / f"{strategy.name}-seed{seed}.json"

    def _load_state(self, strategy: Strategy, seed: int) -> tuple[int, dict, list, int]:
        path = self._state_path(strategy, seed)
        if not path.exists():
            return 0, {}, [], 0
        state = json.loads(path.read_text())
        labeled = {int(i): {int(p): c for p, c in px.items()} for i, px in state["labeled"].items()}
        return state["rounds_done"], labeled, [tuple(q) for q in state["queries"]], state["queried"]

    def _save_state(self, strategy: Strategy, seed: int, rounds_done: int, labeled: dict, queries: list,
                    queried: int) -> None:
        path = self._state_path(strategy, seed)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"rounds_done": rounds_done, "queried": queried, "queries": queries,
                                   "labeled": {str(i): {str(p): c for p, c in px.items()} for i, px in labeled.items()}}))
        tmp.replace(path)

    def _append_metrics(self, row: dict) -> None:
        path = self.out / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    # the run --------------------------------------------------------------------------------------
    def run_one(self, strategy: Strategy, seed: int) -> SegmentationHead | None:
        rounds_done, labeled, all_queries, queried = self._load_state(strategy, seed)
        if rounds_done:
            log.info("%s seed %d: resuming after round %d", strategy.name, seed, rounds_done)
        records = self.records(strategy, seed)
        head = self.train(labeled, strategy, seed) if labeled else None
        bar = tqdm(range(rounds_done, self.config.rounds), desc=f"{strategy.name} seed {seed}",
                   disable=not self.progress, unit="round")
        for r in bar:
            current = _round_strategy(strategy, self.config, r)
            t0 = time.perf_counter()
            stage_bar = tqdm(total=len(self.train_set), desc="  select", leave=False, disable=not self.progress)

            def report(stage, done, total):
                stage_bar.set_description(f"  {stage}")
                stage_bar.total = total
                stage_bar.n = done
                stage_bar.refresh()

            pixels, asked = {i: np.array(sorted(px)) for i, px in labeled.items()}, queried_by_image(all_queries)
            records.retain(current_records(self.train_source, pixels, asked))  # labeled sets that changed
            result = run_round(self.train_source, pixels, head, self.round_config(current, seed), records, report,
                               round_index=r, queried=asked)
            stage_bar.close()
            t1 = time.perf_counter()
            queried += len(result.queries)
            self.label(labeled, result.queries)
            all_queries += [(r, i, p) for i, p in result.queries]
            head = self.train(labeled, strategy, seed) if labeled else None
            t2 = time.perf_counter()
            scores = evaluate(head, self.extractor, self.eval_set,
                              maps_for=lambda i: self.eval_source.maps(i, (REFERENCE_NOISE,))[0]) if head else \
                {"miou": float("nan"), "pixel_accuracy": float("nan"),
                 "per_class_iou": [float("nan")] * self.train_set.num_classes}
            t3 = time.perf_counter()
            labeled_count = sum(len(px) for px in labeled.values())
            row = {"strategy": strategy.name, "seed": seed, "round": r + 1, "acquisition": current.acquisition or "",
                   "queried_pixels": queried, "labeled_pixels": labeled_count,
                   "labeled_share": labeled_count / self.total_pixels, "miou": scores["miou"],
                   "pixel_accuracy": scores["pixel_accuracy"],
                   **{f"iou_{n}": v for n, v in zip(self.train_set.class_names, scores["per_class_iou"])},
                   "seconds_select": round(t1 - t0, 2), "seconds_train": round(t2 - t1, 2),
                   "seconds_eval": round(t3 - t2, 2), "images_recomputed": result.images_recomputed}
            self._append_metrics(row)
            self._save_state(strategy, seed, r + 1, labeled, all_queries, queried)
            bar.set_postfix(miou=f"{scores['miou']:.3f}", labeled=labeled_count)
        return head

    def run(self) -> None:
        (self.out / "config.json").write_text(json.dumps({
            **asdict(self.config), "budget_per_round": self.budget, "train_images": len(self.train_set),
            "eval_images": len(self.eval_set), "resolution": self.resolution, "fingerprint": self.fingerprint,
            "expander": self.expander.describe() if self.expander else None}, indent=2, default=str))
        final_heads = {}
        for strategy in self.strategies:
            for seed in self.config.seeds:
                final_heads[(strategy.name, seed)] = self.run_one(strategy, seed)
        from model.experiments.simulation_report import write_reports

        write_reports(self, final_heads)

    def prediction(self, head: SegmentationHead, i: int) -> np.ndarray:
        return segment(head, self.eval_source.maps(i, (REFERENCE_NOISE,))[0])[0]
