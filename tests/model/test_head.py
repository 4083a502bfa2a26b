import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from model.head import SegmentationHead, TrainConfig, train_head


def _blobs(n=200, dim=16, classes=3, seed=0, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 3
    y = torch.randint(classes, (n,), generator=g)
    return centers[y] + spread * torch.randn(n, dim, generator=g), y


def test_architecture_follows_the_reference():
    small = [type(m) for m in SegmentationHead(64, 11).layers]
    assert small == [nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Linear]
    assert SegmentationHead(64, 11).layers[0].out_features == 128 and SegmentationHead(64, 11).layers[3].out_features == 32
    big = SegmentationHead(64, 30).layers
    assert big[0].out_features == 256 and big[3].out_features == 128 and big[-1].out_features == 30
    assert any(isinstance(m, nn.Dropout) for m in SegmentationHead(64, 11, mc_dropout=0.2).modules())


def test_training_learns_and_is_deterministic():
    x, y = _blobs()
    a, report = train_head(x, y, 3, TrainConfig(seed=1))
    b, _ = train_head(x, y, 3, TrainConfig(seed=1))
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), k
    accuracy = (a.log_probs(x).argmax(1) == y).float().mean()
    assert accuracy > 0.95 and report.labeled_pixels == 200


def test_ignored_pixels_never_reach_batchnorm_or_the_loss():
    x, y = _blobs()
    junk_x = torch.randn(50, 16) * 100
    junk_y = torch.full((50,), 255)
    a, _ = train_head(x, y, 3, TrainConfig(seed=2, batch_size=400))
    b, _ = train_head(torch.cat([x, junk_x]), torch.cat([y, junk_y]), 3, TrainConfig(seed=2, batch_size=400))
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.allclose(p.float(), q.float())


def test_early_stopping_needs_both_patience_and_accuracy():
    x, y = _blobs(n=64)
    _, easy = train_head(x, y, 3, TrainConfig(patience=5, max_epochs=200))
    assert easy.early_stopped and easy.epochs < 200
    g = torch.Generator().manual_seed(0)
    noise_x, noise_y = torch.randn(64, 16, generator=g), torch.randint(3, (64,), generator=g)
    _, hard = train_head(noise_x, noise_y, 3, TrainConfig(patience=5, max_epochs=30, target_accuracy=1.01))
    assert not hard.early_stopped and hard.epochs == 30


def test_single_labeled_pixel_and_bad_labels():
    head, report = train_head(torch.randn(1, 8), torch.tensor([2]), 4)
    assert report.labeled_pixels == 1 and head.log_probs(torch.randn(5, 8)).shape == (5, 4)
    with pytest.raises(ValueError, match="no labeled"):
        train_head(torch.randn(3, 8), torch.full((3,), 255), 4)
    with pytest.raises(ValueError, match="0..3"):
        train_head(torch.randn(3, 8), torch.tensor([0, 1, 7]), 4)


def test_checkpoint_round_trip_and_mc_dropout():
    x, y = _blobs()
    head, _ = train_head(x, y, 3, TrainConfig(mc_dropout=0.3))
    restored = SegmentationHead.from_checkpoint(head.checkpoint())
    assert torch.allclose(head.log_probs(x), restored.log_probs(x))
    s1 = head.mc_dropout_log_probs(x[:10], 5, torch.Generator().manual_seed(0))
    s2 = head.mc_dropout_log_probs(x[:10], 5, torch.Generator().manual_seed(0))
    assert s1.shape == (10, 5, 3) and torch.equal(s1, s2) and not torch.allclose(s1[:, 0], s1[:, 1])
    with pytest.raises(ValueError, match="dropout"):
        SegmentationHead(16, 3).mc_dropout_log_probs(x, 2)


@settings(max_examples=400, deadline=None)
@given(n=st.integers(1, 40), size=st.integers(1, 9))
def test_every_pixel_once_per_epoch_and_no_batch_of_one(n, size):
    from model.head import _batches

    parts = _batches(torch.randperm(n), size)
    seen = torch.cat(parts).sort().values
    assert torch.equal(seen, torch.arange(n))  # each pixel exactly once
    assert all(len(p) >= 2 for p in parts) or n == 1  # BatchNorm never sees a lone pixel
    assert all(len(p) <= max(2, size) + 1 for p in parts)


@pytest.mark.parametrize("n", [1, 2, 8, 9, 17, 25])
def test_training_runs_at_every_size_around_a_batch(n):
    x, y = _blobs(n=n)
    head, report = train_head(x, y, 3, TrainConfig(seed=0, batch_size=8, max_epochs=3))
    assert report.labeled_pixels == n and head.log_probs(x).shape == (n, 3)
