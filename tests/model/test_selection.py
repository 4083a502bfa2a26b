import numpy as np
import pytest
import torch

from model.datasets import IGNORE_INDEX, load_camvid
from model.features import DiffusionFeatureExtractor, FeatureConfig, FeatureMaps, ImageFeatureSource
from model.head import SegmentationHead, TrainConfig, train_head
from model.selection import (RecordCache, RoundConfig, StoredDraws, budget_for, candidate_pixels, current_records,
                             record_digest, run_round)

R = 64


class CountingSource(ImageFeatureSource):
    """Records which noises each UNet pass was asked for."""

    def __init__(self, *args):
        super().__init__(*args)
        self.requests: list[tuple[int, tuple[int, ...]]] = []

    def maps(self, image, noises):
        self.requests.append((image, tuple(noises)))
        return super().maps(image, noises)


@pytest.fixture(scope="module")
def camvid4(camvid_root):
    return load_camvid(camvid_root, "val").head(4)


@pytest.fixture(scope="module")
def extractor(tiny_unet):
    return DiffusionFeatureExtractor(tiny_unet, FeatureConfig(resolution=R))


def _source(ds, extractor):
    return CountingSource(extractor, lambda i: ds.image(i, R), [ds.key(i) for i in range(len(ds))])


def _head_for(ds, source, labeled):
    feats, labels = [], []
    for i, px in labeled.items():
        feats.append(source.maps(i, (0,))[0].at(px))
        labels.append(torch.from_numpy(ds.labels(i, R).ravel()[px].astype(np.int64)))
    head, _ = train_head(torch.cat(feats), torch.cat(labels), ds.num_classes, TrainConfig(max_epochs=5))
    return head


def _check(queries, labeled, b):
    assert len(queries) == b and len(set(queries)) == b
    for i, p in queries:
        assert 0 <= p < R * R and p not in set(labeled.get(i, []))


def test_two_stage_rounds_on_camvid_return_b_distinct_unlabeled_pixels(camvid4, extractor):
    b = budget_for(len(camvid4), 2.0)
    source = _source(camvid4, extractor)
    cfg = RoundConfig(budget=b, candidates=800, local_k=10)
    cache = RecordCache({"test": "two-stage"})
    r0 = run_round(source, {}, None, cfg, cache=cache)
    _check(r0.queries, {}, b)
    assert r0.pool_size == 40 and r0.scores is None
    # round 0 makes one pass per image with the reference noise (the features every later round uses)
    # and, since eDALD will need them, the noise draws
    assert sorted(source.requests) == [(i, tuple(range(extractor.config.draws + 1))) for i in range(4)]
    source.requests.clear()
    labeled = {}
    for i, p in r0.queries:
        labeled.setdefault(i, []).append(p)
    labeled = {i: np.array(v) for i, v in labeled.items()}
    head = _head_for(camvid4, source, labeled)
    source.requests.clear()
    r1 = run_round(source, labeled, head, cfg, cache=cache, round_index=1)
    _check(r1.queries, labeled, b)
    assert r1.scores == sorted(r1.scores, reverse=True) and r1.kept_size == 20
    # round 1 recomputes only the images whose labeled set changed
    assert sorted({i for i, _ in source.requests}) == sorted(labeled) and r1.images_recomputed == len(labeled)


@pytest.mark.parametrize("coverage,acquisition", [(None, "margin"), (None, "edald"), ("coreset", "edald"),
                                                  ("herding", "ebald"), (None, "random"), ("herding", None)])
def test_every_strategy_shape_returns_b_distinct_unlabeled_pixels(camvid4, extractor, coverage, acquisition):
    source = _source(camvid4, extractor)
    labeled = {0: np.array([5, 6, 7]), 2: np.array([100])}
    head = _head_for(camvid4, source, labeled)
    if acquisition == "ebald":
        feats = torch.cat([source.maps(i, (0,))[0].at(px) for i, px in labeled.items()])
        labels = torch.tensor([0, 1, 0, 1])
        head, _ = train_head(feats, labels, 11, TrainConfig(max_epochs=2, mc_dropout=0.2))
    cfg = RoundConfig(budget=6, candidates=500, local_k=8, coverage=coverage, acquisition=acquisition)
    result = run_round(source, labeled, head, cfg, round_index=2)
    _check(result.queries, labeled, 6)


def test_record_cache_skips_unchanged_images_and_survives_restart(camvid4, extractor, tmp_path):
    cfg = RoundConfig(budget=4, candidates=500, local_k=8, acquisition=None)
    fp = {"test": 1}
    first = run_round(_source(camvid4, extractor), {}, None, cfg, cache=RecordCache(fp, tmp_path))
    source = _source(camvid4, extractor)
    again = run_round(source, {}, None, cfg, cache=RecordCache(fp, tmp_path))
    assert again.queries == first.queries and again.images_recomputed == 0 and source.requests == []
    changed = run_round(source, {1: np.array([3])}, None, cfg, cache=RecordCache(fp, tmp_path))
    assert changed.images_recomputed == 1 and [i for i, _ in source.requests] == [1]
    stale = run_round(_source(camvid4, extractor), {}, None, cfg, cache=RecordCache({"test": 2}, tmp_path))
    assert stale.images_recomputed == 4


def test_candidates_are_fixed_per_image_and_blind_to_void(camvid4):
    a = candidate_pixels(camvid4.key(0), R, 1000, seed=0)
    assert np.array_equal(a, candidate_pixels(camvid4.key(0), R, 1000, seed=0))
    assert not np.array_equal(a, candidate_pixels(camvid4.key(1), R, 1000, seed=0))
    assert not np.array_equal(a, candidate_pixels(camvid4.key(0), R, 1000, seed=1))
    void = np.concatenate([np.flatnonzero(camvid4.labels(i, R) == IGNORE_INDEX) for i in range(4)])
    assert void.size > 0
    hits = sum(np.isin(candidate_pixels(camvid4.key(i), R, 1000, 0),
                       np.flatnonzero(camvid4.labels(i, R) == IGNORE_INDEX)).sum() for i in range(4))
    assert hits > 0  # void pixels stay candidates: selection cannot see labels


def test_round_config_validation():
    with pytest.raises(ValueError):
        RoundConfig(budget=1, coverage=None, acquisition=None)
    with pytest.raises(ValueError):
        RoundConfig(budget=1, coverage="kmeans")
    with pytest.raises(ValueError):
        RoundConfig(budget=1, acquisition="edal")
    assert budget_for(367, 0.1) == 37 and budget_for(8, 0.1) == 1 and budget_for(0, 0.1) == 0


def test_sketched_local_herding_is_a_round_option(camvid4, extractor):
    exact_cfg = RoundConfig(budget=4, candidates=500, local_k=8, acquisition=None)
    sketch_cfg = RoundConfig(budget=4, candidates=500, local_k=8, acquisition=None, local_sketch_dim=16)
    exact, sketched = RecordCache({"sketch": None}), RecordCache({"sketch": 16})
    run_round(_source(camvid4, extractor), {}, None, exact_cfg, cache=exact)
    result = run_round(_source(camvid4, extractor), {}, None, sketch_cfg, cache=sketched)
    _check(result.queries, {}, 4)
    key, none_labeled = camvid4.key(0), record_digest(np.array([], dtype=np.int64))
    picks_exact, picks_sketch = exact.get(key, none_labeled), sketched.get(key, none_labeled)
    assert picks_exact is not None and picks_sketch is not None
    assert len(set(picks_sketch.picks)) == 8 and set(picks_sketch.picks) != set(picks_exact.picks)


def test_a_pool_past_global_exact_max_is_herded_in_shards_with_progress(camvid4, extractor):
    """Four images of 10 local picks, shards of at most 15 points: one image a shard; progress
    counts the shards, then the merge's picks. Below the threshold the exact greedy counts picks."""
    source = _source(camvid4, extractor)
    picks = [("global greedy", k, 4) for k in range(1, 5)]
    for exact_max, expected in ((15, [("global shards", k, 4) for k in range(5)] + picks), (40, picks)):
        calls = []
        cfg = RoundConfig(budget=4, candidates=500, local_k=10, acquisition=None, global_exact_max=exact_max)
        r0 = run_round(source, {}, None, cfg, progress=lambda *a: calls.append(a))
        _check(r0.queries, {}, 4)
        assert [c for c in calls if c[0].startswith("global")] == [("global", 0, 1), *expected, ("global", 1, 1)]
    labeled = {i: np.array([p]) for i, p in r0.queries}
    cfg = RoundConfig(budget=4, candidates=500, local_k=10, global_exact_max=15)
    r1 = run_round(source, labeled, _head_for(camvid4, source, labeled), cfg, round_index=1)
    _check(r1.queries, labeled, 4)
    assert r1.kept_size == round(0.5 * r1.pool_size)


@pytest.mark.parametrize("coverage,acquisition", [("herding", None), (None, "random"), ("herding", "edald"),
                                                  (None, "margin")])
def test_a_pixel_queried_once_never_comes_back_even_without_a_label(camvid4, extractor, coverage, acquisition):
    """Queries answered as void or dismissed leave the labeled set unchanged; they must not win again."""
    source = _source(camvid4, extractor)
    head = _head_for(camvid4, source, {0: np.array([5, 6, 7]), 2: np.array([100])}) if acquisition else None
    cfg = RoundConfig(budget=6, candidates=300, local_k=8, coverage=coverage, acquisition=acquisition)
    cache = RecordCache({"test": "requery"})
    asked: dict[int, list[int]] = {}
    seen = set()
    for r in range(3):
        result = run_round(source, {}, head, cfg, cache=cache, round_index=r,
                           queried={i: np.array(px) for i, px in asked.items()})
        assert len(result.queries) == 6 and not set(result.queries) & seen, f"round {r} asked again"
        seen |= set(result.queries)
        for i, p in result.queries:
            asked.setdefault(i, []).append(p)
    # the record of an image depends on what was asked there: unchanged labels, new digest
    assert record_digest([], [3]) != record_digest([]) == record_digest([], [])
    assert record_digest([3], [3]) == record_digest([3])


class FixedSource:
    """Feature maps drawn once from a seeded generator, the same numbers on every machine (the UNet's
    would depend on the CPU's bf16 support)."""

    resolution, draws = 16, 5

    def __len__(self):
        return 6

    def key(self, image):
        return f"image-{image}"

    def maps(self, image, noises):
        return [FeatureMaps([torch.from_numpy(np.random.default_rng([image, n]).standard_normal((24, 8, 8))
                                              .astype(np.float32))], 16, True) for n in noises]


# Round 0 and round 1 (eDALD with a seeded head) as the code picked them before local and
# global coverage could run on the backend's device (issue 26): the device path changes nothing on the CPU.
BEFORE_DEVICES = {
    "exact": ([(1, 53), (5, 102), (4, 145), (1, 77)], [(1, 34), (4, 3), (5, 51), (5, 1)]),
    "sharded": ([(0, 236), (4, 70), (1, 160), (5, 124)], [(5, 9), (2, 90), (2, 5), (1, 99)]),
    "coreset": ([(3, 198), (2, 208), (2, 176), (2, 4)], [(0, 136), (3, 83), (2, 135), (5, 246)]),
}


@pytest.mark.parametrize("variant, options", [("exact", {}), ("sharded", {"global_exact_max": 12}),
                                              ("coreset", {"coverage": "coreset"})])
def test_on_the_cpu_device_the_picks_are_those_from_before_the_device_option(variant, options):
    source = FixedSource()
    config = RoundConfig(budget=4, candidates=60, local_k=6, seed=3, device="cpu", **options)
    first = run_round(source, {}, None, config).queries
    labeled: dict[int, list[int]] = {}
    for i, p in first:
        labeled.setdefault(i, []).append(p)
    torch.manual_seed(0)
    head = SegmentationHead(24, 3).eval()  # untrained: training's float sums vary with the thread count
    asked = {i: np.array(px) for i, px in labeled.items()}
    second = run_round(source, asked, head, config, round_index=1, queried=asked).queries
    assert (first, second) == BEFORE_DEVICES[variant]


def test_the_uncertainty_stage_is_announced_before_it_runs():
    """At N = 10,000 it took 30 s while /health still said "global"."""
    calls = []
    torch.manual_seed(0)
    head = SegmentationHead(24, 3).eval()
    run_round(FixedSource(), {0: np.array([5])}, head, RoundConfig(budget=4, candidates=60, local_k=6),
              progress=lambda stage, done, total: calls.append((stage, done, total)))
    stages = [c for c in calls if not c[0].startswith("local")]
    assert stages[-3:] == [("global", 1, 1), ("uncertainty", 0, 1), ("uncertainty", 1, 1)]


def test_records_in_a_directory_leave_their_draws_in_the_files_and_score_alike(tmp_path):
    """At 10,000 images the draws held in memory were most of a round's 7.2 GB peak (3.8 GB after)."""
    torch.manual_seed(0)
    head = SegmentationHead(24, 3).eval()
    config = RoundConfig(budget=5, candidates=60, local_k=6, seed=1)
    labeled = {0: np.array([5]), 3: np.array([17, 40])}
    in_memory = run_round(FixedSource(), labeled, head, config, RecordCache({"t": 1}), round_index=1)
    on_disk = RecordCache({"t": 1}, tmp_path)
    computed = run_round(FixedSource(), labeled, head, config, on_disk, round_index=1)
    reread = RecordCache({"t": 1}, tmp_path)
    from_files = run_round(FixedSource(), labeled, head, config, reread, round_index=1)
    assert from_files.images_recomputed == 0
    assert in_memory.queries == computed.queries == from_files.queries
    assert in_memory.scores == pytest.approx(from_files.scores, abs=1e-6)
    for cache in (on_disk, reread):
        kept = [cache.get(f"image-{i}", record_digest(labeled.get(i, ()))) for i in range(6)]
        assert all(isinstance(rec.draws, StoredDraws) for rec in kept)
        assert kept[0].draws.read().shape == (6, 5, 24)


class TwinSource(FixedSource):
    """Images 0 and 1 are one picture (one key, the same maps), as when a project imports an image
    twice; the N = 10,000 benchmark's 10,000 tasks hold 367 CamVid images."""

    def key(self, image):
        return super().key(0 if image == 1 else image)

    def maps(self, image, noises):
        return super().maps(0 if image == 1 else image, noises)


def test_two_tasks_of_one_image_labeled_differently_keep_their_own_records(tmp_path):
    """One file per image and labeled set: with one per image, the second task's record replaced the
    first's while the round still had to read the first's draws."""
    torch.manual_seed(0)
    head = SegmentationHead(24, 3).eval()
    config = RoundConfig(budget=4, candidates=60, local_k=6, seed=2)
    labeled = {0: np.array([5]), 1: np.array([9, 30])}  # the twins, each with its own labels
    in_memory = run_round(TwinSource(), labeled, head, config, RecordCache({"t": 1}), round_index=1)
    cache = RecordCache({"t": 1}, tmp_path)
    computed = run_round(TwinSource(), labeled, head, config, cache, round_index=1)
    again = run_round(TwinSource(), labeled, head, config, RecordCache({"t": 1}, tmp_path), round_index=1)
    assert in_memory.queries == computed.queries == again.queries and again.images_recomputed == 0
    assert len(list(tmp_path.glob("*.npz"))) == 6  # 5 images, one of them twice


def test_retain_keeps_the_current_records_and_deletes_the_rest(tmp_path):
    config = RoundConfig(budget=2, candidates=60, local_k=6, acquisition=None)
    source = FixedSource()
    cache = RecordCache({"t": 1}, tmp_path)
    run_round(source, {}, None, config, cache)
    later = {2: np.array([7])}
    run_round(source, later, None, config, cache, queried={3: np.array([11])})
    assert len(list(tmp_path.glob("*.npz"))) == 8  # images 2 and 3 have a second labeled set
    assert cache.retain(current_records(source, later, {3: np.array([11])})) == 2
    reread = RecordCache({"t": 1}, tmp_path)
    assert run_round(source, later, None, config, reread, queried={3: np.array([11])}).images_recomputed == 0
    assert reread.get(source.key(2), record_digest(())) is None and cache.get(source.key(2), record_digest(())) is None
