"""Core-set selection by k-center greedy (Sener & Savarese, 2018): each pick is the point farthest
from its nearest center; already-labeled points are centers from the start. The paper's
appendix C.5 compares it with MaxHerding as the first stage."""

from __future__ import annotations

import numpy as np
import torch


def k_center_greedy(features: np.ndarray | torch.Tensor, budget: int,
                    covered: np.ndarray | torch.Tensor | None = None, seed: int = 0) -> np.ndarray:
    x = torch.as_tensor(features).float()
    n = len(x)
    budget = max(0, min(int(budget), n))
    if budget == 0:
        return np.empty(0, dtype=np.int64)
    nearest = torch.full((n,), float("inf"), device=x.device)
    if covered is not None and len(covered):
        c = torch.as_tensor(covered).to(x.device).float()
        for s in range(0, len(c), 2048):
            nearest = torch.minimum(nearest, torch.cdist(x, c[s:s + 2048]).min(1).values)
    order = []
    if torch.isinf(nearest).all():  # nothing covered yet: start from a seeded random point
        first = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    else:
        first = int(nearest.argmax())
    j = first
    for _ in range(budget):
        order.append(j)
        nearest = torch.minimum(nearest, torch.cdist(x, x[j:j + 1])[:, 0])
        nearest[j] = -1.0
        j = int(nearest.argmax())
    return np.asarray(order, dtype=np.int64)
