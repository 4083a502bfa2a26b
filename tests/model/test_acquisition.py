import numpy as np
import pytest
import torch
from baal.active.heuristics import BALD, Certainty, Entropy, Margin
from hypothesis import given, settings
from hypothesis import strategies as st

from model.acquisition import METHODS, acquisition_scores, balentacq, entropy, mutual_information


def _log_probs(rng, *shape):
    logits = torch.from_numpy(rng.normal(size=shape) * 2)
    return torch.log_softmax(logits, dim=-1)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), classes=st.integers(2, 12))
def test_entropy_margin_confidence_bald_match_baal(seed, classes):
    rng = np.random.default_rng(seed)
    ref = _log_probs(rng, 40, classes)
    samples = _log_probs(rng, 40, 5, classes)
    p = ref.exp().numpy()
    assert np.allclose(acquisition_scores("entropy", ref).numpy(), Entropy().compute_score(p), atol=1e-9)
    assert np.allclose(acquisition_scores("margin", ref).numpy(), -Margin().compute_score(p), atol=1e-9)
    assert np.allclose(acquisition_scores("least-confidence", ref).numpy(), 1 - Certainty().compute_score(p), atol=1e-9)
    baal_input = samples.exp().permute(0, 2, 1).numpy()  # baal: [N, C, iterations]
    assert np.allclose(acquisition_scores("bald", ref, samples).numpy(), BALD().compute_score(baal_input), atol=1e-9)


def test_edald_is_mutual_information_plus_entropy_of_the_independent_pass():
    rng = np.random.default_rng(3)
    ref, samples = _log_probs(rng, 30, 11), _log_probs(rng, 30, 5, 11)
    p, q = ref.exp().numpy(), samples.exp().numpy()
    h = lambda a: -(a * np.log(a)).sum(-1)  # noqa: E731
    expected = h(q.mean(1)) - h(q).mean(1) + h(p)
    assert np.allclose(acquisition_scores("edald", ref, samples).numpy(), expected, atol=1e-9)
    assert np.allclose(acquisition_scores("dald", ref, samples).numpy(), h(q.mean(1)) - h(q).mean(1), atol=1e-9)


def test_edald_reference_reproduces_the_published_arithmetic_and_differs_from_the_formula():
    rng = np.random.default_rng(4)
    ref, samples = _log_probs(rng, 30, 11), _log_probs(rng, 30, 5, 11)
    p, q = ref.exp().numpy(), samples.exp().numpy()
    # The published code gives softmax probabilities q to a routine that treats its input as log-probs:
    as_probs = np.exp(q)
    ent = lambda a: -(a * np.log(a + 1e-8)).sum(-1)  # noqa: E731
    mean_prob = np.exp(np.log(np.exp(q).sum(1)) - np.log(5))
    mi = np.maximum(ent(mean_prob) - ent(as_probs).mean(1), 1e-9)
    expected = mi + ent(p)
    got = acquisition_scores("edald-reference", ref, samples).numpy()
    assert np.allclose(got, expected, atol=1e-6)
    paper = acquisition_scores("edald", ref, samples).numpy()
    assert not np.allclose(got, paper, atol=1e-3)
    assert np.allclose(acquisition_scores("ebald-reference", ref, samples).numpy(), expected, atol=1e-6)


def test_balentacq_is_finite_and_ranks_confident_below_ambiguous():
    rng = np.random.default_rng(5)
    confident = torch.log(torch.tensor([[0.97, 0.01, 0.01, 0.01]] * 5)[None] + torch.zeros(1, 5, 4))
    jitter = torch.from_numpy(rng.normal(size=(1, 5, 4)) * 0.8)
    ambiguous = torch.log_softmax(jitter, dim=-1)
    scores = balentacq(torch.cat([confident, ambiguous]).double())
    assert torch.isfinite(scores).all() and scores[0] < scores[1]
    random_scores = balentacq(_log_probs(rng, 200, 5, 11))
    assert torch.isfinite(random_scores).all()


def test_every_method_gives_finite_scores_and_power_variants_are_seeded():
    rng = np.random.default_rng(6)
    ref, samples = _log_probs(rng, 50, 7), _log_probs(rng, 50, 5, 7)
    for name in METHODS:
        s = acquisition_scores(name, ref, samples, torch.Generator().manual_seed(0))
        assert s.shape == (50,) and torch.isfinite(s).all(), name
    a = acquisition_scores("power-dald", ref, samples, torch.Generator().manual_seed(1))
    b = acquisition_scores("power-dald", ref, samples, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert not torch.equal(a.argsort(), mutual_information(samples).argsort())


def test_entropy_handles_zero_probabilities_and_unknown_names():
    log_p = torch.log(torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64))
    assert entropy(log_p).item() == 0.0
    with pytest.raises(ValueError, match="edald"):
        acquisition_scores("edal", log_p)
    with pytest.raises(ValueError, match="samples"):
        acquisition_scores("edald", log_p)
