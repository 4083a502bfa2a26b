"""Pixel acquisition scores. For every method a higher score means "query first".

Inputs are log-probabilities: `reference` [P, C] from the deterministic pass (reference noise,
no dropout) and `samples` [P, M, C] from M stochastic passes, either the diffusion noise draws
(DALD family) or MC dropout in the head (BALD family). Working from log-probabilities keeps
entropies exact where a probability underflows.

eDALD (paper eq. 8) = I(Y; Z) over the M noise draws + H(Y | z(0)) of the independent reference
pass. The `-reference` variants re-create the published code's arithmetic, which hands softmax
probabilities to a mutual-information routine that expects log-probabilities: they match the
published numbers, not the paper's formula.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

EPS_REFERENCE = 1e-8
MC_DROPOUT_RATE = 0.2  # the head's dropout when a method samples it (BALD family)


def entropy(log_p: torch.Tensor) -> torch.Tensor:
    """H = -sum p log p over the last axis, with 0 log 0 = 0."""
    p = log_p.exp()
    return -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(-1)


def mean_log_prob(samples: torch.Tensor) -> torch.Tensor:
    """log of the mean predictive distribution over the sample axis (1)."""
    return torch.logsumexp(samples, dim=1) - math.log(samples.shape[1])


def mutual_information(samples: torch.Tensor) -> torch.Tensor:
    """I(Y; sample) = H(mean_m p_m) - mean_m H(p_m) (paper eqs. 5-7), clipped at 0 for rounding."""
    return (entropy(mean_log_prob(samples)) - entropy(samples).mean(1)).clamp(min=0)


def margin(log_p: torch.Tensor) -> torch.Tensor:
    top2 = log_p.exp().topk(2, dim=-1).values
    return -(top2[..., 0] - top2[..., 1])


def least_confidence(log_p: torch.Tensor) -> torch.Tensor:
    return 1.0 - log_p.exp().max(-1).values


def power_scores(scores: torch.Tensor, generator: torch.Generator, beta: float = 1.0) -> torch.Tensor:
    """Top-b of beta*log(s) + Gumbel noise samples b points without replacement with p ~ s^beta
    (Kirsch et al., 2023, "Stochastic batch acquisition")."""
    u = torch.rand(scores.shape, generator=generator, dtype=torch.float64).clamp(min=1e-12).to(scores.device)
    gumbel = -torch.log(-torch.log(u))
    return beta * torch.log(scores.double().clamp(min=1e-30)) + gumbel


def balentacq(samples: torch.Tensor) -> torch.Tensor:
    """BalEntAcq (Woo, ICLR 2023): each class marginal P_c ~ Beta(a_c, b_c) by moment matching;
    MJEnt = sum_c E[P_c] h(Beta(a_c + 1, b_c)) + H(Y); BalEnt = MJEnt / (H(Y) + log 2);
    acquisition is 1 / BalEnt where BalEnt >= 0, else BalEnt."""
    p = samples.double().exp()
    mean = p.mean(1).clamp(min=1e-9, max=1 - 1e-9)
    var = p.var(1, unbiased=True).clamp(min=1e-9) if samples.shape[1] > 1 else torch.full_like(mean, 1e-9)
    a = (mean * (mean * (1 - mean) / var - 1)).clamp(min=1e-9)
    b = ((1 - mean) / mean * a).clamp(min=1e-9)
    log_beta = torch.lgamma(a + 1) + torch.lgamma(b) - torch.lgamma(a + b + 1)
    h_plus = (log_beta - a * torch.digamma(a + 1) - (b - 1) * torch.digamma(b)
              + (a + b - 1) * torch.digamma(a + b + 1))
    h_y = entropy(mean_log_prob(samples.double()))
    mjent = (mean * h_plus).sum(-1) + h_y
    balent = mjent / (h_y + math.log(2))
    safe = torch.where(balent.abs() < 1e-12, torch.full_like(balent, 1e-12), balent)
    return torch.where(balent >= 0, 1.0 / safe, balent)


def _reference_entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p + EPS_REFERENCE)).double().sum(-1)


def reference_mutual_information(samples: torch.Tensor) -> torch.Tensor:
    """The published code's MI routine fed softmax probabilities instead of log-probabilities."""
    x = samples.exp()  # what the reference passes: probabilities
    as_prob = x.exp()  # ... which the routine exponentiates as if they were log-probabilities
    per_sample = _reference_entropy(as_prob).mean(1)
    mean_prob = (torch.logsumexp(x, dim=1) - math.log(x.shape[1])).exp()
    mi = _reference_entropy(mean_prob) - per_sample
    return mi.clamp(min=1e-9)


@dataclass(frozen=True)
class AcquisitionInputs:
    reference: torch.Tensor  # [P, C] log-probabilities
    samples: torch.Tensor | None  # [P, M, C] log-probabilities, or None
    generator: torch.Generator


@dataclass(frozen=True)
class Acquisition:
    name: str
    samples: str | None  # "noise" (diffusion draws), "dropout" (MC dropout in the head), or None
    score: Callable[[AcquisitionInputs], torch.Tensor]
    description: str

    @property
    def needs_noise_draws(self) -> bool:
        return self.samples == "noise"

    @property
    def head_dropout(self) -> float:
        """The dropout the head must be trained with so that this method can sample it."""
        return MC_DROPOUT_RATE if self.samples == "dropout" else 0.0

    def scores(self, reference: torch.Tensor, samples: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Scores [P] (float64) for P pixels."""
        inputs = AcquisitionInputs(reference, samples, generator or torch.Generator().manual_seed(0))
        return self.score(inputs).double()


def _need_samples(i: AcquisitionInputs) -> torch.Tensor:
    if i.samples is None:
        raise ValueError("this acquisition needs stochastic samples")
    return i.samples


METHODS: dict[str, Acquisition] = {a.name: a for a in [
    Acquisition("random", None, lambda i: torch.rand(len(i.reference), generator=i.generator,
                                                     dtype=torch.float64), "uniform random"),
    Acquisition("entropy", None, lambda i: entropy(i.reference), "predictive entropy"),
    Acquisition("least-confidence", None, lambda i: least_confidence(i.reference), "1 - max p"),
    Acquisition("margin", None, lambda i: margin(i.reference), "minus (top-1 - top-2 probability)"),
    Acquisition("bald", "dropout", lambda i: mutual_information(_need_samples(i)), "MI over MC dropout"),
    Acquisition("dald", "noise", lambda i: mutual_information(_need_samples(i)), "MI over noise draws"),
    Acquisition("power-bald", "dropout",
                lambda i: power_scores(mutual_information(_need_samples(i)), i.generator), "PowerBALD"),
    Acquisition("power-dald", "noise",
                lambda i: power_scores(mutual_information(_need_samples(i)), i.generator), "PowerDALD"),
    Acquisition("balentacq", "dropout", lambda i: balentacq(_need_samples(i)), "BalEntAcq over MC dropout"),
    Acquisition("ebald", "dropout",
                lambda i: mutual_information(_need_samples(i)) + entropy(i.reference),
                "MI over MC dropout + entropy of the deterministic pass"),
    Acquisition("edald", "noise",
                lambda i: mutual_information(_need_samples(i)) + entropy(i.reference),
                "paper eq. 8: MI over noise draws + entropy of the independent pass z(0)"),
    Acquisition("ebald-reference", "dropout",
                lambda i: reference_mutual_information(_need_samples(i)) + _reference_entropy(i.reference.exp()),
                "the published code's eBALD arithmetic (matches the published numbers, not the formula)"),
    Acquisition("edald-reference", "noise",
                lambda i: reference_mutual_information(_need_samples(i)) + _reference_entropy(i.reference.exp()),
                "the published code's eDALD arithmetic (matches the published numbers, not the formula)"),
]}


def get_acquisition(name: str) -> Acquisition:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown acquisition {name!r}; choose one of {', '.join(METHODS)}") from None


def acquisition_scores(name: str, reference: torch.Tensor, samples: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Scores [P] (float64) of the method called `name`; a round resolves its method once instead."""
    return get_acquisition(name).scores(reference, samples, generator)
