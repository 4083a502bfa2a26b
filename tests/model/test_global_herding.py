import numpy as np
import pytest
import torch

import model.herding as herding_module
from model.global_herding import global_herding, quotas, sharded_herding, shards
from model.herding import auto_sigma, coverage, max_herding


def clustered_pool(images: int, per_image: int = 30, dim: int = 16, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A merged pool, each row's image and cluster: an image's points come from 3 of 20 clusters
    (an image shows a few objects)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, dim)) * 2
    clusters = np.concatenate([rng.choice(20, 3, replace=False)[rng.integers(3, size=per_image)]
                               for _ in range(images)])
    x = (centers[clusters] + rng.normal(size=(len(clusters), dim))).astype(np.float32)
    return x, np.repeat(np.arange(images), per_image), clusters


def test_shards_keep_images_whole_and_within_the_size():
    images = np.repeat(np.arange(40), np.arange(40) % 7 + 1)  # images of 1 to 7 points
    groups = shards(images, 25, seed=3)
    rows = np.concatenate(groups)
    assert sorted(rows.tolist()) == list(range(len(images)))  # every row once
    assert all(len(g) <= 25 for g in groups) and len(groups) <= 2 * -(-len(images) // 25)
    owner = {int(i): k for k, g in enumerate(groups) for i in np.unique(images[g])}
    assert all(owner[int(images[r])] == k for k, g in enumerate(groups) for r in g)  # no image split
    assert [g.tolist() for g in shards(images, 25, seed=3)] == [g.tolist() for g in groups]
    assert [g.tolist() for g in shards(images, 25, seed=4)] != [g.tolist() for g in groups]
    assert [len(g) for g in shards(np.zeros(30, dtype=int), 10, seed=0)] == [30]  # too large: alone


def test_quotas_add_up_in_proportion():
    assert quotas(np.array([600, 600, 300]), 10).tolist() == [4, 4, 2]
    assert quotas(np.array([1, 1, 1]), 2).tolist() == [1, 1, 0]
    q = quotas(np.array([37, 50, 13, 100]), 77)
    assert q.sum() == 77 and np.all(np.abs(q - np.array([37, 50, 13, 100]) * 77 / 200) < 1)


@pytest.mark.parametrize("keep", [5, 200])
def test_one_shard_is_the_exact_greedy(keep):
    x, images, _ = clustered_pool(20)
    cov = x[:10] + 0.05
    sigma = auto_sigma(torch.from_numpy(x))
    exact = max_herding(x, keep, cov, sigma)
    assert sharded_herding(x, keep, cov, images, sigma, shard_size=len(x)).tolist() == exact.tolist()
    assert global_herding(x, keep, cov, images, sigma, exact_max=len(x)).tolist() == exact.tolist()


@pytest.mark.parametrize("keep", [10, 150, 1200])  # merged from a pool sample, merged from the pool, no merge
def test_sharded_keeps_exactly_keep_distinct_points_close_to_the_exact_objective(keep):
    x, images, _ = clustered_pool(100)
    cov = x[:50] + 0.05
    sigma = auto_sigma(torch.from_numpy(x))
    kept = global_herding(x, keep, cov, images, sigma, exact_max=500)
    assert len(kept) == keep and len(set(kept.tolist())) == keep and kept.min() >= 0 and kept.max() < len(x)
    ratio = coverage(x, kept, cov, sigma) / coverage(x, max_herding(x, keep, cov, sigma), cov, sigma)
    assert ratio >= 0.97  # greedy is no optimum: sharded may also come out above it
    assert global_herding(x, keep, cov, images, sigma, exact_max=500).tolist() == kept.tolist()  # deterministic
    assert global_herding(x, keep, cov, images, sigma, seed=1, exact_max=500).tolist() != kept.tolist()


def test_the_merge_picks_the_same_with_the_lazy_and_the_incremental_greedy(monkeypatch):
    """30 shards of 100 propose 3 picks each: 90 candidates for 3 picks take the lazy greedy (on a
    candidates x points kernel); forced onto the incremental one (points x candidates) the picks
    must not change."""
    import model.global_herding as global_module

    x, images, _ = clustered_pool(100)
    cov = x[:40] + 0.05
    sigma = auto_sigma(torch.from_numpy(x))
    lazy = sharded_herding(x, 3, cov, images, sigma, exact_max=500, shard_size=100)
    monkeypatch.setattr(global_module, "LAZY_BUDGET_SHARE", 10 ** 6)
    assert sharded_herding(x, 3, cov, images, sigma, exact_max=500, shard_size=100).tolist() == lazy.tolist()


def test_labeled_points_are_covered_in_every_shard():
    """A cluster whose points are all labeled already is never picked again, whichever shard holds
    its points (each shard's herding sees every labeled point)."""
    x, images, clusters = clustered_pool(60, seed=2)
    sigma = auto_sigma(torch.from_numpy(x))
    labeled_cluster = np.flatnonzero(clusters == clusters[0])
    groups = shards(images, 300, seed=0)
    assert all(np.isin(g, labeled_cluster).any() for g in groups) and len(groups) >= 5
    for keep in (10, 400):  # the merge sees the labeled points too; 400 has no merge
        kept = global_herding(x, keep, x[labeled_cluster], images, sigma, exact_max=300)
        assert not np.isin(kept, labeled_cluster).any()
        assert np.isin(max_herding(x, keep, None, sigma), labeled_cluster).any()  # without labels it would be


def test_no_kernel_larger_than_a_shard_or_the_exact_maximum(monkeypatch):
    """Memory stays bounded however large the pool: each shard's kernel has at most shard_size^2
    entries, and the merge's (built block by block) at most exact_max^2."""
    x, images, _ = clustered_pool(100)
    cov = x[:40] + 0.05
    sigma = auto_sigma(torch.from_numpy(x))
    calls: list[int] = []
    matrices: list[int] = []
    call, matrix = herding_module.RBFKernel.__call__, herding_module.RBFKernel.matrix

    def counted_call(self, a, b, *args, **kwargs):
        calls.append(len(a) * len(b))
        return call(self, a, b, *args, **kwargs)

    def counted_matrix(self, a, *args, **kwargs):
        matrices.append(len(a) ** 2)
        return matrix(self, a, *args, **kwargs)

    monkeypatch.setattr(herding_module.RBFKernel, "__call__", counted_call)
    monkeypatch.setattr(herding_module.RBFKernel, "matrix", counted_matrix)
    for keep in (10, 150, 1500):
        calls.clear(), matrices.clear()
        sharded_herding(x, keep, cov, images, sigma, exact_max=400, shard_size=100)
        assert len(matrices) >= 30 and max(matrices) <= 100 ** 2 and max(calls) <= 400 ** 2
    calls.clear(), matrices.clear()
    global_herding(x, 10, cov, images, sigma, exact_max=len(x))  # the exact path: one kernel of the pool
    assert matrices == [len(x) ** 2]


def test_progress_counts_shards_then_merge_picks():
    x, images, _ = clustered_pool(100)
    sigma = auto_sigma(torch.from_numpy(x))
    calls: list[tuple[str, int, int]] = []
    global_herding(x, 10, None, images, sigma, exact_max=500, progress=lambda *a: calls.append(a))
    shard_calls = [c for c in calls if c[0] == "shards"]
    total = shard_calls[0][2]
    assert total == len(shards(images, 500, 0)) and [c[1] for c in shard_calls] == list(range(total + 1))
    assert calls[len(shard_calls):] == [("greedy", k, 10) for k in range(1, 11)]
    calls.clear()
    global_herding(x, 1000, None, images, sigma, exact_max=len(x), progress=lambda *a: calls.append(a))
    assert calls[-1] == ("greedy", 1000, 1000) and len(calls) <= 101  # the exact greedy, at most every 1%
