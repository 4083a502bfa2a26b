"""One active-learning round (the paper's Algorithm 1), shared by the backend and the simulation.

Stage 1, coverage: in every image, MaxHerding (or k-center greedy) picks K of a fixed random set
of candidate pixels, treating the image's labeled pixels as covered; the merged pool is herded
again, all labeled pixels covered, keeping `keep_global` of it. Stage 2, uncertainty: the head
scores the kept pool and the top b are queried. Without a head (round 0) or without an
uncertainty method, the global coverage step picks the b pixels itself. A strategy without a
coverage stage scores every candidate pixel of every image (the paper's one-stage baselines).

Candidates are drawn without looking at labels: a labeling tool cannot know where void is.

Per-image work depends only on the image and on which of its pixels are labeled, so it is kept
in an `ImageRecord` and reused for as long as that labeled set is unchanged: most images need no
UNet pass at all after round 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from model.acquisition import Acquisition, get_acquisition
from model.coreset import k_center_greedy
from model.features import REFERENCE_NOISE, FeatureMaps
from model.head import SegmentationHead
from model.global_herding import GLOBAL_EXACT_MAX, global_herding
from model.herding import max_herding

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
COVERAGE_METHODS = ("herding", "coreset")
# Kept points whose draws go through the head at a time: a later round's kept half at 10,000 images
# is 250,000 x 5 draws x 768 features; 16,384 of them hold 0.25 GB in float32 (65,536: round 1's
# peak at 10,000 synthetic images 3.84 GB against 2.38 GB, as fast).
SCORE_CHUNK = 16_384


class FeatureSource(Protocol):
    """What a round needs from the images: their stable keys and their feature maps."""

    resolution: int
    draws: int

    def __len__(self) -> int: ...

    def key(self, image: int) -> str: ...

    def maps(self, image: int, noises: Sequence[int]) -> list[FeatureMaps]: ...


@dataclass(frozen=True)
class RoundConfig:
    budget: int  # b, pixels queried this round
    candidates: int = 10_000  # random candidate pixels per image
    local_k: int = 50  # K, picks per image
    keep_global: float = 0.5  # share of the merged pool kept by global coverage
    coverage: str | None = "herding"  # "herding", "coreset", or None for one-stage uncertainty
    acquisition: str | None = "edald"  # None: coverage alone picks the b pixels
    sigma: float | str = "auto"
    mc_samples: int = 5  # MC-dropout passes for BALD-family methods
    local_sketch_dim: int | None = None  # subspace sketch for per-image herding (None: exact; see herding.py)
    global_exact_max: int = GLOBAL_EXACT_MAX  # pool size up to which global herding is exact (global_herding.py)
    seed: int = 0
    device: str = "cpu"  # where local and global coverage run (the backend's device); the records stay on the CPU

    def __post_init__(self):
        if self.coverage not in (*COVERAGE_METHODS, None):
            raise ValueError(f"coverage must be one of {COVERAGE_METHODS} or None, got {self.coverage!r}")
        if self.coverage is None and self.acquisition is None:
            raise ValueError("a round needs a coverage stage, an acquisition, or both")
        if self.acquisition is not None:
            get_acquisition(self.acquisition)  # an unknown name fails when the round is configured
        if (self.budget < 0 or self.local_k < 1 or self.candidates < 1 or not 0 < self.keep_global <= 1
                or self.global_exact_max < 1):
            raise ValueError(f"invalid round configuration: {self}")

    @property
    def method(self) -> Acquisition | None:
        """The acquisition named by `acquisition`; a round looks it up once and passes it down."""
        return get_acquisition(self.acquisition) if self.acquisition is not None else None

    @property
    def needs_noise_draws(self) -> bool:
        """Whether records must carry the features under the M noise draws (DALD family)."""
        method = self.method
        return method is not None and method.needs_noise_draws


def budget_for(num_images: int, budget_factor: float) -> int:
    """b = budget_factor x number of images, rounded half to even, at least 1 for a non-empty set."""
    return max(1, round(budget_factor * num_images)) if num_images else 0


def candidate_pixels(key: str, resolution: int, count: int, seed: int) -> np.ndarray:
    """The image's fixed random candidate pixels (sorted flat indices), drawn once per run seed."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    rng = np.random.default_rng([seed, digest])
    total = resolution * resolution
    return np.sort(rng.choice(total, size=min(count, total), replace=False)).astype(np.int64)


def record_digest(labeled, queried=()) -> str:
    """What an image's record depends on besides the image: its labeled pixels, and the pixels
    queried before that got no label (void, dismissed), which are never candidates again."""
    lab = np.unique(np.asarray(labeled, dtype=np.int64))
    asked = np.setdiff1d(np.asarray(queried, dtype=np.int64), lab)
    digest = hashlib.sha1(lab.tobytes())
    if len(asked):
        digest.update(b"|queried|" + asked.tobytes())
    return digest.hexdigest()


@dataclass
class ImageRecord:
    """An image's stage-1 result for one labeled set: its local picks and the features they need."""

    digest: str
    picks: np.ndarray  # [K] flat pixel indices, in selection order
    reference: np.ndarray  # [K, D] float16 features (reference noise)
    labeled: np.ndarray  # [L] the labeled pixels, sorted
    labeled_reference: np.ndarray  # [L, D] float16 features of the labeled pixels
    draws: np.ndarray | StoredDraws | None = None  # [K, M, D] float16 features under the noise draws


class StoredDraws:
    """A record's noise-draw features left in its file until the uncertainty stage reads them:
    at 10,000 images they are 4.6 GB, most of what a round would otherwise hold in memory."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> np.ndarray:
        with np.load(self.path) as z:
            return z["draws"]


def read_draws(draws: np.ndarray | StoredDraws) -> np.ndarray:
    return draws.read() if isinstance(draws, StoredDraws) else draws


class RecordCache:
    """ImageRecords by image key and record digest (the labeled set), in memory and optionally in a
    directory that survives restarts; there the noise draws stay in the files until scored. One
    file per image and labeled set, written once: two tasks of one image labeled differently, or a
    round that reads an image's draws while another process records its next labeled set, never
    share a file. `retain` deletes the files no round needs any more. A fingerprint of everything
    the records depend on guards against reusing stale ones."""

    def __init__(self, fingerprint: Mapping, directory: str | Path | None = None):
        self.fingerprint = json.dumps(fingerprint, sort_keys=True, default=str)
        self.directory = Path(directory) if directory else None
        self._memory: dict[tuple[str, str], ImageRecord] = {}
        if self.directory:
            self.directory.mkdir(parents=True, exist_ok=True)
            stamp = self.directory / "fingerprint.json"
            if not stamp.exists() or stamp.read_text() != self.fingerprint:
                for old in self.directory.glob("*.npz"):
                    old.unlink()
                stamp.write_text(self.fingerprint)

    def _path(self, key: str, digest: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{hashlib.sha1(key.encode()).hexdigest()}-{digest}.npz"

    def get(self, key: str, digest: str) -> ImageRecord | None:
        rec = self._memory.get((key, digest))
        if rec is None and self.directory and self._path(key, digest).exists():
            path = self._path(key, digest)
            try:
                with np.load(path) as z:
                    rec = ImageRecord(digest, z["picks"], z["reference"], z["labeled"], z["labeled_reference"],
                                      StoredDraws(path) if "draws" in z else None)
            except (OSError, ValueError, KeyError) as exc:  # a torn write: recompute
                log.warning("ignoring unreadable cache entry for %s: %s", key, exc)
                return None
            self._memory[(key, digest)] = rec
        return rec

    def put(self, key: str, rec: ImageRecord) -> ImageRecord:
        """Keep the record; returns it as kept (with a directory, its draws left in the file)."""
        if self.directory:
            path = self._path(key, rec.digest)
            arrays = {k: getattr(rec, k) for k in ("picks", "reference", "labeled", "labeled_reference")}
            if rec.draws is not None:
                arrays["draws"] = read_draws(rec.draws)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, **arrays)
            tmp.replace(path)
            if rec.draws is not None:
                rec = replace(rec, draws=StoredDraws(path))
        self._memory[(key, rec.digest)] = rec
        return rec

    def retain(self, current: Iterable[tuple[str, str]]) -> int:
        """Forget every record but those of `current` (key, digest) pairs, in memory and on disk: the
        records of labeled sets that have changed since. Returns how many files were deleted."""
        keep = set(current)
        self._memory = {k: v for k, v in self._memory.items() if k in keep}
        if not self.directory:
            return 0
        names = {self._path(key, digest).name for key, digest in keep}
        stale = [f for f in self.directory.glob("*.npz") if f.name not in names]
        for f in stale:
            f.unlink(missing_ok=True)
        return len(stale)


def current_records(source: FeatureSource, labeled: Mapping[int, np.ndarray],
                    queried: Mapping[int, np.ndarray]) -> list[tuple[str, str]]:
    """The (key, digest) of every image's record for these labeled and queried pixels: what
    `RecordCache.retain` keeps."""
    return [(source.key(i), record_digest(labeled.get(i, ()), queried.get(i, ()))) for i in range(len(source))]


@dataclass
class RoundResult:
    queries: list[tuple[int, int]]  # (image index, flat pixel index), most wanted first
    scores: list[float] | None  # acquisition score per query, when one was used
    pool_size: int = 0
    kept_size: int = 0
    images_recomputed: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def _unasked(candidates: np.ndarray, labeled, queried) -> np.ndarray:
    """Candidates that are neither labeled nor queried before."""
    return np.setdiff1d(candidates, np.union1d(np.asarray(labeled, dtype=np.int64), np.asarray(queried, dtype=np.int64)))


def _half(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.float16).cpu().numpy()


def _select(method: str, features: torch.Tensor, budget: int, covered: torch.Tensor, sigma, seed: int,
            sketch_dim: int | None = None) -> np.ndarray:
    if method == "coreset":
        return k_center_greedy(features, budget, covered, seed=seed)
    return max_herding(features, budget, covered, sigma=sigma, seed=seed, sketch_dim=sketch_dim)


def _draw_log_probs(head: SegmentationHead, draws: torch.Tensor) -> torch.Tensor:
    """Log-probabilities [P, M, C] of features [P, M, D] under the M noise draws."""
    p, m, d = draws.shape
    return head.log_probs(draws.reshape(p * m, d)).reshape(p, m, -1)


def _kept_draw_log_probs(head: SegmentationHead, kept: np.ndarray, pool_draws: list, starts: np.ndarray) -> torch.Tensor:
    """`_draw_log_probs` of the kept pool points, whose draws lie in their images' records: each
    image's draws are read once, and the head takes them about SCORE_CHUNK points at a time."""
    owner = np.searchsorted(starts, kept, side="right") - 1
    order = np.argsort(owner, kind="stable")  # positions in `kept`, image by image
    images, first = np.unique(owner[order], return_index=True)
    parts, positions, pending, size = [], [], [], 0  # pending: (draws, positions) not yet through the head
    for n, (o, group) in enumerate(zip(images, np.split(order, first[1:]))):
        pending.append((read_draws(pool_draws[o])[kept[group] - starts[o]], group))
        size += len(group)
        if size >= SCORE_CHUNK or n == len(images) - 1:
            parts.append(_draw_log_probs(head, torch.from_numpy(np.concatenate([d for d, _ in pending])).float()))
            positions.append(np.concatenate([g for _, g in pending]))
            pending, size = [], 0
    if not parts:
        return torch.empty(0, 0, 0)
    log_probs = torch.cat(parts)
    out = torch.empty_like(log_probs)
    out[torch.from_numpy(np.concatenate(positions))] = log_probs
    return out


def _uncertainty_inputs(head: SegmentationHead, method: Acquisition, reference: torch.Tensor,
                        draw_log_probs: torch.Tensor | None, mc_samples: int, generator: torch.Generator):
    """Log-probabilities of the reference pass and of the stochastic samples the method needs
    (`draw_log_probs` for the DALD family, MC dropout for the BALD family)."""
    ref = head.log_probs(reference)
    samples = draw_log_probs
    if method.needs_noise_draws:
        assert draw_log_probs is not None
    elif method.samples == "dropout":
        samples = head.mc_dropout_log_probs(reference, mc_samples, generator)
    return ref, samples


def image_record(source: FeatureSource, image: int, labeled_pixels, config: RoundConfig, need_draws: bool,
                 cache: RecordCache | None = None, queried_pixels=()) -> tuple[ImageRecord, bool]:
    """The image's stage-1 record for its current labeled pixels, from the cache when it is there.
    Pixels queried in earlier rounds are never candidates again, whatever their answer.
    Returns (record, whether a UNet pass was needed)."""
    key = source.key(image)
    lab = np.unique(np.asarray(labeled_pixels, dtype=np.int64))
    digest = record_digest(lab, queried_pixels)
    rec = cache.get(key, digest) if cache else None
    draw_noises = tuple(range(1, source.draws + 1))
    coverage = config.coverage or "herding"
    fresh = False
    if rec is None:
        cands = _unasked(candidate_pixels(key, source.resolution, config.candidates, config.seed), lab, queried_pixels)
        maps = source.maps(image, (REFERENCE_NOISE, *draw_noises) if need_draws else (REFERENCE_NOISE,))
        ref = torch.from_numpy(_half(maps[0].at(np.concatenate([cands, lab])))).float()
        on = ref.to(config.device)
        local = _select(coverage, on[: len(cands)], config.local_k, on[len(cands):], config.sigma,
                        config.seed, config.local_sketch_dim)
        picks = cands[local]
        draws = np.stack([_half(m.at(picks)) for m in maps[1:]], axis=1) if need_draws else None
        rec = ImageRecord(digest, picks, ref[local].numpy().astype(np.float16), lab,
                          ref[len(cands):].numpy().astype(np.float16), draws)
        fresh = True
    elif need_draws and rec.draws is None:
        maps = source.maps(image, draw_noises)
        rec.draws = np.stack([_half(m.at(rec.picks)) for m in maps], axis=1)
        fresh = True
    if cache and fresh:
        rec = cache.put(key, rec)
    return rec, fresh


def labeled_features(source: FeatureSource, labeled: Mapping[int, tuple[np.ndarray, np.ndarray]],
                     config: RoundConfig, cache: RecordCache | None = None,
                     progress: Progress | None = None,
                     queried: Mapping[int, np.ndarray] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Training set: reference features [N, D] and classes [N] of every labeled pixel, taken from the
    images' records so that the round that follows needs no second UNet pass for these images.
    `labeled` maps image index -> (pixels, classes); `queried` as in `run_round`."""
    queried = queried or {}
    need_draws = config.needs_noise_draws
    feats, classes = [], []
    items = sorted(labeled.items())
    for n, (i, (pixels, cls)) in enumerate(items):
        pixels, cls = np.asarray(pixels, dtype=np.int64), np.asarray(cls, dtype=np.int64)
        rec, _ = image_record(source, i, pixels, config, need_draws, cache, queried.get(i, ()))
        order = np.searchsorted(rec.labeled, pixels)
        feats.append(torch.from_numpy(rec.labeled_reference[order]).float())
        classes.append(torch.from_numpy(cls))
        if progress:
            progress("features", n + 1, len(items))
    if not feats:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(classes)


def run_round(source: FeatureSource, labeled: Mapping[int, np.ndarray], head: SegmentationHead | None,
              config: RoundConfig, cache: RecordCache | None = None,
              progress: Progress | None = None, round_index: int = 0,
              queried: Mapping[int, np.ndarray] | None = None) -> RoundResult:
    """Select `config.budget` unlabeled pixels. `labeled` maps image index -> labeled flat pixels;
    `queried` maps image index -> every pixel queried in earlier rounds (answered, void or
    dismissed): none of them is queried again. `round_index` varies the random draws (random
    scores, PowerBALD noise) from round to round."""
    started = time.perf_counter()
    queried = queried or {}
    progress = progress or (lambda stage, done, total: None)
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + round_index)
    if config.acquisition == "random" and config.coverage is None:
        return _random_round(source, labeled, queried, config, generator)
    method = config.method if head is not None else None
    coverage = config.coverage or "herding"  # one-stage strategies have no model at round 0: cover
    if config.coverage is None and method is not None:
        return _one_stage_round(source, labeled, queried, head, config, method, generator, progress)

    # Draw features are computed with each image's record as soon as the configured method will need
    # them (round 0 included), so that later rounds find them there.
    need_draws = config.needs_noise_draws
    pool_pixels, pool_images, pool_ref, pool_draws, covered = [], [], [], [], []
    recomputed = 0
    n = len(source)
    for i in range(n):
        rec, fresh = image_record(source, i, labeled.get(i, ()), config, need_draws, cache, queried.get(i, ()))
        recomputed += fresh
        pool_pixels.append(rec.picks)
        pool_images.append(np.full(len(rec.picks), i, dtype=np.int64))
        pool_ref.append(rec.reference)
        covered.append(rec.labeled_reference)
        if need_draws:
            pool_draws.append(rec.draws)
        progress("local", i + 1, n)
    local_done = time.perf_counter()

    pixels, images = np.concatenate(pool_pixels), np.concatenate(pool_images)
    ref_all = torch.from_numpy(np.concatenate(pool_ref))  # float16 as stored: a float32 copy of 500,000 x 768 is 1.5 GB
    cov_all = torch.from_numpy(np.concatenate(covered))
    keep = config.budget if method is None else max(config.budget, round(config.keep_global * len(pixels)))
    progress("global", 0, 1)
    on, cov_on = ref_all.to(config.device), cov_all.to(config.device)
    if coverage == "coreset":
        kept = k_center_greedy(on, keep, cov_on, seed=config.seed)
    else:
        kept = global_herding(on, keep, cov_on, images, config.sigma, seed=config.seed,
                              exact_max=config.global_exact_max,
                              progress=lambda stage, done, total: progress(f"global {stage}", done, total))
    progress("global", 1, 1)
    global_done = time.perf_counter()

    scores = None
    if method is None:
        order = kept[: config.budget]
    else:
        progress("uncertainty", 0, 1)
        draw_lp = None
        if method.needs_noise_draws:
            draw_lp = _kept_draw_log_probs(head, kept, pool_draws, np.cumsum([0] + [len(p) for p in pool_pixels]))
        parts = []
        for a in range(0, len(kept), SCORE_CHUNK):
            chunk = kept[a:a + SCORE_CHUNK]
            ref, samples = _uncertainty_inputs(head, method, ref_all[chunk].float(),
                                               None if draw_lp is None else draw_lp[a:a + SCORE_CHUNK],
                                               config.mc_samples, generator)
            parts.append(method.scores(ref, samples, generator))
        s = torch.cat(parts)
        rank = torch.argsort(s, descending=True, stable=True)[: config.budget].numpy()
        order, scores = kept[rank], s[rank].tolist()
        progress("uncertainty", 1, 1)
    done = time.perf_counter()
    return RoundResult(
        queries=[(int(images[j]), int(pixels[j])) for j in order], scores=scores,
        pool_size=len(pixels), kept_size=len(kept), images_recomputed=recomputed,
        seconds={"local": local_done - started, "global": global_done - local_done,
                 "uncertainty": done - global_done, "total": done - started},
    )


def _one_stage_round(source: FeatureSource, labeled: Mapping[int, np.ndarray],
                     queried: Mapping[int, np.ndarray], head: SegmentationHead, config: RoundConfig,
                     method: Acquisition, generator: torch.Generator, progress: Progress) -> RoundResult:
    """Score every candidate pixel of every image and take the top b."""
    started = time.perf_counter()
    draw_noises = tuple(range(1, source.draws + 1)) if method.needs_noise_draws else ()
    all_scores, all_images, all_pixels = [], [], []
    n = len(source)
    for i in range(n):
        key = source.key(i)
        lab = np.asarray(labeled.get(i, ()), dtype=np.int64)
        cands = _unasked(candidate_pixels(key, source.resolution, config.candidates, config.seed), lab,
                         queried.get(i, ()))
        maps = source.maps(i, (REFERENCE_NOISE, *draw_noises))
        for part in np.array_split(cands, max(1, len(cands) // 4096)):
            ref = maps[0].at(part)
            draw_lp = _draw_log_probs(head, torch.stack([m.at(part) for m in maps[1:]], dim=1)) if draw_noises else None
            ref_lp, samples = _uncertainty_inputs(head, method, ref, draw_lp, config.mc_samples, generator)
            all_scores.append(method.scores(ref_lp, samples, generator))
            all_images.append(np.full(len(part), i, dtype=np.int64))
            all_pixels.append(part)
        progress("uncertainty", i + 1, n)
    s = torch.cat(all_scores)
    rank = torch.argsort(s, descending=True, stable=True)[: config.budget].numpy()
    images, pixels = np.concatenate(all_images), np.concatenate(all_pixels)
    return RoundResult([(int(images[j]), int(pixels[j])) for j in rank], s[rank].tolist(),
                       pool_size=len(s), kept_size=len(s), images_recomputed=n,
                       seconds={"uncertainty": time.perf_counter() - started,
                                "total": time.perf_counter() - started})


def _random_round(source: FeatureSource, labeled: Mapping[int, np.ndarray], queried: Mapping[int, np.ndarray],
                  config: RoundConfig, generator: torch.Generator) -> RoundResult:
    """b pixels drawn uniformly from the unlabeled candidates of all images (no features needed)."""
    images, pixels = [], []
    for i in range(len(source)):
        lab = np.asarray(labeled.get(i, ()), dtype=np.int64)
        cands = _unasked(candidate_pixels(source.key(i), source.resolution, config.candidates, config.seed), lab,
                         queried.get(i, ()))
        images.append(np.full(len(cands), i, dtype=np.int64))
        pixels.append(cands)
    images_all, pixels_all = np.concatenate(images), np.concatenate(pixels)
    pick = torch.randperm(len(pixels_all), generator=generator)[: config.budget].numpy()
    return RoundResult([(int(images_all[j]), int(pixels_all[j])) for j in pick], None,
                       pool_size=len(pixels_all), kept_size=len(pixels_all))
