"""MaxHerding: greedy maximisation of generalized coverage (Bae et al., 2024).

    C(S) = mean over points x of  max( c(x), max_{s in S} k(x, s) ),   k(x, s) = exp(-|x - s|^2 / sigma^2)

where c(x) = max over already-labeled ("covered") points l of k(x, l), 0 if there are none. The
mean runs over the candidate points only, as the eDALD reference computes it. C is a facility
location function, monotone and submodular, so a candidate's marginal gain never grows as the
selection does: lazy greedy (re-evaluating only the candidates whose stale gain could still win)
returns exactly the greedy selection while evaluating a small fraction of the gains.

`split_and_herd` is the paper's memory-bounded variant (appendix C.8): the pool is split, each
split gets a proportional share of the budget and is herded in turn, conditioned on what earlier
splits selected.
"""

from __future__ import annotations

import math

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _as_float_tensor(x: ArrayLike, device: torch.device | None = None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t.to(device=device or t.device, dtype=dtype)


def auto_sigma(features: torch.Tensor, seed: int = 0, sample_ratio: float = 0.01,
               min_points: int = 10, scale: float = 2.0) -> float:
    """2 x the median pairwise distance of a seeded random subsample (1%, at least 10 points)."""
    n = len(features)
    m = min(n, max(min_points, int(n * sample_ratio)))
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:m].to(features.device)
    sub = features[idx].double()
    d = torch.cdist(sub, sub)
    iu = torch.triu_indices(m, m, offset=1, device=features.device)
    d = d[iu[0], iu[1]]
    d = d[d > 0]
    median = float(d.median()) if d.numel() else 1.0
    return max(median, 1e-6) * scale


class RBFKernel:
    """k(x, y) = exp(-|x - y|^2 / sigma^2), evaluated block by block from squared norms."""

    def __init__(self, sigma: float):
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.sigma = float(sigma)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, x_sq: torch.Tensor | None = None,
                 y_sq: torch.Tensor | None = None) -> torch.Tensor:
        x_sq = (x * x).sum(1) if x_sq is None else x_sq
        y_sq = (y * y).sum(1) if y_sq is None else y_sq
        d2 = (x_sq[:, None] + y_sq[None, :] - 2.0 * (x @ y.T)).clamp_(min=0)
        return d2.mul_(-1.0 / self.sigma ** 2).exp_()

    def max_over(self, x: torch.Tensor, y: torch.Tensor, block: int = 2048) -> torch.Tensor:
        """max_j k(x_i, y_j) for every row of x; zeros when y is empty."""
        out = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        if len(y) == 0:
            return out
        x_sq, y_sq = (x * x).sum(1), (y * y).sum(1)
        for s in range(0, len(y), block):
            k = self(x, y[s:s + block], x_sq, y_sq[s:s + block])
            out = torch.maximum(out, k.max(1).values)
        return out

    def matrix(self, x: torch.Tensor, block: int = 2048) -> torch.Tensor:
        n = len(x)
        x_sq = (x * x).sum(1)
        k = torch.empty(n, n, dtype=x.dtype, device=x.device)
        for s in range(0, n, block):
            k[s:s + block] = self(x[s:s + block], x, x_sq[s:s + block], x_sq)
        return k


def coverage(features: ArrayLike, selected: ArrayLike, covered: ArrayLike | None, sigma: float) -> float:
    """C(S) for the selected rows of `features`, with `covered` points counting as selected."""
    x = _as_float_tensor(features, dtype=torch.float64)
    kern = RBFKernel(sigma)
    best = kern.max_over(x, x[torch.as_tensor(np.asarray(selected, dtype=np.int64), device=x.device)])
    if covered is not None and len(covered):
        best = torch.maximum(best, kern.max_over(x, _as_float_tensor(covered, x.device, torch.float64)))
    return float(best.mean())


def greedy_on_kernel(kernel: torch.Tensor, base: torch.Tensor, budget: int, probe: int = 16) -> list[int]:
    """Lazy greedy on a precomputed kernel: columns are candidates, rows the points to cover,
    `base` the starting per-point coverage. Evaluates `probe` stale leaders at a time and accepts
    the best exact gain once no stale bound can beat it, so the result is the exact greedy one."""
    n = kernel.shape[1]
    budget = min(budget, n)
    cur = base.clone()
    bounds = torch.empty(n, dtype=kernel.dtype, device=kernel.device)
    for s in range(0, n, 4096):  # initial exact gains, in column blocks to bound memory
        bounds[s:s + 4096] = (kernel[:, s:s + 4096] - cur[:, None]).clamp_(min=0).sum(0)
    taken = torch.zeros(n, dtype=torch.bool, device=kernel.device)
    order: list[int] = []
    neg_inf = torch.tensor(-math.inf, dtype=kernel.dtype, device=kernel.device)
    while len(order) < budget:
        masked = torch.where(taken, neg_inf, bounds)
        remaining = n - len(order)
        k = min(probe, remaining)
        top_vals, top_idx = masked.topk(min(k + 1, remaining))
        cand = top_idx[:k]
        exact = (kernel[:, cand] - cur[:, None]).clamp_(min=0).sum(0)
        bounds[cand] = exact
        best = int(exact.argmax())
        rival = top_vals[k] if len(top_vals) > k else neg_inf
        if exact[best] >= rival:
            j = int(cand[best])
            order.append(j)
            taken[j] = True
            cur = torch.maximum(cur, kernel[:, j])
    return order


def max_herding(features: ArrayLike, budget: int, covered: ArrayLike | None = None,
                sigma: float | str = "auto", *, seed: int = 0, max_points: int = 20000,
                dtype: torch.dtype = torch.float32) -> np.ndarray:
    """Indices of `budget` rows of `features` chosen greedily for coverage, in selection order.

    Rows of `covered` (already-labeled points) start the running maximum and are never selected.
    Pools larger than `max_points` are herded with `split_and_herd` to bound memory.
    """
    x = _as_float_tensor(features, dtype=dtype)
    n = len(x)
    budget = max(0, min(int(budget), n))
    if budget == 0:
        return np.empty(0, dtype=np.int64)
    s = auto_sigma(x, seed) if sigma == "auto" else float(sigma)
    cov = _as_float_tensor(covered, x.device, dtype) if covered is not None else x[:0]
    if n > max_points:
        return split_and_herd(x, budget, cov, s, split_size=max_points, seed=seed, dtype=dtype)
    kern = RBFKernel(s)
    return np.asarray(greedy_on_kernel(kern.matrix(x), kern.max_over(x, cov), budget), dtype=np.int64)


def split_and_herd(features: ArrayLike, budget: int, covered: ArrayLike | None, sigma: float, *,
                   split_size: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> np.ndarray:
    """Herd a shuffled pool split by split (each at most `split_size` points), every split with a
    budget proportional to its size and conditioned on the selections of the splits before it."""
    x = _as_float_tensor(features, dtype=dtype)
    n = len(x)
    budget = max(0, min(int(budget), n))
    kern = RBFKernel(sigma)
    cov = _as_float_tensor(covered, x.device, dtype) if covered is not None else x[:0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(x.device)
    splits = list(perm.tensor_split(math.ceil(n / split_size)))
    chosen: list[torch.Tensor] = []
    remaining = budget
    for i, idx in enumerate(splits):
        share = remaining if i == len(splits) - 1 else min(remaining, round(budget * len(idx) / n))
        if share <= 0:
            continue
        part = x[idx]
        base = kern.max_over(part, cov)
        if chosen:
            base = torch.maximum(base, kern.max_over(part, x[torch.cat(chosen)]))
        picks = greedy_on_kernel(kern.matrix(part), base, share)
        chosen.append(idx[torch.as_tensor(picks, dtype=torch.long, device=x.device)])
        remaining -= len(picks)
    return torch.cat(chosen).cpu().numpy().astype(np.int64) if chosen else np.empty(0, dtype=np.int64)
