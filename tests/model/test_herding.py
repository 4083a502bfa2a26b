import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.coreset import k_center_greedy
from model.herding import RBFKernel, auto_sigma, coverage, dense_greedy, lazy_greedy, max_herding


def naive_greedy(x: np.ndarray, budget: int, covered: np.ndarray | None, sigma: float) -> tuple[list[int], bool]:
    """Textbook greedy: every step recomputes every candidate's coverage gain over the full kernel.
    Also says whether some step had several candidates sharing the best gain (a tie)."""
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    k = np.exp(-d2 / sigma ** 2)
    cur = np.zeros(len(x))
    if covered is not None and len(covered):
        cur = np.exp(-((x[:, None, :] - covered[None, :, :]) ** 2).sum(-1) / sigma ** 2).max(1)
    chosen: list[int] = []
    tie = False
    for _ in range(min(budget, len(x))):
        gain = np.maximum(k - cur[:, None], 0).mean(0)
        gain[chosen] = -np.inf
        j = int(np.argmax(gain))
        tie |= int(np.sum(gain >= gain[j] - 1e-12)) > 1
        chosen.append(j)
        cur = np.maximum(cur, k[:, j])
    return chosen, tie


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), dim=st.integers(1, 6), budget=st.integers(0, 70), n_cov=st.integers(0, 8),
       seed=st.integers(0, 2**16), duplicate=st.booleans())
def test_max_herding_equals_naive_greedy(n, dim, budget, n_cov, seed, duplicate):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    if duplicate and n > 2:
        x[1] = x[0]  # exact ties
    covered = rng.normal(size=(n_cov, dim)) if n_cov else None
    sigma = float(rng.uniform(0.5, 3.0))
    ours = max_herding(x, budget, covered, sigma=sigma, dtype=torch.float64)
    ref, tie = naive_greedy(x, budget, covered, sigma)
    assert len(ours) == len(ref) == min(budget, n) and len(set(ours.tolist())) == len(ours)
    ours_c, ref_c = coverage(x, ours, covered, sigma), coverage(x, ref, covered, sigma)
    if not tie:  # the same selection, in the same order
        assert ours.tolist() == ref and ours_c == pytest.approx(ref_c, rel=1e-9, abs=1e-12)
    else:  # a (near-)tie broken the other way sends greedy down another path: only its guarantee holds
        assert ours_c >= (1 - 1 / np.e) * ref_c


def test_covered_points_steer_the_selection():
    rng = np.random.default_rng(0)
    left = rng.normal(size=(50, 2)) - 5
    right = rng.normal(size=(50, 2)) + 5
    x = np.concatenate([left, right])
    first_free = max_herding(x, 1, None, sigma=2.0)[0]
    first_covered_left = max_herding(x, 1, left[:10], sigma=2.0)[0]
    assert first_covered_left >= 50  # the left cluster is covered already: pick on the right
    assert 0 <= first_free < 100


def test_first_pick_without_coverage_is_the_most_central_point():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 3))
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    assert max_herding(x, 1, sigma=1.5)[0] == int(np.exp(-d2 / 1.5 ** 2).mean(0).argmax())


def test_auto_sigma_is_twice_the_median_distance_of_a_subsample():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(size=(500, 4)))
    idx = torch.randperm(500, generator=torch.Generator().manual_seed(7))[:10]
    sub = x[idx]
    d = torch.cdist(sub, sub)[torch.triu_indices(10, 10, 1).unbind()]
    assert auto_sigma(x, seed=7) == pytest.approx(2 * float(d.median()))
    assert auto_sigma(torch.zeros(20, 3)) == 2.0  # all points equal: the reference's fallback


@pytest.mark.parametrize("n_cov", [0, 5, 300])
def test_sparse_path_selects_exactly_what_the_dense_path_does(n_cov):
    """Without room for the whole kernel (dense_bytes=0) the useful-entries path takes over: first
    column-by-column picks, then the sparse kernel; the selection must not change."""
    rng = np.random.default_rng(4)
    centers = rng.normal(size=(15, 12)) * 3
    x = centers[rng.integers(15, size=900)] + rng.normal(size=(900, 12))
    cov = x[rng.choice(900, n_cov, replace=False)] + 0.1 if n_cov else None
    dense = max_herding(x, 200, cov, dtype=torch.float64)
    sparse = max_herding(x, 200, cov, dtype=torch.float64, dense_bytes=0)
    sigma = auto_sigma(torch.from_numpy(x))
    # the same greedy; summation order differs, so exact near-ties may swap places
    assert coverage(x, sparse, cov, sigma) == pytest.approx(coverage(x, dense, cov, sigma), rel=1e-12)
    assert len(set(sparse.tolist()) & set(dense.tolist())) >= 0.97 * len(dense)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_cov", [0, 40])
def test_lazy_greedy_selects_what_the_incremental_greedy_does(dtype, n_cov):
    """The lazy path (float32 sums with error intervals, float64 only for contenders) against the
    incremental path that updates every gain at every pick; duplicated rows make exact ties, which
    both must break towards the lowest index."""
    rng = np.random.default_rng(8)
    centers = rng.normal(size=(12, 32)) * 2
    x = centers[rng.integers(12, size=1500)] + rng.normal(size=(1500, 32))
    x[700:710] = x[:10]
    xt = torch.from_numpy(x).to(dtype)
    kern = RBFKernel(float(auto_sigma(xt)))
    kernel = kern.matrix(xt)
    base = kern.max_over(xt, xt[1000:1000 + n_cov] + 0.05)
    lazy, lazy_cur = lazy_greedy(kernel, base, 60)
    dense, dense_cur = dense_greedy(kernel, base, 60)
    assert lazy == dense
    assert torch.equal(lazy_cur, dense_cur)
    assert not any(700 <= j < 710 for j in lazy)  # a duplicate never beats its lower-indexed twin


def test_sketch_keeps_most_of_the_objective():
    rng = np.random.default_rng(5)
    centers = rng.normal(size=(30, 1024))
    x = centers[rng.integers(30, size=2000)] + 0.7 * rng.normal(size=(2000, 1024))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sigma = auto_sigma(torch.from_numpy(x))
    exact = coverage(x, max_herding(x, 50, sigma=sigma), None, sigma)
    sketched = coverage(x, max_herding(x, 50, sigma=sigma, sketch_dim=128), None, sigma)
    assert sketched >= 0.999 * exact
    # a Gaussian random projection of the same size, in the test's own arithmetic, keeps less
    proj = rng.normal(size=(1024, 128)) / np.sqrt(128)
    projected = coverage(x, max_herding(x @ proj, 50, sigma=sigma), None, sigma)
    assert sketched > projected


def test_sketch_of_low_rank_features_is_lossless():
    # features in a 20-d subspace of 512-d: a 32-d sketch holds them whole, norms are exact
    rng = np.random.default_rng(6)
    basis = rng.normal(size=(20, 512)) / 5
    x = rng.normal(size=(800, 20)) @ basis
    covered = x[:5] + 0.3 * rng.normal(size=(5, 20)) @ basis  # labeled points among them
    sigma = float(auto_sigma(torch.from_numpy(x)))
    exact = max_herding(x, 30, covered, sigma=sigma, dtype=torch.float64)
    assert max_herding(x, 30, covered, sigma=sigma, sketch_dim=32, dtype=torch.float64).tolist() == exact.tolist()


def test_k_center_greedy_picks_far_points_and_respects_centers():
    x = np.array([[0.0], [1.0], [10.0], [11.0], [5.0]])
    order = k_center_greedy(x, 2, covered=np.array([[0.0]]))
    assert order.tolist() == [3, 4]
    assert len(set(k_center_greedy(x, 5).tolist())) == 5
