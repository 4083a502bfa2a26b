"""MaxHerding: greedy maximisation of generalized coverage (Bae et al., 2024).

    C(S) = mean over points x of  max( c(x), max_{s in S} k(x, s) ),   k(x, s) = exp(-|x - s|^2 / sigma^2)

c(x) is the best coverage of x by already-labeled ("covered") points, 0 if there are none; the
mean runs over the candidate points only, as the eDALD reference computes it. Greedy takes the
candidate with the largest gain g(c) = sum_x max(0, k(x, c) - cur(x)) each step.

The reference recomputes every gain over the full kernel at each step: O(N^2) per pick. Here every
gain is kept exact and only updated where the coverage of a point improves: when s is picked,
the points x with k(x, s) > cur(x) change, and each lowers the gain of every candidate c by
    max(0, k(x, c) - old) - max(0, k(x, c) - new) = clamp(k(x, c), old, new) - old
(one clamp, exact in any dtype; `_lower_gains`). Few points improve after the first picks (in
total about N log B rows for B picks), so a run costs a few kernel passes instead of B. Gains
are accumulated in float64 and ties go to the lowest index, as in the textbook greedy. For
budgets small against the pool, `lazy_greedy` re-evaluates only the candidates whose stale gain
(an upper bound, by submodularity) could still beat the best fresh one; it sums in float32 with
an error interval and falls back to float64 only where intervals overlap, so it selects the same.

Where the N x N kernel does not fit in memory, only its useful entries are kept: k(x, c) can
still raise the coverage of x only while it exceeds cur(x), and once a few points are selected
(or labeled points cover the pool) such entries are a small fraction. The first picks are made
with gains computed column by column from the features; then one pass over the kernel keeps the
entries above cur(x) in sparse row and column indices and the exact greedy continues on those.

The paper bounds memory differently (appendix C.8): it splits the pool and herds the splits in
turn, an approximation. The sparse path keeps the greedy exact and fits the paper-scale pool
(48,200 x 6,144) in about 2.2 GB; the global stage splits pools past GLOBAL_EXACT_MAX points for
time, not memory (`global_herding.py`).

`sketch_dim` is an approximation for per-image herding, where building the exact kernel of
10,000 x 6,144 features dominates: inner products are taken in a `sketch_dim`-dimensional
subspace that holds most of the features' energy (a randomized range finder on a row subsample),
while squared norms stay exact, so |x - y|^2 = |x|^2 + |y|^2 - 2 <Px, Py> only loses the
inner product of the residuals. Diffusion features are far from isotropic, and this keeps more
of the exact objective than a Gaussian random projection of the same size (which estimates every
inner product with the same noise); the benchmark reports it against the exact greedy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor
DENSE_KERNEL_BYTES = 2 * 2**30  # kernels up to this size are kept whole (N = 23,170 in float32)
SPARSE_SWITCH_DENSITY = 0.02  # build the sparse kernel once at most this share of entries is useful
LAZY_BUDGET_SHARE = 20  # lazy greedy when the budget is at most 1/20 of the pool


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


def squared_norms(x: torch.Tensor) -> torch.Tensor:
    """|x_i|^2 for every row; vector_norm streams the rows, (x * x).sum(1) first writes x * x (12x slower)."""
    return torch.linalg.vector_norm(x, dim=1).square_()


def sketch_basis(features: torch.Tensor, dim: int, seed: int = 0, rows: int = 2000) -> torch.Tensor:
    """An orthonormal D x dim basis of the dominant subspace of the features' rows: a randomized
    range finder (one pass, Halko et al. 2011) on a seeded subsample of `rows` rows."""
    g = torch.Generator().manual_seed(seed + 7919)
    idx = torch.randperm(len(features), generator=g)[:rows].to(features.device)
    sample = features[idx].float()
    probe = torch.randn(features.shape[1], dim, generator=g, dtype=torch.float32).to(features.device)
    basis, _ = torch.linalg.qr(sample.T @ (sample @ probe))
    return basis


def sketch(features: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates in the basis and the exact squared norms (see the module docstring)."""
    x = features.float()
    return x @ basis, squared_norms(x)


class RBFKernel:
    """k(x, y) = exp(-|x - y|^2 / sigma^2), evaluated block by block from squared norms."""

    def __init__(self, sigma: float):
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.sigma = float(sigma)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, x_sq: torch.Tensor | None = None,
                 y_sq: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        x_sq = squared_norms(x) if x_sq is None else x_sq
        y_sq = squared_norms(y) if y_sq is None else y_sq
        inv = 1.0 / self.sigma ** 2
        # exponent -|x - y|^2 / sigma^2 = (2 x.y - |x|^2 - |y|^2) / sigma^2, built in place after one GEMM
        e = torch.addmm((y_sq * -inv)[None, :].expand(len(x), -1), x, y.T, alpha=2.0 * inv, out=out)
        return e.sub_(x_sq[:, None] * inv).clamp_(max=0.0).exp_()

    def max_over(self, x: torch.Tensor, y: torch.Tensor, block: int = 2048, x_sq: torch.Tensor | None = None,
                 y_sq: torch.Tensor | None = None) -> torch.Tensor:
        """max_j k(x_i, y_j) for every row of x; zeros when y is empty."""
        out = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        if len(y) == 0:
            return out
        x_sq = squared_norms(x) if x_sq is None else x_sq
        y_sq = squared_norms(y) if y_sq is None else y_sq
        for s in range(0, len(y), block):
            k = self(x, y[s:s + block], x_sq, y_sq[s:s + block])
            out = torch.maximum(out, k.max(1).values)
        return out

    def matrix(self, x: torch.Tensor, block: int = 1024, x_sq: torch.Tensor | None = None) -> torch.Tensor:
        """The symmetric kernel of the rows of x: blocks on and above the diagonal are computed, the
        rest mirrored (half the GEMMs and exponentials)."""
        n = len(x)
        x_sq = squared_norms(x) if x_sq is None else x_sq
        k = torch.empty(n, n, dtype=x.dtype, device=x.device)
        for a in range(0, n, block):
            b = min(a + block, n)
            self(x[a:b], x[a:], x_sq[a:b], x_sq[a:], out=k[a:b, a:])
            k[b:, a:b] = k[a:b, b:].T
        return k


def coverage(features: ArrayLike, selected: ArrayLike, covered: ArrayLike | None, sigma: float,
             block: int = 4096) -> float:
    """C(S) for the selected rows of `features`, with `covered` points counting as selected; in
    float64, `block` rows at a time (a float64 copy of a 500,000-point pool would be 3 GB)."""
    x = torch.as_tensor(features)
    kern = RBFKernel(sigma)
    chosen = _as_float_tensor(x[torch.as_tensor(np.asarray(selected, dtype=np.int64), device=x.device)],
                              dtype=torch.float64)
    cov = _as_float_tensor(covered, x.device, torch.float64) if covered is not None else chosen[:0]
    total = 0.0
    for a in range(0, len(x), block):
        rows = _as_float_tensor(x[a:a + block], dtype=torch.float64)
        total += float(torch.maximum(kern.max_over(rows, chosen), kern.max_over(rows, cov)).sum())
    return total / len(x)


def _pick(gains: torch.Tensor, taken: torch.Tensor) -> int:
    return int(torch.where(taken, torch.full_like(gains, -math.inf), gains).argmax())


SUM_ERROR_EPS = 100  # a float sum's error bound, in units of its dtype's eps: far above pairwise summation's


def _gains(kernel: torch.Tensor, cur: torch.Tensor, rows: torch.Tensor | None = None,
           block: int = 1024) -> torch.Tensor:
    """Gains of the candidates `rows` (all when None), summed in the kernel's dtype (float32 sums
    are 3x faster than float64 here). Rows go block by block through one buffer: allocating a
    fresh block each time costs more than the arithmetic (page faults)."""
    n = kernel.shape[0] if rows is None else len(rows)
    out = torch.empty(n, dtype=kernel.dtype, device=kernel.device)
    buf = torch.empty(min(block, n), kernel.shape[1], dtype=kernel.dtype, device=kernel.device)
    nothing_covered = not bool(cur.any())
    for a in range(0, n, block):
        part = buf[:min(block, n - a)]
        if rows is None:
            if nothing_covered:
                out[a:a + block] = kernel[a:a + block].sum(1)
                continue
            torch.sub(kernel[a:a + block], cur[None, :], out=part)
        else:
            torch.index_select(kernel, 0, rows[a:a + block], out=part)
            part.sub_(cur[None, :])
        out[a:a + block] = part.clamp_(min=0).sum(1)
    return out


def _error_bounds(gains: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An interval holding each gain's value as a float64 sum would give it (taken as exact): the
    terms are non-negative, so the error of their sum is a small multiple of eps times the sum."""
    eps = SUM_ERROR_EPS * torch.finfo(gains.dtype).eps
    g = gains.double()
    slack = g * eps + eps
    return g - slack, g + slack


def _exact_gains(kernel: torch.Tensor, cur: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    part = kernel[rows]
    return (part - cur[None, :]).clamp_(min=0).sum(1, dtype=torch.float64)


def lazy_greedy(kernel: torch.Tensor, base: torch.Tensor, budget: int, probe: int = 32,
                progress: Callable[[str, int, int], None] | None = None) -> tuple[list[int], torch.Tensor]:
    """Exact greedy for budgets small against the pool. Gains never grow (submodularity), so a gain
    computed before the last pick is an upper bound. Each pick evaluates the candidates whose bound
    could still beat the best evaluated gain, the highest bounds first, in batches that double
    (`probe`, 2 x probe, ...). Gains are summed in the kernel's dtype with an error interval; only
    when intervals overlap are the contenders summed again in float64. `kernel` is candidates x
    points (a symmetric kernel serves as it is), `base` the points' starting coverage."""
    n = kernel.shape[0]
    cur = base.to(kernel.dtype).clone()
    lo, hi = _error_bounds(_gains(kernel, cur))
    taken = torch.zeros(n, dtype=torch.bool, device=kernel.device)
    fresh = torch.ones(n, dtype=torch.bool, device=kernel.device)  # evaluated since the last pick
    order: list[int] = []
    while len(order) < min(budget, n):
        batch = probe
        while True:
            best_lo = float(torch.where(fresh & ~taken, lo, torch.full_like(lo, -math.inf)).max())
            stale = torch.nonzero(~fresh & ~taken & (hi >= best_lo)).flatten()
            if len(stale) == 0:
                break
            if len(stale) > batch:
                stale = stale[hi[stale].topk(batch).indices]
            lo[stale], hi[stale] = _error_bounds(_gains(kernel, cur, stale))
            fresh[stale] = True
            batch *= 2
        open_ = fresh & ~taken
        contenders = torch.nonzero(open_ & (hi >= best_lo)).flatten()
        if len(contenders) > 1:  # intervals overlap: settle it in float64
            exact = _exact_gains(kernel, cur, contenders)
            j = int(contenders[int(exact.argmax())])
        else:
            j = int(contenders[0])
        order.append(j)
        taken[j] = True
        cur = torch.maximum(cur, kernel[j])
        fresh[:] = False
        if progress:
            progress("greedy", len(order), budget)
    return order, cur


def _lower_gains(gains: torch.Tensor, block: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> None:
    """Take from `gains` what points lose when their coverage rises from `old` to `new`; `block`
    holds their kernel rows (one per point) and is clamped in place, as a maximum then a minimum:
    torch's clamp with tensor bounds is 4-12x slower on these blocks."""
    torch.maximum(block, old[:, None], out=block)
    torch.minimum(block, new[:, None], out=block)
    gains -= block.sum(0, dtype=torch.float64)
    gains += old.sum(dtype=torch.float64)


def dense_greedy(kernel: torch.Tensor, base: torch.Tensor, budget: int, row_block: int = 1024, symmetric: bool = True,
                 progress: Callable[[str, int, int], None] | None = None) -> tuple[list[int], torch.Tensor]:
    """Exact greedy on a whole kernel (rows: points, columns: candidates), `base` the starting
    per-point coverage, with gains updated only where coverage improves, through one reused buffer.
    Taken candidates get gain -inf. A symmetric kernel's column is read as its row (contiguous)."""
    n, m = kernel.shape
    cur = base.to(kernel.dtype).clone()
    gains = torch.zeros(m, dtype=torch.float64, device=kernel.device)
    for s in range(0, n, row_block):
        gains += (kernel[s:s + row_block] - cur[s:s + row_block, None]).clamp_(min=0).sum(0, dtype=torch.float64)
    buf = torch.empty(min(row_block, n), m, dtype=kernel.dtype, device=kernel.device)
    order: list[int] = []
    for _ in range(min(budget, m)):
        j = int(gains.argmax())
        order.append(j)
        gains[j] = -math.inf
        col = kernel[j] if symmetric else kernel[:, j]
        improved = torch.nonzero(col > cur).flatten()
        for s in range(0, len(improved), row_block):
            rows = improved[s:s + row_block]
            part = buf[:len(rows)]
            torch.index_select(kernel, 0, rows, out=part)
            _lower_gains(gains, part, cur[rows], col[rows])
        cur[improved] = col[improved]
        if progress:
            progress("greedy", len(order), budget)
    return order, cur


def greedy_on_kernel(kernel: torch.Tensor, base: torch.Tensor, budget: int,
                     progress: Callable[[str, int, int], None] | None = None) -> tuple[list[int], torch.Tensor]:
    """The faster exact greedy for this budget: lazy for a few picks, incremental for many."""
    if budget * LAZY_BUDGET_SHARE <= kernel.shape[0]:
        return lazy_greedy(kernel, base, budget, progress=progress)
    return dense_greedy(kernel, base, budget, progress=progress)


def every_percent(progress: Callable[[str, int, int], None]) -> Callable[[str, int, int], None]:
    """`progress` called at most about 100 times a stage (each call may be a database write)."""
    def report(stage: str, done: int, total: int) -> None:
        if done == total or done % max(1, total // 100) == 0:
            progress(stage, done, total)
    return report


class _SparseUseful:
    """The kernel entries k(x, c) > cur(x), indexed by row (point) and by column (candidate)."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n: int):
        order = torch.argsort(rows, stable=True)
        self.r_cols, self.r_vals = cols[order], vals[order]
        self.r_ptr = torch.zeros(n + 1, dtype=torch.long, device=rows.device)
        self.r_ptr[1:] = torch.cumsum(torch.bincount(rows.long(), minlength=n), 0)
        order = torch.argsort(cols, stable=True)
        self.c_rows, self.c_vals = rows[order], vals[order]
        self.c_ptr = torch.zeros(n + 1, dtype=torch.long, device=rows.device)
        self.c_ptr[1:] = torch.cumsum(torch.bincount(cols.long(), minlength=n), 0)
        self.nnz = len(vals)

    @staticmethod
    def _ranges(ptr: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions of the entries of rows `idx` and, for each, which of `idx` it belongs to."""
        starts, ends = ptr[idx], ptr[idx + 1]
        counts = ends - starts
        owner = torch.repeat_interleave(torch.arange(len(idx), device=idx.device), counts)
        offsets = torch.arange(int(counts.sum()), device=idx.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts)
        return starts[owner] + offsets, owner

    def column(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = int(self.c_ptr[j]), int(self.c_ptr[j + 1])
        return self.c_rows[a:b], self.c_vals[a:b]

    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos, owner = self._ranges(self.r_ptr, idx)
        return owner, self.r_cols[pos], self.r_vals[pos]


def sparse_greedy(x: torch.Tensor, kern: RBFKernel, base: torch.Tensor, budget: int, block: int = 512,
                  progress: Callable[[str, int, int], None] | None = None,
                  x_sq: torch.Tensor | None = None) -> tuple[list[int], torch.Tensor]:
    """Exact greedy without the whole kernel in memory (see the module docstring)."""
    n = len(x)
    progress = progress or (lambda stage, done, total: None)
    x_sq = squared_norms(x) if x_sq is None else x_sq
    cur = base.double().clone()
    taken = torch.zeros(n, dtype=torch.bool, device=x.device)
    order: list[int] = []

    def kernel_rows(a: int, b: int) -> torch.Tensor:
        return kern(x[a:b], x, x_sq[a:b], x_sq)

    # One pass over the kernel gives the exact gains; while the useful entries stay few (labeled
    # points cover most of the pool) it also keeps them, and the sparse phase starts at once.
    cap = int(SPARSE_SWITCH_DENSITY * n * n)
    gains = torch.zeros(n, dtype=torch.float64, device=x.device)
    kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = []
    useful = 0
    for a in range(0, n, block):
        b = min(a + block, n)
        k = kernel_rows(a, b).double()
        over = k - cur[a:b, None]
        if kept is not None:
            rr, cc = torch.nonzero(over > 0, as_tuple=True)
            kept.append(((rr + a).int(), cc.int(), k[rr, cc].float()))
        del k
        useful += int((over > 0).sum())
        gains += over.clamp_(min=0).sum(0)
        if kept is not None and useful > cap:
            kept = None  # too dense to keep: pick column by column first
        progress("kernel pass", b, n)
    if kept is None:
        # Phase A: picks with gains kept exact from kernel columns, until few entries stay useful.
        probe = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:256].to(x.device)
        probe_rows = kern(x[probe], x, x_sq[probe], x_sq).double()
        density = useful / (n * n)
        while len(order) < min(budget, n) and density > SPARSE_SWITCH_DENSITY:
            j = _pick(gains, taken)
            order.append(j)
            taken[j] = True
            col = kern(x, x[j:j + 1], x_sq, x_sq[j:j + 1])[:, 0].double()
            improved = torch.nonzero(col > cur).flatten()
            for s in range(0, len(improved), block):
                rows = improved[s:s + block]
                _lower_gains(gains, kern(x[rows], x, x_sq[rows], x_sq).double(), cur[rows], col[rows])
            cur[improved] = col[improved]
            density = float((probe_rows > cur[probe, None]).double().mean())
            progress("greedy", len(order), budget)
        if len(order) >= min(budget, n):
            return order, cur
        # Phase B starts with one more pass keeping the entries that are still useful.
        kept = []
        for a in range(0, n, block):
            b = min(a + block, n)
            k = kernel_rows(a, b).double()
            rr, cc = torch.nonzero(k > cur[a:b, None], as_tuple=True)
            kept.append(((rr + a).int(), cc.int(), k[rr, cc].float()))
            progress("sparse kernel", b, n)
    rows_k, cols_k, vals_k = (torch.cat([k[i] for k in kept]) for i in range(3))
    del kept
    useful_k = _SparseUseful(rows_k, cols_k, vals_k, n)
    del rows_k, cols_k, vals_k
    gains = torch.zeros(n, dtype=torch.float64, device=x.device)
    rows_all = torch.arange(n, device=x.device)
    owner, cols, vals = useful_k.rows(rows_all)
    gains.index_add_(0, cols, (vals - cur[owner]).clamp(min=0))
    while len(order) < min(budget, n):
        j = _pick(gains, taken)
        order.append(j)
        taken[j] = True
        pts, kv = useful_k.column(j)
        kv = kv.double()
        better = kv > cur[pts]
        pts, new = pts[better], kv[better]
        if len(pts):
            owner, cols, vals = useful_k.rows(pts)
            old_o = cur[pts][owner]
            gains.index_add_(0, cols, old_o - torch.minimum(torch.maximum(vals.double(), old_o), new[owner]))
            cur[pts] = new
        progress("greedy", len(order), budget)
    return order, cur


@dataclass
class HerdingResult:
    order: np.ndarray  # selected rows, in selection order
    objective: float  # C(S) as the algorithm computed it (in the sketch's space when sketched)
    sigma: float
    path: str  # "dense", "sparse", with "sketch-" in front when sketched


def herd(features: ArrayLike, budget: int, covered: ArrayLike | None = None, sigma: float | str = "auto", *,
         seed: int = 0, sketch_dim: int | None = None, dense_bytes: int = DENSE_KERNEL_BYTES,
         dtype: torch.dtype = torch.float32, progress: Callable[[str, int, int], None] | None = None) -> HerdingResult:
    """MaxHerding with its diagnostics; `max_herding` returns just the indices."""
    x = _as_float_tensor(features, dtype=dtype)
    n = len(x)
    budget = max(0, min(int(budget), n))
    s = auto_sigma(x, seed) if sigma == "auto" else float(sigma)
    cov = _as_float_tensor(covered, x.device, dtype) if covered is not None else x[:0]
    prefix, x_sq, cov_sq = "", None, None
    if sketch_dim is not None and x.shape[1] > sketch_dim:
        basis = sketch_basis(x, sketch_dim, seed)
        (x, x_sq), (cov, cov_sq) = sketch(x, basis), sketch(cov, basis)
        x, x_sq, cov, cov_sq = x.to(dtype), x_sq.to(dtype), cov.to(dtype), cov_sq.to(dtype)
        prefix = "sketch-"
    kern = RBFKernel(s)
    progress = every_percent(progress) if progress else None
    base = kern.max_over(x, cov, x_sq=x_sq, y_sq=cov_sq)
    if budget == 0:
        return HerdingResult(np.empty(0, dtype=np.int64), float(base.double().mean()) if n else 0.0, s, prefix + "none")
    if n * n * x.element_size() <= dense_bytes:
        order, cur = greedy_on_kernel(kern.matrix(x, x_sq=x_sq), base, budget, progress)
        path = "dense"
    else:
        order, cur = sparse_greedy(x, kern, base, budget, progress=progress, x_sq=x_sq)
        path = "sparse"
    return HerdingResult(np.asarray(order, dtype=np.int64), float(cur.mean()), s, prefix + path)


def max_herding(features: ArrayLike, budget: int, covered: ArrayLike | None = None,
                sigma: float | str = "auto", *, seed: int = 0, sketch_dim: int | None = None,
                dense_bytes: int = DENSE_KERNEL_BYTES, dtype: torch.dtype = torch.float32,
                progress: Callable[[str, int, int], None] | None = None) -> np.ndarray:
    """Indices of `budget` rows of `features` chosen greedily for coverage, in selection order.

    Rows of `covered` (already-labeled points) start the running maximum and are never selected.
    The result is the exact greedy selection (ties aside) unless `sketch_dim` is given.
    """
    return herd(features, budget, covered, sigma, seed=seed, sketch_dim=sketch_dim, dense_bytes=dense_bytes,
                dtype=dtype, progress=progress).order

