"""Global herding: exact MaxHerding over the merged pool up to `GLOBAL_EXACT_MAX` points, shards past it.

The exact greedy over a pool of n points makes at least one pass over its n x n kernel (n^2 d / 2
multiply-adds with the symmetric kernel computed once), and each pick then lowers gains over
rows of that kernel. At 768 features round 0 took 0.2 s for 5,000 points (100 images of 50 local
picks), 208 s for 50,000 and over 844 s for 150,000, in 10.8 GB (issue 26); at 500,000 points
(10,000 images) the kernel alone is 10^14 multiply-adds. So up to `exact_max` points (20,000 by
default: the whole kernel fits the dense path, 1.6 GB, and a round's exact greedy takes 3-5 s) the
pool is herded exactly (`herding.herd`, the paper's global stage); past it, in three steps:

1. Shards. The images are put in an order drawn from the seed and cut into shards of at most
   `SHARD_SIZE` points, each image whole (its local picks meet each other as in the exact greedy).
2. Each shard is herded exactly, every labeled pixel covered as in the exact greedy, keeping its
   share (by size) of max(M, `exact_max`) points, never more than M.
3. If the shards kept more than M points (M below `exact_max`: round 0 keeps b), the exact greedy
   chooses M of them for C(S) over the pool's points, S restricted to the shards' picks. Where the
   kernel of those picks against the pool would exceed `exact_max`^2 entries, a uniform sample of
   the pool drawn from the seed stands in for it: the same mean, from exact_max^2 / picks points.

What it gives up: a point its shard did not keep is never picked, and shards do not see each
other's picks, so two shards may both spend picks on what one pick would cover. Why it stays
close: a shard of images drawn at random is a sample of the pool and C is a mean over points, so
a shard's picks cover its points about as well as the exact picks do; other shards' picks cover
them too, so the union covers the pool at least as well as each shard covers itself (weighted by
size). With M below `exact_max`, each shard proposes up to M candidates and step 3 chooses among
them against the pool: RandGreeDi (Barbosa et al., 2015), whose worst case is half the greedy's
guarantee in expectation. Measured against the exact greedy at 50,000 points (docs/performance.md)
it kept 99.936% of the objective in round 0 and 99.965% keeping half; on a real CamVid pool of
18,350 points, 99.915% and 99.693%. Cost: n / S shards of S^2 d / 2 multiply-adds (n S d / 2 in all, linear in n) and
step 3's kernel; memory: one S x S kernel at a time, step 3's at most exact_max^2 entries.

Shards are small (S = 2,000, a 16 MB kernel) because a later round keeps half the pool: each
shard's greedy then makes S / 2 picks, each lowering gains over the kernel rows of the points it
covers better, and that work per point grows with S (a later round at 10,000 images took 34 s in
shards of 2,000, 212 s in shards of 10,000).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from model.herding import (LAZY_BUDGET_SHARE, RBFKernel, auto_sigma, dense_greedy, every_percent, lazy_greedy,
                           max_herding, squared_norms)

GLOBAL_EXACT_MAX = 20_000  # points: exact herding of the pool up to here; past it no kernel of more than its square
SHARD_SIZE = 2_000  # points per shard, at most

Progress = Callable[[str, int, int], None]


def shards(images: np.ndarray, size: int, seed: int) -> list[np.ndarray]:
    """The pool's rows (`images[i]`: row i's image) in shards of at most `size` rows, each image
    whole (an image larger than `size` alone in its shard): images in a seeded random order, a new
    shard begun where the next image would overflow the current one."""
    ids, inverse, counts = np.unique(np.asarray(images), return_inverse=True, return_counts=True)
    shard_of = np.empty(len(ids), dtype=np.int64)
    shard, filled = 0, 0
    for i in np.random.default_rng(seed).permutation(len(ids)):
        if filled and filled + counts[i] > size:
            shard, filled = shard + 1, 0
        shard_of[i] = shard
        filled += counts[i]
    row_shard = shard_of[inverse]
    order = np.argsort(row_shard, kind="stable")
    return np.split(order, np.cumsum(np.bincount(row_shard))[:-1])


def quotas(sizes: np.ndarray, total: int) -> np.ndarray:
    """`total` apportioned in proportion to `sizes` (largest remainders, ties to the first)."""
    exact = np.asarray(sizes, dtype=np.float64) * total / np.sum(sizes)
    out = np.floor(exact).astype(np.int64)
    out[np.argsort(out - exact, kind="stable")[: total - int(out.sum())]] += 1
    return out


def global_herding(features: torch.Tensor | np.ndarray, keep: int, covered: torch.Tensor | np.ndarray | None,
                   images: np.ndarray, sigma: float | str = "auto", *, seed: int = 0,
                   exact_max: int = GLOBAL_EXACT_MAX, progress: Progress | None = None) -> np.ndarray:
    """`keep` rows of the merged pool `features` (any float dtype) for coverage, `covered` the
    labeled points, `images[i]` row i's image: the exact greedy (in selection order, with its
    progress stages) up to `exact_max` rows, `sharded_herding` past it."""
    x = torch.as_tensor(features)
    s = auto_sigma(x, seed) if sigma == "auto" else float(sigma)
    if len(x) <= exact_max:
        return max_herding(x, keep, covered, s, seed=seed, progress=progress)
    return sharded_herding(x, keep, covered, images, s, exact_max=exact_max, seed=seed, progress=progress)


def sharded_herding(features: torch.Tensor | np.ndarray, keep: int, covered: torch.Tensor | np.ndarray | None,
                    images: np.ndarray, sigma: float, *, exact_max: int = GLOBAL_EXACT_MAX,
                    shard_size: int = SHARD_SIZE, seed: int = 0, progress: Progress | None = None) -> np.ndarray:
    """Steps 1-3 of the module docstring, in shards of at most min(`shard_size`, `exact_max`) rows,
    the merge's kernel at most `exact_max`^2 entries; features go to float32 a shard at a time. The
    result is in the merge's selection order, or shard by shard when the shards kept exactly
    `keep`. Progress: "shards" done of all, then the merge's "greedy", picks done of `keep`."""
    x = torch.as_tensor(features)
    keep = max(0, min(int(keep), len(x)))
    report = every_percent(progress) if progress else (lambda stage, done, total: None)
    groups = shards(images, min(shard_size, exact_max), seed)
    share = np.minimum(quotas(np.array([len(g) for g in groups]), min(len(x), max(keep, exact_max))), keep)
    picks = []
    report("shards", 0, len(groups))
    for i, (rows, k) in enumerate(zip(groups, share)):
        picks.append(rows[max_herding(x[rows], int(k), covered, sigma, seed=seed)])
        report("shards", i + 1, len(groups))
    candidates = np.concatenate(picks)
    if len(candidates) == keep:
        return candidates
    return candidates[merge(x, candidates, keep, covered, sigma, exact_max ** 2, seed, report)]


def merge(x: torch.Tensor, candidates: np.ndarray, keep: int, covered, sigma: float, max_entries: int, seed: int,
          progress: Progress, block: int = 4096) -> list[int]:
    """Exact greedy choice of `keep` of the `candidates` rows for the coverage of the pool's points,
    or of a seeded uniform sample of max_entries / len(candidates) of them, so that the kernel
    (built block by block from the features) holds at most `max_entries` entries. For a few picks
    the kernel is laid out candidates x points for the lazy greedy, else points x candidates."""
    n = len(x)
    points = min(n, max_entries // len(candidates))
    rows = torch.arange(n) if points == n else \
        torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:points].sort().values
    kern = RBFKernel(sigma)
    cx = x[torch.as_tensor(candidates)].float()
    cx_sq = squared_norms(cx)
    cov = torch.as_tensor(covered).to(x.device).float() if covered is not None else cx[:0]
    lazy = keep * LAZY_BUDGET_SHARE <= len(candidates)
    shape = (len(candidates), points) if lazy else (points, len(candidates))
    kernel, base = torch.empty(shape, device=x.device), torch.empty(points, device=x.device)
    for a in range(0, points, block):
        xb = x[rows[a:a + block]].float()
        xb_sq = squared_norms(xb)
        if lazy:
            kernel[:, a:a + block] = kern(xb, cx, xb_sq, cx_sq).T
        else:
            kern(xb, cx, xb_sq, cx_sq, out=kernel[a:a + block])
        base[a:a + block] = kern.max_over(xb, cov, x_sq=xb_sq)
    if lazy:
        return lazy_greedy(kernel, base, keep, progress=progress)[0]
    return dense_greedy(kernel, base, keep, symmetric=False, progress=progress)[0]
